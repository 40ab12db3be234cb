"""The Ray runtime: same protocols and configs, same metrics as in-process, clear failures."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed import checkpoint
from p2pfed.config import config_from_mapping
from p2pfed.errors import ConfigError, RuntimeFailure
from p2pfed.experiment import resume, run
from p2pfed.runtime.engine import OutFrame
from p2pfed.runtime.ray_runtime import pack_frames, place, plan_hosts, unpack_frames
from tests.conftest import small_config

pytestmark = pytest.mark.ray

RAY4 = {"kind": "ray", "hosts": 4, "cpus_per_host": 0.5}


def _files(run_dir: Path) -> tuple[str, list[dict[str, str]]]:
    metrics = (run_dir / "metrics.jsonl").read_text()
    with (run_dir / "edges.csv").open() as f:
        edges = sorted(csv.DictReader(f), key=lambda r: (int(r["src"]), int(r["dst"])))
    return metrics, edges


def _pair(tmp_path: Path, name: str, **sections: Any) -> tuple[Any, Any]:
    cfg = small_config(**sections)
    local = run(cfg, out=tmp_path / f"{name}-local")
    on_ray = run({**cfg, "runtime": RAY4}, out=tmp_path / f"{name}-ray")
    return local, on_ray


RR10 = {"kind": "random_regular", "n": 10, "degree": 4}


@pytest.mark.parametrize(
    ("protocol", "topology"),
    [
        ({"kind": "dpsgd", "rounds": 5}, RR10),
        ({"kind": "gossip", "rounds": 5}, RR10),
        ({"kind": "pushsum", "rounds": 5}, RR10),
        # a periodic time-varying schedule, and one with no period (every host may talk to
        # every other): the hosts' horizons come from different channel graphs
        ({"kind": "pushsum", "rounds": 6}, {"kind": "one_peer_exponential", "n": 10}),
        ({"kind": "dpsgd", "rounds": 5}, {"kind": "random_regular_dynamic", "n": 10, "degree": 2}),
        # six peers per host, most of them with no link to another host
        ({"kind": "gossip", "rounds": 6}, {"kind": "ring", "n": 24}),
    ],
)
def test_four_hosts_reproduce_the_in_process_run_exactly(
    ray_local: Any, tmp_path: Path, protocol: dict[str, Any], topology: dict[str, Any]
) -> None:
    # asynchrony everywhere: stragglers, compute jitter, random latency, loss
    local, on_ray = _pair(
        tmp_path,
        protocol["kind"] + topology["kind"],
        topology=topology,
        protocol=protocol,
        time={"compute_jitter": 0.4, "stragglers": {"fraction": 0.3, "slowdown": 3.0}},
        network={"latency": {"min": 0.002, "dist": "exponential", "scale": 0.01}, "loss": 0.1},
    )
    assert _files(local.run_dir) == _files(on_ray.run_dir)
    for key in ("events", "virtual_time", "bytes", "rounds_completed", "final"):
        assert local.summary[key] == on_ray.summary[key], key
    msgs = on_ray.summary["messages"]
    assert msgs.pop("dropped") == 0
    assert msgs == local.summary["messages"]
    assert on_ray.summary["runtime"] == "ray"
    assert len(on_ray.summary["hosts"]) == 4
    assert (
        sum(
            len(range(int(h["peers"].split("-")[0]), int(h["peers"].split("-")[-1]) + 1))
            for h in on_ray.summary["hosts"]
        )
        == topology["n"]
    )


def test_time_limit_cuts_both_runtimes_at_the_same_point(ray_local: Any, tmp_path: Path) -> None:
    local, on_ray = _pair(
        tmp_path,
        "limit",
        protocol={"kind": "gossip", "rounds": 50},
        time={"limit": 0.9, "compute_jitter": 0.2},
    )
    assert local.summary["status"] == on_ray.summary["status"] == "time_limit"
    assert _files(local.run_dir) == _files(on_ray.run_dir)
    msgs = dict(on_ray.summary["messages"])
    msgs.pop("dropped")
    assert msgs == local.summary["messages"]


def test_taps_see_every_frame_sent_on_ray(ray_local: Any, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    res = run(
        {**small_config(), "runtime": RAY4},
        out=tmp_path / "tapped",
        taps=[lambda t, src, dst, frame: seen.append((src, dst))],
    )
    assert len(seen) == res.summary["messages"]["sent"] > 0
    assert all(dst in ((src + 1) % 6, (src - 1) % 6) for src, dst in seen)  # ring links only


def test_adversaries_see_the_same_run_on_ray(ray_local: Any, tmp_path: Path) -> None:
    """Wire taps and inbox taps are recorded on the hosts and replayed in the driver: every
    adversary's report matches the in-process run's, number for number."""
    adversaries = [
        {"role": "eavesdropper", "target": 2},
        {"role": "curious_peer", "peer": 3, "candidates": 30},
        {"role": "curious_peer", "peer": 0, "active": {"round": 1, "candidates": 20}},
        {"role": "black_box", "candidates": 30},
    ]
    sections = {
        "model": {"kind": "mlp", "hidden": [16]},
        "training": {"lr": 0.1, "batch_size": 1, "local_steps": 1},
        "partition": {"scheme": "iid"},
    }
    cfg = {**small_config(**sections), "adversaries": adversaries}
    local = run(cfg, out=tmp_path / "local")
    on_ray = run({**cfg, "runtime": RAY4}, out=tmp_path / "ray")
    assert on_ray.summary["runtime"] == "ray"
    rows_local, rows_ray = local.summary["attacks"], on_ray.summary["attacks"]
    assert [r["attack"] for r in rows_ray] == [r["attack"] for r in rows_local]
    assert {r["attack"] for r in rows_ray} >= {
        "analytic_inversion",
        "loss_threshold",
        "active_membership",
    }
    for a, b in zip(rows_local, rows_ray, strict=True):
        assert a["metrics"] == b["metrics"], (a, b)
    inversion = rows_ray[0]
    assert inversion["view"] == "isolated" and inversion["metrics"]["mse_median"] < 1e-10


def test_colluders_share_a_host_and_poison_as_in_process(ray_local: Any, tmp_path: Path) -> None:
    """ALIE colluders 0 and 5 would sit on two of four hosts; the runtime keeps them on one,
    so they read one joint view (peer 0 sees honest 1, peer 5 honest 4) and the run is the
    in-process run exactly."""
    cfg = {
        **small_config(protocol={"kind": "dpsgd", "rounds": 6}),
        "adversaries": [{"role": "poisoner", "peers": [0, 5], "behaviour": "alie", "z": 3.0}],
    }
    local = run(cfg, out=tmp_path / "local")
    on_ray = run({**cfg, "runtime": RAY4}, out=tmp_path / "ray")
    assert on_ray.summary["hosts"][0]["peers"] == "[0, 5]"
    assert local.summary["final"] == on_ray.summary["final"]
    assert local.summary["robustness"] == on_ray.summary["robustness"]
    clean = run(small_config(protocol={"kind": "dpsgd", "rounds": 6}), out=tmp_path / "clean")
    assert local.summary["final"] != clean.summary["final"]  # the poisoners did act


@pytest.mark.parametrize("kind", ["gossip", "dpsgd"])
def test_churn_on_four_hosts_is_the_in_process_run(
    ray_local: Any, tmp_path: Path, kind: str
) -> None:
    """Peers go down and come back (leaves notify every host's peers, crashes nobody): the
    availability events are keyed by the churning peer, so every host orders them alike."""
    local, on_ray = _pair(
        tmp_path,
        f"churn-{kind}",
        topology={"kind": "random_regular", "n": 10, "degree": 4},
        protocol={"kind": kind, "rounds": 8, "timeout": 0.2},
        availability={"kind": "churn", "churn": {"down_fraction": 0.3, "mean_down": 0.3}},
    )
    assert local.summary["messages"]["unreachable"] > 0
    for key in ("final", "rounds_completed", "virtual_time", "availability", "protocol_events"):
        assert local.summary[key] == on_ray.summary[key], key
    assert _files(local.run_dir) == _files(on_ray.run_dir)


def test_place_keeps_groups_whole_and_hosts_balanced() -> None:
    assert place(6, 4) == [[0, 1], [2, 3], [4], [5]]
    assert place(6, 4, [[0, 5]]) == [[0, 5], [1, 2], [3], [4]]
    blocks = place(16, 2, [[3, 11], [12, 13, 14]])
    assert sorted(p for b in blocks for p in b) == list(range(16))
    assert [len(b) for b in blocks] == [8, 8]
    assert any({3, 11} <= set(b) for b in blocks) and any({12, 13, 14} <= set(b) for b in blocks)
    assert place(4, 2, [[0, 1, 2, 3]]) == [[0, 1, 2, 3]]  # a host with nothing to carry goes
    with pytest.raises(RuntimeFailure, match="two groups"):
        place(4, 2, [[0, 1], [1, 2]])


@pytest.mark.parametrize(("kind", "at"), [("dpsgd", 0.3), ("dpsgd", 0.2), ("pushsum", 0.05)])
def test_a_host_that_dies_is_survived_by_gossip(
    ray_local: Any, tmp_path: Path, kind: str, at: float
) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 8, "directed": kind == "pushsum"},
        protocol={"kind": kind, "rounds": 8},
        runtime={**RAY4, "fail_hosts": {1: at}, "on_host_failure": "continue"},
    )
    res = run(cfg, out=tmp_path / "survive")
    s = res.summary
    assert s["status"] == "completed"
    [failure] = s["host_failures"]
    assert failure["host"] == 1 and failure["peers"] == [2, 3]
    assert [h["alive"] for h in s["hosts"]] == [True, False, True, True]
    last_tick = max(r["tick"] for r in res.metrics())
    survivors = sorted(r["peer"] for r in res.metrics() if r["tick"] == last_tick)
    assert survivors == [0, 1, 4, 5, 6, 7]
    assert s["rounds_completed"][0] == 8 and s["rounds_completed"][2] < 8
    again = run(cfg, out=tmp_path / "again")  # an injected failure is reproducible
    assert (again.run_dir / "metrics.jsonl").read_text() == (
        res.run_dir / "metrics.jsonl"
    ).read_text()
    events = [json.loads(line) for line in (res.run_dir / "events.jsonl").open()]
    assert any(e["event"] == "host_failed" and e["peers"] == [2, 3] for e in events)
    m = s["messages"]
    assert m["sent"] == m["delivered"] + m["lost"] + m["rejected"] + m["in_flight"] + m["dropped"]


def test_a_host_that_dies_stops_the_run_when_configured(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 8},
        protocol={"kind": "dpsgd", "rounds": 8},
        runtime={**RAY4, "fail_hosts": {2: 0.3}, "on_host_failure": "stop"},
    )
    with pytest.raises(RuntimeFailure, match=r"PeerHost 2 died .* carrying peers 4-5"):
        run(cfg, out=tmp_path / "stop")
    summary = json.loads((tmp_path / "stop" / "summary.json").read_text())
    assert summary["status"] == "failed" and "peers 4-5" in summary["error"]
    assert (tmp_path / "stop" / "metrics.jsonl").read_text().count("\n") >= 8  # kept


def test_too_few_cpus_is_one_clear_error(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(runtime={"kind": "ray", "hosts": 4, "cpus_per_host": 1})
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure, match=r"4 PeerHosts x 1 CPUs need 4 CPUs .* has 2"):
        run(cfg, out=tmp_path / "cpus")
    assert time.monotonic() - t0 < 30


def test_plan_hosts_defaults_to_one_host_per_cpu() -> None:
    from p2pfed.config import RuntimeConfig

    plan = plan_hosts(10, None, RuntimeConfig(kind="ray"), {"CPU": 4})
    assert [len(b) for b in plan.blocks] == [3, 3, 2, 2]
    plan = plan_hosts(3, None, RuntimeConfig(kind="ray"), {"CPU": 8})
    assert len(plan.blocks) == 3  # never more hosts than peers
    plan = plan_hosts(10, 10, RuntimeConfig(kind="ray", peers_per_host=4), {"CPU": 8})
    assert [b[0] for b in plan.blocks] == [0, 4, 7] and plan.num_hosts == 4
    gpu = RuntimeConfig(kind="ray", device="cuda", gpus_per_host=0.5)
    assert len(plan_hosts(16, None, gpu, {"CPU": 16, "GPU": 2}).blocks) == 4
    with pytest.raises(RuntimeFailure, match="need 2 GPUs"):
        plan_hosts(
            16,
            None,
            RuntimeConfig(kind="ray", device="cuda", gpus_per_host=1, hosts=2),
            {"CPU": 16},
        )
    with pytest.raises(RuntimeFailure, match="exceeds the number of peers"):
        plan_hosts(3, None, RuntimeConfig(kind="ray", hosts=4), {"CPU": 8})


def test_frame_batches_round_trip() -> None:
    frames = [
        OutFrame(0.5, 3, 1, 7, b"abc"),
        OutFrame(0.25, 4, 2, 0, b""),
        OutFrame(1.0, 3, 2, 1, b"\x00" * 9),
    ]
    assert unpack_frames(pack_frames(frames)) == frames
    assert unpack_frames(pack_frames([])) == []
    batch = pack_frames(frames)
    assert all(isinstance(v, np.ndarray) for v in batch.values())


def test_frame_batches_carry_a_shared_body_once() -> None:
    body = bytes(range(256)) * 40  # one broadcast message's packed body
    other = bytes(256) * 40  # equal length, different bytes, another object
    frames = [
        OutFrame(0.5, 3, 9, 0, b"head-3", body),
        OutFrame(0.5, 4, 9, 1, b"head-4", body),
        OutFrame(0.6, 5, 9, 2, b"head-5", other),
        OutFrame(0.5, 6, 9, 3, b"head-6", body),
    ]
    batch = pack_frames(frames)
    assert batch["data"].nbytes == 4 * 6 + len(body) + len(other)  # each body once
    back = unpack_frames(batch)
    assert back == frames
    assert [f.frame for f in back] == [f.head + f.body for f in frames]


def _cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pfed.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def test_unreachable_address_fails_fast_with_one_line(tmp_path: Path) -> None:
    t0 = time.monotonic()
    out = _cli(
        "run",
        "--address",
        "127.0.0.1:9",
        "--out",
        str(tmp_path / "x"),
        "--set",
        "protocol.rounds=1",
    )
    assert time.monotonic() - t0 < 60
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "p2pfed: error: RuntimeFailure: cannot reach a Ray cluster at 127.0.0.1:9"
    ), out.stderr
    assert "Traceback" not in out.stderr


def test_address_auto_joins_the_instance_running_on_this_machine(
    ray_local: Any, tmp_path: Path
) -> None:
    # auto follows RAY_ADDRESS, else the newest cluster on this machine (which on a shared
    # machine may be someone else's): point it at this session's instance
    gcs = ray_local.get_runtime_context().gcs_address
    out = _cli(
        "run",
        "--address",
        "auto",
        "--out",
        str(tmp_path / "auto"),
        "--set",
        "protocol.rounds=2",
        "--set",
        "topology.n=4",
        "--set",
        "runtime.hosts=2",
        "--set",
        "runtime.cpus_per_host=0.5",
        env={"RAY_ADDRESS": gcs},
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    node = ray_local.get_runtime_context().get_node_id()
    assert summary["runtime"] == "ray"
    assert [h["node"] for h in summary["hosts"]] == [node, node]


@pytest.mark.parametrize("kind", ["fedavg", "fedbuff"])
def test_coordinator_protocols_on_ray_match_in_process(
    ray_local: Any, tmp_path: Path, kind: str
) -> None:
    local, on_ray = _pair(
        tmp_path,
        kind,
        topology={"kind": "ring", "n": 8},
        protocol={"kind": kind, "rounds": 4},
        time={"compute_jitter": 0.3},
        network={"latency": {"min": 0.002, "dist": "uniform", "scale": 0.01}, "loss": 0.1},
    )
    assert _files(local.run_dir) == _files(on_ray.run_dir)
    assert local.summary["final"] == on_ray.summary["final"]
    hosts = on_ray.summary["hosts"]
    assert [h["peers"] for h in hosts] == ["0-1", "2-3", "4-5", "6-7", "8"]  # + coordinator
    assert on_ray.summary["rounds_completed"] == [4] * 8


def test_a_coordinator_sharing_a_host_with_clients_matches_in_process(
    ray_local: Any, tmp_path: Path
) -> None:
    sections: dict[str, Any] = {
        "topology": {"kind": "ring", "n": 8},
        "protocol": {"kind": "fedavg", "rounds": 3},
        "time": {"compute_jitter": 0.3},
    }
    cfg = small_config(**sections)
    local = run(cfg, out=tmp_path / "local")
    shared = run(
        {**cfg, "runtime": {**RAY4, "hosts": 2, "coordinator_host": "shared"}},
        out=tmp_path / "shared",
    )
    assert _files(local.run_dir) == _files(shared.run_dir)
    assert [h["peers"] for h in shared.summary["hosts"]] == ["0-3", "4-8"]


def test_losing_the_coordinator_host_stops_the_run(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(
        protocol={"kind": "fedavg", "rounds": 6},
        runtime={**RAY4, "on_host_failure": "continue", "fail_hosts": {4: 0.2}},
    )
    with pytest.raises(RuntimeFailure, match="coordinator's PeerHost 4 died"):
        run(cfg, out=tmp_path / "coord")
    summary = json.loads((tmp_path / "coord" / "summary.json").read_text())
    assert summary["status"] == "failed" and "coordinator" in summary["error"]


def test_wall_time_has_no_barrier_and_loses_nothing(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 8},
        protocol={"kind": "gossip", "rounds": 25},
        time={"mode": "wall", "slowdown": {0: 10.0}},  # peer 0 trains 10x slower
        eval={"interval": 0.2},
        runtime={"kind": "ray", "hosts": 2, "cpus_per_host": 1},
    )
    res = run(cfg, out=tmp_path / "wall")
    s = res.summary
    assert s["status"] == "completed" and s["time_mode"] == "wall"
    assert s["rounds_completed"] == [25] * 8
    m = s["messages"]
    assert m["sent"] == m["delivered"] > 0 and m["in_flight"] == m["dropped"] == 0
    rows = res.metrics()
    # no global barrier: while the straggler was still early, fast peers ran far ahead
    lags = [
        max(r["round"] for r in rows if r["tick"] == t)
        - next(r["round"] for r in rows if r["tick"] == t and r["peer"] == 0)
        for t in {r["tick"] for r in rows}
    ]
    assert max(lags) >= 5, lags
    assert s["final"]["mean_acc"] > 0.5


def test_wall_time_survives_a_killed_host(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 8},
        protocol={"kind": "gossip", "rounds": 400},
        time={"mode": "wall", "limit": 30.0},
        eval={"interval": 0.5},
        runtime={
            "kind": "ray",
            "hosts": 2,
            "cpus_per_host": 1,
            "fail_hosts": {1: 0.3},
            "on_host_failure": "continue",
            "start_timeout": 120,
        },
    )
    res = run(cfg, out=tmp_path / "wall-kill")
    s = res.summary
    assert s["status"] == "completed", s
    assert [f["peers"] for f in s["host_failures"]] == [[4, 5, 6, 7]]
    m = s["messages"]
    assert m["in_flight"] == 0
    assert m["sent"] == m["delivered"] + m["lost"] + m["rejected"] + m["dropped"]
    assert s["rounds_completed"][:4] == [400] * 4
    assert {
        r["peer"] for r in res.metrics() if r["tick"] == max(x["tick"] for x in res.metrics())
    } == {0, 1, 2, 3}


def test_wall_time_restarts_a_killed_host_from_its_checkpoint(
    ray_local: Any, tmp_path: Path
) -> None:
    """Issue 8: with ``on_host_failure: restart`` a host killed mid-run comes back from its
    last checkpoint as a new host; its peers rejoin and finish every round."""
    cfg = {
        **small_config(
            topology={"kind": "ring", "n": 8},
            protocol={"kind": "gossip", "rounds": 300, "timeout": 0.2},
            time={"mode": "wall", "limit": 60.0},
            eval={"interval": 0.5},
            runtime={
                "kind": "ray",
                "hosts": 2,
                "cpus_per_host": 1,
                "fail_hosts": {1: 1.5},
                "on_host_failure": "restart",
                "start_timeout": 120,
            },
        ),
        "checkpoint": {"wall_interval": 0.5},
    }
    res = run(cfg, out=tmp_path / "wall-restart")
    s = res.summary
    assert s["status"] == "completed", s
    assert [f["peers"] for f in s["host_failures"]] == [[4, 5, 6, 7]]
    hosts = s["hosts"]
    assert len(hosts) == 3 and hosts[1]["alive"] is False and hosts[2]["alive"] is True
    assert hosts[2]["peers"] == hosts[1]["peers"]
    assert s["rounds_completed"] == [300] * 8  # the restarted peers finished too
    m = s["messages"]
    assert m["in_flight"] == 0
    assert m["sent"] == m["delivered"] + m["lost"] + m["rejected"] + m["dropped"]
    events = [json.loads(line) for line in (res.run_dir / "events.jsonl").open()]
    restarted = [e for e in events if e["event"] == "host_restarted"]
    assert [(e["host"], e["as"]) for e in restarted] == [(1, 2)]
    restored = {e["peer"] for e in events if e["event"] == "peer_restored"}
    assert restored == {4, 5, 6, 7}
    last = max(r["tick"] for r in res.metrics())
    assert {r["peer"] for r in res.metrics() if r["tick"] == last} == set(range(8))


def test_a_ray_run_resumed_from_its_checkpoint_ends_as_one_left_alone(
    ray_local: Any, tmp_path: Path
) -> None:
    """Virtual time on Ray: every host's engine and the frames between hosts go into the
    checkpoint; resumed (hosts started afresh and restored), the run ends exactly as the
    uninterrupted one — with a host that died before the checkpoint dead again."""
    runtime: dict[str, Any] = {**RAY4, "fail_hosts": {3: 0.05}, "on_host_failure": "continue"}
    cfg = {
        **small_config(
            topology={"kind": "ring", "n": 8},
            protocol={"kind": "gossip", "rounds": 8, "timeout": 0.2},
            runtime=runtime,
        ),
        "checkpoint": {"every": 2},
    }
    whole = run(cfg, out=tmp_path / "whole")
    assert (whole.run_dir / "checkpoint.pt").is_file()
    cut = tmp_path / "cut"
    shutil.copytree(whole.run_dir, cut)
    (cut / "summary.json").unlink()
    resumed = resume(cut)
    assert resumed.metrics() == whole.metrics()
    for key in ("final", "messages", "rounds_completed", "host_failures"):
        assert resumed.summary[key] == whole.summary[key], key
    assert [f["host"] for f in whole.summary["host_failures"]] == [3]
    state = checkpoint.loads(checkpoint.read(cut / "checkpoint.pt"))
    engines = checkpoint.loads(state["runtime"], {"observer": None})["engines"]
    assert sorted(engines) == [0, 1, 2]  # host 3 was dead when the checkpoint was taken


def test_restart_is_refused_where_replaying_random_streams_would_leak() -> None:
    base = small_config(
        time={"mode": "wall"}, runtime={"kind": "ray", "on_host_failure": "restart"}
    )
    config_from_mapping(base)  # plain: accepted
    with pytest.raises(ConfigError, match="reuse AES-GCM nonces"):
        config_from_mapping({**base, "security": {"channel": "aead"}})
    with pytest.raises(ConfigError, match="reuse DP noise"):
        config_from_mapping({**base, "dp": {"clip": 1.0}})
    with pytest.raises(ConfigError, match=r"needs time\.mode wall"):
        config_from_mapping({**base, "time": {"mode": "virtual"}})


def test_gpu_hosts_on_a_cluster_without_gpus_is_one_clear_error(
    ray_local: Any, tmp_path: Path
) -> None:
    cfg = small_config(runtime={"kind": "ray", "device": "cuda", "gpus_per_host": 0.5})
    with pytest.raises(RuntimeFailure, match=r"need 0.5 GPUs but the Ray cluster has 0"):
        run(cfg, out=tmp_path / "gpu")


@pytest.mark.parametrize("key_mode", ["group", "threshold"])
def test_he_fedavg_on_ray_in_virtual_and_wall_time(
    ray_local: Any, tmp_path: Path, key_mode: str
) -> None:
    """Packed Paillier keys and encryption randomness come from the run seed: in virtual time
    Ray reproduces the in-process run exactly; in wall time every round still completes."""
    rounds, clients = 2, 4
    cfg = small_config(
        topology={"kind": "ring", "n": clients},
        protocol={"kind": "fedavg", "rounds": rounds},
    )
    cfg["security"] = {
        "aggregation": "he",
        "he": {"scheme": "paillier", "key_bits": 1024, "key_mode": key_mode},
    }
    # the opening, then per round updates in and aggregates out (and partial decryptions in
    # and out, in threshold mode)
    frames = clients + rounds * clients * (2 if key_mode == "group" else 4)
    local = run(cfg, out=tmp_path / "local")
    hosts = {"kind": "ray", "hosts": 2, "cpus_per_host": 1}
    on_ray = run({**cfg, "runtime": hosts}, out=tmp_path / "ray")
    wall = run(
        {**cfg, "runtime": hosts, "time": {"mode": "wall"}, "eval": {"interval": 0.5}},
        out=tmp_path / "wall",
    )
    for res in (local, on_ray, wall):
        s = res.summary
        assert s["status"] == "completed", s
        assert s["rounds_completed"] == [rounds] * clients
        assert s["protocol_events"] == {"round_aggregated": rounds}
        assert s["messages"]["sent"] == s["messages"]["delivered"] == frames
    assert on_ray.summary["runtime"] == wall.summary["runtime"] == "ray"
    assert [h["peers"] for h in on_ray.summary["hosts"]] == ["0-1", "2-3", "4"]  # + coordinator
    assert _files(local.run_dir) == _files(on_ray.run_dir)
    for key in ("events", "virtual_time", "bytes", "final"):
        assert local.summary[key] == on_ray.summary[key], key
    assert on_ray.mean_accuracy == local.mean_accuracy
    # wall time changes when things happen, not what is computed
    assert wall.summary["time_mode"] == "wall"
    assert wall.mean_accuracy == local.mean_accuracy
