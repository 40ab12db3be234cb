"""How p2pfed scales in one process: 10,000 gossiping peers and a 1,000-client secagg FedAvg.

    .venv/bin/python scripts/bench_scale.py [--peers 10000] [--secagg-peers 1000]
        [--epochs 10] [--degree 8] [--num-shares 32] [--only gossip|secagg]
        [--checkpoint-every TICKS] [--profile DIR] [--top 25] [--json PATH] [--out DIR]
        [--quick]

Two workloads, each run once with ``p2pfed.run`` on the in-process runtime
(``runtime.kind: local``, deterministic virtual time), one after the other in this process:

* gossip: ``--peers`` peers (10,000), seeded synthetic data (``make_classification``, 32
  features, 10 classes, 200 training samples per peer, IID shards), logistic regression
  (330 parameters), a random ``--degree``-regular graph (8), asynchronous pairwise gossip.
* secagg: ``--secagg-peers`` clients (1,000) and a coordinator running FedAvg under
  ``security.aggregation: secagg`` (pairwise masks, Shamir shares, dropout recovery) on the
  same data and model. The masking graph is SecAgg+'s sparse one: ``security.num_shares`` =
  ``--num-shares`` (32) members hold shares of each client's secrets and mask with it; the
  reconstruction threshold is the default, ceil(2/3 of num_shares). ``--num-shares 0``
  asks for plain SecAgg (the whole group), whose cost per client grows with the group:
  measured here, 3 rounds took 6.4 s with 50 clients and 41.9 s with 100 (SecAgg+ with 32
  holders: 3.3 s and 7.0 s), so 1,000 clients are out of reach.

"10 epochs": ``protocol.rounds`` = ``--epochs`` and ``training.local_epochs`` = 1 (batch 32,
lr 0.1), so every peer makes exactly ``--epochs`` passes over its own shard (a gossip peer
trains once per local round, a FedAvg client once per global round). Everything else keeps
p2pfed's defaults: the evaluation interval (about once a round of virtual time; every
peer's model on a seeded 2,000-sample subset of the test set), the time and network models,
and checkpoints (``checkpoint.every``; ``--checkpoint-every 0`` turns them off).

What is measured, per workload:

* wall s: ``p2pfed.run`` from call to return (building the world and peers, the run, the
  run directory), with p2pfed's own split into build / start / run seconds
  (``summary.json`` → ``timings``: build is the world — data, topology, keys — start the
  peers, run the event loop with its evaluations and checkpoints);
* peak MB: the process's resident-set high-water mark (``VmHWM`` of ``/proc/self/status``,
  what ``resource.getrusage(...).ru_maxrss`` reports), reset before the workload by writing
  5 to ``/proc/self/clear_refs`` (Linux >= 4.0; where that is refused, the mark carries over
  from earlier work and the row says so); base MB: resident memory just before the run is
  built (torch, numpy and p2pfed imported, garbage collected, free heap returned to the OS
  with ``malloc_trim``); MB/peer: (peak - base) / participants (peers, plus the
  coordinator) — everything the run holds per peer, and its fixed costs spread over them;
* build pk / run pk: the largest RSS sampled (every 0.2 s, in a thread) while the world
  and peers were built, and while the run went on: which phase sets the peak;
* events/s: events the engine delivered (``summary.json`` → ``events``: trainings done,
  frames and timers) per second of run time;
* mean acc: the final mean test accuracy of the peers' own models (``final.mean_acc``).

Measured on the 2-core reference machine (default sizes, one run each; seconds, MB)::

    workload  peers  wall  build  start    run  events/s  base  peak  MB/peer  build pk  run pk
    gossip    10000 150.2   10.9    4.8  134.2     2,981   360  2645    0.229      2641    1453
    secagg     1000 253.7    1.1    1.5  251.0       527   360  1112    0.752       568    1010

(400,000 and 132,371 events; mean accuracy 0.3419 and 0.3315.)
The gossip run's peak is set while the synthetic data is generated (float64 copies of the
whole data set), not by the peers: 1.45 GB while running. With ``--checkpoint-every 0`` the
secagg run peaks at 731 MB (246.8 s). Both scale linearly here: gossip 15.4 / 42.5 / 134.2
run seconds at 1,000 / 3,000 / 10,000 peers, secagg 44.5 / 92.7 / 251.0 at 200 / 400 /
1,000 clients.

``--profile DIR`` runs each workload under cProfile, writes ``DIR/<workload>-<peers>.prof``
and prints the ``--top`` entries by cumulative and by own time (cProfile slows Python-heavy
code by up to 2x: profiled times are not the benchmark's). ``--quick`` is 200 gossip peers,
50 secagg clients and 3 epochs (seconds, for tests). The run directories go to a temporary
folder unless ``--out`` names one. ``--json PATH`` writes the rows.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import ctypes.util
import gc
import io
import json
import os
import pstats
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _sampling import Sampler  # scripts/ is on the path when a script runs

WORKLOADS = ("gossip", "secagg")
QUICK = {"peers": 200, "secagg_peers": 50, "epochs": 3}


def gossip_config(n: int, epochs: int, degree: int, seed: int) -> dict[str, Any]:
    """The 10,000-peer workload as a raw p2pfed config."""
    return {
        "name": f"scale-gossip-{n}",
        "seed": seed,
        "topology": {"kind": "random_regular", "n": n, "degree": degree},
        "data": {"dataset": "synthetic"},
        "partition": {"scheme": "iid"},
        "model": {"kind": "logreg"},
        "protocol": {"kind": "gossip", "rounds": epochs},
        "training": {"lr": 0.1, "batch_size": 32, "local_epochs": 1},
        "runtime": {"kind": "local"},
        "output": {"progress": "off", "log_level": "warning", "report": False},
    }


def secagg_config(n: int, epochs: int, num_shares: int, seed: int) -> dict[str, Any]:
    """The 1,000-client secure FedAvg workload as a raw p2pfed config."""
    security: dict[str, Any] = {"aggregation": "secagg"}
    if 0 < num_shares < n:
        security["num_shares"] = num_shares
    return {
        "name": f"scale-secagg-{n}",
        "seed": seed,
        "topology": {"kind": "ring", "n": n},  # fedavg reads only n (the clients)
        "data": {"dataset": "synthetic"},
        "partition": {"scheme": "iid"},
        "model": {"kind": "logreg"},
        "protocol": {"kind": "fedavg", "rounds": epochs},
        "training": {"lr": 0.1, "batch_size": 32, "local_epochs": 1},
        "security": security,
        "runtime": {"kind": "local"},
        "output": {"progress": "off", "log_level": "warning", "report": False},
    }


# --- memory ------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (None off Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # ru_maxrss is kB on Linux, bytes on macOS
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = kb // 1024 if sys.platform == "darwin" else kb
    return kb / 1024


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS; whether the kernel allowed it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def release_memory() -> None:
    """Collect garbage and hand the free heap back to the OS, so RSS is what is live."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


