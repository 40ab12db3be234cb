"""Adversaries in real runs: what an eavesdropper, a curious coordinator or peer and a black
box get out of a run under each protection mode (issue 6, items 1 and 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed import run
from p2pfed.adversary import FrameLog
from p2pfed.adversary.views import dpsgd_updates
from p2pfed.config import config_from_mapping
from p2pfed.errors import ConfigError
from tests.conftest import small_config

# one SGD step on one sample per round: every local update is a scaled single-sample gradient
ONE_SAMPLE = {"lr": 0.1, "batch_size": 1, "local_steps": 1}


def _gossip(security: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    topology = {"kind": "ring", "n": 6} if not security else {"kind": "torus", "n": 9}
    if security and security.get("channel") and "aggregation" not in security:
        topology = {"kind": "ring", "n": 6}
    cfg = small_config(
        topology=topology,
        model={"kind": "mlp", "hidden": [32]},
        training=ONE_SAMPLE,
        protocol={"kind": "dpsgd", "rounds": 4},
        partition={"scheme": "iid"},
    )
    if security:
        cfg["security"] = security
    cfg["adversaries"] = [{"role": "eavesdropper", "target": 2}]
    cfg.update(extra)
    return cfg


def _star(security: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = small_config(
        topology={"kind": "complete", "n": 4},
        model={"kind": "mlp", "hidden": [32]},
        training=ONE_SAMPLE,
        protocol={"kind": "fedavg", "rounds": 3},
        partition={"scheme": "iid"},
    )
    if security:
        cfg["security"] = security
    cfg["adversaries"] = [{"role": "curious_coordinator"}]
    return cfg


def _rows(result: Any, attack: str = "analytic_inversion") -> list[dict[str, Any]]:
    return [r for r in result.summary["attacks"] if r["attack"] == attack]


def test_an_eavesdropper_on_every_link_of_a_peer_recovers_its_samples(tmp_path: Path) -> None:
    """Plain D-PSGD: from the models on peer 2's links the eavesdropper isolates each local
    update and inverts it to the very sample peer 2 trained on, label included."""
    result = run(_gossip(), out=tmp_path / "run")
    (row,) = _rows(result)
    assert row["view"] == "isolated" and row["target"] == "peer 2"
    assert row["protection"] == "plain"
    assert row["truth"] == "exact"  # scored against the very sample of each round
    m = row["metrics"]
    assert m["reconstructions"] == 4  # one per round
    assert m["mse_median"] < 1e-10
    assert m["label_accuracy"] == 1.0
    assert m["baseline_mse"] > 1e-3  # guessing the mean image is far off
    # the report: a JSON copy of the rows and a PNG grid of originals and reconstructions
    saved = json.loads((tmp_path / "run" / "attacks.json").read_text())
    assert saved[0]["metrics"]["reconstructions"] == 4
    png = (tmp_path / "run" / row["image"]).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize(
    ("security", "view"),
    [
        ({"channel": "aead"}, "ciphertext"),
        ({"aggregation": "secret-share"}, "share"),
        ({"aggregation": "secagg"}, "masked"),
    ],
)
def test_protected_links_give_the_eavesdropper_nothing_better_than_the_mean_image(
    tmp_path: Path, security: dict[str, Any], view: str
) -> None:
    result = run(_gossip(security), out=tmp_path / "run")
    (row,) = _rows(result)
    assert row["view"] == view
    m = row["metrics"]
    assert m["mse_median"] >= m["baseline_mse"]
    assert m.get("label_accuracy", 0.0) <= 0.5


def test_a_curious_coordinator_inverts_client_updates_but_only_sums_under_secagg(
    tmp_path: Path,
) -> None:
    plain = run(_star(), out=tmp_path / "plain")
    rows = {r["target"]: r for r in _rows(plain)}
    single = [rows[f"peer {k}"]["metrics"]["mse_median"] for k in range(4)]
    assert all(rows[f"peer {k}"]["view"] == "client" for k in range(4))
    assert all(rows[f"peer {k}"]["truth"] == "exact" for k in range(4))
    assert max(single) < 1e-10

    secure = run(_star({"aggregation": "secagg"}), out=tmp_path / "secagg")
    rows = {r["target"]: r for r in _rows(secure)}
    for k in range(4):  # each client's message is a masked vector
        m = rows[f"peer {k}"]["metrics"]
        assert rows[f"peer {k}"]["view"] == "masked"
        assert m["mse_median"] >= m["baseline_mse"]
    # what it holds is the sum of 4 single-sample updates: its inverse is a blend
    agg = rows["the aggregate"]
    assert agg["view"] == "aggregate" and agg["truth"] == "exact"  # the 4 samples of a round
    assert agg["metrics"]["mse_median"] >= 10 * max(max(single), 1e-12)
    assert agg["metrics"]["mse_median"] > 1e-3


def test_he_leaves_the_coordinator_ciphertext_only(tmp_path: Path) -> None:
    cfg = _star({"aggregation": "he", "he": {"scheme": "ckks"}})
    result = run(cfg, out=tmp_path / "run")
    rows = _rows(result)
    assert rows and all(r["view"] == "ciphertext" for r in rows)
    for r in rows:
        assert r["metrics"]["mse_median"] == pytest.approx(r["metrics"]["baseline_mse"])


def test_dp_noise_spoils_the_eavesdroppers_inversion(tmp_path: Path) -> None:
    plain = _rows(run(_gossip(), out=tmp_path / "plain"))[0]["metrics"]["mse_median"]
    noisy = _rows(run(_gossip(dp={"clip": 1.0, "noise_multiplier": 1.0}), out=tmp_path / "dp"))[0]
    assert noisy["protection"] == "dp"
    assert noisy["metrics"]["mse_median"] >= 30 * max(plain, 1e-12)
    assert noisy["metrics"]["mse_median"] > 1e-2


def test_isolation_reproduces_the_peers_own_mixing() -> None:
    """The observer's recomputed mixing is bit for bit the model the peer ends with."""
    from p2pfed.adversary.views import _mix
    from p2pfed.experiment import build_evaluator, build_peers, build_world
    from p2pfed.protocol.dpsgd import ModelShare
    from p2pfed.runtime.local import LocalRuntime

    cfg = config_from_mapping({**_gossip(), "adversaries": []})
    world = build_world(cfg)
    log = FrameLog(ends=[2])
    peers = build_peers(world, range(world.participants), "cpu")
    runtime = LocalRuntime(
        peers,
        world.codec,
        world.network,
        world.cost,
        build_evaluator(world, "cpu"),
        eval_interval=1e9,
        taps=[log],
    )
    outcome = runtime.run()
    seen = log.decode(world.codec)
    updates = dpsgd_updates(seen, 2, world.schedule, world.params0)
    assert [u.round for u in updates] == [0, 1, 2, 3]
    assert np.array_equal(updates[0].start, world.params0)
    last = {
        s.src: s.message.params
        for s in seen
        if isinstance(s.message, ModelShare) and s.message.round == 3 and s.dst in (2, 1)
    }
    final = _mix(2, world.schedule, 3, last[2], {k: v for k, v in last.items() if k != 2})
    assert np.array_equal(final, outcome.models[2])


