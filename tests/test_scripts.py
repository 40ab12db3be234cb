"""The example scripts run and print what their docstrings promise (tiny settings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.slow
def test_sweep_topologies_prints_accuracy_against_spectral_gap(tmp_path: Path) -> None:
    out = _run("sweep_topologies.py", "--peers", "8", "--rounds", "2", "--out", str(tmp_path))
    rows = [line.split() for line in out.splitlines() if re.match(r"^[a-z_0-9]+\s+\d\.\d{4}", line)]
    assert {r[0] for r in rows} >= {"ring", "complete", "exponential", "dumbbell"}
    assert "skipped torus" in out  # 8 peers make no 2-D torus; the sweep goes on without it
    gaps = [float(r[1]) for r in rows]
    assert gaps == sorted(gaps), "rows are sorted by spectral gap"
    assert all(0 <= float(r[2]) <= 1 for r in rows)
    assert (tmp_path / "ring" / "summary.json").is_file()


@pytest.mark.slow
def test_compare_protocols_runs_every_protocol_and_condition(tmp_path: Path) -> None:
    out = _run("compare_protocols.py", "--peers", "8", "--rounds", "2", "--out", str(tmp_path))
    rows = [
        line.split() for line in out.splitlines() if line.startswith(("dpsgd", "gossip", "push"))
    ]
    assert {(r[0], r[1]) for r in rows} == {
        (p, c) for p in ("dpsgd", "gossip", "pushsum") for c in ("ideal", "stragglers", "lossy")
    }
    lossy = [int(r[6]) for r in rows if r[1] == "lossy"]
    assert all(lost > 0 for lost in lossy)


def test_bench_device_runs_on_the_cpu(tmp_path: Path) -> None:
    out = _run("bench_device.py", "--rounds", "1", "--peers", "4", "--out", str(tmp_path))
    assert re.search(r"^cpu\s+\d+\.\d+\s+\d\.\d{4}\s+cpu$", out, re.MULTILINE), out