class RssSampler(Sampler):
    """Samples this process's RSS every ``interval`` seconds in a thread (one read of
    ``/proc/self/statm``, microseconds), so the peak can be split into the build phase
    (world and peers) and the run; the high-water mark above stays the headline figure."""

    def __init__(self, interval: float = 0.2):
        super().__init__(interval)
        self.samples: list[tuple[float, float]] = []  # (perf_counter, MB)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 0.0

    def sample(self) -> None:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return
        self.samples.append((time.perf_counter(), pages * self._page_mb))

    def peak_between(self, start: float, end: float) -> float | None:
        """The largest sample in [start, end]; None when none fell inside (a short phase)."""
        return max((mb for t, mb in self.samples if start <= t <= end), default=None)


# --- one workload ------------------------------------------------------------------------


def measure(
    workload: str, cfg: dict[str, Any], out: Path, profile: Path | None = None, top: int = 25
) -> dict[str, Any]:
    """Run one workload with ``p2pfed.run`` and return its figures."""
    import p2pfed

    release_memory()
    peak_reset = reset_peak()
    base = rss_mb()
    prof = cProfile.Profile() if profile is not None else None
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        try:
            res = p2pfed.run(cfg, out=out / cfg["name"], overwrite=True, progress="off")
        finally:
            if prof is not None:
                prof.disable()
        t1 = time.perf_counter()
    wall = t1 - t0
    peak = peak_rss_mb()
    s = res.summary
    participants = s["peers"] + (1 if s["protocol"] == "fedavg" else 0)
    timings = s["timings"]
    events = int(s["events"] or 0)
    built = t0 + timings["build_s"] + timings["start_s"]  # world and peers built by then
    row = {
        "workload": workload,
        "peers": s["peers"],
        "participants": participants,
        "epochs": res.config.protocol.rounds * res.config.training.local_epochs,
        "params": s["params"],
        "status": s["status"],
        "wall_s": wall,
        "build_s": timings["build_s"],
        "start_s": timings["start_s"],
        "run_s": timings["run_s"],
        "events": events,
        "events_per_s": events / timings["run_s"] if timings["run_s"] else None,
        "baseline_rss_mb": base,
        "peak_rss_mb": peak,
        "peak_reset": peak_reset,
        "mb_per_peer": (peak - base) / participants,
        # sampled every 0.2 s: the build phase's peak (world and peers) and the run's
        "build_peak_rss_mb": sampler.peak_between(t0, built),
        "run_peak_rss_mb": sampler.peak_between(built, t1),
        "mean_acc": float(s["final"]["mean_acc"]),
        "virtual_s": s["virtual_time"],
        "frames_sent": s["messages"].get("sent"),
        "eval_interval": res.config.eval.interval,
        "num_shares": res.config.security.num_shares,
        "profiled": prof is not None,
        "run_dir": str(res.run_dir),
    }
    if prof is not None and profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        path = profile / f"{workload}-{s['peers']}.prof"
        prof.dump_stats(path)
        row["profile"] = str(path)
        print_profile(prof, f"{workload}, {s['peers']} peers", top)
    return row


