"""Parameter sweeps (p2pfed.sweep): the grid, run names, what a sweep directory may hold and
how a sweep goes on; two Ray tests run tiny sweeps end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from p2pfed.errors import ConfigError
from p2pfed.sweep import (
    COMPARISON_FILE,
    SWEEP_FILE,
    grid_points,
    parse_grid,
    prepare,
    run_names,
    sweep,
)
from tests.conftest import small_config


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small_config(protocol={"rounds": 2})))
    return path


def test_parse_grid_keeps_keys_in_order_and_values_as_text() -> None:
    grid = parse_grid(["protocol.kind=dpsgd,gossip", "partition.alpha=0.1, 1.0", "seed=3"])
    assert grid == [
        ("protocol.kind", ["dpsgd", "gossip"]),
        ("partition.alpha", ["0.1", "1.0"]),
        ("seed", ["3"]),
    ]


@pytest.mark.parametrize(
    ("items", "says"),
    [
        (["protocol.kind"], "must look like"),
        (["=1,2"], "empty key part"),
        (["protocol..kind=dpsgd"], "empty key part"),
        (["seed="], "no values"),
        (["seed=1,,2"], "empty value"),
        (["seed=1,"], "empty value"),
        (["seed=1,2,1"], "'1', '1' are the same value"),
        (["partition.alpha=0.1,0.10"], "'0.1', '0.10' are the same value"),
        (["seed=1", "seed=2"], "given twice; list all its values"),
    ],
)
def test_parse_grid_refuses_malformed_items(items: list[str], says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)) as err:
        parse_grid(items)
    assert err.value.source == "--grid"


def test_grid_points_are_the_product_first_key_slowest() -> None:
    points = grid_points([("a", ["1", "2"]), ("b", ["x", "y", "z"])])
    assert [(p["a"], p["b"]) for p in points] == [
        ("1", "x"),
        ("1", "y"),
        ("1", "z"),
        ("2", "x"),
        ("2", "y"),
        ("2", "z"),
    ]
    assert all(list(p) == ["a", "b"] for p in points)


def test_run_names_are_readable_unique_and_safe() -> None:
    points = grid_points(
        [
            ("protocol.kind", ["gossip", "dpsgd"]),
            ("topology.file", ["topologies/ring16.yaml", "../x y*?.yaml", "v" * 300]),
        ]
    )
    names = run_names(points)
    assert names[0] == "000-protocol.kind=gossip,topology.file=topologies_ring16.yaml"
    assert names[1] == "001-protocol.kind=gossip,topology.file=.._x_y__.yaml"
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Za-z0-9._,=+-]{1,130}", n) for n in names)
    assert names == sorted(names)  # directory listings show the grid's order
    wide = run_names(grid_points([("seed", [str(i) for i in range(1001)])]))
    assert wide[0] == "0000-seed=0" and wide[-1] == "1000-seed=1000"


def test_a_point_with_a_bad_value_fails_before_anything_is_written(
    config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=re.escape("grid point 001-protocol.rounds=0")) as err:
        prepare(config_file, [("protocol.rounds", ["2", "0"])], out=out)
    assert err.value.key == "protocol.rounds"
    assert not out.exists()


def test_ray_runtime_is_refused(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="in-process inside one Ray task") as err:
        sweep(config_file, [("seed", ["1", "2"])], out=out, overrides=["runtime.kind=ray"])
    assert err.value.key == "runtime.kind"
    assert not out.exists()


def test_a_non_empty_directory_without_a_sweep_is_refused_unless_overwrite(
    config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no sweep") as err:
        prepare(config_file, [("seed", ["1", "2"])], out=out)
    assert err.value.source == "--out"
    plan = prepare(config_file, [("seed", ["1", "2"])], out=out, overwrite=True)
    assert [r.action for r in plan.runs] == ["run", "run"]
    assert (out / "notes.txt").read_text() == "mine"
    record = json.loads((out / SWEEP_FILE).read_text())
    assert record["config"] == str(config_file.resolve())
    assert record["grid"] == [{"key": "seed", "values": ["1", "2"]}]
    assert [r["name"] for r in record["runs"]] == ["000-seed=1", "001-seed=2"]
    assert {r["status"] for r in record["runs"]} == {"pending"}


def test_another_sweep_in_out_is_refused_and_overwrite_removes_only_its_runs(
    config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    plan = prepare(config_file, [("seed", ["1", "2"])], out=out)
    for r in plan.runs:  # stand-ins for the runs' directories
        r.run_dir.mkdir()
        (r.run_dir / "metrics.jsonl").write_text("")
    (out / COMPARISON_FILE).write_text("old")
    (out / "notes.txt").write_text("mine")
    for grid, overrides, what in [
        ([("seed", ["1", "3"])], [], "different resolved configs, grid points"),
        ([("seed", ["1", "2"])], ["protocol.rounds=3"], "different resolved configs"),
    ]:
        with pytest.raises(ConfigError, match=f"holds another sweep \\({what}\\).*--overwrite"):
            prepare(config_file, grid, out=out, overrides=overrides)
    config_file.write_text(config_file.read_text() + "\n# a comment changes no config\n")
    assert [r.action for r in prepare(config_file, [("seed", ["1", "2"])], out=out).runs] == [
        "run",
        "run",
    ]
    edited = yaml.safe_load(config_file.read_text())
    edited["training"]["lr"] = 0.05
    config_file.write_text(yaml.safe_dump(edited))
    with pytest.raises(ConfigError, match=r"\(different resolved configs\)"):
        prepare(config_file, [("seed", ["1", "2"])], out=out)
    plan = prepare(config_file, [("seed", ["7"])], out=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", SWEEP_FILE]
    assert [r.name for r in plan.runs] == ["000-seed=7"]


def test_an_edited_npz_data_file_makes_another_sweep(tmp_path: Path) -> None:
    """The identity covers a data file's contents, not only its path."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "mine.npz"
    np.savez(data, x=rng.normal(size=(60, 8)).astype(np.float32), y=np.arange(60) % 3)
    cfg = small_config(protocol={"rounds": 2})
    cfg["data"] = {"dataset": "npz", "path": "mine.npz"}  # relative to the config file
    config = tmp_path / "npz.yaml"
    config.write_text(yaml.safe_dump(cfg))
    out, grid = tmp_path / "sweep", [("seed", ["1", "2"])]
    prepare(config, grid, out=out)
    record = json.loads((out / SWEEP_FILE).read_text())
    assert list(record["data_sha256"]) == [str(data.resolve())]
    assert [r.action for r in prepare(config, grid, out=out).runs] == ["run", "run"]
    np.savez(data, x=rng.normal(size=(60, 8)).astype(np.float32), y=np.arange(60) % 3)
    with pytest.raises(ConfigError, match=r"holds another sweep \(different data files\)"):
        prepare(config, grid, out=out)
    data.unlink()  # unreadable: recorded as such; the runs themselves say why
    prepare(config, grid, out=tmp_path / "gone")
    gone = json.loads((tmp_path / "gone" / SWEEP_FILE).read_text())
    assert list(gone["data_sha256"].values()) == [None]