def test_a_curious_peer_scores_its_neighbours_models(tmp_path: Path) -> None:
    cfg = _gossip(
        adversaries=[
            {"role": "curious_peer", "peer": 3, "candidates": 60},
            {
                "role": "curious_peer",
                "peer": 0,
                "name": "active",
                "active": {"round": 2, "candidates": 40, "lr": 1.0, "steps": 3},
            },
        ]
    )
    result = run(cfg, out=tmp_path / "run")
    passive = [r for r in result.summary["attacks"] if r["adversary"] == "curious_peer-0"]
    assert {r["target"] for r in passive} == {
        "peer 2's last shared model",
        "peer 4's last shared model",
    }
    for r in passive:
        assert 0.0 <= r["metrics"]["auc"] <= 1.0
        assert r["metrics"]["candidates"] == 120
    (active,) = _rows(result, "active_membership")
    assert active["adversary"] == "active"
    assert active["metrics"]["candidates"] == 40
    assert 0.0 <= active["metrics"]["auc"] <= 1.0


def test_the_active_peer_shares_a_model_that_raises_the_candidates_loss() -> None:
    from p2pfed.adversary.active import ActiveRelease, active_candidates, active_seed
    from p2pfed.attacks.membership import per_sample_losses
    from p2pfed.experiment import build_world

    cfg = config_from_mapping(
        _gossip(adversaries=[{"role": "curious_peer", "peer": 0, "active": {"round": 1}}])
    )
    world = build_world(cfg)
    adv = cfg.adversaries[0]
    assert adv.active is not None
    seed = np.random.SeedSequence(5)
    cands = active_candidates(adv.active, 0, world.schedule, world.dataset, world.shards, seed)
    again = active_candidates(adv.active, 0, world.schedule, world.dataset, world.shards, seed)
    assert np.array_equal(cands.x, again.x)  # the host and the driver agree
    assert cands.is_member.sum() == len(cands.x) // 2
    assert cands.neighbour in world.schedule.at(1).out_neighbours(0)
    release = ActiveRelease(adv.active, world.template, cands)
    params = world.params0
    assert release(0, params) is params  # other rounds pass unchanged
    pushed = release(1, params)
    before = per_sample_losses(world.template, cands.x, cands.y, params=params).mean()
    after = per_sample_losses(world.template, cands.x, cands.y, params=pushed).mean()
    assert after > before
    assert active_seed(seed, 0).entropy == seed.entropy


def test_the_black_box_scores_the_final_model(tmp_path: Path) -> None:
    cfg = _gossip(adversaries=[{"role": "black_box", "target": 1, "candidates": 50}])
    result = run(cfg, out=tmp_path / "run")
    (row,) = _rows(result, "loss_threshold")
    assert row["target"] == "final model of 1"
    assert row["metrics"]["candidates"] == 100
    assert "attacks_s" in result.summary["timings"]


