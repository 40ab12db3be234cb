"""What homomorphic encryption costs: values per second, bytes per value, seconds per round.

    .venv/bin/python scripts/bench_he.py [--dims 10000 100000] [--key-bits 2048]
        [--sample 200] [--rounds 2] [--hidden 64] [--modes ...] [--skip-runs]

Part 1, per scheme and vector length d: encrypt, add (two encrypted vectors) and decrypt
throughput in values per second, and bytes per value on the wire, for

* packed Paillier (BatchCrypt-style, 16-bit values, padding for 8 summands: 85 values in
  each 2048-bit plaintext), encrypting with the public key (what any client can do; a
  group-key holder's CRT encryption is ~1.8x faster and printed apart) and decrypting with
  the primes (CRT);
* unpacked Paillier (one value per ciphertext, the same quantisation): its cost per value
  does not depend on d, so it is timed on ``--sample`` values and scaled (a full 10^5-value
  vector would take ~13 minutes to encrypt);
* CKKS through TenSEAL (N = 8192, 4096 slots, scale 2^40).

The targets: packed Paillier >= 20x faster to encrypt than unpacked and >= 50x smaller.

Part 2, whole runs on digits, 8 clients, FedAvg with an MLP of ``--hidden`` units, under
plain aggregation and he-fedavg in each of ``--modes`` (paillier-group, paillier-threshold,
ckks): seconds per round as the steady-state difference (run_s(2R) - run_s(R)) / R of
p2pfed's own timer, the same for virtual seconds, and bytes over plain's. Virtual time
charges training (1 ms a sample), the network, and the HE work at its reference cost
(``security.charge_compute``; ``p2pfed.protocol.he.PAILLIER_COSTS`` / ``CKKS_COSTS``,
measured with this script): what a round costs the simulated peers, each on its own core.
The wall seconds are what the simulation costs this machine, where the 8 clients' crypto
shares 2 cores.

Measured here (2 cores, 2048-bit keys), values per second for d = 10^4 / 10^5:

* packed Paillier: encrypt 10,000 / 10,600 (CRT, group-key holders: 17,700 / 19,200), add
  16-18 M, decrypt 35,500 / 37,500; 6.0 bytes a value (85 values in a 512-byte ciphertext);
* unpacked Paillier: encrypt 121 / 124, add 0.2 M, decrypt 440; 512 bytes a value; so
  packing is 82-86x faster to encrypt (target >= 20x) and 85x smaller (target >= 50x);
* CKKS: encrypt 0.81 M / 0.95 M, add 6-9 M, decrypt 2.7 M / 3.7 M; 99 / 83 bytes a value.

Runs, hidden 64 (d = 4,810), seconds per round x plain (wall / virtual), bytes x plain:
paillier-group 4.28 s (390x) / 0.84 s (3.1x), 1.8x; paillier-threshold 15.6 s (1420x) /
2.53 s (9.2x), 10x; ckks 0.14 s (13x) / 0.56 s (2.0x), 26x; the final accuracy equals plain
FedAvg's in every mode (0.5278 after 4 rounds).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

import p2pfed
from p2pfed.crypto.ckks import CkksKeys, sum_vectors
from p2pfed.crypto.paillier import PackedPaillier, Packing, generate_keypair


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def packed_paillier(d: int, key_bits: int, rng: np.random.Generator) -> dict[str, float]:
    public, secret = generate_keypair(rng, key_bits)
    packed = PackedPaillier(public, Packing(public.bits, 1.0, 16, 8))
    x, y = rng.uniform(-1, 1, d), rng.uniform(-1, 1, d)
    t_enc, a = _timed(lambda: packed.encrypt(x, rng))
    t_crt, b = _timed(lambda: packed.encrypt(y, rng, secret=secret))
    t_add, s = _timed(lambda: packed.add([a, b]))
    t_dec, out = _timed(lambda: packed.decrypt(s, secret))
    step = packed.packing.fixed.step
    if np.max(np.abs(out - (x + y))) > 2 * step:
        raise SystemExit("packed Paillier: wrong sum")
    return {
        "enc": d / t_enc,
        "enc_crt": d / t_crt,
        "add": d / t_add,
        "dec": d / t_dec,
        "bytes": len(a.to_bytes(public)) / d,
    }


def unpacked_paillier(sample: int, key_bits: int, rng: np.random.Generator) -> dict[str, float]:
    """One value per ciphertext: the same quantised code, offset as in the packed form."""
    public, secret = generate_keypair(rng, key_bits)
    packing = Packing(public.bits, 1.0, 16, 8)
    codes = packing.encode(rng.uniform(-1, 1, sample))
    other = packing.encode(rng.uniform(-1, 1, sample))
    t_enc, a = _timed(lambda: [public.encrypt(int(c), rng) for c in codes])
    b = [public.encrypt(int(c), rng) for c in other]
    t_add, s = _timed(lambda: [public.add(u, v) for u, v in zip(a, b, strict=True)])
    t_dec, out = _timed(lambda: [int(secret.decrypt(c)) for c in s])
    if out != [int(u + v) for u, v in zip(codes, other, strict=True)]:
        raise SystemExit("unpacked Paillier: wrong sum")
    return {
        "enc": sample / t_enc,
        "enc_crt": float("nan"),
        "add": sample / t_add,
        "dec": sample / t_dec,
        "bytes": public.ciphertext_bytes,
    }


def ckks(d: int, rng: np.random.Generator) -> dict[str, float]:
    keys = CkksKeys.generate()
    x, y = rng.uniform(-1, 1, d), rng.uniform(-1, 1, d)
    t_enc, a = _timed(lambda: keys.encrypt(x))
    b = keys.encrypt(y)
    t_add, s = _timed(lambda: sum_vectors([a, b]))
    t_dec, out = _timed(lambda: keys.decrypt(s))
    if np.max(np.abs(out - (x + y))) > 1e-6:
        raise SystemExit("CKKS: wrong sum")
    return {
        "enc": d / t_enc,
        "enc_crt": float("nan"),
        "add": d / t_add,
        "dec": d / t_dec,
        "bytes": a.nbytes / d,
    }


def micro(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    print(f"Per scheme, {args.key_bits}-bit Paillier keys; values per second, bytes per value")
    print(
        f"{'d':>7} {'scheme':>17} {'encrypt/s':>11} {'(CRT)/s':>10} {'add/s':>12} "
        f"{'decrypt/s':>11} {'B/value':>8}"
    )
    for d in args.dims:
        rows = {
            "packed paillier": packed_paillier(d, args.key_bits, rng),
            "unpacked paillier": unpacked_paillier(args.sample, args.key_bits, rng),
            "ckks": ckks(d, rng),
        }
        for name, r in rows.items():
            crt = "" if np.isnan(r["enc_crt"]) else f"{r['enc_crt']:,.0f}"
            print(
                f"{d:>7} {name:>17} {r['enc']:>11,.0f} {crt:>10} {r['add']:>12,.0f} "
                f"{r['dec']:>11,.0f} {r['bytes']:>8.1f}"
            )
        p, u = rows["packed paillier"], rows["unpacked paillier"]
        print(
            f"{'':>7} packed vs unpacked: encrypt {p['enc'] / u['enc']:.0f}x faster "
            f"(target >= 20), {u['bytes'] / p['bytes']:.0f}x smaller (target >= 50)"
        )


MODES: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "paillier-group": {"scheme": "paillier", "key_mode": "group"},
    "paillier-threshold": {"scheme": "paillier", "key_mode": "threshold"},
    "ckks": {"scheme": "ckks"},
}


def run_cfg(mode: str, hidden: int, rounds: int, key_bits: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": f"he-{mode}-{rounds}",
        "seed": 0,
        "topology": {"kind": "complete", "n": 8},
        "data": {"dataset": "digits"},
        "model": {"kind": "mlp", "hidden": [hidden]},
        "protocol": {"kind": "fedavg", "rounds": rounds},
        "training": {"lr": 0.1},
        "eval": {"interval": 1e6},
        "output": {"progress": "off", "log_level": "warning", "report": False},
    }
    he = MODES[mode]
    if he is not None:
        he = dict(he)
        if he["scheme"] == "paillier":
            he["key_bits"] = key_bits
        cfg["security"] = {"aggregation": "he", "he": he}
    return cfg


def runs(args: argparse.Namespace) -> None:
    modes = ["plain", *args.modes]
    print(
        f"\nWhole runs: FedAvg, 8 clients, digits, MLP hidden {args.hidden}, "
        f"R={args.rounds} and {2 * args.rounds}"
    )
    print(
        f"{'mode':>19} {'s/round':>8} {'x plain':>8} {'vs/round':>9} {'x plain':>8} "
        f"{'bytes':>12} {'x plain':>8} {'acc':>7}"
    )
    rows: dict[str, dict[str, float]] = {}
    for mode in modes:
        wall, virtual = [], []
        info: dict[str, Any] = {}
        for r in (args.rounds, 2 * args.rounds):
            cfg = run_cfg(mode, args.hidden, r, args.key_bits)
            res = p2pfed.run(cfg, out=args.out / cfg["name"], overwrite=True, progress="off")
            s = res.summary
            if s["status"] != "completed":
                raise SystemExit(f"{cfg['name']} ended {s['status']}")
            wall.append(s["timings"]["run_s"])
            virtual.append(s["virtual_time"])
            info = {"bytes": s["bytes"]["total"], "acc": s["final"]["mean_acc"]}
        rows[mode] = {
            "s": (wall[1] - wall[0]) / args.rounds,
            "vs": (virtual[1] - virtual[0]) / args.rounds,
            **info,
        }
        base = rows["plain"]
        row = rows[mode]
        print(
            f"{mode:>19} {row['s']:>8.3f} {row['s'] / base['s']:>8.1f} {row['vs']:>9.4f} "
            f"{row['vs'] / base['vs']:>8.2f} {row['bytes']:>12,.0f} "
            f"{row['bytes'] / base['bytes']:>8.1f} {row['acc']:>7.4f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dims", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--key-bits", type=int, default=2048)
    ap.add_argument("--sample", type=int, default=200, help="unpacked Paillier: values timed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["paillier-group", "paillier-threshold", "ckks"],
        choices=[m for m in MODES if m != "plain"],
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench-he"))
    ap.add_argument("--skip-micro", action="store_true")
    ap.add_argument("--skip-runs", action="store_true")
    args = ap.parse_args()
    if not args.skip_micro:
        micro(args)
    if not args.skip_runs:
        runs(args)


if __name__ == "__main__":
    main()