def test_the_same_sweep_goes_on_where_it_stopped(config_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    grid = [("seed", ["1", "2", "3", "4"])]
    plan = prepare(config_file, grid, out=out)
    finished, killed, failed, _ = (r.run_dir for r in plan.runs)
    for d in (finished, killed, failed):
        d.mkdir()
    summary = {"status": "completed", "final": {"mean_acc": 0.5, "min_acc": 0.25}}
    (finished / "summary.json").write_text(json.dumps(summary))
    (killed / "checkpoint.pt").write_bytes(b"")
    (failed / "summary.json").write_text(json.dumps({"status": "failed"}))
    (failed / "checkpoint.pt").write_bytes(b"")
    plan = prepare(config_file, grid, out=out)
    assert [r.action for r in plan.runs] == ["skip", "resume", "run", "run"]
    record = json.loads((out / SWEEP_FILE).read_text())
    assert [r["status"] for r in record["runs"]] == ["completed", "pending", "pending", "pending"]
    assert record["runs"][0]["headline"]["mean_acc"] == 0.5
    plan = prepare(config_file, grid, out=out, overwrite=True)  # starts over
    assert [r.action for r in plan.runs] == ["run"] * 4
    assert not finished.exists()


def test_bad_progress_and_parallel_are_refused(config_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one of") as err:
        sweep(config_file, [("seed", ["1"])], out=tmp_path / "a", progress="loud")
    assert err.value.source == "--progress"
    with pytest.raises(ConfigError, match="at least 1") as err:
        sweep(config_file, [("seed", ["1"])], out=tmp_path / "b", parallel=0)
    assert err.value.source == "--parallel"


def _summary(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / "summary.json").read_text())  # type: ignore[no-any-return]


def test_a_sweep_runs_every_point_on_ray(
    ray_local: object, config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    result = sweep(config_file, parse_grid(["partition.alpha=0.1,1.0"]), out=out, progress="plain")
    assert [r.status for r in result.runs] == ["completed", "completed"]
    assert [r.name for r in result.runs] == ["000-partition.alpha=0.1", "001-partition.alpha=1.0"]
    for r in result.runs:
        summary = _summary(r.run_dir)
        assert summary["status"] == "completed"
        assert r.headline["mean_acc"] == summary["final"]["mean_acc"]
        assert r.headline["bytes_total"] == summary["bytes"]["total"] > 0
    alphas = {
        yaml.safe_load((r.run_dir / "config.yaml").read_text())["partition"]["alpha"]
        for r in result.runs
    }
    assert alphas == {0.1, 1.0}
    record = json.loads((out / SWEEP_FILE).read_text())
    assert [r["status"] for r in record["runs"]] == ["completed", "completed"]
    assert [r["point"] for r in record["runs"]] == [
        {"partition.alpha": "0.1"},
        {"partition.alpha": "1.0"},
    ]
    lines = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("sweep: ") and " done: 00" in line for line in lines) == 2
    assert any("sweep: 2/2 done: " in line and "completed, mean acc" in line for line in lines)
    assert result.comparison == out / COMPARISON_FILE
    assert result.comparison.is_file()
    assert record["comparison"] == COMPARISON_FILE


def test_a_rerun_sweep_skips_finished_runs_and_redoes_the_rest(
    ray_local: object, config_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    grid = parse_grid(["partition.alpha=0.1,0.5,1.0"])
    kwargs = {"out": out, "overrides": ["checkpoint.every=1"], "progress": "off"}
    first = sweep(config_file, grid, **kwargs)  # type: ignore[arg-type]
    assert [r.status for r in first.runs] == ["completed"] * 3
    killed, failed, kept = (r.run_dir for r in first.runs)
    (killed / "summary.json").unlink()  # as if killed after a checkpoint
    assert (killed / "checkpoint.pt").is_file()
    (failed / "summary.json").write_text(json.dumps({**_summary(failed), "status": "failed"}))
    before = (kept / "metrics.jsonl").stat()

    again = sweep(config_file, grid, **kwargs)  # type: ignore[arg-type]

    assert [r.status for r in again.runs] == ["completed", "completed", "skipped"]
    after = (kept / "metrics.jsonl").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "run_resumed" in (killed / "events.jsonl").read_text()
    assert "run_resumed" not in (failed / "events.jsonl").read_text()
    for d in (killed, failed, kept):
        assert _summary(d)["status"] == "completed"
    # a resumed run under virtual time ends exactly where the first one did
    assert again.runs[0].headline["mean_acc"] == first.runs[0].headline["mean_acc"]
    assert again.runs[2].headline == first.runs[2].headline
    record = json.loads((out / SWEEP_FILE).read_text())
    assert [r["status"] for r in record["runs"]] == ["completed"] * 3


def test_cli_sweep_refuses_a_bad_grid_before_anything_runs(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pfed.cli import main

    out = tmp_path / "never"
    assert main(["sweep", str(config_file), "--grid", "protocol.kind", "--out", str(out)]) == 2
    assert "--grid" in capsys.readouterr().err
    code = main(
        ["sweep", str(config_file), "--grid", "protocol.kind=dpsgd,nope", "--out", str(out)]
    )
    assert code == 2 and "protocol.kind" in capsys.readouterr().err
    assert not out.exists()


def test_a_task_reserves_its_threads_and_a_gpu_when_it_trains_on_one() -> None:
    from p2pfed.config import config_from_mapping
    from p2pfed.sweep import resources

    def cfg(**runtime: object) -> object:
        return config_from_mapping(small_config(runtime=runtime))

    assert resources(cfg(), 0) == {"num_cpus": 1.0, "num_gpus": 0.0}  # type: ignore[arg-type]
    assert resources(cfg(torch_threads=2), 0)["num_cpus"] == 2.0  # type: ignore[arg-type]
    assert resources(cfg(device="cuda"), 0)["num_gpus"] == 1.0  # type: ignore[arg-type]
    assert resources(cfg(device="auto"), 0)["num_gpus"] == 0.0  # type: ignore[arg-type]
    assert resources(cfg(device="auto"), 2)["num_gpus"] == 1.0  # type: ignore[arg-type]
    share = resources(cfg(device="cuda"), 1, 0.25)  # type: ignore[arg-type]
    assert share == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert resources(cfg(), 0, 0.25)["num_gpus"] == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5, float("nan")])
def test_a_gpu_share_ray_cannot_take_is_refused_before_anything_runs(
    share: float, config_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="fraction of a GPU") as err:
        sweep(config_file, [("seed", ["1"])], out=tmp_path / "never", gpus_per_run=share)
    assert err.value.source == "--gpus-per-run"
    assert not (tmp_path / "never").exists()


def test_cli_passes_the_gpu_share_on(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from p2pfed.cli import main

    out = tmp_path / "never"
    argv = ["sweep", str(config_file), "--grid", "seed=1", "--out", str(out)]
    assert main([*argv, "--gpus-per-run", "1.5", "--progress", "off"]) == 2
    assert "--gpus-per-run" in capsys.readouterr().err
    assert not out.exists()


def test_an_unusable_checkpoint_reruns_the_point_and_says_why(tmp_path: Path) -> None:
    from p2pfed.config import config_from_mapping
    from p2pfed.sweep import run_point

    cfg = config_from_mapping(small_config(protocol={"rounds": 2}))
    run_dir = tmp_path / "000-seed=1"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    outcome = run_point(cfg, str(run_dir), "resume", "small.yaml")
    assert outcome["status"] == "completed"
    assert "could not be used" in outcome["note"] and "from the start" in outcome["note"]
    assert _summary(run_dir)["status"] == "completed"


def test_a_failing_point_is_recorded_and_the_others_go_on(
    ray_local: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a ring a neighbourhood holds 3 models: a trimmed mean can drop 1 from each end,
    not 2. That is found when the experiment is built, inside the point's task."""
    from p2pfed.cli import main

    config = tmp_path / "trim.yaml"
    robust = {"rounds": 2, "robust": {"rule": "trimmed_mean"}}
    config.write_text(yaml.safe_dump(small_config(protocol=robust)))
    out = tmp_path / "sweep"
    argv = ["sweep", str(config), "--grid", "protocol.robust.f=1,2", "--out", str(out)]
    assert main([*argv, "--progress", "off"]) == 1
    printed = capsys.readouterr().out
    assert "completed  000-protocol.robust.f=1" in printed
    assert "failed     001-protocol.robust.f=2" in printed
    record = json.loads((out / SWEEP_FILE).read_text())
    assert [r["status"] for r in record["runs"]] == ["completed", "failed"]
    assert record["runs"][1]["error"].startswith("ConfigError: ")
    assert "trim.yaml: protocol.robust: trimmed_mean trims 2" in record["runs"][1]["error"]
    comparison = (out / COMPARISON_FILE).read_text()
    assert "000-protocol.robust.f=1" in comparison and "001-protocol.robust.f=2" not in comparison
