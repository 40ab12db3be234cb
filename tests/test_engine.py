"""End-to-end runs of the in-process engine: determinism, privacy of raw data, run directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import p2pfed
from p2pfed.config import config_from_mapping, load_config
from p2pfed.data import load_dataset
from p2pfed.errors import P2PFedError
from p2pfed.experiment import build
from p2pfed.protocol import Codec, GossipReply, GossipRequest, ModelShare, PushSumShare
from tests.conftest import small_config

ASYNC_MESSY = {
    "time": {
        "stragglers": {"fraction": 0.34, "slowdown": 5.0},
        "compute_jitter": 0.3,
    },
    "network": {"loss": 0.15, "latency": {"min": 0.005, "dist": "exponential", "scale": 0.02}},
}


@pytest.mark.parametrize("kind", ["gossip", "pushsum", "dpsgd"])
def test_same_seed_gives_identical_metrics(tmp_path: Path, kind: str) -> None:
    cfg = small_config(protocol={"kind": kind, "rounds": 6}, **ASYNC_MESSY)
    a = p2pfed.run(cfg, out=tmp_path / "a")
    b = p2pfed.run(cfg, out=tmp_path / "b")
    assert a.summary["messages"]["lost"] > 0, "the test must exercise message loss"
    assert a.metrics() == b.metrics()
    assert (tmp_path / "a" / "edges.csv").read_text() == (tmp_path / "b" / "edges.csv").read_text()
    assert a.summary["virtual_time"] == b.summary["virtual_time"]
    c = p2pfed.run({**cfg, "seed": 4}, out=tmp_path / "c")
    assert c.metrics() != a.metrics()


def test_stragglers_slow_the_synchronous_protocol_down(tmp_path: Path) -> None:
    fast = p2pfed.run(small_config(), out=tmp_path / "fast")
    slow = p2pfed.run(small_config(time={"slowdown": {2: 8.0}}), out=tmp_path / "slow")
    # D-PSGD waits for neighbours, so one slow peer stretches everyone's rounds
    assert slow.summary["virtual_time"] > 4 * fast.summary["virtual_time"]


def test_asynchronous_gossip_lets_fast_peers_run_ahead(tmp_path: Path) -> None:
    cfg = small_config(protocol={"kind": "gossip", "rounds": 8}, time={"slowdown": {0: 10.0}})
    res = p2pfed.run(cfg, out=tmp_path)
    finish = {}
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        ev = json.loads(line)
        if ev["event"] == "peer_finished":
            finish[ev["peer"]] = ev["t"]
    assert res.summary["status"] == "completed"
    assert max(t for p, t in finish.items() if p != 0) < finish[0] / 3


@pytest.mark.parametrize("kind", ["dpsgd", "gossip", "pushsum"])
def test_no_raw_sample_leaves_its_peer(tmp_path: Path, kind: str) -> None:
    cfg_map = small_config(protocol={"kind": kind, "rounds": 3}, topology={"kind": "ring", "n": 4})
    frames: list[bytes] = []
    res = p2pfed.run(cfg_map, out=tmp_path, taps=[lambda t, s, d, f: frames.append(f)])
    assert len(frames) == res.summary["messages"]["sent"] > 0

    cfg = res.config
    built = build(cfg)
    ds = built.dataset
    # every representation of a training sample a careless peer could put on the wire
    needles = set()
    for x in ds.x_train:
        needles.add(x.astype(np.float32).tobytes())
        needles.add(x.astype(np.float64).tobytes())
    raw = load_dataset(cfg.data, cfg.num_peers, np.random.default_rng(0))  # another split
    for x in raw.x_train[:200]:
        needles.add((x * 16).astype(np.float32).tobytes())
    codec = Codec([ModelShare, GossipRequest, GossipReply, PushSumShare])
    for frame in frames:
        for needle in needles:
            assert needle not in frame
        msg = codec.decode(frame).message
        arrays = [v for v in vars(msg).values() if isinstance(v, np.ndarray)]
        assert arrays and all(a.shape == (built.num_params,) for a in arrays)


def test_run_directory_is_complete_and_consistent(tmp_path: Path) -> None:
    cfg = small_config(network={"loss": 0.1})
    res = p2pfed.run(cfg, out=tmp_path)
    names = {p.name for p in tmp_path.iterdir()}
    assert {
        "config.yaml",
        "events.jsonl",
        "metrics.jsonl",
        "edges.csv",
        "label_histograms.json",
        "summary.json",
    } <= names

    rows = res.metrics()
    ticks = sorted({r["tick"] for r in rows})
    assert ticks == list(range(len(ticks))) and len(ticks) >= 3
    assert len(rows) == len(ticks) * 6
    assert {"train_loss", "test_acc", "consensus_dist", "round", "t"} <= set(rows[0])
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    assert rows[0]["consensus_dist"] == 0.0  # every peer starts from the same model

    with (tmp_path / "edges.csv").open() as f:
        edges = list(csv.DictReader(f))
    assert {(int(e["src"]), int(e["dst"])) for e in edges} == {
        (i, (i + d) % 6) for i in range(6) for d in (1, 5)
    }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(int(e["payload_bytes"]) for e in edges) == summary["bytes"]["payload"]
    assert sum(int(e["metadata_bytes"]) for e in edges) == summary["bytes"]["metadata"]
    assert sum(int(e["lost"]) for e in edges) == summary["messages"]["lost"] > 0
    assert sum(int(e["frames"]) for e in edges) == summary["messages"]["sent"]
    assert summary["final"]["mean_acc"] == pytest.approx(
        np.mean([r["test_acc"] for r in rows if r["tick"] == ticks[-1]])
    )
    assert summary["virtual_time"] > 0 and summary["wall_time_s"] > 0

    hist = json.loads((tmp_path / "label_histograms.json").read_text())
    built = build(res.config)
    for i, shard in enumerate(built.shards):
        assert sum(hist["peers"][str(i)]) == len(shard)

    # the resolved config reloads to the same experiment, automatic choices included
    again = load_config(tmp_path / "config.yaml")
    assert again == res.config
    assert again.protocol.timeout is not None and again.eval.interval is not None

    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {e["event"] for e in events} >= {"run_started", "evaluated", "run_finished"}
    assert all(e["run_id"] == tmp_path.name for e in events)


def test_metrics_survive_a_failing_run(tmp_path: Path) -> None:
    seen = []

    def exploding_tap(t: float, src: int, dst: int, frame: bytes) -> None:
        seen.append(t)
        if len(seen) > 20:
            raise P2PFedError("tap exploded")

    with pytest.raises(P2PFedError, match="tap exploded"):
        p2pfed.run(small_config(), out=tmp_path, taps=[exploding_tap])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "tap exploded" in summary["error"]
    at = summary["failed_at"]
    assert at["t"] > 0 and at["where"].startswith("test_engine.py:")  # the tap raised
    assert "exploding_tap" in at["where"]
    assert any(f.startswith("p2pfed/runtime/engine.py:") for f in at["traceback"])
    events = (tmp_path / "events.jsonl").read_text().splitlines()
    assert json.loads(events[-1])["event"] == "run_failed"
    assert (tmp_path / "metrics.jsonl").read_text().count('"tick": 0') == 6
    assert (tmp_path / "edges.csv").read_text().count("\n") > 1


def test_time_limit_stops_early_but_keeps_results(tmp_path: Path) -> None:
    res = p2pfed.run(small_config(time={"limit": 0.05}), out=tmp_path)
    assert res.summary["status"] == "time_limit"
    assert res.summary["virtual_time"] == pytest.approx(0.05)
    assert max(res.summary["rounds_completed"]) < 4
    assert res.metrics()[-1]["t"] == pytest.approx(0.05)


def test_default_experiment_reaches_ninety_percent(tmp_path: Path) -> None:
    res = p2pfed.run(None, out=tmp_path, progress="off")
    assert res.config.topology.kind == "ring" and res.config.num_peers == 16
    assert res.config.protocol.kind == "dpsgd" and res.config.partition.alpha == 0.5
    assert res.summary["status"] == "completed"
    assert res.mean_accuracy >= 0.90


@pytest.mark.parametrize("kind", ["dpsgd", "gossip", "pushsum"])
def test_every_frame_is_accounted_for(tmp_path: Path, kind: str) -> None:
    cfg = small_config(protocol={"kind": kind, "rounds": 5}, **ASYNC_MESSY)
    m = p2pfed.run(cfg, out=tmp_path).summary["messages"]
    assert m["sent"] == m["delivered"] + m["lost"] + m["rejected"] + m["in_flight"]
    assert m["in_flight"] == 0  # a completed run lets the wire settle


def test_push_sum_keeps_its_mass_when_the_run_ends(tmp_path: Path) -> None:
    """Shares still on the wire when the last peer stops are delivered, not dropped: with
    no loss and no training the network average of the initial models is kept exactly."""
    cfg = small_config(
        protocol={"kind": "pushsum", "rounds": 5},
        training={"lr": 1e-12},  # practically no local progress: pure averaging
        time={"slowdown": {0: 7.0}},
    )
    built = build(load_config_from(cfg))
    params0 = built.peers[0].protocol.model(built.peers[0].state)
    res = p2pfed.run(cfg, out=tmp_path)
    assert res.summary["messages"]["delivered"] == res.summary["messages"]["sent"]
    # every peer started from the same model, so the mass-preserving average is that model
    assert res.summary["final"]["mean_consensus_dist"] < 1e-3 * float(np.linalg.norm(params0))


def load_config_from(mapping: dict) -> p2pfed.ExperimentConfig:  # type: ignore[type-arg]
    from p2pfed.config import config_from_mapping

    return config_from_mapping(mapping)


def test_diverging_training_leaves_valid_json_and_a_warning(tmp_path: Path) -> None:
    cfg = small_config(training={"lr": 1e30}, model={"kind": "mlp"})
    res = p2pfed.run(cfg, out=tmp_path)

    def no_nan(token: str) -> float:
        raise AssertionError(f"{token} in a JSON file")

    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=no_nan)
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)
    assert summary["diverged_peers"] and summary["status"] == "completed"
    assert any("diverged" in w for w in summary["warnings"])
    assert res.summary["final"]["mean_test_loss"] is None or np.isnan(
        res.summary["final"]["mean_test_loss"]
    )


def test_automatic_timeout_allows_for_a_busy_uplink(tmp_path: Path) -> None:
    """On a complete graph with a slow uplink a peer's last model leaves long after its
    first; the automatic timeout must cover that queue, or D-PSGD skips neighbours that are
    merely waiting in line (a review measured 0.29 instead of 0.79 accuracy)."""
    cfg = small_config(
        topology={"kind": "complete", "n": 12},
        model={"kind": "mlp", "hidden": [128]},
        network={"bandwidth": 1e7},
        protocol={"kind": "dpsgd", "rounds": 3},
    )
    res = p2pfed.run(cfg, out=tmp_path)
    assert res.summary["protocol_events"].get("neighbours_skipped", 0) == 0
    assert res.summary["warnings"] == []


def test_a_too_short_timeout_is_reported(tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "complete", "n": 12},
        network={"bandwidth": 1e6},
        protocol={"kind": "dpsgd", "rounds": 3, "timeout": 0.001},
    )
    res = p2pfed.run(cfg, out=tmp_path)
    assert res.summary["protocol_events"]["neighbours_skipped"] > 0
    assert any("neighbours_skipped" in w for w in res.summary["warnings"])


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"topology": {"kind": "edge_list", "n": 4, "edges": [[0, 1], [2, 3]]}}, "topology"),
        ({"data": {"dataset": "npz", "path": "/nonexistent/data.npz"}}, "data"),
        ({"partition": {"scheme": "shards", "classes_per_peer": 11}}, "partition"),
    ],
)
def test_impossible_experiments_name_their_section(
    tmp_path: Path,
    section: dict,
    key: str,  # type: ignore[type-arg]
) -> None:
    cfg = {**small_config(), **{k: v for k, v in section.items()}}
    with pytest.raises(p2pfed.ConfigError) as info:
        p2pfed.run(cfg, out=tmp_path)
    assert info.value.key == key
    assert str(info.value).startswith(f"<mapping>: {key}: ")


def test_an_absurd_evaluation_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(p2pfed.ConfigError, match=r"eval.interval: .* would evaluate about"):
        p2pfed.run(small_config(eval={"interval": 1e-7}), out=tmp_path)


def test_a_model_too_large_to_allocate_is_a_config_error(tmp_path: Path) -> None:
    cfg = small_config(model={"kind": "mlp", "hidden": [200_000, 200_000]})  # 160 GB of weights
    with pytest.raises(p2pfed.ConfigError, match="model: cannot build the model"):
        p2pfed.run(cfg, out=tmp_path)


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    first = p2pfed.run(small_config(), out=tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(p2pfed.ConfigError, match=r"already holds a run.*--overwrite"):
        p2pfed.run({**small_config(), "seed": 9}, out=tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    (tmp_path / "notes.txt").write_text("mine")
    again = p2pfed.run({**small_config(), "seed": 9}, out=tmp_path, overwrite=True)
    assert (tmp_path / "metrics.jsonl").read_text() != before
    assert again.summary["run_id"] == first.summary["run_id"] == tmp_path.name
    assert (tmp_path / "notes.txt").read_text() == "mine"  # only run files are replaced


def test_progress_bar_mode_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = p2pfed.run(small_config(), out=tmp_path, progress="bar")
    assert res.summary["status"] == "completed"
    err = capsys.readouterr().err
    assert "24/24 rounds" in err and "0/1 rounds" not in err


def test_an_engine_refuses_a_frame_from_its_past() -> None:
    """Conservative windows make a late frame impossible; if one comes anyway (a peer sent
    outside the planned topology) the engine fails instead of reordering history."""
    from p2pfed.errors import ProtocolError
    from p2pfed.runtime.engine import OutFrame, PeerEngine

    built = build(config_from_mapping(small_config()))
    engine = PeerEngine(built.peers[:3], 6, built.codec, built.network, built.cost)
    engine.start()
    engine.advance(0.5)
    assert engine.now > 0 and engine.outbox  # peers 0 and 2 sent to ring neighbours 5 and 3
    with pytest.raises(ProtocolError, match="already at"):
        engine.accept([OutFrame(engine.now / 2, 0, 5, 0, b"")])


def test_a_broadcast_is_packed_once_and_every_frame_decodes() -> None:
    """The coordinator's model goes to every client in one event: the engine packs the
    message body once and every frame shares it (a Ray batch then carries it once), yet
    each frame is the full, correctly addressed frame."""
    from p2pfed.runtime.engine import PeerEngine

    cfg = config_from_mapping(small_config(protocol={"kind": "fedavg", "rounds": 2}))
    built = build(cfg)
    n = cfg.topology.n
    coordinator = [p for p in built.peers if p.id == n]
    engine = PeerEngine(coordinator, n + 1, built.codec, built.network, built.cost)
    engine.start()
    engine.advance(1e-9)
    out = engine.take_outbox()
    assert sorted(f.dst for f in out) == list(range(n))
    assert len({id(f.body) for f in out}) == 1  # one body object for the broadcast
    decoded = [built.codec.decode(f.frame) for f in out]
    assert [(d.src, d.dst) for d in decoded] == [(n, f.dst) for f in out]
    first = decoded[0].message
    for d in decoded[1:]:
        assert type(d.message) is type(first)
        np.testing.assert_array_equal(d.message.params, first.params)  # type: ignore[attr-defined]
