"""The ``p2pfed`` command line.

::

    p2pfed run [CONFIG] [--set path.to.key=value ...] [--out DIR] [--progress MODE]
               [--address auto|HOST:PORT] [--overwrite]
    p2pfed run --resume RUN_DIR [--progress MODE]
    p2pfed report RUN_DIR [--out FILE]
    p2pfed compare RUN_DIR... [--out FILE]
    p2pfed sweep [CONFIG] --grid path.to.key=v1,v2 [--grid ...] [--set ...] [--out DIR]
                 [--parallel N] [--address auto|HOST:PORT] [--gpus-per-run SHARE]
                 [--progress MODE] [--overwrite]
    p2pfed topology show FILE [--png PATH] [--seed N]

Exit codes: 0 success; 1 the run failed; 2 bad input (config, topology file, overrides) —
reported as one line naming the file and key, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from p2pfed import __version__
from p2pfed.errors import ConfigError, P2PFedError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pfed",
        description="Peer-to-peer federated learning simulations.",
    )
    parser.add_argument("--version", action="version", version=f"p2pfed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment and write its run directory")
    _add_config_arguments(run, "override a config value, e.g. --set protocol.rounds=20")
    run.add_argument("--out", help="run directory (default: output.dir or runs/NAME-TIME)")
    run.add_argument("--progress", choices=["auto", "bar", "plain", "off"], help="progress display")
    run.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the run directory"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with the interrupted run in RUN_DIR from its last checkpoint (its own "
        "config.yaml; takes no CONFIG, --set, --out or --address)",
    )
    run.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="run the peers on a Ray cluster: 'auto' joins the cluster this machine belongs "
        "to, HOST:PORT its head node (sets runtime.kind=ray and runtime.address)",
    )

    report = sub.add_parser("report", help="write the HTML report of a run directory")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", help="where to write it (default: RUN_DIR/report.html)")

    compare = sub.add_parser("compare", help="put runs side by side in one HTML report")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--out", default="comparison.html", help="default: ./comparison.html")

    sweep = sub.add_parser(
        "sweep",
        help="run a grid of experiments in parallel on Ray, with their comparison report",
    )
    _add_config_arguments(sweep, "override a config value in every run")
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        required=True,
        metavar="KEY=V1,V2",
        help="a config key and the values to sweep it over (repeatable: the grid is the "
        "product), e.g. --grid protocol.kind=dpsgd,gossip",
    )
    sweep.add_argument("--out", help="sweep directory (default: sweeps/<CONFIG stem>)")
    sweep.add_argument("--parallel", type=int, help="runs at a time (default: Ray's CPUs)")
    sweep.add_argument(
        "--address",
        metavar="auto|HOST:PORT",
        help="run on a Ray cluster ('auto': the one this machine belongs to) instead of a "
        "private instance on this machine",
    )
    sweep.add_argument(
        "--gpus-per-run",
        type=float,
        default=1.0,
        metavar="SHARE",
        help="the share of a GPU each run that trains on one reserves (default 1; 0.25 "
        "puts four runs on each GPU)",
    )
    sweep.add_argument("--progress", choices=["auto", "bar", "plain", "off"], default="auto")
    sweep.add_argument(
        "--overwrite",
        action="store_true",
        help="start the sweep in --out afresh (its earlier runs are removed)",
    )

    topo = sub.add_parser("topology", help="inspect topology files")
    topo_sub = topo.add_subparsers(dest="topology_command", required=True)
    show = topo_sub.add_parser("show", help="print a topology's statistics and draw it")
    show.add_argument("file", help="topology YAML file")
    show.add_argument("--png", help="where to write the drawing (default: ./<FILE stem>.png)")
    show.add_argument("--seed", type=int, default=0, help="seed for random topologies")
    return parser


def _add_config_arguments(parser: argparse.ArgumentParser, set_help: str) -> None:
    """CONFIG and ``--set``, as ``run`` and ``sweep`` take them."""
    parser.add_argument("config", nargs="?", help="experiment YAML (default: the embedded default)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{set_help} (repeatable)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failed, 2 bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "compare":
            return _cmd_compare(args)
        if args.command == "sweep":
            return _cmd_sweep(args)
        return _cmd_topology_show(args)
    except ConfigError as exc:
        print(f"p2pfed: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except P2PFedError as exc:
        print(f"p2pfed: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # a run directory or drawing that cannot be written
        where = f" {exc.filename}" if exc.filename else ""
        print(f"p2pfed: error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("p2pfed: interrupted", file=sys.stderr)
        return 130


def _cmd_run(args: argparse.Namespace) -> int:
    from p2pfed.experiment import resume, run
    from p2pfed.results import FINISHED, attack_line

    if args.resume is not None:
        given = [
            flag
            for flag, value in (
                ("CONFIG", args.config),
                ("--set", args.overrides),
                ("--out", args.out),
                ("--address", args.address),
                ("--overwrite", args.overwrite),
            )
            if value
        ]
        if given:
            raise ConfigError(
                f"--resume continues a run with its own config: drop {', '.join(given)}",
                source="--resume",
            )
        result = resume(args.resume, progress=args.progress)
    else:
        overrides = list(args.overrides)
        if args.address is not None:
            overrides += ["runtime.kind=ray", f"runtime.address={args.address}"]
        result = run(
            args.config,
            out=args.out,
            overrides=overrides,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    s = result.summary
    final = s["final"]
    print(f"run directory : {result.run_dir}")
    print(f"status        : {s['status']}")
    print(
        f"accuracy      : mean {final['mean_acc']:.4f}  min {final['min_acc']:.4f}  "
        f"max {final['max_acc']:.4f}  ({s['peers']} peers)"
    )
    print(f"virtual time  : {s['virtual_time']:.2f} s   wall time: {s['wall_time_s']:.2f} s")
    msgs, b = s["messages"], s["bytes"]
    print(
        f"messages      : {msgs.get('sent', 0)} sent, {msgs.get('lost', 0)} lost, "
        f"{b['total'] / 1e6:.2f} MB ({b['payload'] / 1e6:.2f} MB payload)"
    )
    if s.get("frames_rejected"):
        reasons = ", ".join(f"{n} {r}" for r, n in s.get("frames_rejected_by_reason", {}).items())
        print(f"rejected      : {s['frames_rejected']} frames ({reasons})")
    privacy = s.get("privacy", {})
    if privacy.get("dp"):
        print(
            f"privacy       : epsilon <= {privacy['epsilon_max']:.3g} at delta "
            f"{privacy['delta']:g} ({privacy['mode']} DP, sigma {privacy['noise_multiplier']:g})"
        )
    robust = s.get("robustness")
    if robust:
        print(
            f"robustness    : honest peers mean {robust['honest_mean_acc']:.4f}  min "
            f"{robust['honest_min_acc']:.4f}  (rule {robust['rule']}, "
            f"{robust['poisoned']} messages poisoned, {robust['robust_clipped']} clipped, "
            f"{robust['robust_rejected']} rejected)"
        )
    for row in s.get("attacks", []):
        print(f"attack        : {attack_line(row)}")
    for warning in s.get("warnings", []):
        print(f"warning       : {warning}")
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        print(f"report        : {report}")
    return EXIT_OK if s["status"] in FINISHED else EXIT_FAILED


def _cmd_report(args: argparse.Namespace) -> int:
    from p2pfed.report import write_report

    print(f"report        : {write_report(args.run_dir, args.out)}")
    return EXIT_OK


def _cmd_compare(args: argparse.Namespace) -> int:
    from p2pfed.report import write_comparison

    print(f"comparison    : {write_comparison(args.run_dirs, args.out)}")
    return EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from p2pfed.sweep import parse_grid, sweep

    out = args.out or str(Path("sweeps") / (Path(args.config).stem if args.config else "default"))
    result = sweep(
        args.config,
        parse_grid(args.grid),
        out=out,
        overrides=args.overrides,
        address=args.address,
        parallel=args.parallel,
        progress=args.progress,
        overwrite=args.overwrite,
        gpus_per_run=args.gpus_per_run,
    )
    for rec in result.runs:
        acc = (rec.headline or {}).get("mean_acc")
        figure = f"mean acc {acc:.4f}" if isinstance(acc, float) else rec.error or ""
        print(f"{rec.status:<10} {rec.name}  {figure}")
    print(f"sweep directory: {result.out}")
    if result.comparison is not None:
        print(f"comparison     : {result.comparison}")
    return EXIT_FAILED if result.failed else EXIT_OK


def _cmd_topology_show(args: argparse.Namespace) -> int:
    from p2pfed.topology import (
        build_schedule,
        describe,
        draw,
        format_description,
        load_topology_spec,
    )

    spec = load_topology_spec(args.file)
    try:
        schedule = build_schedule(spec, seed=args.seed)
    except P2PFedError as exc:
        raise ConfigError(str(exc), source=args.file) from None
    print(format_description(describe(schedule)))
    # Default to the working directory, not next to FILE: that would drop drawings into the
    # repository's topologies/ folder.
    png = Path(args.png) if args.png else Path(f"{Path(args.file).stem}.png")
    draw(schedule.at(0), png, title=schedule.name)
    print(f"drawing       : {png}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
