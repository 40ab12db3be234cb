"""What secure aggregation costs: per-peer crypto time, bytes on the wire, seconds per round.

    .venv/bin/python scripts/bench_secure.py [--dims 100000 1000000] [--rounds 6]
        [--hidden 64 1500] [--repeat 2] [--out DIR] [--skip-runs]

Part 1, one peer's cost per round, for d in ``--dims`` and k = 4 neighbours (a peer of a
4-regular graph joins the 4 sessions of its neighbours, each with 4 clients): the time to
encode its weighted model once (clip, stochastic rounding into Z_2^32; the weight is the
same for every neighbour on a torus) and protect it in each of its 4 sessions, for
``secret-share`` (the kept share, less 3 pseudorandom shares, plus the 3 shares held for
the others) and ``secagg`` (fresh
mask key, Shamir shares of b_u and the mask key sealed to 3 neighbours, self mask and 3
pairwise masks). The aggregator's unmasking of one session (4 clients, none or one dropped)
is timed apart. Best of ``--repeat``.

Part 2, whole runs: N = 16 peers on a 4x4 torus (every peer has 4 neighbours), digits,
D-PSGD, MLPs with hidden widths ``--hidden`` (64: d = 4,810; 1500: d = 112,510), under
plain, secret-share and secagg aggregation, ``--rounds`` and twice that many rounds each;
seconds per round (``s/round``: what the simulation costs this machine) are the steady
state (run_s(2R) - run_s(R)) / R from p2pfed's own timer (start-up and the final evaluation
cancel), best of ``--repeat`` interleaved repeats; ``vs/round`` is the same difference in
virtual seconds: how much longer a round takes the simulated peers (training at 1 ms per
sample, 10-20 ms latency, 100 Mbit/s uplinks, and the clients' crypto at its reference cost,
``security.charge_compute``: each peer on its own core), deterministic.
Bytes are all frames of the 2R run over the plain run's bytes; the targets are bytes <= 1.05
for d >= 10^5 and secure <= 1.3x plain seconds per round at N = 16.

Measured here (2 cores, --repeat 2), per-peer ms for d = 10^5 / 10^6: encode 1.0 / 9.6,
secret-share 4.2 / 43.6, secagg 8.4 / 38.4, one session's unmasking 0.8 / 7.8 (2.9 / 12.1 with
a dropout). Runs, hidden 64 (d = 4,810) / 1500 (d = 112,510): bytes x plain 1.007 / 1.000
(secret-share) and 1.060 / 1.003 (secagg); virtual s/round x plain 1.20 / 1.09 and
1.59 / 1.26 (crypto charged; it adds ~1 ms to a 0.3 s round: transfers dominate, and at
d = 4,810 secagg's three extra round trips do); wall s/round x plain 2.0 / 2.2 and 6.5 / 3.5
(secagg's share blobs sealed with AES-OCB since: 3.6x before the other changes of that
run); with ``--epochs 8 --hidden 1500`` wall 1.28x and 1.51x. The wall time is what the
simulation costs this machine, where 16 peers' crypto shares 2 cores: the AES-CTR floor
alone (16-24 expansions of 0.4 MB per peer and round at ~4 GB/s) is about as long as a
peer's whole plain round with 1 local epoch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

import p2pfed
from p2pfed.crypto.fixedpoint import FixedPoint
from p2pfed.crypto.secagg import (
    SecAggClient,
    SecAggServer,
    SessionSpec,
    pair_key_directory,
    pair_keys,
    partial_sum,
    session_id,
    share_contribution,
)

K = 4  # neighbours per peer, and clients per session


def _best(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def micro(d: int, repeat: int) -> dict[str, float]:
    """Seconds of one peer's encode + protect over its K sessions (the other clients' work,
    which the peer only receives, is prepared outside the timed part)."""
    fixed = FixedPoint.from_range(8.0, 2**22)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, d)
    clients = tuple(range(K))
    seeds, publics = pair_key_directory(b"bench-secure-key", range(K + 1))
    pair = {p: pair_keys(p, seeds[p], publics) for p in range(K + 1)}

    def encode() -> None:  # once per round: the same weight for every neighbour on a torus
        fixed.encode(0.25 * x, rng)

    def secret_share() -> float:
        t0 = time.perf_counter()
        ring = fixed.encode(0.25 * x, rng)
        for s in range(K):
            sid = session_id("bench-ss", K, s)
            z = share_contribution(0, ring, clients, pair[0], sid)
            z += partial_sum(0, clients, pair[0], sid, d)
        return time.perf_counter() - t0

    def secagg() -> float:
        timed = 0.0
        t0 = time.perf_counter()
        ring = fixed.encode(0.25 * x, rng)
        timed += time.perf_counter() - t0
        for s in range(K):
            spec = SessionSpec(session_id("bench-sa", K, s), clients, K, 3, d)
            cl = {
                u: SecAggClient(u, spec, pair[u], np.random.default_rng(u + 10 * s))
                for u in clients
            }
            server = SecAggServer(spec)
            t0 = time.perf_counter()
            key0 = cl[0].advertise()
            timed += time.perf_counter() - t0
            server.collect_adverts({0: key0, **{u: cl[u].advertise() for u in clients[1:]}})
            t0 = time.perf_counter()
            shares0 = cl[0].share_keys(server.roster_for(0))
            timed += time.perf_counter() - t0
            others = {u: cl[u].share_keys(server.roster_for(u)) for u in clients[1:]}
            routed = server.route_shares({0: shares0, **others})
            t0 = time.perf_counter()
            cl[0].masked_input(ring, routed[0])
            timed += time.perf_counter() - t0
        return timed

    return {
        "encode": _best(encode, repeat),
        "secret-share": min(secret_share() for _ in range(repeat)),
        "secagg": min(secagg() for _ in range(repeat)),
    }


def unmask_cost(d: int, repeat: int, dropouts: int) -> float:
    """Seconds of the aggregator's reconstruction for one session of K clients."""
    fixed = FixedPoint.from_range(8.0, 2**22)
    clients = tuple(range(K))
    seeds, publics = pair_key_directory(b"bench-secure-key", range(K + 1))
    best = float("inf")
    for rep in range(repeat):
        spec = SessionSpec(session_id("bench-unmask", K, rep), clients, K, 3, d)
        cl = {
            u: SecAggClient(u, spec, pair_keys(u, seeds[u], publics), np.random.default_rng(u))
            for u in clients
        }
        server = SecAggServer(spec)
        server.collect_adverts({u: c.advertise() for u, c in cl.items()})
        routed = server.route_shares({u: c.share_keys(server.roster_for(u)) for u, c in cl.items()})
        rng = np.random.default_rng(1)
        alive = clients[dropouts:]
        masked = {
            u: cl[u].masked_input(fixed.encode(rng.normal(0, 1, d)), routed[u]) for u in alive
        }
        survivors = server.collect_masked(masked)
        reveals = {v: cl[v].unmask(survivors) for v in survivors}
        t = time.perf_counter()
        server.reconstruct(reveals)
        best = min(best, time.perf_counter() - t)
    return best


