"""Adversaries that act, in real runs (issue 7, item 4): poisoners against D-PSGD on digits,
16 peers, Dirichlet alpha 0.5, a random 4-regular graph, with and without robust rules; an
on-path attacker on plain and sealed links."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from p2pfed import run
from p2pfed.config import config_from_mapping
from p2pfed.errors import ConfigError
from tests.conftest import small_config

# two attackers at distance >= 2 whose neighbourhoods are disjoint (checked below): 8 of the
# 14 honest peers have a Byzantine neighbour, the most two attackers can reach on this graph
ATTACKERS = [6, 10]
STRENGTH = {
    "sign_flip": {"scale": 4.0},
    "gaussian": {"sigma": 10.0},
    "alie": {},
    "ipm": {},
    "dissensus": {"epsilon": 5.0},
    "label_flip": {"fraction": 1.0},
    "stale": {"stale_rounds": 10},
    "delay": {"delay": 5.0},
}


def _config(
    rule: str, attack: str | None, rounds: int = 120, attackers: list[int] = ATTACKERS
) -> dict[str, Any]:
    robust: dict[str, Any] = {"rule": rule}
    cfg: dict[str, Any] = {
        "name": "robust",
        "seed": 1,
        "topology": {"kind": "random_regular", "n": 16, "degree": 4},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "model": {"kind": "mlp", "hidden": [64]},
        "protocol": {"kind": "dpsgd", "rounds": rounds, "robust": robust},
        "training": {"lr": 0.1, "batch_size": 32, "local_steps": 5},
        "output": {"progress": "off"},
    }
    if attack is not None:
        cfg["adversaries"] = [
            {"role": "poisoner", "peers": attackers, "behaviour": attack, **STRENGTH[attack]}
        ]
    return cfg


@cache
def _summary(rule: str, attack: str | None, out: str) -> Any:
    return run(_config(rule, attack), out=Path(out) / f"{rule}-{attack}").summary


def _honest(rule: str, attack: str | None, out: str) -> float:
    """Mean final accuracy of the honest peers (every peer without an attack)."""
    summary = _summary(rule, attack, out)
    if attack is None:
        return float(summary["final"]["mean_acc"])
    rb = summary["robustness"]
    assert rb["poisoners"] == ATTACKERS and rb["honest_peers"] == 14
    assert rb["poisoned"] > 0 or attack == "label_flip"  # the overlay did act
    return float(rb["honest_mean_acc"])


def test_the_attackers_reach_eight_honest_peers(out: str) -> None:
    _summary("mean", None, out)
    edges = (Path(out) / "mean-None" / "edges.csv").read_text().splitlines()[1:]
    nbrs: dict[int, set[int]] = {}
    for line in edges:
        src, dst = map(int, line.split(",")[:2])
        nbrs.setdefault(dst, set()).add(src)
    a, b = ATTACKERS
    assert a not in nbrs[b] and not nbrs[a] & nbrs[b]
    assert len(nbrs[a] | nbrs[b]) == 8


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("robust"))


def test_without_attack_the_robust_rules_cost_little(out: str) -> None:
    plain = _honest("mean", None, out)
    assert plain >= 0.90
    for rule in ("clipped_gossip", "balance"):
        assert _honest(rule, None, out) >= plain - 0.02, rule


# measured: plain gossip 0.45 (sign flip), 0.28 (Gaussian); the rules 0.85-0.92. Two
# adjacent attackers (3, 11) reach only 6 honest peers, and Gaussian noise then leaves 0.54
@pytest.mark.parametrize("attack", ["sign_flip", "gaussian"])
def test_two_attackers_break_plain_gossip_but_not_the_robust_rules(out: str, attack: str) -> None:
    assert _honest("mean", attack, out) <= 0.5
    for rule in ("clipped_gossip", "balance", "trimmed_mean", "median"):
        assert _honest(rule, attack, out) >= 0.85, rule


def test_dissensus_splits_plain_gossip_and_clipped_gossip_holds(out: str) -> None:
    """He, Karimireddy & Jaggi's dissensus attack, against which ClippedGossip was made:
    each Byzantine neighbour pushes its target away from its honest neighbours."""
    assert _honest("mean", "dissensus", out) <= 0.5
    for rule in ("clipped_gossip", "balance"):
        assert _honest(rule, "dissensus", out) >= 0.85, rule


@pytest.mark.parametrize("attack", ["alie", "ipm"])
def test_under_alie_and_ipm_the_robust_rules_are_not_worse_than_plain(
    out: str, attack: str
) -> None:
    plain = _honest("mean", attack, out)
    for rule in ("clipped_gossip", "balance"):
        assert _honest(rule, attack, out) >= plain - 0.02, rule


def _gossip(rule: str, attack: str | None, out: str, **robust: Any) -> float:
    cfg = _config(rule, attack)
    cfg["protocol"]["kind"] = "gossip"
    cfg["protocol"]["robust"].update(robust)
    s = run(cfg, out=Path(out) / f"gossip-{rule}-{attack}").summary
    return float(s["robustness"]["honest_mean_acc"] if attack else s["final"]["mean_acc"])


def test_pairwise_gossip_with_a_robust_exchange(out: str) -> None:
    """Asynchronous pairwise gossip mixes one partner at a time, so BALANCE's acceptance test
    and a fixed-radius ClippedGossip apply to each exchange: against two Gaussian attackers
    plain gossip falls to 0.39 and both keep 0.90 (measured); without attack BALANCE costs
    nothing (0.905 both)."""
    assert _gossip("mean", "gaussian", out) <= 0.5
    assert _gossip("balance", "gaussian", out) >= 0.85
    assert _gossip("clipped_gossip", "gaussian", out, cg_tau=1.0) >= 0.85
    assert _gossip("balance", None, out) >= _gossip("mean", None, out) - 0.02


@pytest.mark.parametrize(
    ("robust", "message"),
    [
        ({"rule": "median"}, "needs a pool of inputs"),
        ({"rule": "clipped_gossip"}, "needs a fixed cg_tau"),
    ],
)
def test_gossip_refuses_rules_that_need_a_pool(
    tmp_path: Path, robust: dict[str, Any], message: str
) -> None:
    cfg = _config("mean", None, rounds=1)
    cfg["protocol"] = {"kind": "gossip", "rounds": 1, "robust": robust}
    with pytest.raises(ConfigError, match=message):
        run(cfg, out=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_timing_attacks_in_a_run(out: str) -> None:
    """Shares held 5 s miss their rounds: the attackers' neighbours time out and skip them,
    then drop them as stale, and honest accuracy falls (measured 0.76 against 0.93 clean);
    models replayed 10 rounds late are still honest models, and averaging absorbs them
    (measured 0.927, as clean)."""
    clean = _honest("mean", None, out)
    delayed = _summary("mean", "delay", out)["protocol_events"]
    assert delayed["neighbours_skipped"] > 0 and delayed["stale_model_dropped"] > 0
    assert _honest("mean", "delay", out) <= clean - 0.1
    assert _honest("mean", "stale", out) >= clean - 0.02


def test_label_flipping_costs_plain_gossip(tmp_path: Path) -> None:
    """Four of sixteen peers train on labels shifted by one: plain gossip loses more than 5
    points (measured 0.82 against 0.93); the update looks like any other, so ClippedGossip
    recovers little (0.85)."""
    four = [6, 10, 1, 13]
    clean = run(_config("mean", None), out=tmp_path / "clean").summary["final"]["mean_acc"]
    flipped = run(_config("mean", "label_flip", attackers=four), out=tmp_path / "flip").summary
    rb = flipped["robustness"]
    assert rb["poisoners"] == sorted(four) and rb["poisoned"] == 0  # the data, not the frames
    assert rb["honest_mean_acc"] <= clean - 0.05


@pytest.mark.parametrize("action", ["replay", "inject"])
def test_replayed_and_forged_frames_change_nothing_on_a_sealed_run(
    tmp_path: Path, action: str
) -> None:
    """The original frames still arrive; every extra one fails to open, is counted, and the
    run is the clean sealed run exactly."""
    clean = run(_ring({"channel": "aead"}, False), out=tmp_path / "clean").summary
    cfg = _ring({"channel": "aead"}, True)
    cfg["adversaries"][0]["action"] = action
    hit = run(cfg, out=tmp_path / action).summary
    assert hit["frames_rejected"] == 4 * 8
    assert hit["final"] == clean["final"]
    assert hit["rounds_completed"] == clean["rounds_completed"]


def _ring(security: dict[str, Any] | None, on_path: bool) -> dict[str, Any]:
    cfg = small_config(
        topology={"kind": "ring", "n": 6},
        model={"kind": "mlp", "hidden": [16]},
        protocol={"kind": "dpsgd", "rounds": 8, "timeout": 1.0},
        partition={"scheme": "iid"},
    )
    if security:
        cfg["security"] = security
    if on_path:
        cfg["adversaries"] = [{"role": "on_path", "links": [[0, 1], [2, 3]], "action": "modify"}]
    return cfg


def test_an_on_path_attacker_degrades_a_plain_run_and_is_rejected_on_a_sealed_one(
    tmp_path: Path,
) -> None:
    clean = run(_ring(None, False), out=tmp_path / "clean").summary
    hit = run(_ring(None, True), out=tmp_path / "hit").summary
    assert hit["frames_rejected"] == 0  # a plain link takes what arrives
    assert hit["final"]["mean_acc"] < clean["final"]["mean_acc"] - 0.1
    sealed_clean = run(_ring({"channel": "aead"}, False), out=tmp_path / "sc").summary
    sealed = run(_ring({"channel": "aead"}, True), out=tmp_path / "sh").summary
    # every tampered frame is refused: 4 directed links, one frame each per round
    assert sealed["frames_rejected"] == 4 * 8
    assert sealed["frames_rejected_by_reason"] == {"authentication failed": 32}
    assert sealed["robustness"]["frames_rejected"] == 32
    # no forged model got in: the peers only missed those frames (timeouts skip them)
    assert sealed["final"]["mean_acc"] >= sealed_clean["final"]["mean_acc"] - 0.05


@pytest.mark.parametrize(
    ("adversary", "message"),
    [
        ({"role": "poisoner", "peers": [16], "behaviour": "sign_flip"}, "peers 0..15"),
        ({"role": "poisoner", "peers": [1, 1], "behaviour": "sign_flip"}, "each poisoner once"),
        (
            {"role": "poisoner", "peers": [1], "behaviour": "backdoor", "schedule": {"start": 1}},
            "has no clock",
        ),
        ({"role": "poisoner", "peers": list(range(9)), "behaviour": "alie"}, "minority"),
        ({"role": "on_path", "links": [[0, 16]]}, "does not have"),
        ({"role": "poisoner", "peers": [1], "behaviour": "x"}, "behaviour"),
    ],
)
def test_bad_acting_adversaries_are_refused(adversary: dict[str, Any], message: str) -> None:
    cfg = _config("mean", None)
    cfg["adversaries"] = [adversary]
    with pytest.raises(ConfigError, match=message):
        config_from_mapping(cfg)


def test_robust_rules_are_checked_against_the_neighbourhood_and_secure_aggregation(
    tmp_path: Path,
) -> None:
    cfg = _config("krum", None, rounds=1)  # 5 inputs: 2f + 2 < 5 needs f = 1
    cfg["protocol"]["robust"]["f"] = 2
    with pytest.raises(ConfigError, match="2f \\+ 2 < n"):
        run(cfg, out=tmp_path / "krum")
    secure = small_config(
        topology={"kind": "torus", "n": 9},
        protocol={"kind": "dpsgd", "rounds": 2, "robust": {"rule": "median"}},
    )
    secure["security"] = {"aggregation": "secagg"}
    with pytest.raises(ConfigError, match="holds only sums: a peer"):
        config_from_mapping(secure)


def test_a_schedule_acts_on_its_own_clock() -> None:
    from p2pfed.adversary.config import ScheduleConfig

    s = ScheduleConfig(start=1.0, stop=5.0, period=2.0, duty=0.5)
    assert [s.on(t) for t in (0.5, 1.0, 1.9, 2.1, 3.0, 4.9, 5.0)] == [
        False,
        True,
        True,
        False,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="after start"):
        ScheduleConfig(start=3.0, stop=2.0)


def test_timing_poisoners_replay_delay_and_flood() -> None:
    import numpy as np

    from p2pfed.adversary.config import PoisonerConfig
    from p2pfed.adversary.poisoner import Board, Poisoner
    from p2pfed.protocol.dpsgd import ModelShare
    from p2pfed.topology import TopologySpec, build_schedule

    sched = build_schedule(TopologySpec(kind="ring", n=4), seed=0)

    def overlay(**kw: Any) -> Poisoner:
        cfg = PoisonerConfig(role="poisoner", peers=[0], **kw)
        return Poisoner(cfg, 0, Board([0]), sched, 4)

    shares = [ModelShare(round=r, params=np.full(3, r, np.float32)) for r in range(5)]
    stale = overlay(behaviour="stale", stale_rounds=2)
    sent = [stale.outgoing(float(r), 0, 1, m)[0][1].params[0] for r, m in enumerate(shares)]
    assert sent == [0, 1, 0, 1, 2]  # two sends back, once there is history
    assert overlay(behaviour="delay", delay=2.5).outgoing(0.0, 0, 1, shares[0]) == [
        (2.5, shares[0])
    ]
    assert len(overlay(behaviour="flood", copies=7).outgoing(0.0, 0, 1, shares[0])) == 7
    later = overlay(behaviour="flood", copies=7, schedule={"start": 10.0})
    assert later.outgoing(0.0, 0, 1, shares[0]) == [(0.0, shares[0])]  # not yet active


def test_a_flooding_poisoner_costs_traffic_not_correctness(tmp_path: Path) -> None:
    base = _ring(None, False)
    clean = run(base, out=tmp_path / "clean").summary
    base["adversaries"] = [{"role": "poisoner", "peers": [2], "behaviour": "flood", "copies": 5}]
    flooded = run(base, out=tmp_path / "flood").summary
    assert flooded["messages"]["sent"] == clean["messages"]["sent"] + 2 * 8 * 4
    assert flooded["final"]["mean_acc"] == pytest.approx(clean["final"]["mean_acc"])


def test_the_coordinator_aggregates_with_a_robust_rule(tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "complete", "n": 6},
        protocol={"kind": "fedavg", "rounds": 6, "robust": {"rule": "trimmed_mean", "f": 1}},
    )
    cfg["adversaries"] = [
        {"role": "poisoner", "peers": [0], "behaviour": "sign_flip", "scale": 10.0}
    ]
    robust = run(cfg, out=tmp_path / "robust").summary
    cfg["protocol"]["robust"] = {"rule": "mean"}
    plain = run(cfg, out=tmp_path / "plain").summary
    assert robust["robustness"]["robust_rejected"] > 0
    assert robust["robustness"]["honest_mean_acc"] > plain["robustness"]["honest_mean_acc"] + 0.2


def _fedavg(rule: dict[str, Any], attack_from: float | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "backdoor",
        "seed": 2,
        "topology": {"kind": "complete", "n": 10},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "iid"},
        "model": {"kind": "mlp", "hidden": [64]},
        "protocol": {"kind": "fedavg", "rounds": 30, "robust": rule},
        "training": {"lr": 0.1, "batch_size": 32, "local_steps": 5},
        "output": {"progress": "off"},
    }
    if attack_from is not None:
        cfg["adversaries"] = [
            {
                "role": "poisoner",
                "peers": [0],
                "behaviour": "scaling",  # gamma = n: the average becomes its model
                "poison_data": "backdoor",
                "fraction": 0.5,
                "target_class": 0,
                "schedule": {"start": attack_from},
            }
        ]
    return cfg


def test_one_model_replacement_plants_a_backdoor_that_norm_clipping_stops(
    tmp_path: Path,
) -> None:
    """Bagdasaryan et al.'s model replacement in FedAvg's last round: the attacker trains on
    a half-triggered shard and scales its update by n; norm clipping (M = 0.3) at the
    coordinator bounds it."""
    clean = run(_fedavg({"rule": "mean"}, None), out=tmp_path / "clean").summary
    last_round = clean["virtual_time"] * 29 / 30  # when the last round opens
    attacked = run(_fedavg({"rule": "mean"}, last_round), out=tmp_path / "attacked").summary
    rb = attacked["robustness"]
    assert rb["backdoor_success[poisoner-0]"] >= 0.9
    clipped = run(
        _fedavg({"rule": "norm_clip", "norm_bound": 0.3}, last_round), out=tmp_path / "clipped"
    ).summary
    rc = clipped["robustness"]
    assert rc["backdoor_success[poisoner-0]"] <= 0.2
    assert rc["honest_mean_acc"] >= clean["final"]["mean_acc"] - 0.03
    assert rc["robust_clipped"] >= 1


def test_colluders_ignore_diverged_models_they_receive() -> None:
    """A neighbour whose model diverged (NaN) is nothing to craft from: dissensus, ALIE and
    IPM leave it out instead of failing the run."""
    import numpy as np

    from p2pfed.adversary.config import PoisonerConfig
    from p2pfed.adversary.poisoner import Board, Poisoner
    from p2pfed.protocol.dpsgd import ModelShare
    from p2pfed.topology import TopologySpec, build_schedule

    sched = build_schedule(TopologySpec(kind="ring", n=4), seed=0)
    board = Board([0])
    cfg = PoisonerConfig(role="poisoner", peers=[0], behaviour="dissensus", epsilon=1.0)
    poisoner = Poisoner(cfg, 0, board, sched, 4)
    nan = ModelShare(round=0, params=np.full(3, np.nan, np.float32))
    poisoner.incoming(0.0, 1, 0, nan)
    poisoner.incoming(0.0, 3, 0, ModelShare(round=0, params=np.ones(3, np.float32)))
    assert sorted(board.models) == [3]
    mine = ModelShare(round=0, params=np.zeros(3, np.float32))
    assert poisoner.outgoing(0.0, 0, 1, mine) == [(0.0, mine)]  # no target: honest
    board.own[0] = np.full(3, np.inf, np.float32)
    assert board.view().shape == (1, 3)  # the diverged own model is left out too
