"""Sweep topologies at a fixed budget and print final accuracy against spectral gap.

    .venv/bin/python scripts/sweep_topologies.py [--peers 16] [--rounds 30] [--protocol dpsgd]

Every run uses the same seed, data, partition (Dirichlet 0.5) and model, so the spread of
final accuracy and consensus distance comes from the graph alone: better-connected graphs
(larger spectral gap) mix faster and should reach consensus sooner. Run directories land in
runs/sweep-topologies/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import p2pfed

TOPOLOGIES: dict[str, dict[str, object]] = {
    "ring": {"kind": "ring"},
    "dumbbell": {"kind": "dumbbell"},
    "torus": {"kind": "torus"},
    "small_world": {"kind": "small_world", "degree": 4, "p": 0.2},
    "random_regular_4": {"kind": "random_regular", "degree": 4},
    "exponential": {"kind": "exponential"},
    "one_peer_exponential": {"kind": "one_peer_exponential"},
    "complete": {"kind": "complete"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--protocol", default="dpsgd", choices=["dpsgd", "gossip", "pushsum"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/sweep-topologies")
    args = ap.parse_args()

    rows = []
    for name, topo in TOPOLOGIES.items():
        cfg = {
            "name": f"sweep-{name}",
            "seed": args.seed,
            "topology": {**topo, "n": args.peers},
            "protocol": {"kind": args.protocol, "rounds": args.rounds},
            "training": {"lr": 0.05, "momentum": 0.9, "batch_size": 16},
            "output": {"progress": "off", "report": False},
        }
        try:
            res = p2pfed.run(cfg, out=Path(args.out) / name)
        except p2pfed.ConfigError as exc:  # e.g. no 2-D torus has 8 peers
            print(f"  skipped {name}: {exc.message}", flush=True)
            continue
        s = res.summary
        rows.append(
            (
                name,
                s["spectral_gap"],
                s["final"]["mean_acc"],
                s["final"]["min_acc"],
                s["final"]["mean_consensus_dist"],
                s["bytes"]["total"] / 1e6,
            )
        )
        print(f"  finished {name}", flush=True)

    rows.sort(key=lambda r: r[1])
    print()
    print(f"{args.peers} peers, {args.protocol}, {args.rounds} rounds, seed {args.seed}")
    print(f"{'topology':<22}{'gap':>8}{'mean acc':>10}{'min acc':>9}{'consensus':>11}{'MB':>8}")
    for name, gap, mean, low, cons, mb in rows:
        print(f"{name:<22}{gap:>8.4f}{mean:>10.4f}{low:>9.4f}{cons:>11.4f}{mb:>8.1f}")


if __name__ == "__main__":
    main()
