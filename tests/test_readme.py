"""The README's examples work as written (run with fewer rounds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import p2pfed
from p2pfed.cli import main
from p2pfed.config import config_from_mapping

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_experiment_file_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_text = next(b for b in _blocks("yaml") if "my-experiment.yaml" in b)
    cfg = tmp_path / "my-experiment.yaml"
    cfg.write_text(yaml_text)
    monkeypatch.chdir(ROOT)  # the example names topologies/ring16.yaml relative to the repo
    code = main(
        [
            "run",
            str(cfg),
            "--set",
            "protocol.rounds=2",
            "--set",
            "partition.alpha=0.1",
            "--out",
            str(tmp_path / "run"),
            "--progress",
            "off",
        ]
    )
    assert code == 0
    res = p2pfed.load_config(tmp_path / "run" / "config.yaml")
    assert res.protocol.kind == "gossip" and res.time.stragglers.fraction == 0.25


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    yaml_text = next(b for b in _blocks("yaml") if "my-experiment.yaml" in b)
    (tmp_path / "my-experiment.yaml").write_text(
        yaml_text.replace("topologies/ring16.yaml", str(ROOT / "topologies" / "ring16.yaml"))
    )
    code = next(b for b in _blocks("python") if "p2pfed.run" in b)
    code = code.replace('overrides=["seed=2"]', 'overrides=["seed=2", "protocol.rounds=2"]')
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # our own README
    assert isinstance(namespace["rows"], list) and namespace["rows"]


def test_readme_cli_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `.venv/bin/p2pfed ...` line of the README, run in a folder holding the README's
    experiment file (runs shortened to 2 rounds, outputs kept in tmp_path)."""
    yaml_text = next(b for b in _blocks("yaml") if "my-experiment.yaml" in b)
    (tmp_path / "my-experiment.yaml").write_text(
        yaml_text.replace("topologies/ring16.yaml", str(ROOT / "topologies" / "ring16.yaml"))
    )
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")
    monkeypatch.chdir(tmp_path)
    commands = [
        line.split("  #")[0].strip()
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.startswith(".venv/bin/p2pfed ")
    ]
    assert len(commands) >= 3
    for k, command in enumerate(commands):
        argv = command.split()[1:]
        if "--resume" in argv:  # an interrupted run to resume: one with no summary yet
            run_dir = argv[argv.index("--resume") + 1]
            setup = ["--set", "protocol.rounds=4", "--set", "checkpoint.every=1"]
            assert main(["run", *setup, "--out", run_dir, "--progress", "off"]) == 0
            (tmp_path / run_dir / "summary.json").unlink()
            argv += ["--progress", "off"]
        elif argv[0] == "run":
            argv += ["--set", "protocol.rounds=2", "--out", f"run{k}", "--progress", "off"]
        assert main(argv) == 0, command
    assert (tmp_path / "torus.png").read_bytes().startswith(b"\x89PNG")


def test_readme_adversaries_block_is_a_valid_section() -> None:
    block = next(b for b in _blocks("yaml") if "adversaries:" in b)
    section = yaml.safe_load(block)["adversaries"]
    cfg = config_from_mapping(
        {
            "protocol": {"kind": "dpsgd"},
            "topology": {"kind": "ring", "n": 8},
            "adversaries": section,
        }
    )
    assert [a.role for a in cfg.adversaries] == ["eavesdropper", "curious_peer", "black_box"]


def test_readme_poisoner_block_is_a_valid_config() -> None:
    block = next(b for b in _blocks("yaml") if "role: poisoner" in b)
    cfg = config_from_mapping(
        {**yaml.safe_load(block), "topology": {"kind": "random_regular", "n": 16, "degree": 4}}
    )
    assert cfg.robust_rule == "clipped_gossip"
    assert [k for k, _ in cfg.poisoners] == [0] and [k for k, _ in cfg.on_path] == [1]


def test_readme_secure_robust_block_is_a_valid_config() -> None:
    block = next(b for b in _blocks("yaml") if "bucket_size" in b)
    cfg = config_from_mapping({**yaml.safe_load(block), "topology": {"kind": "ring", "n": 16}})
    assert cfg.security.aggregation == "secagg" and cfg.protocol.robust.bucket_size == 3


def test_readme_network_block_is_a_valid_config() -> None:
    block = next(b for b in _blocks("yaml") if "partitions:" in b)
    cfg = config_from_mapping({**yaml.safe_load(block), "topology": {"kind": "ring", "n": 16}})
    assert cfg.network.links[0].both is False and cfg.network.partitions[0].end == 9.0


def test_readme_availability_block_is_a_valid_config() -> None:
    block = next(b for b in _blocks("yaml") if "availability:" in b)
    cfg = config_from_mapping({**yaml.safe_load(block), "topology": {"kind": "ring", "n": 16}})
    assert cfg.availability.kind == "churn" and cfg.availability.churn.down_fraction == 0.2
