"""A two-node Ray cluster on this machine: ``--address HOST:PORT`` spreads hosts over nodes."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_hosts_spread_over_both_nodes_of_a_cluster(tmp_path: Path) -> None:
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    cluster = cluster_utils.Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = {node.node_id for node in cluster.list_all_nodes()}
        assert len(nodes) == 2
        # the README's cluster command, with this cluster's head for HEAD_IP:6379
        [line] = [
            ln for ln in README.splitlines() if ln.startswith(".venv/bin/p2pfed run --address")
        ]
        readme_argv = [
            a.replace("HEAD_IP:6379", cluster.address) for a in shlex.split(line, comments=True)
        ]
        assert readme_argv[1:4] == ["run", "--address", cluster.address]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "p2pfed.cli",
                *readme_argv[1:],
                "--out",
                str(tmp_path / "run"),
                "--progress",
                "off",
                *("--set", "topology.n=6", "--set", "protocol.rounds=3"),
                *("--set", "runtime.hosts=2"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "completed"
        assert summary["rounds_completed"] == [3] * 6
        placed = [h["node"] for h in summary["hosts"]]
        assert len(placed) == 2 and set(placed) == nodes  # one host on each node
    finally:
        cluster.shutdown()
