"""Every protection mode against every observer: one table of attack success beside accuracy.

    .venv/bin/python scripts/privacy_matrix.py [--rounds 100] [--out runs/privacy-matrix]

Protection modes: ``plain``, ``aead`` (sealed links), ``secret-share`` and ``secagg``
(secure aggregation), ``he`` (homomorphic encryption, CKKS here: packed Paillier gives the
same view and takes ~20x the wall time) and ``dp`` (clip-and-noise of every
update, C = 1, sigma = 1 by default). Observers, on the same seed, data and model:

* **eavesdropper** on every link of peer 2 of a D-PSGD run (3x3 torus): the analytic
  inversion of the local updates it isolates — PSNR of the reconstructions against the
  samples they are closest to, and its prior's (the mean image) PSNR in brackets;
* **curious peer** 4 of the same run: loss-threshold membership AUC on its neighbours'
  last shared models (mean over its neighbours; non-members are held-out samples with
  the members' labels);
* **curious coordinator** of a FedAvg run (9 clients): PSNR of its inversions of each
  client's update (median over clients) and of the round aggregates;
* **black box** on peer 0's final D-PSGD model: loss-threshold AUC, LiRA (offline, fixed
  variance) TPR at 1 % FPR, and the share of MI-Face class inversions an independent
  classifier recognises.

Local training is one SGD step on one sample per round (``--batch-size 1 --local-steps
1``): the worst case for gradient inversion, where a plain update is a scaled gradient of a
single sample. "—" means the observer saw nothing it could attack (ciphertext, shares or
masked vectors give it no model). The table goes to stdout and, with the rows behind it, to
``matrix.md`` and ``matrix.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import p2pfed

MODES: dict[str, dict[str, Any]] = {
    "plain": {},
    "aead": {"security": {"channel": "aead"}},
    "secret-share": {"security": {"aggregation": "secret-share"}},
    "secagg": {"security": {"aggregation": "secagg"}},
    "he": {"security": {"aggregation": "he", "he": {"scheme": "ckks"}}},
    "dp": {"dp": {"clip": 1.0, "noise_multiplier": 1.0}},
}


def _config(args: argparse.Namespace, mode: str, star: bool) -> dict[str, Any]:
    extra = json.loads(json.dumps(MODES[mode]))  # a deep copy
    if mode == "dp":
        extra["dp"] = {"clip": args.dp_clip, "noise_multiplier": args.dp_sigma}
    lira = {"candidates": args.candidates, "shadows": args.shadows}
    if star:
        adversaries: list[dict[str, Any]] = [
            {"role": "curious_coordinator", "max_observations": args.observations}
        ]
    else:
        adversaries = [
            {"role": "eavesdropper", "target": 2, "max_observations": args.observations},
            {"role": "curious_peer", "peer": 4, "candidates": args.candidates},
            {
                "role": "black_box",
                "target": 0,
                "attacks": ["membership", "lira", "model_inversion"],
                "mi_iterations": args.mi_iterations,
                **lira,
            },
        ]
    return {
        "name": f"privacy-{mode}-{'fedavg' if star else 'dpsgd'}",
        "seed": args.seed,
        "topology": {"kind": "complete" if star else "torus", "n": 9},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "iid"},
        "model": {"kind": "mlp", "hidden": [32]},
        "protocol": {"kind": "fedavg" if star else "dpsgd", "rounds": args.rounds},
        "training": {
            "lr": args.lr,
            "batch_size": args.batch_size,
            "local_steps": args.local_steps,
        },
        "output": {"progress": "off", "report": False},
        "adversaries": adversaries,
        **extra,
    }


def _psnr(rows: list[dict[str, Any]], target: str | None = None) -> str:
    """Median PSNR of the inversion rows (one target, or all peers), prior in brackets."""
    chosen = [
        r
        for r in rows
        if r["attack"] == "analytic_inversion"
        and (r["target"] == target if target else r["target"].startswith("peer "))
    ]
    if not chosen:
        return "—"
    if all(r.get("view") == "ciphertext" for r in chosen):
        return "—"
    psnr = sorted(r["metrics"]["psnr_median"] for r in chosen)[len(chosen) // 2]
    base = sorted(_db(r["metrics"]["baseline_mse"]) for r in chosen)[len(chosen) // 2]
    return f"{psnr:.1f} ({base:.1f})"


def _db(mse: float) -> float:
    return min(10 * math.log10(1 / max(mse, 1e-30)), 300.0)


def _metric(rows: list[dict[str, Any]], attack: str, key: str, fmt: str = ".2f") -> str:
    """The mean of one metric over the rows of an attack (one row per attacked model)."""
    values = [r["metrics"][key] for r in rows if r["attack"] == attack and key in r["metrics"]]
    return format(sum(values) / len(values), fmt) if values else "—"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--dp-clip", type=float, default=1.0)
    ap.add_argument("--dp-sigma", type=float, default=1.0)
    ap.add_argument("--candidates", type=int, default=200, help="membership: per side")
    ap.add_argument("--shadows", type=int, default=8, help="LiRA shadow models")
    ap.add_argument("--mi-iterations", type=int, default=1000, help="MI-Face steps")
    ap.add_argument("--observations", type=int, default=8, help="updates inverted per peer")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/privacy-matrix")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        ap.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    out = Path(args.out)

    header = (
        f"{'protection':<13}{'acc dpsgd':>10}{'acc fedavg':>11}{'eavesdrop PSNR':>16}"
        f"{'peer MIA AUC':>13}{'coord PSNR':>14}{'coord sum':>14}{'bb AUC':>8}"
        f"{'LiRA TPR':>9}{'MI-Face':>8}"
    )
    print(
        f"9 peers, digits, MLP [32], {args.rounds} rounds of {args.local_steps} SGD step(s) "
        f"on {args.batch_size} sample(s), seed {args.seed}; PSNR in dB (prior's in brackets)"
    )
    print(header)
    table, saved = [header], []
    for mode in modes:
        t0 = time.perf_counter()
        gossip = p2pfed.run(_config(args, mode, False), out=out / mode / "dpsgd", overwrite=True)
        star = p2pfed.run(_config(args, mode, True), out=out / mode / "fedavg", overwrite=True)
        g, s = gossip.summary["attacks"], star.summary["attacks"]
        line = (
            f"{mode:<13}{gossip.summary['final']['mean_acc']:>10.3f}"
            f"{star.summary['final']['mean_acc']:>11.3f}"
            f"{_psnr([r for r in g if r['role'] == 'eavesdropper']):>16}"
            f"{_metric([r for r in g if r['role'] == 'curious_peer'], 'loss_threshold', 'auc'):>13}"
            f"{_psnr(s):>14}{_psnr(s, 'the aggregate'):>14}"
            f"{_metric([r for r in g if r['role'] == 'black_box'], 'loss_threshold', 'auc'):>8}"
            f"{_metric(g, 'lira_offline_fixed_variance', 'tpr_at_1pct_fpr'):>9}"
            f"{_metric(g, 'mi_face', 'judge_accuracy'):>8}"
        )
        print(line, f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        table.append(line)
        saved.append(
            {
                "protection": mode,
                "accuracy": {
                    "dpsgd": gossip.summary["final"]["mean_acc"],
                    "fedavg": star.summary["final"]["mean_acc"],
                },
                "privacy": {"dpsgd": gossip.summary["privacy"], "fedavg": star.summary["privacy"]},
                "attacks": g + s,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.md").write_text("```\n" + "\n".join(table) + "\n```\n")
    (out / "matrix.json").write_text(json.dumps(saved, indent=2, default=str) + "\n")
    print(f"rows and images under {out}")


if __name__ == "__main__":
    main()
