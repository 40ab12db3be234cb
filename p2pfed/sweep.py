"""Parameter sweeps: one experiment over a grid of config values, the runs in parallel on Ray.

``p2pfed sweep CONFIG --grid protocol.kind=dpsgd,gossip --grid partition.alpha=0.1,1.0``
runs every combination of the values (the Cartesian product, the first key varying
slowest), each as an ordinary run of :func:`p2pfed.experiment.run` with the point's values
applied as overrides after ``--set``'s. Values are YAML text, as in ``--set``.

The sweep directory::

    OUT/
      sweep.json        what was asked (the config file's absolute path and the SHA-256 of
                        its text, the overrides, the grid) and every run: name, grid point,
                        status (pending, completed, failed), error, headline numbers;
                        written before the first run starts, rewritten (atomically) as
                        each run ends
      000-protocol.kind=dpsgd,partition.alpha=0.1/
      001-protocol.kind=dpsgd,partition.alpha=1.0/
      ...               one run directory per grid point (see p2pfed.results): its index,
                        then its values, characters unsafe in file names replaced by _
      comparison.html   the comparison report of the finished runs (p2pfed.report)

Resuming: running the same sweep again (the same resolved config at every point, under the
same run names, and for ``npz`` data the same file contents) goes on where the last one
stopped; an edited topology or data file or changed defaults make it another sweep, a value
written ``0.10`` instead of ``0.1`` does not. A run
whose ``summary.json`` says it finished (``completed``, or ``time_limit``: a finished run
too) is skipped, and gets its report drawn if it was killed before that. A run with a
``checkpoint.pt`` and no finished summary (killed midway, or while its attacks were being
analysed) goes on from its checkpoint with :func:`p2pfed.experiment.resume`; anything else
(failed, never started, no checkpoint yet) runs again from the start. A ``sweep.json`` that
asked for something else is refused: ``overwrite`` removes the run directories it lists
(and its ``comparison.html``), nothing else. A non-empty ``OUT`` without a ``sweep.json``
is refused unless ``overwrite``.

Why Ray tasks: each experiment trains its peers single-threaded in one process
(``runtime.torch_threads``, 1 by default: many small models train fastest that way), so a
sweep is embarrassingly parallel and one run per core is the best use of a machine or a
cluster. Ray places the tasks and keeps at most ``parallel`` (default: the cluster's CPUs)
in flight. Each task reserves ``runtime.torch_threads`` CPUs, and one GPU (or the share
``gpus_per_run`` says) when the run asks for ``runtime.device: cuda`` (or ``auto`` on a
cluster that has GPUs): Ray hides the GPUs from a task that reserves none. A run inside a
task is always in-process (``runtime.kind: ray`` is refused: it would start actors from
inside a task). The driver resolves and validates every point's config before anything
runs, so a grid with a value the config refuses fails at once; what only building the
experiment finds (a robust rule's precondition on the actual graph, say) fails that point's
run alone. The driver ships the resolved config to the task (topology files inlined, data
paths absolute), so nothing depends on the worker's working directory; on a cluster,
``OUT`` must be on a file system every node sees.

A run that raises, or whose worker dies, is recorded as failed with its error and the
others go on; tasks are not retried (running the sweep again retries, from a checkpoint
where there is one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import shutil
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from rich.progress import BarColumn, ProgressColumn, TextColumn

from p2pfed.config import DEFAULT_SOURCE, ExperimentConfig, load_config
from p2pfed.errors import CheckpointError, ConfigError, P2PFedError
from p2pfed.progress import ProgressDisplay
from p2pfed.report import COMPARISON_FILE, REPORT_FILE, write_report
from p2pfed.results import FINISHED, headline_figures, read_json, read_summary, write_atomic
from p2pfed.yamlio import parse_yaml

#: the sweep's own record, in its directory
SWEEP_FILE = "sweep.json"
# longest run directory name before the index: file systems allow 255 bytes
_LABEL_MAX = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]")
_PROGRESS = ("auto", "bar", "plain", "off")
_FORMAT = 1  # sweep.json's layout

Grid = list[tuple[str, list[str]]]
RunStatus = Literal["completed", "failed", "skipped"]
Action = Literal["run", "resume", "skip"]


@dataclass(frozen=True)
class SweepRun:
    """One grid point's run as a sweep left it.

    ``status``: ``completed`` (ran now, or resumed from its checkpoint, and finished),
    ``failed`` (``error`` says why) or ``skipped`` (finished in an earlier sweep).
    ``headline``: final mean and min accuracy, total bytes, virtual and wall time.
    """

    name: str
    point: dict[str, str]
    run_dir: Path
    status: RunStatus
    error: str | None = None
    headline: dict[str, Any] = field(default_factory=dict)
    note: str | None = None  # what a reader should know: a checkpoint that could not be used

    @property
    def finished(self) -> bool:
        return self.status != "failed"


@dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns: the sweep directory, every run, the comparison report
    (``None`` when no run finished)."""

    out: Path
    runs: list[SweepRun]
    comparison: Path | None = None

    @property
    def failed(self) -> list[SweepRun]:
        return [r for r in self.runs if r.status == "failed"]


