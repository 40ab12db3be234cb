"""The README's examples work as written (run with fewer rounds)."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

import p2pfed
from p2pfed.cli import main
from p2pfed.config import config_from_mapping

pytestmark = pytest.mark.report  # these runs draw their reports

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


def _commands() -> list[list[str]]:
    """Every command line of the README's bash blocks, split as the shell would."""
    return [
        shlex.split(line, comments=True)
        for block in _blocks("bash")
        for line in block.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_every_readme_command_is_run_by_a_test() -> None:
    """Each kind of README command has its test: p2pfed lines here (the cluster one in
    tests/test_ray_cluster.py), `make run`'s recipe here, the scripts' flags here and the
    scripts themselves in tests/test_scripts.py / test_bench_scale.py, the cluster step's
    `export` / `ray` lines in tests/test_ray_cluster.py. `make test` (this suite) is the only
    exception."""
    scripts_tested = (ROOT / "tests" / "test_scripts.py").read_text() + (
        ROOT / "tests" / "test_bench_scale.py"
    ).read_text()
    cluster_step = [
        shlex.join(shlex.split(line, comments=True))
        for line in README.split("**7. Run on a cluster.**", 1)[1]
        .split("```bash\n", 1)[1]
        .split("```", 1)[0]
        .splitlines()
        if line.strip()
    ]
    kinds = set()
    for argv in _commands():
        if argv[0] == ".venv/bin/p2pfed":
            kinds.add("p2pfed")
        elif argv[:2] in (["make", "run"], ["make", "test"]):
            kinds.add(" ".join(argv))
        elif argv[0] == ".venv/bin/python" and argv[1].startswith("scripts/"):
            name = Path(argv[1]).name
            assert f'"{name}"' in scripts_tested or name == "bench_scale.py", name
            kinds.add("script")
        elif argv[:2] == ["export", "RAY_AUTH_MODE=token"] or argv[0] == ".venv/bin/ray":
            # run there only from the cluster step's block, which that test reads
            assert shlex.join(argv) in cluster_step, argv
            kinds.add("cluster set-up")
        else:
            raise AssertionError(f"a README command no test runs: {' '.join(argv)}")
    assert kinds == {"p2pfed", "make run", "make test", "script", "cluster set-up"}


class _Parsed(Exception):
    pass


def test_readme_script_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags the README gives each script are the script's own (the scripts run, at a
    reduced size, in tests/test_scripts.py)."""
    import argparse
    import importlib.util

    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self: argparse.ArgumentParser, *args: object, **kw: object) -> None:
        original(self, *args, **kw)  # type: ignore[call-overload]
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as when a script runs
    checked = 0
    for argv in _commands():
        if argv[0] != ".venv/bin/python":
            continue
        path = ROOT / argv[1]
        spec = importlib.util.spec_from_file_location(f"readme_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look it up
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [str(path), *argv[2:]])
        with pytest.raises(_Parsed):
            module.main()
        checked += 1
    assert checked >= 8


def _tour_dir(tmp_path: Path) -> Path:
    yaml_text = next(b for b in _blocks("yaml") if "my-experiment.yaml" in b)
    (tmp_path / "my-experiment.yaml").write_text(
        yaml_text.replace("topologies/ring16.yaml", str(ROOT / "topologies" / "ring16.yaml"))
    )
    (tmp_path / "topologies").symlink_to(ROOT / "topologies")
    return tmp_path


def test_readme_cli_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every `.venv/bin/p2pfed ...` line of the README but the sweep (a Ray test below) and
    the cluster one (tests/test_ray_cluster.py), in order, in a folder holding the README's
    experiment file; runs are shortened to 2 rounds and keep the README's --out."""
    monkeypatch.chdir(_tour_dir(tmp_path))
    commands = [
        argv[1:]
        for argv in _commands()
        if argv[0] == ".venv/bin/p2pfed"
        and argv[1] != "sweep"
        and not any("HEAD_IP" in a for a in argv)
    ]
    assert len(commands) >= 10
    for k, argv in enumerate(commands):
        if "--resume" in argv:  # an interrupted run to resume: one with no summary yet
            run_dir = argv[argv.index("--resume") + 1]
            setup = ["--set", "protocol.rounds=4", "--set", "checkpoint.every=1"]
            assert main(["run", *setup, "--out", run_dir, "--progress", "off"]) == 0
            (tmp_path / run_dir / "summary.json").unlink()
            argv = [*argv, "--progress", "off"]
        elif argv[0] == "run":
            out = [] if "--out" in argv else ["--out", f"run{k}"]
            argv = [*argv, "--set", "protocol.rounds=2", *out, "--progress", "off"]
            if "--overwrite" not in argv and "--resume" not in argv:
                argv.append("--overwrite")
        assert main(argv) == 0, " ".join(argv)
    assert (tmp_path / "torus.png").read_bytes().startswith(b"\x89PNG")
    for name in ("tour", "tour-eve", "tour-secagg", "tour-poison", "tour-defence"):
        assert (tmp_path / "runs" / name / "report.html").is_file(), name
    assert "tour-defence" in (tmp_path / "runs" / "tour-comparison.html").read_text()
    attacks = json.loads((tmp_path / "runs" / "tour-secagg" / "summary.json").read_text())
    assert attacks["attacks"][0]["view"] == "masked"


def test_make_run_recipe_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make run`'s p2pfed line (the venv and install steps are CI's own), shortened."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    [line] = [ln.strip() for ln in recipe.splitlines() if "p2pfed" in ln]
    out = str(tmp_path / "runs" / "default")
    argv = shlex.split(line.replace("$(OUT)", out))
    assert argv[0] == "$(BIN)/p2pfed"
    monkeypatch.chdir(tmp_path)
    assert main([*argv[1:], "--set", "protocol.rounds=2", "--progress", "off"]) == 0
    assert (tmp_path / "runs" / "default" / "report.html").is_file()


def test_readme_sweep_command_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ray_local: object
) -> None:
    monkeypatch.chdir(_tour_dir(tmp_path))
    [argv] = [a[1:] for a in _commands() if a[:2] == [".venv/bin/p2pfed", "sweep"]]
    argv = [*argv, "--set", "protocol.rounds=2", "--progress", "off"]
    assert main(argv) == 0
    out = tmp_path / argv[argv.index("--out") + 1]
    sweep = json.loads((out / "sweep.json").read_text())
    assert len(sweep["runs"]) == 4
    assert (out / "comparison.html").read_text().count("<tr>") >= 5


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
