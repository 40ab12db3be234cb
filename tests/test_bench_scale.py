"""scripts/bench_scale.py: its quick mode runs both workloads and prints sane figures."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.test_scripts import _run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_scale.py"

ROW = re.compile(
    r"^(?P<workload>gossip|secagg)\s+(?P<peers>\d+)\s+(?P<epochs>\d+)\s+(?P<status>\w+)"
    r"\s+(?P<wall>\d+\.\d)\s+\d+\.\d\s+\d+\.\d\s+(?P<run>\d+\.\d)"  # build, start
    r"\s+(?P<events>[\d,]+)\s+(?:[\d,]+|-)"  # events/s
    r"\s+(?P<base>\d+)\s+(?P<peak>\d+)\s+-?\d+\.\d{3}"  # MB/peer
    r"\s+(?:\d+|-)\s+(?:\d+|-)"  # sampled build and run peaks ("-": no sample in a short phase)
    r"\s+(?P<acc>\d\.\d{4})$",
    re.M,
)


@pytest.mark.serial  # it times itself: run it alone, not beside another worker
def test_quick_mode_prints_and_writes_the_figures_of_both_workloads(tmp_path: Path) -> None:
    rows_json = tmp_path / "rows.json"
    out = _run(
        "bench_scale.py",
        *("--quick", "--peers", "60", "--secagg-peers", "12", "--epochs", "2"),
        *("--num-shares", "6", "--out", str(tmp_path / "runs"), "--json", str(rows_json)),
    )
    assert re.search(r"^workload\s+peers\s+epochs\s+status\s+wall s", out, re.M), out
    printed = {m["workload"]: m.groupdict() for m in ROW.finditer(out)}
    assert set(printed) == {"gossip", "secagg"}, out
    for name, peers in (("gossip", "60"), ("secagg", "12")):
        assert (printed[name]["peers"], printed[name]["epochs"]) == (peers, "2")
        assert printed[name]["status"] == "completed"
    assert "secagg: 6 share holders per client" in out

    doc = json.loads(rows_json.read_text())
    rows = {r["workload"]: r for r in doc["rows"]}
    assert rows["gossip"]["peers"] == 60 and rows["gossip"]["participants"] == 60
    assert rows["secagg"]["peers"] == 12 and rows["secagg"]["participants"] == 13
    assert rows["secagg"]["num_shares"] == 6
    for name, r in rows.items():
        assert r["status"] == "completed", name
        assert r["epochs"] == 2
        assert r["events"] > 0 and r["events_per_s"] > 0
        assert r["frames_sent"] > 0
        assert 0.0 <= r["mean_acc"] <= 1.0
        assert r["wall_s"] >= r["run_s"] > 0
        assert r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
        assert r["mb_per_peer"] == pytest.approx(
            (r["peak_rss_mb"] - r["baseline_rss_mb"]) / r["participants"]
        )
        assert r["virtual_s"] > 0
        assert Path(r["run_dir"], "summary.json").is_file()  # --out keeps the run directories
        assert float(printed[name]["acc"]) == pytest.approx(r["mean_acc"], abs=5e-5)
        assert int(printed[name]["events"].replace(",", "")) == r["events"]
        assert int(printed[name]["peak"]) == round(r["peak_rss_mb"])
    # gossip: each peer trains once a round and exchanges a request and a reply
    assert rows["gossip"]["events"] >= 60 * 2 * 3


def test_arguments_fill_the_quick_defaults_and_refuse_impossible_sizes() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_scale
    finally:
        sys.path.remove(str(SCRIPT.parent))
    args = bench_scale.parse_args(["--quick", "--peers", "30"])
    assert (args.peers, args.secagg_peers, args.epochs) == (30, 50, 3)
    args = bench_scale.parse_args([])
    assert (args.peers, args.secagg_peers, args.epochs, args.degree) == (10_000, 1000, 10, 8)
    cfg = bench_scale.secagg_config(1000, 10, 32, 0)
    assert cfg["security"] == {"aggregation": "secagg", "num_shares": 32}
    assert cfg["protocol"] == {"kind": "fedavg", "rounds": 10}
    assert "num_shares" not in bench_scale.secagg_config(20, 10, 0, 0)["security"]
    gossip = bench_scale.gossip_config(100, 10, 8, 0)
    assert gossip["topology"] == {"kind": "random_regular", "n": 100, "degree": 8}
    assert gossip["training"]["local_epochs"] == 1 and gossip["protocol"]["rounds"] == 10
    for bad in (["--peers", "8"], ["--secagg-peers", "2"], ["--epochs", "0"]):
        with pytest.raises(SystemExit):
            bench_scale.parse_args(bad)