@dataclass(frozen=True)
class PlannedRun:
    """A grid point, its resolved config, and what the sweep will do with it."""

    name: str
    point: dict[str, str]
    run_dir: Path
    config: ExperimentConfig
    action: Action


@dataclass(frozen=True)
class SweepPlan:
    """What :func:`prepare` decided: the sweep directory, its record, every run."""

    out: Path
    record: dict[str, Any]  # sweep.json's contents
    runs: list[PlannedRun]
    source: str  # the config as named in error messages


# --- the grid -----------------------------------------------------------------------------


def parse_grid(items: Sequence[str]) -> Grid:
    """Parse ``path.to.key=v1,v2,...`` items (``--grid``) into ``[(key, [values])]``.

    Values stay text: each is parsed as YAML when applied, like ``--set``'s. A comma always
    separates values, so a list cannot be a value here.
    """
    grid: Grid = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{item!r} must look like path.to.key=v1,v2,...", source="--grid")
        key, _, text = item.partition("=")
        key = key.strip()
        if not all(key.split(".")):
            raise ConfigError(f"{item!r} has an empty key part", source="--grid")
        if not text.strip():
            raise ConfigError(f"{item!r} gives no values", source="--grid", key=key)
        grid.append((key, [v.strip() for v in text.split(",")]))
    _check_grid(grid)
    return grid


def _check_grid(grid: Sequence[tuple[str, Sequence[str]]]) -> None:
    seen: set[str] = set()
    for key, values in grid:
        if key in seen:
            raise ConfigError(
                "given twice; list all its values in one --grid", source="--grid", key=key
            )
        seen.add(key)
        if not values:
            raise ConfigError("no values", source="--grid", key=key)
        if any(not v.strip() for v in values):
            raise ConfigError(
                "an empty value (two commas in a row, or one at an end)", source="--grid", key=key
            )
        parsed = [json.dumps(parse_yaml(v, "--grid"), sort_keys=True, default=str) for v in values]
        twice = [v for v, p in zip(values, parsed, strict=True) if parsed.count(p) > 1]
        if twice:
            raise ConfigError(
                f"values {', '.join(map(repr, twice))} are the same value", source="--grid", key=key
            )


def grid_points(grid: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = [k for k, _ in grid]
    return [
        dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(v for _, v in grid))
    ]


def run_names(points: Sequence[dict[str, str]]) -> list[str]:
    """One directory name per point: a zero-padded index (unique, sorts in grid order), then
    ``key=value`` pairs joined by commas, with characters unsafe in file names replaced by
    ``_`` and long labels cut (the index keeps them unique)."""
    width = max(3, len(str(len(points) - 1)))
    names = []
    for i, point in enumerate(points):
        label = _UNSAFE.sub("_", ",".join(f"{k}={v}" for k, v in point.items()))[:_LABEL_MAX]
        names.append(f"{i:0{width}d}-{label}" if label else f"{i:0{width}d}")
    return names


# --- planning (no Ray) --------------------------------------------------------------------


def prepare(
    config: str | Path | None,
    grid: Sequence[tuple[str, Sequence[str]]],
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> SweepPlan:
    """Validate every point's config, check ``out`` and write its ``sweep.json``; decide
    each run's action (see the module docstring for the resume rules). Starts nothing."""
    _check_grid(grid)
    if not grid:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2,...", source="--grid")
    out = Path(out)
    points = grid_points(grid)
    names = run_names(points)
    source = str(config) if config is not None else DEFAULT_SOURCE
    configs = [
        _resolve(config, overrides, p, n, source) for p, n in zip(points, names, strict=True)
    ]
    record: dict[str, Any] = {
        "format": _FORMAT,
        **_identity(config, configs, names),
        **_asked(overrides, grid),
        "runs": [
            {"name": n, "point": p, "status": "pending", "error": None, "headline": {}}
            for n, p in zip(names, points, strict=True)
        ],
        "comparison": None,
    }
    fresh = _claim(out, record, overwrite)
    runs = []
    for entry, cfg in zip(record["runs"], configs, strict=True):
        run_dir = out / entry["name"]
        action: Action = "run" if fresh else _action(run_dir)
        if action == "skip":
            entry["status"] = "completed"
            entry["headline"] = headline_figures(read_summary(run_dir) or {})
        runs.append(PlannedRun(entry["name"], entry["point"], run_dir, cfg, action))
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / SWEEP_FILE, record)
    return SweepPlan(out, record, runs, source)


