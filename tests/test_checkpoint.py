"""Checkpoint and resume (issue 8, item 2): a run resumed from its last checkpoint ends with
exactly the metrics, message counts and findings of the same run left alone — for every
protocol, protection mode, network and adversary the state carries — and what cannot be
resumed is refused with the reason."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from p2pfed import checkpoint, experiment
from p2pfed.config import config_from_mapping
from p2pfed.errors import CheckpointError
from p2pfed.results import read_metrics
from p2pfed.runtime.engine import PeerEngine
from tests.conftest import small_config

STAR8 = {"kind": "star", "n": 8}
TORUS = {"kind": "torus", "n": 16}
CHURN = {"kind": "churn", "churn": {"down_fraction": 0.2, "mean_down": 0.5}}

CASES: dict[str, dict[str, Any]] = {
    "dpsgd": small_config(protocol={"kind": "dpsgd", "rounds": 6}),
    "gossip-churn-lossy-partition": small_config(
        topology={"kind": "random_regular", "n": 8, "degree": 3},
        protocol={"kind": "gossip", "rounds": 8},
        network={
            "loss": 0.1,
            "links": [{"src": 0, "dst": 1, "latency": {"min": 0.05}, "both": False}],
            "partitions": [{"start": 0.2, "end": 0.6, "groups": [[0, 1, 2, 3]]}],
        },
        availability=CHURN,
    ),
    "pushsum": small_config(protocol={"kind": "pushsum", "rounds": 6}),
    "fedavg": small_config(topology=STAR8, protocol={"kind": "fedavg", "rounds": 5}),
    "fedbuff": small_config(topology=STAR8, protocol={"kind": "fedbuff", "rounds": 5}),
    "secagg-fedavg-churn": {
        **small_config(
            topology={"kind": "star", "n": 10},
            protocol={"kind": "fedavg", "rounds": 5, "timeout": 0.5},
            availability=CHURN,
            time={"limit": 30.0},
        ),
        "security": {"aggregation": "secagg"},
    },
    "secret-share-dpsgd": {
        **small_config(topology=TORUS, protocol={"kind": "dpsgd", "rounds": 3}),
        "security": {"aggregation": "secret-share"},
    },
    "he-fedavg": {
        **small_config(topology={"kind": "star", "n": 4}, protocol={"kind": "fedavg", "rounds": 3}),
        "security": {"aggregation": "he", "he": {"key_bits": 1024}},
    },
    "aead-gossip-dp": {
        **small_config(protocol={"kind": "gossip", "rounds": 6}),
        "security": {"channel": "aead", "rotate_every": 0.3},
        "dp": {"clip": 1.0, "noise_multiplier": 0.5},
    },
    "adversaries": {
        **small_config(topology={"kind": "ring", "n": 8}, protocol={"kind": "dpsgd", "rounds": 6}),
        "adversaries": [
            {"role": "eavesdropper", "target": 2},
            {"role": "curious_peer", "peer": 3, "candidates": 20},
            {"role": "poisoner", "peers": [5], "behaviour": "sign_flip"},
        ],
    },
}


def _interrupted_copy(done: Path, to: Path) -> Path:
    """``done``'s run directory as a killed process would have left it after its last
    checkpoint: no summary (the logs run past the checkpoint; resuming cuts them back)."""
    shutil.copytree(done, to)
    (to / "summary.json").unlink()
    for extra in ("attacks.json", "edges.csv"):
        (to / extra).unlink(missing_ok=True)
    return to


def _same(a: dict[str, Any], b: dict[str, Any], key: str) -> None:
    assert a.get(key) == b.get(key), key


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_resumed_run_ends_as_the_uninterrupted_one(case: str, tmp_path: Path) -> None:
    cfg = {**CASES[case], "checkpoint": {"every": 2}}
    whole = experiment.run(cfg, out=tmp_path / "whole")
    assert (whole.run_dir / experiment.CHECKPOINT_FILE).is_file()
    events = [json.loads(line) for line in (whole.run_dir / "events.jsonl").open()]
    written = [e for e in events if e["event"] == "checkpoint_written"]
    assert written, "no checkpoint was written"
    state = checkpoint.loads(checkpoint.read(whole.run_dir / experiment.CHECKPOINT_FILE))
    assert state["next_tick"] == written[-1]["t"]
    finished = next(k for k, e in enumerate(events) if e["event"] == "run_finished")
    assert events.index(written[-1]) < finished

    resumed = experiment.resume(_interrupted_copy(whole.run_dir, tmp_path / "resumed"))
    assert read_metrics(resumed.run_dir) == read_metrics(whole.run_dir)
    for key in (
        "final",
        "messages",
        "bytes",
        "virtual_time",
        "events",
        "status",
        "rounds_completed",
        "protocol_events",
        "privacy",
    ):
        _same(whole.summary, resumed.summary, key)
    for key in ("availability", "robustness", "attacks", "frames_rejected_by_reason"):
        _same(whole.summary, resumed.summary, key)
    edges = (whole.run_dir / "edges.csv").read_text()
    assert (resumed.run_dir / "edges.csv").read_text() == edges
    kinds = [json.loads(line)["event"] for line in (resumed.run_dir / "events.jsonl").open()]
    assert kinds.count("run_resumed") == 1 and kinds.count("run_finished") == 1


def _cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "p2pfed.cli", "run", *args, "--progress", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _checkpoints_written(run_dir: Path) -> int:
    try:
        text = (run_dir / "events.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return text.count('"event": "checkpoint_written"')


def test_a_killed_run_resumed_from_the_command_line_ends_as_one_left_alone(
    tmp_path: Path,
) -> None:
    """The default experiment, killed with SIGKILL after its second checkpoint, then
    ``p2pfed run --resume``: the same metrics, line for line, as the same run left alone."""
    overrides = ["protocol.rounds=30", "checkpoint.every=1"]
    killed = tmp_path / "killed"
    proc = _cli("--out", str(killed), *(a for o in overrides for a in ("--set", o)))
    deadline = time.monotonic() + 300
    while _checkpoints_written(killed) < 2:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.02)  # returns early only if the run ended
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists()  # killed: nothing wrote it
    # item 3: what was written before the kill survives it, whole lines only
    lines_at_kill = len(read_metrics(killed))
    assert lines_at_kill >= 3 * 16  # ticks 0, 1 and 2 at least, every peer
    events = [json.loads(line) for line in (killed / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "run_started"
    assert sum(e["event"] == "checkpoint_written" for e in events) >= 2

    resumed = _cli("--resume", str(killed))
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "status        : completed" in out

    whole = experiment.run(None, out=tmp_path / "whole", overrides=overrides)
    assert read_metrics(killed) == read_metrics(whole.run_dir)
    assert len(read_metrics(killed)) > lines_at_kill
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["final"] == whole.summary["final"]
    assert summary["messages"] == whole.summary["messages"]


def test_resume_refuses_a_finished_run_and_a_changed_config(tmp_path: Path) -> None:
    done = experiment.run({**CASES["dpsgd"], "checkpoint": {"every": 2}}, out=tmp_path / "done")
    with pytest.raises(CheckpointError, match="finished already"):
        experiment.resume(done.run_dir)
    cut = _interrupted_copy(done.run_dir, tmp_path / "cut")
    config = cut / "config.yaml"
    config.write_text(config.read_text().replace("rounds: 6", "rounds: 7"))
    with pytest.raises(CheckpointError, match="changed since the checkpoint"):
        experiment.resume(cut)
    with pytest.raises(CheckpointError, match="no run to resume"):
        experiment.resume(tmp_path / "nothing")


def test_the_cli_refuses_resume_with_a_config(tmp_path: Path) -> None:
    proc = _cli("some.yaml", "--resume", str(tmp_path))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--resume continues a run with its own config: drop CONFIG" in err


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path: Path) -> None:
    done = experiment.run({**CASES["dpsgd"], "checkpoint": {"every": 2}}, out=tmp_path / "done")
    cut = _interrupted_copy(done.run_dir, tmp_path / "cut")
    (cut / experiment.CHECKPOINT_FILE).unlink()
    again = experiment.resume(cut)
    assert read_metrics(again.run_dir) == read_metrics(done.run_dir)


def test_a_checkpoint_from_another_format_or_cut_short_is_refused(tmp_path: Path) -> None:
    done = experiment.run({**CASES["dpsgd"], "checkpoint": {"every": 2}}, out=tmp_path / "d")
    cut = _interrupted_copy(done.run_dir, tmp_path / "cut")
    ckpt = cut / experiment.CHECKPOINT_FILE
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        experiment.resume(cut)
    ckpt.write_bytes(checkpoint.dumps({"format": "other"})[:0] or b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        experiment.resume(cut)


def test_objects_passed_through_the_api_are_references_in_a_checkpoint() -> None:
    class Tap:
        def __call__(self, *args: Any) -> None: ...

    tap = Tap()
    data = checkpoint.dumps({"taps": [tap, tap], "n": 1}, {"tap0": tap})
    other = Tap()
    state = checkpoint.loads(data, {"tap0": other})
    assert state["taps"][0] is other and state["taps"][1] is other
    with pytest.raises(CheckpointError, match="refers to 'tap0'"):
        checkpoint.loads(data, {})


def test_an_engine_restored_from_a_checkpoint_rejoins_and_finishes() -> None:
    """What a restarted host does with its checkpoint: the peers come back with the state
    they had, drop what was scheduled or in flight to them then, and finish the run."""
    cfg = config_from_mapping(
        small_config(
            topology={"kind": "ring", "n": 8},
            protocol={"kind": "gossip", "rounds": 30, "timeout": 0.2},
        )
    )
    world = experiment.build_world(cfg)
    peers = experiment.build_peers(world, range(8), "cpu")
    engine = PeerEngine(peers, 8, world.codec, world.network, world.cost)
    engine.start()
    engine.advance(0.3)
    data = checkpoint.dumps({"engine": engine})
    at_checkpoint = {i: p.protocol.progress(p.state) for i, p in engine.peers.items()}
    assert engine.frames_pending > 0  # frames on the way: the rejoin must drop them
    engine.advance(0.6)

    restored: PeerEngine = checkpoint.loads(data)["engine"]
    assert {i: p.protocol.progress(p.state) for i, p in restored.peers.items()} == at_checkpoint
    restored.rejoin(0.6)
    assert restored.frames_pending == 0 and restored.frames["sent"] == 0
    assert sorted(e[0] for e in restored._heap) == [0.6] * 8  # one Started each
    restored.advance(math.inf)
    assert restored.done == 8
    assert all(p.protocol.progress(p.state) == 30 for p in restored.peers.values())
