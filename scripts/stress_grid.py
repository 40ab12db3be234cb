"""Attack x defence x topology: honest accuracy and backdoor success, in parallel on Ray.

    .venv/bin/python scripts/stress_grid.py [--rounds 60] [--fractions 0.125,0.25]
        [--attacks sign_flip,gaussian,alie,ipm,dissensus,backdoor]
        [--defences mean,clipped_gossip,balance,trimmed_mean,median]
        [--topologies ring,torus,small_world,random_regular,dumbbell] [--out runs/stress-grid]

Every cell is one D-PSGD run on digits (16 peers by default, Dirichlet alpha 0.5) with a
fraction of the peers poisoning as one colluding group (spread evenly over the ids), the
neighbourhoods aggregated by the defence, which assumes ``--f`` Byzantine neighbours
(default 1: with 25 % attackers a peer often has two, and the rules that trust f give way
there — the grid shows where); each (topology, defence) also runs without attackers.
The cells run as Ray tasks on a private local instance (``--no-ray``: one after another
in this process). Prints one line per cell as it finishes, then the table, and
writes ``grid.json`` and ``heatmap.png`` (honest mean accuracy, one panel per topology and
attacker fraction; backdoor cells show the backdoor's success in brackets) under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

TOPOLOGIES: dict[str, dict[str, Any]] = {
    "ring": {"kind": "ring"},
    "torus": {"kind": "torus"},
    "small_world": {"kind": "small_world", "degree": 4},
    "random_regular": {"kind": "random_regular", "degree": 4},
    "dumbbell": {"kind": "dumbbell"},
}
STRENGTH: dict[str, dict[str, Any]] = {
    "sign_flip": {"scale": 4.0},
    "gaussian": {"sigma": 10.0},
    "alie": {},
    "ipm": {"epsilon": 0.5},
    "dissensus": {"epsilon": 1.5},
    "label_flip": {},
    "backdoor": {"fraction": 0.5, "target_class": 0},
}


def cell_config(
    args: argparse.Namespace, topology: str, defence: str, attack: str, fraction: float
) -> dict[str, Any]:
    n = args.peers
    cfg: dict[str, Any] = {
        "name": f"{topology}-{defence}-{attack}-{fraction:g}",
        "seed": args.seed,
        "topology": {**TOPOLOGIES[topology], "n": n},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "dirichlet", "alpha": 0.5},
        "model": {"kind": "mlp", "hidden": [64]},
        "protocol": {
            "kind": "dpsgd",
            "rounds": args.rounds,
            "robust": {"rule": defence, "f": args.f},
        },
        "training": {"lr": 0.1, "batch_size": 32, "local_steps": 5},
        "output": {"progress": "off", "report": False},
    }
    count = round(fraction * n)
    if attack != "none" and count:
        peers = sorted({int(i) for i in np.linspace(0, n, count, endpoint=False)})
        cfg["adversaries"] = [
            {"role": "poisoner", "peers": peers, "behaviour": attack, **STRENGTH[attack]}
        ]
    return cfg


def run_cell(cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """One cell: run it, return its headline numbers (or the error that stopped it)."""
    import p2pfed

    try:
        s = p2pfed.run(cfg, out=Path(out) / cfg["name"], overwrite=True).summary
    except p2pfed.ConfigError as exc:  # a defence that cannot run there (e.g. too few)
        return {"name": cfg["name"], "error": str(exc)}
    rb = s.get("robustness", {})
    backdoor = [v for k, v in rb.items() if k.startswith("backdoor_success")]
    return {
        "name": cfg["name"],
        "honest_mean_acc": rb.get("honest_mean_acc", s["final"]["mean_acc"]),
        "honest_min_acc": rb.get("honest_min_acc", s["final"]["min_acc"]),
        "backdoor_success": backdoor[0] if backdoor else None,
        "rejected": rb.get("robust_rejected", 0),
        "clipped": rb.get("robust_clipped", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--fractions", default="0.125,0.25")
    ap.add_argument("--attacks", default="sign_flip,gaussian,alie,ipm,dissensus,backdoor")
    ap.add_argument("--defences", default="mean,clipped_gossip,balance,trimmed_mean,median")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES))
    ap.add_argument(
        "--f", type=int, default=1, help="Byzantine neighbours each defence assumes (its f)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ray", action="store_true", help="run the cells one by one here")
    ap.add_argument("--cpus", type=int, default=None, help="Ray CPUs (default: all)")
    ap.add_argument("--out", default="runs/stress-grid")
    args = ap.parse_args()
    split = {k: [v for v in getattr(args, k).split(",") if v] for k in ("attacks", "defences")}
    topologies = [t for t in args.topologies.split(",") if t]
    fractions = [float(f) for f in args.fractions.split(",") if f]
    for name, known in (("topologies", TOPOLOGIES), ("attacks", STRENGTH)):
        chosen = topologies if name == "topologies" else split["attacks"]
        unknown = [c for c in chosen if c not in known]
        if unknown:
            ap.error(f"unknown {name} {unknown}; choose from {list(known)}")
    out = Path(args.out)
    cells = [(t, d, "none", 0.0) for t in topologies for d in split["defences"]]
    cells += [
        (t, d, a, f)
        for t, d, a, f in itertools.product(
            topologies, split["defences"], split["attacks"], fractions
        )
    ]
    configs = [cell_config(args, *c) for c in cells]
    print(f"{len(configs)} runs: {args.peers} peers, digits, {args.rounds} rounds", flush=True)
    t0 = time.perf_counter()
    results = _run_all(configs, str(out), args)
    by_name = {r["name"]: r for r in results}
    table = _table(cells, by_name)
    print("\n".join(table))
    print(f"{len(configs)} runs in {time.perf_counter() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(results, indent=2) + "\n")
    _heatmap(out / "heatmap.png", cells, by_name, topologies, split, fractions)
    print(f"grid.json and heatmap.png under {out}")


def _run_all(configs: list[dict[str, Any]], out: str, args: argparse.Namespace) -> list[Any]:
    def show(r: dict[str, Any]) -> None:
        tail = r.get("error") or (
            f"honest {r['honest_mean_acc']:.3f} (worst {r['honest_min_acc']:.3f})"
            + (
                f" backdoor {r['backdoor_success']:.2f}"
                if r["backdoor_success"] is not None
                else ""
            )
        )
        print(f"  {r['name']}: {tail}", flush=True)

    if args.no_ray:
        results = []
        for cfg in configs:
            results.append(run_cell(cfg, out))
            show(results[-1])
        return results
    import ray

    from p2pfed.runtime.ray_runtime import PRIVATE_RAY_SYSTEM_CONFIG

    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config=PRIVATE_RAY_SYSTEM_CONFIG,
    )
    try:
        task = ray.remote(num_cpus=1)(run_cell)
        pending = [task.remote(cfg, out) for cfg in configs]
        results = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results.append(ray.get(done[0]))
            show(results[-1])
        return results
    finally:
        ray.shutdown()


def _cell(r: dict[str, Any] | None) -> str:
    if r is None or "error" in r:
        return "n/a"
    text = f"{r['honest_mean_acc']:.2f}"
    if r["backdoor_success"] is not None:
        text += f" [{r['backdoor_success']:.2f}]"
    return text


def _table(cells: list[tuple[str, str, str, float]], by_name: dict[str, Any]) -> list[str]:
    attacks = list(dict.fromkeys((a, f) for _, _, a, f in cells))
    head = f"{'topology':<15}{'defence':<16}" + "".join(
        f"{(a if a == 'none' else f'{a} {f:g}'):>20}" for a, f in attacks
    )
    lines = ["honest mean accuracy [backdoor success]", head]
    for t, d in dict.fromkeys((t, d) for t, d, _, _ in cells):
        row = f"{t:<15}{d:<16}"
        for a, f in attacks:
            row += f"{_cell(by_name.get(f'{t}-{d}-{a}-{f:g}')):>20}"
        lines.append(row)
    return lines


def _heatmap(
    path: Path,
    cells: list[tuple[str, str, str, float]],
    by_name: dict[str, Any],
    topologies: list[str],
    split: dict[str, list[str]],
    fractions: list[float],
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    attacks = ["none", *split["attacks"]]
    defences = split["defences"]
    panels = [(t, f) for t in topologies for f in fractions]
    fig = Figure(
        figsize=(
            1.1 * len(attacks) * min(len(panels), 3) + 1,
            0.5 * len(defences) * (1 + (len(panels) - 1) // 3) + 1.5,
        )
    )
    FigureCanvasAgg(fig)
    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    for k, (t, f) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        grid = np.full((len(defences), len(attacks)), np.nan)
        for i, d in enumerate(defences):
            for j, a in enumerate(attacks):
                r = by_name.get(f"{t}-{d}-{a}-{0.0 if a == 'none' else f:g}")
                if r is not None and "error" not in r:
                    grid[i, j] = r["honest_mean_acc"]
                    bd = r["backdoor_success"]
                    label = f"{grid[i, j]:.2f}" + (f"\n[{bd:.2f}]" if bd is not None else "")
                    ax.text(j, i, label, ha="center", va="center", fontsize=7)
        ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(defences)), defences, fontsize=7)
        ax.set_title(f"{t}, {f:.0%} attackers", fontsize=9)
    fig.suptitle("honest mean accuracy [backdoor success]")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