def _resolve(
    config: str | Path | None,
    overrides: Sequence[str],
    point: dict[str, str],
    name: str,
    source: str,
) -> ExperimentConfig:
    """One point's config, resolved here in the driver: a bad grid fails before any run."""
    try:
        cfg = load_config(config, [*overrides, *(f"{k}={v}" for k, v in point.items())])
    except ConfigError as exc:
        raise ConfigError(
            f"{exc.message} (grid point {name})", source=exc.source, key=exc.key
        ) from None
    if cfg.runtime.kind == "ray":
        raise ConfigError(
            "a sweep runs each experiment in-process inside one Ray task; use runtime.kind local",
            source=source,
            key="runtime.kind",
        )
    return cfg


def _identity(
    config: str | Path | None, configs: Sequence[ExperimentConfig], names: Sequence[str]
) -> dict[str, Any]:
    """What makes two sweeps the same sweep (so the second may go on from the first): the
    resolved config of every point, under the same run names. ``config`` is recorded for the
    reader; a moved file with the same content is still the same sweep."""
    digest = hashlib.sha256()
    for cfg in configs:
        digest.update(cfg.to_yaml().encode())
        digest.update(b"\0")
    identity: dict[str, Any] = {
        "config": str(Path(config).resolve()) if config is not None else None,
        "configs_sha256": digest.hexdigest(),
        "names": list(names),
    }
    files = sorted({c.data.path for c in configs if c.data.dataset == "npz" and c.data.path})
    if files:  # only then: a sweep on bundled data records no such key
        identity["data_sha256"] = {f: _file_sha256(Path(f).expanduser()) for f in files}
    return identity


def _file_sha256(path: Path) -> str | None:
    """The file's SHA-256 (``None`` when it cannot be read: its runs fail with the reason)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _asked(overrides: Sequence[str], grid: Sequence[tuple[str, Sequence[str]]]) -> dict[str, Any]:
    """What the user asked for, as written (for the reader; the identity is above)."""
    return {"overrides": list(overrides), "grid": [{"key": k, "values": list(v)} for k, v in grid]}


_IDENTITY = {  # sweep.json's keys that make a sweep, and what they are called
    "configs_sha256": "resolved configs",
    "names": "grid points",
    "data_sha256": "data files",  # present only for npz data
}


def _claim(out: Path, record: dict[str, Any], overwrite: bool) -> bool:
    """Check what ``out`` holds; returns whether every run starts afresh (``False``: the
    same sweep is there already and goes on)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file, not a directory", source="--out")
    old_file = out / SWEEP_FILE
    if old_file.exists():
        old = read_json(old_file)
        same = old is not None and all(old.get(k) == record.get(k) for k in _IDENTITY)
        if same and not overwrite:
            return False
        if not same and not overwrite:
            differs = (
                "its sweep.json cannot be read"
                if old is None
                else "different "
                + ", ".join(label for k, label in _IDENTITY.items() if old.get(k) != record.get(k))
            )
            raise ConfigError(
                f"{out} holds another sweep ({differs}); choose another --out, or pass "
                "--overwrite to replace it (that deletes the run directories its sweep.json lists)",
                source="--out",
            )
        _remove_runs(out, old)
        return True
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"{out} is not empty and holds no sweep; choose another --out or pass --overwrite",
            source="--out",
        )
    return True


def _remove_runs(out: Path, old: dict[str, Any] | None) -> None:
    """Delete the run directories an old ``sweep.json`` lists (plain names inside ``out``
    only) and its comparison report; nothing else."""
    runs = old.get("runs") if old is not None else None
    for entry in runs if isinstance(runs, list) else []:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            continue
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    (out / COMPARISON_FILE).unlink(missing_ok=True)


