"""The ``p2pfed`` command line: bad input is exit code 2 and one line naming the file and the
key, never a traceback; ``run`` writes the resolved config; ``topology show`` describes and
draws a topology."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from p2pfed import __version__
from p2pfed.cli import main
from p2pfed.config import load_config
from tests.conftest import small_config

REPO = Path(__file__).parents[1]
RING16 = REPO / "topologies" / "ring16.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def assert_one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.strip()
    for needle in needles:
        assert needle in line, line
    return line


# --- bad input: exit 2, one line --------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"training": {"lrr": 0.1}}, "training.lrr"),
        ({"training": {"lr": 0}}, "training.lr"),
        ({"partition": {"alpha": -0.5}}, "partition.alpha"),
        ({"topology": {"kind": "random_regular", "n": 6, "degree": 6}}, "topology.degree"),
        ({"topology": {"file": "nope.yaml"}}, "topology.file"),
    ],
)
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], key: str
) -> None:
    cfg = {**small_config(), **change}
    path = write_yaml(tmp_path / "bad_experiment.yaml", cfg)
    rc = main(["run", str(path), "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "bad_experiment.yaml", key)
    assert out == ""
    assert not (tmp_path / "run").exists()  # nothing ran


def test_bad_set_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config())
    rc = main(["run", str(path), "--set", "training.lrr=0.1", "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "experiment.yaml", "training.lrr")


@pytest.mark.parametrize("override", ["noequals", "a..b=1", "training.lr.x=1"])
def test_malformed_set_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str
) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config())
    rc = main(["run", str(path), "--set", override, "--out", str(tmp_path / "run")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "--set")


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["run", str(tmp_path / "absent.yaml")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "absent.yaml", "not found")


def test_invalid_yaml_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_yaml(tmp_path / "broken.yaml", "seed: 1\nprotocol: [1\n")
    rc = main(["run", str(path)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "broken.yaml", "line")


def test_unknown_key_in_a_subprocess(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", {**small_config(), "colour": "red"})
    script = shutil.which("p2pfed")
    if script is None:
        # The console script lives next to the interpreter when the venv is not on PATH.
        candidate = Path(sys.executable).with_name("p2pfed")
        script = str(candidate) if candidate.exists() else None
    command = [script] if script else [sys.executable, "-m", "p2pfed.cli"]
    proc = subprocess.run(
        [*command, "run", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "experiment.yaml", "colour")
    assert proc.stdout == ""


# --- a successful run -------------------------------------------------------------------


def test_run_writes_resolved_config_with_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config())
    run_dir = tmp_path / "run"
    rc = main(
        ["run", str(path), "--out", str(run_dir), "--set", "protocol.rounds=2", "--progress", "off"]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"run directory : {run_dir}" in out
    match = re.search(r"accuracy\s*: mean (\d\.\d{4})", out)
    assert match is not None, out
    assert 0.0 <= float(match.group(1)) <= 1.0
    assert "%" not in err  # progress off

    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["protocol"]["rounds"] == 2  # the file said 4: the override landed
    assert written["training"]["local_steps"] == 3  # the file's own values are there too
    resolved = load_config(run_dir / "config.yaml")  # and it is a valid config again
    assert resolved.protocol.rounds == 2
    assert resolved.topology.n == 6


def test_plain_progress_prints_percentages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path / "experiment.yaml", small_config())
    argv = ["run", str(path), "--out", str(tmp_path / "run"), "--set", "protocol.rounds=2"]
    rc = main([*argv, "--progress", "plain"])
    _, err = capsys.readouterr()
    assert rc == 0, err
    percents = [int(m) for m in re.findall(r"^test:\s+(\d+)% \(", err, flags=re.MULTILINE)]
    assert percents, err
    assert percents == sorted(percents)
    assert percents[-1] == 100


# --- topology show ----------------------------------------------------------------------


def parse_description(out: str) -> dict[str, str]:
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def test_topology_show_ring16(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "ring16.png"
    rc = main(["topology", "show", str(RING16), "--png", str(png)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    fields = parse_description(out)
    assert int(fields["n"]) == 16
    assert int(fields["degree_min"]) == 2
    assert float(fields["degree_mean"]) == 2.0
    assert int(fields["degree_max"]) == 2
    assert int(fields["diameter"]) == 8
    # Ring with Metropolis-Hastings weights 1/3: eigenvalues 1/3 + 2/3 cos(2 pi k / n).
    expected_gap = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 16))
    assert float(fields["spectral_gap"]) == pytest.approx(expected_gap, abs=5e-5)
    assert str(png) in out
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > len(PNG_MAGIC)


def test_topology_show_default_png_goes_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Not next to FILE: for the shipped files that is the repository's topologies/ folder.
    (tmp_path / "topos").mkdir()
    topo = write_yaml(tmp_path / "topos" / "complete5.yaml", {"kind": "complete", "n": 5})
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rc = main(["topology", "show", str(topo)])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert parse_description(out)["diameter"] == "1"
    assert (cwd / "complete5.png").read_bytes().startswith(PNG_MAGIC)
    assert "complete5.png" in out
    assert sorted(p.name for p in topo.parent.iterdir()) == ["complete5.yaml"]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ({"kind": "ring", "n": 8, "bogus": 1}, "bogus"),
        ({"kind": "random_regular", "n": 6, "degree": 6}, "degree"),
        ({"kind": "ring", "n": 1}, "n"),
    ],
)
def test_topology_show_bad_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict[str, Any], needle: str
) -> None:
    topo = write_yaml(tmp_path / "bad_topology.yaml", content)
    png = tmp_path / "out.png"
    rc = main(["topology", "show", str(topo), "--png", str(png)])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "bad_topology.yaml", needle)
    assert not png.exists()


def test_topology_show_missing_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["topology", "show", str(tmp_path / "absent.yaml")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "absent.yaml")


@pytest.mark.parametrize(
    "text", ["kind: ring\nn: [8\n", "kind: ring\nn: 8\nn: 9\n"], ids=["invalid", "duplicate"]
)
def test_topology_show_bad_yaml_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    topo = write_yaml(tmp_path / "bad_topology.yaml", text)
    rc = main(["topology", "show", str(topo), "--png", str(tmp_path / "out.png")])
    _, err = capsys.readouterr()
    assert rc == 2
    assert_one_error_line(err, "bad_topology.yaml")


# --- version ----------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    out, _ = capsys.readouterr()
    assert info.value.code == 0
    assert out.strip() == f"p2pfed {__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", __version__)


def test_cli_refuses_to_overwrite_a_run_without_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--set", "protocol.rounds=1", "--out", str(tmp_path), "--progress", "off"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0] and str(tmp_path) in err[0]
    assert main([*argv, "--overwrite"]) == 0


def test_run_prints_the_privacy_budget_and_one_line_per_attack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = small_config(
        model={"kind": "mlp", "hidden": [16]},
        training={"lr": 0.1, "batch_size": 1, "local_steps": 1},
    )
    cfg["adversaries"] = [
        {"role": "eavesdropper", "target": 2},
        {"role": "black_box", "attacks": ["membership", "model_inversion"], "candidates": 20},
    ]
    path = write_yaml(tmp_path / "experiment.yaml", cfg)
    rc = main(["run", str(path), "--out", str(tmp_path / "run"), "--progress", "off"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    attacks = [line for line in out.splitlines() if line.startswith("attack ")]
    assert len(attacks) == 3, out
    assert re.search(r"analytic_inversion on peer 2 \[isolated\]: PSNR \d{3}\.\d dB", attacks[0])
    assert "labels 100%" in attacks[0]
    assert re.search(r"loss_threshold on final model of 0: AUC 0\.\d{3}", attacks[1])
    assert re.search(r"mi_face .*: \d+% of classes recognised", attacks[2])
    assert "privacy       :" not in out  # no DP, no budget line
    args = ["run", str(path), "--out", str(tmp_path / "dp"), "--progress", "off"]
    dp = main([*args, "--set", "dp.clip=1.0", "--set", "adversaries=[]"])
    out, _ = capsys.readouterr()
    assert dp == 0
    assert re.search(r"privacy\s+: epsilon <= \d+(\.\d+)? at delta 1e-05 \(update DP", out), out