def print_profile(prof: cProfile.Profile, title: str, top: int) -> None:
    for key in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        lines = buf.getvalue().splitlines()
        start = next((k for k, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
        print(f"\nprofile of {title}, top {top} by {key}")
        print("\n".join(lines[start:]).rstrip(), flush=True)


# --- the table ---------------------------------------------------------------------------

COLUMNS = (  # header, key, format
    ("workload", "workload", "<8"),
    ("peers", "peers", ">7"),
    ("epochs", "epochs", ">6"),
    ("status", "status", ">10"),
    ("wall s", "wall_s", ">8.1f"),
    ("build s", "build_s", ">8.1f"),
    ("start s", "start_s", ">8.1f"),
    ("run s", "run_s", ">8.1f"),
    ("events", "events", ">10,"),
    ("events/s", "events_per_s", ">9,.0f"),
    ("base MB", "baseline_rss_mb", ">8.0f"),
    ("peak MB", "peak_rss_mb", ">8.0f"),
    ("MB/peer", "mb_per_peer", ">8.3f"),
    ("build pk", "build_peak_rss_mb", ">8.0f"),
    ("run pk", "run_peak_rss_mb", ">7.0f"),
    ("mean acc", "mean_acc", ">9.4f"),
)


def _width(fmt: str) -> int:
    return int("".join(c for c in fmt[1:].split(".")[0] if c.isdigit()))


def header() -> str:
    return " ".join(f"{h:{fmt[0]}{_width(fmt)}}" for h, _, fmt in COLUMNS)


def format_row(row: dict[str, Any]) -> str:
    line = " ".join(
        f"{row[key]:{fmt}}" if row[key] is not None else f"{'-':>{_width(fmt)}}"
        for _, key, fmt in COLUMNS
    )
    if not row["peak_reset"]:
        line += "  (peak not reset: includes earlier work)"
    return line


# --- main --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--peers", type=int, help="gossip peers (default 10000; --quick: 200)")
    ap.add_argument(
        "--secagg-peers", type=int, help="secagg FedAvg clients (default 1000; --quick: 50)"
    )
    ap.add_argument(
        "--epochs", type=int, help="local epochs per peer = rounds (default 10; --quick: 3)"
    )
    ap.add_argument("--degree", type=int, default=8, help="degree of the random regular graph")
    ap.add_argument(
        "--num-shares",
        type=int,
        default=32,
        help="secagg: SecAgg+ share holders per client (0: the whole group, plain SecAgg)",
    )
    ap.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="TICKS",
        help="checkpoint.every of both runs (0: no checkpoints; default: p2pfed's default)",
    )
    ap.add_argument("--only", choices=WORKLOADS, help="run one workload only")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="200 peers, 50 secagg clients, 3 epochs")
    ap.add_argument("--out", type=Path, help="run directories here (default: a temp folder)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--profile", type=Path, help="cProfile each workload, .prof files here")
    ap.add_argument("--top", type=int, default=25, help="profile entries printed per sort")
    args = ap.parse_args(argv)
    defaults = QUICK if args.quick else {"peers": 10_000, "secagg_peers": 1000, "epochs": 10}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.peers <= args.degree:
        ap.error(f"--peers must exceed --degree ({args.degree})")
    if args.secagg_peers < 3:
        ap.error("--secagg-peers must be at least 3 (a secure sum needs 3 clients)")
    if args.epochs < 1:
        ap.error("--epochs must be at least 1")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        ap.error("--checkpoint-every must be at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    import torch

    import p2pfed.experiment  # noqa: F401  (imports belong to the baseline, not a row)

    torch.set_num_threads(1)
    load = os.getloadavg()
    print(
        f"load average before the run {load[0]:.1f} on {os.cpu_count()} cores; "
        f"in-process runtime, virtual time, {args.epochs} local epochs per peer",
        flush=True,
    )
    plan: list[tuple[str, dict[str, Any]]] = []
    if args.only in (None, "gossip"):
        plan.append(("gossip", gossip_config(args.peers, args.epochs, args.degree, args.seed)))
    if args.only in (None, "secagg"):
        plan.append(
            ("secagg", secagg_config(args.secagg_peers, args.epochs, args.num_shares, args.seed))
        )
    if args.checkpoint_every is not None:
        for _, cfg in plan:
            cfg["checkpoint"] = {"every": args.checkpoint_every}
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if args.out is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        else:
            out = args.out
        for k, (workload, cfg) in enumerate(plan):
            rows.append(measure(workload, cfg, out, args.profile, args.top))
            if args.profile is not None:
                print()
            if k == 0 or args.profile is not None:
                print(header())  # the profile tables came in between: the header again
            # each row as soon as it is measured (a full run takes minutes per workload)
            print(format_row(rows[-1]), flush=True)
    for row in rows:
        if row["workload"] == "secagg":
            shares = row["num_shares"] or row["peers"]
            print(f"secagg: {shares} share holders per client, coordinator = participant n")
    if args.profile is not None:
        print("(profiled: cProfile inflates the wall, run and events/s columns)")
    if args.json is not None:
        doc = {"settings": {**vars(args), "load_average_before": load}, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2, default=str))
        print(f"rows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