def _action(run_dir: Path) -> Action:
    summary = read_summary(run_dir)
    if summary is not None and summary.get("status") in FINISHED:
        return "skip"
    if summary is None and (run_dir / "checkpoint.pt").is_file():
        return "resume"
    return "run"


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2) + "\n")


# --- running ------------------------------------------------------------------------------


def run_point(
    config: ExperimentConfig, run_dir: str, action: Action, source: str
) -> dict[str, Any]:
    """One grid point, in this process (the body of a sweep's Ray task): run it, or resume
    it from its checkpoint (from the start if the checkpoint cannot be used). Returns its
    status and headline, or the error that stopped it; never raises."""
    from p2pfed.experiment import resume, run

    note = None
    try:
        result = None
        if action == "resume":
            try:
                result = resume(run_dir, progress="off")
            except CheckpointError as exc:  # unusable: start again instead, and say why
                note = f"its checkpoint could not be used ({exc}); it ran again from the start"
        if result is None:
            result = run(config, out=run_dir, progress="off", overwrite=True)
    except ConfigError as exc:
        if exc.source == "<config>":  # the resolved config object: name the file instead
            exc = ConfigError(exc.message, source=source, key=exc.key)
        return {"status": "failed", "error": f"ConfigError: {exc}", "note": note}
    except Exception as exc:
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "note": note}
    status = result.summary.get("status")
    return {
        "status": "completed" if status in FINISHED else "failed",
        "error": None if status in FINISHED else f"the run ended with status {status}",
        "note": note,
        "headline": headline_figures(result.summary),
    }


def sweep(
    config: str | Path | None,
    grid: Sequence[tuple[str, Sequence[str]]],
    *,
    out: str | Path,
    overrides: Sequence[str] = (),
    address: str | None = None,
    parallel: int | None = None,
    progress: str = "auto",
    overwrite: bool = False,
    gpus_per_run: float = 1.0,
) -> SweepResult:
    """Run ``config`` at every point of ``grid`` as Ray tasks, at most ``parallel`` at once
    (default: the cluster's CPUs), into ``out`` (one run directory per point, ``sweep.json``,
    ``comparison.html``); go on with a partly finished sweep there (module docstring).

    ``address`` as for ``p2pfed run --address``: ``None`` starts a private Ray instance
    (shut down at the end), ``auto`` or ``HOST:PORT`` joins a cluster; an instance already
    running in this process is used as it is. ``progress``: ``auto`` (a bar on a terminal,
    lines otherwise), ``bar``, ``plain`` or ``off``, on stderr. ``gpus_per_run``: the share
    of a GPU each run that trains on one reserves (``0.25`` puts four runs on a GPU; Ray
    takes a fraction below 1 or a whole number). A bad grid, config or
    ``out`` raises :class:`~p2pfed.errors.ConfigError` before anything runs; a failed run
    does not raise (see :attr:`SweepResult.failed`).
    """
    if progress not in _PROGRESS:
        raise ConfigError(f"{progress!r} is not one of {', '.join(_PROGRESS)}", source="--progress")
    if parallel is not None and parallel < 1:
        raise ConfigError(f"must be at least 1, not {parallel}", source="--parallel")
    if not (0 < gpus_per_run < 1 or (gpus_per_run >= 1 and float(gpus_per_run).is_integer())):
        raise ConfigError(
            f"must be a fraction of a GPU (0 < x < 1) or a whole number, not {gpus_per_run}",
            source="--gpus-per-run",
        )
    plan = prepare(config, grid, out=out, overrides=overrides, overwrite=overwrite)
    runs: dict[int, SweepRun] = {
        i: SweepRun(
            p.name, p.point, p.run_dir, "skipped", headline=plan.record["runs"][i]["headline"]
        )
        for i, p in enumerate(plan.runs)
        if p.action == "skip"
    }
    for i, run in runs.items():  # finished earlier, but killed before its report was drawn
        if not (run.run_dir / REPORT_FILE).exists():
            try:
                write_report(run.run_dir)
            except (P2PFedError, OSError) as exc:
                runs[i] = dataclasses.replace(run, note=f"its report could not be drawn: {exc}")
    todo = deque(i for i, p in enumerate(plan.runs) if p.action != "skip")
    with _SweepProgress(progress, len(plan.runs), len(runs)) as bar:
        if todo:
            _execute(plan, todo, runs, address, parallel, gpus_per_run, bar)
    ordered = [runs[i] for i in range(len(plan.runs))]
    comparison = None
    done = [r.run_dir for r in ordered if r.finished]
    if done:
        from p2pfed.report import write_comparison

        comparison = write_comparison(done, plan.out / COMPARISON_FILE)
        plan.record["comparison"] = COMPARISON_FILE
        _write_json(plan.out / SWEEP_FILE, plan.record)
    return SweepResult(plan.out, ordered, comparison)