def test_an_attack_that_fails_leaves_an_error_row_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import p2pfed.adversary.analyse as analyse

    def broken(*args: Any) -> list[dict[str, Any]]:
        raise ValueError("degenerate observation")

    monkeypatch.setitem(analyse._ATTACKS, "membership", broken)
    cfg = _gossip(
        adversaries=[{"role": "eavesdropper", "target": 2}, {"role": "black_box", "candidates": 20}]
    )
    result = run(cfg, out=tmp_path / "run")
    rows = result.summary["attacks"]
    assert rows[0]["metrics"]["mse_median"] < 1e-10  # the other attacks still ran
    assert rows[1]["error"] == "ValueError: degenerate observation" and rows[1]["metrics"] == {}
    assert any("membership failed" in w for w in result.summary["warnings"])
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["attacks"][1]["error"] and "attacks_s" in saved["timings"]


def test_an_observer_that_saw_no_update_says_so(tmp_path: Path) -> None:
    """A curious peer that inverts its neighbours' consecutive shares, in a one-round run,
    has nothing to difference: the row says not_observed (not ciphertext: nothing was
    sealed) and reports the prior."""
    cfg = _gossip(
        protocol={"kind": "dpsgd", "rounds": 1},
        adversaries=[{"role": "curious_peer", "peer": 3, "attacks": ["inversion"]}],
    )
    rows = _rows(run(cfg, out=tmp_path / "run"))
    assert {r["target"] for r in rows} == {"peer 2", "peer 4"}
    for r in rows:
        assert r["view"] == "not_observed"
        assert r["metrics"]["mse_median"] == r["metrics"]["baseline_mse"]


@pytest.mark.parametrize(
    ("adversary", "message"),
    [
        ({"role": "eavesdropper", "links": []}, "at least 1"),
        ({"role": "black_box", "target": 6}, "queries a peer"),
        (
            {"role": "curious_peer", "peer": 1, "active": {}, "attacks": ["membership"]},
            "list active",
        ),
        ({"role": "eavesdropper"}, "either target"),
        ({"role": "eavesdropper", "target": 1, "links": [[0, 1]]}, "either target"),
        ({"role": "eavesdropper", "links": [[0, 0]]}, "not a link"),
        ({"role": "eavesdropper", "target": 9}, "participants 0..5"),
        ({"role": "curious_peer"}, "needs peer"),
        ({"role": "curious_peer", "peer": 6}, "peers 0..5"),
        ({"role": "curious_coordinator"}, "coordinator"),
        ({"role": "black_box", "peer": 1}, "only a curious_peer"),
        ({"role": "black_box", "attacks": ["inversion"]}, "cannot run"),
        ({"role": "eavesdropper", "target": 1, "active": {}}, "only a curious_peer"),
        ({"role": "curious_peer", "peer": 1, "attacks": ["active"]}, "needs the active"),
    ],
)
def test_bad_adversaries_are_refused(adversary: dict[str, Any], message: str) -> None:
    cfg = _gossip(adversaries=[adversary])
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(cfg)


def test_an_active_attack_needs_dpsgd() -> None:
    cfg = _star()
    cfg["adversaries"] = [{"role": "curious_peer", "peer": 1, "active": {}}]
    with pytest.raises(ConfigError, match="dpsgd"):
        config_from_mapping(cfg)
    secure = _gossip({"aggregation": "secagg"})
    secure["adversaries"] = [{"role": "curious_peer", "peer": 1, "active": {}}]
    with pytest.raises(ConfigError, match="without secure aggregation"):
        config_from_mapping(secure)


@pytest.mark.parametrize(
    ("adversaries", "message"),
    [
        ([{"role": "black_box"}, {"role": "black_box"}], None),  # default names differ
        ([{"role": "black_box", "name": "x"}, {"role": "black_box", "name": "x"}], "taken"),
        (
            [
                {"role": "curious_peer", "peer": 1, "active": {"round": 0}},
                {"role": "curious_peer", "peer": 1, "active": {"round": 1}},
            ],
            "already runs an active",
        ),
        ([{"role": "curious_peer", "peer": 1, "active": {"round": 3}}], "no later round"),
    ],
)
def test_adversaries_are_checked_against_each_other_and_the_run(
    adversaries: list[dict[str, Any]], message: str | None
) -> None:
    cfg = _gossip(adversaries=adversaries)  # 4 rounds
    if message is None:
        config_from_mapping(cfg)
        return
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(cfg)


def test_a_run_without_adversaries_writes_no_attack_report(tmp_path: Path) -> None:
    result = run({**_gossip(), "adversaries": []}, out=tmp_path / "run")
    assert "attacks" not in result.summary
    assert not (tmp_path / "run" / "attacks.json").exists()