def run_cfg(hidden: int, aggregation: str, rounds: int, epochs: int = 1) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": f"secure-{aggregation}-{hidden}-{rounds}",
        "seed": 0,
        "topology": {"kind": "torus", "n": 16},
        "data": {"dataset": "digits"},
        "partition": {"scheme": "iid"},
        "model": {"kind": "mlp", "hidden": [hidden]},
        "protocol": {"kind": "dpsgd", "rounds": rounds},
        "training": {"lr": 0.05, "batch_size": 32, "local_epochs": epochs},
        "eval": {"interval": 1e6},
        "output": {"progress": "off", "log_level": "warning", "report": False},
    }
    if aggregation != "plain":
        cfg["security"] = {"aggregation": aggregation}
    return cfg


def runs(args: argparse.Namespace) -> None:
    modes = ("plain", "secret-share", "secagg")
    print(
        f"\nWhole runs: D-PSGD, 16 peers, 4x4 torus, digits, {args.epochs} local epoch(s), "
        f"R={args.rounds} and {2 * args.rounds}"
    )
    print(
        f"{'hidden':>6} {'d':>8} {'mode':>13} {'s/round':>8} {'x plain':>8} {'vs/round':>9} "
        f"{'x plain':>8} {'bytes':>12} {'x plain':>8} {'acc':>7}"
    )
    for hidden in args.hidden:
        totals: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
        virtual: dict[str, list[float]] = {m: [] for m in modes}
        info: dict[str, dict[str, Any]] = {}
        for _ in range(args.repeat):
            for mode in modes:  # interleaved: a slow spell falls on every mode
                pair, vt = [], []
                for r in (args.rounds, 2 * args.rounds):
                    cfg = run_cfg(hidden, mode, r, args.epochs)
                    res = p2pfed.run(
                        cfg, out=args.out / cfg["name"], overwrite=True, progress="off"
                    )
                    s = res.summary
                    if s["status"] != "completed":
                        raise SystemExit(f"{cfg['name']} ended {s['status']}")
                    pair.append(s["timings"]["run_s"])
                    vt.append(s["virtual_time"])
                    if r == 2 * args.rounds:
                        info[mode] = {
                            "bytes": s["bytes"]["total"],
                            "acc": s["final"]["mean_acc"],
                            "params": s["params"],
                        }
                totals[mode].append((pair[0], pair[1]))
                virtual[mode] = [(vt[1] - vt[0]) / args.rounds]  # deterministic
        per_round = {
            m: (min(p[1] for p in totals[m]) - min(p[0] for p in totals[m])) / args.rounds
            for m in modes
        }
        v = {m: virtual[m][0] for m in modes}
        for m in modes:
            print(
                f"{hidden:>6} {info[m]['params']:>8} {m:>13} {per_round[m]:>8.4f} "
                f"{per_round[m] / per_round['plain']:>8.2f} {v[m]:>9.4f} "
                f"{v[m] / v['plain']:>8.2f} {info[m]['bytes']:>12,} "
                f"{info[m]['bytes'] / info['plain']['bytes']:>8.3f} {info[m]['acc']:>7.4f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 1500])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-secure"))
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--skip-micro", action="store_true")
    args = ap.parse_args()
    if not args.skip_micro:
        micro_table(args)
    if not args.skip_runs:
        runs(args)


def micro_table(args: argparse.Namespace) -> None:
    print(f"One peer's encode + protect per round, k = {K} sessions (ms), best of {args.repeat}")
    print(
        f"{'d':>9} {'encode':>9} {'secret-share':>13} {'secagg':>9} {'unmask':>9} "
        f"{'unmask+1 drop':>14}"
    )
    for d in args.dims:
        m = micro(d, args.repeat)
        u0 = unmask_cost(d, args.repeat, 0)
        u1 = unmask_cost(d, args.repeat, 1)
        print(
            f"{d:>9,} {1e3 * m['encode']:>9.1f} {1e3 * m['secret-share']:>13.1f} "
            f"{1e3 * m['secagg']:>9.1f} {1e3 * u0:>9.1f} {1e3 * u1:>14.1f}"
        )


if __name__ == "__main__":
    main()