def _execute(
    plan: SweepPlan,
    todo: deque[int],
    runs: dict[int, SweepRun],
    address: str | None,
    parallel: int | None,
    gpus_per_run: float,
    bar: _SweepProgress,
) -> None:
    """Run the pending points as Ray tasks, recording each as it ends."""
    import ray
    from ray.exceptions import RayError

    from p2pfed.runtime.ray_runtime import connect

    started = connect(address)
    in_flight: dict[Any, int] = {}
    try:
        limit = parallel or max(1, int(ray.cluster_resources().get("CPU", 1)))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        # a worker that dies is not retried: the failure is recorded, a rerun retries it
        task = ray.remote(max_retries=0)(run_point)
        while todo or in_flight:
            while todo and len(in_flight) < limit:
                i = todo.popleft()
                p = plan.runs[i]
                ref = task.options(**resources(p.config, gpus, gpus_per_run)).remote(
                    p.config, str(p.run_dir.resolve()), p.action, plan.source
                )
                in_flight[ref] = i
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                i = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except RayError as exc:
                    reason = (str(exc).strip().splitlines() or [""])[0][:500]
                    outcome = {"status": "failed", "error": f"{type(exc).__name__}: {reason}"}
                p = plan.runs[i]
                runs[i] = SweepRun(
                    p.name,
                    p.point,
                    p.run_dir,
                    outcome["status"],
                    outcome.get("error"),
                    outcome.get("headline") or {},
                    outcome.get("note"),
                )
                entry = plan.record["runs"][i]
                entry.update(
                    status=outcome["status"],
                    error=outcome.get("error"),
                    headline=outcome.get("headline") or {},
                    note=outcome.get("note"),
                )
                _write_json(plan.out / SWEEP_FILE, plan.record)
                bar.finished(len(runs), runs[i])
    except BaseException:
        for ref in in_flight:  # interrupted: their run directories resume next time
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def resources(
    cfg: ExperimentConfig, cluster_gpus: float, gpus_per_run: float = 1.0
) -> dict[str, float]:
    """What one run's task reserves: its torch threads' CPUs, and ``gpus_per_run`` of a GPU
    when it trains on one (Ray hides the GPUs from a task that reserves none)."""
    device = cfg.runtime.device
    gpu = device == "cuda" or (device == "auto" and cluster_gpus > 0)
    return {
        "num_cpus": float(cfg.runtime.torch_threads),
        "num_gpus": float(gpus_per_run) if gpu else 0.0,
    }


class _SweepProgress(ProgressDisplay):
    """Runs ended against the total: a rich bar, one line per run, or nothing (stderr)."""

    def __init__(self, mode: str, total: int, skipped: int, stream: IO[str] | None = None):
        super().__init__(mode, stream)
        self.total = total
        self.skipped = skipped
        self.failures = 0
        self._task: Any = None

    def _columns(self) -> list[ProgressColumn]:
        return [
            TextColumn("[bold]sweep"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} runs"),
            TextColumn("{task.fields[failed]} failed"),
        ]

    def _started(self) -> None:
        if self._bar is not None:
            self._task = self._bar.add_task(
                "sweep", total=self.total, completed=self.skipped, failed=0
            )
        elif self.mode == "plain" and self.skipped:
            print(
                f"sweep: {self.skipped}/{self.total} done already (skipped)",
                file=self.stream,
                flush=True,
            )

    def finished(self, done: int, run: SweepRun) -> None:
        self.failures += run.status == "failed"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, failed=self.failures)
        elif self.mode == "plain":
            if run.status == "failed":
                tail = f"failed: {run.error}"
            else:
                acc = run.headline.get("mean_acc")
                tail = f"{run.status}, mean acc {acc:.3f}" if acc is not None else run.status
            print(
                f"sweep: {done}/{self.total} done: {run.name} {tail}", file=self.stream, flush=True
            )


__all__ = [
    "COMPARISON_FILE",
    "SWEEP_FILE",
    "PlannedRun",
    "SweepPlan",
    "SweepResult",
    "SweepRun",
    "grid_points",
    "parse_grid",
    "prepare",
    "resources",
    "run_names",
    "run_point",
    "sweep",
]
