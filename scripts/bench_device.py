"""Train the same experiment on the CPU and, when one is present, on a GPU.

    .venv/bin/python scripts/bench_device.py [--rounds 30] [--model cnn] [--dataset mnist]

Prints wall time and final accuracy per device and checks that the peers' models really
live on the device asked for. The figures are a same-process comparison, not a unit test:
small models and many peers per process usually favour the CPU; the GPU pays off as models
grow.
"""

from __future__ import annotations

import argparse
import time

import torch

import p2pfed
from p2pfed.config import config_from_mapping
from p2pfed.experiment import build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--model", default="mlp", choices=["logreg", "mlp", "cnn"])
    ap.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    ap.add_argument("--out", default="runs/bench-device")
    args = ap.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no GPU visible to torch: CPU only")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    print(f"{args.peers} peers, {args.model} on {args.dataset}, {args.rounds} D-PSGD rounds")
    print(f"{'device':<8}{'wall s':>8}{'mean acc':>10}{'params on':>11}")
    for device in devices:
        cfg = {
            "name": f"bench-{device}",
            "topology": {"kind": "ring", "n": args.peers},
            "data": {"dataset": args.dataset},
            "model": {"kind": args.model},
            "protocol": {"kind": "dpsgd", "rounds": args.rounds},
            "training": {"lr": 0.05, "momentum": 0.9, "batch_size": 16},
            "runtime": {"device": device},
            "output": {"progress": "off", "report": False},
        }
        built = build(config_from_mapping(cfg))
        where = {p.device.type for s in built.peers for p in s.trainer.model.parameters()}
        t0 = time.perf_counter()
        res = p2pfed.run(cfg, out=f"{args.out}/{device}")
        wall = time.perf_counter() - t0
        print(f"{device:<8}{wall:>8.2f}{res.mean_accuracy:>10.4f}{','.join(sorted(where)):>11}")


if __name__ == "__main__":
    main()
