"""Seconds per round of Flower's simulation engine on bench_runtime.py's FedAvg workload.

    python scripts/bench_flower.py [--peers 8 32 128] [--rounds 10] [--json PATH]

Optional: Flower is not a p2pfed dependency. Without ``flwr`` this prints one line saying
so and exits 0. Written against Flower 1.42 (``flwr.simulation.run_simulation`` with the
Message API: ``ClientApp``, ``ServerApp``, ``flwr.serverapp.strategy.FedAvg``;
``run_simulation`` is deprecated there in favour of ``flwr run`` but still runs the same
simulation engine). Flower 1.42 wants ray 2.55.1 for its simulation extra; installing
``flwr[simulation]`` into p2pfed's environment would change its ray. p2pfed's .venv has no
flwr; the script was run with flwr 1.42.0 installed in a throwaway virtual environment
layered over p2pfed's (so on p2pfed's ray 2.60, not the pinned 2.55.1):

    python -m venv /tmp/flwr-venv        # then, in its site-packages, a file p2pfed.pth:
    #   import site; site.addsitedir('<repo>/.venv/lib/python3.11/site-packages')
    /tmp/flwr-venv/bin/pip install flwr==1.42.0
    /tmp/flwr-venv/bin/python scripts/bench_flower.py

The workload and the columns match scripts/bench_runtime.py: digits, MLP 64-64-10, IID
shards, 1 local epoch of SGD (batch 32, lr 0.05), sample-weighted FedAvg over all N clients,
no evaluation in the timed part (``fraction_evaluate=0``, no server-side evaluation). Per N,
in this one process:

* bare: bench_runtime.py's plain torch loop (median of rounds 2..R).
* flower: ``run_simulation`` with N SuperNodes on the Ray backend, one CPU per ClientApp
  (2 actors on 2 cores, as p2pfed's 2 PeerHosts; Flower's default is 2 CPUs, one actor),
  on a private Ray instance started with the same arguments as bench_runtime.py. A
  strategy hook stamps the end of every round's aggregation; steady state is the mean of
  rounds 2..R (a mean, like bench_runtime.py's difference method, so slow rounds count).
  The R/2R difference does not work here: Flower builds its actor pool while round 1 is
  already waiting, so round 1 carries a start-up that varies by seconds between runs.
* start-up s: from the ``run_simulation`` call to the end of round 1, less one steady
  round (actor pool and node registration).
* peak MB: peak summed RSS of this process and all its descendants during the Flower run.

Each client keeps its shard in its worker process (a ClientApp is unpickled afresh for
every message, so the split is cached on ``sys``, as ``flwr_datasets`` caches it at module
level in a packaged app) and rebuilds its model from the message, as Flower clients do.
Flower's per-round INFO logging is lowered to WARNING and telemetry is off.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

if importlib.util.find_spec("flwr") is None:
    print("Flower (flwr) is not installed: nothing to compare (pip install 'flwr[simulation]')")
    sys.exit(0)

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # read when flwr is imported
# bench_runtime below is scripts/bench_runtime.py: a script's own folder is on sys.path

import logging

import numpy as np
import ray
import torch
from bench_runtime import BATCH, HIDDEN, LR, TEST_FRACTION, PeakMemory, bare_loop
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

FLOWER_CLIENT_CPUS = 1.0


# --- the client side (pickled by value into Flower's Ray actors) ----------------------------


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def _split(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """IID shards (index arrays into the training split) and the test split, as bare_loop
    draws them; cached per process (see the module docstring)."""
    cache: dict[tuple[int, int], Any] = sys.__dict__.setdefault("_bench_flower_split", {})
    if (n, seed) not in cache:
        x, y = load_digits(return_X_y=True)
        x_tr, x_te, y_tr, y_te = train_test_split(
            (x / 16.0).astype(np.float32), y, test_size=TEST_FRACTION, stratify=y, random_state=seed
        )
        order = np.random.default_rng(seed).permutation(len(y_tr))
        shards = [
            (torch.as_tensor(x_tr[s]), torch.as_tensor(y_tr[s], dtype=torch.int64))
            for s in np.array_split(order, n)
        ]
        cache[(n, seed)] = (shards, x_te, y_te)
    return cache[(n, seed)]


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """One epoch of local SGD from the global model; reply with the model and sample count."""
    torch.set_num_threads(1)
    k, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    config = msg.content.config_records["config"]
    seed, server_round = cast(int, config["seed"]), cast(int, config["server-round"])
    shards, _, _ = _split(n, seed)
    x, y = shards[k]  # (n_k, 64), (n_k,)
    model = _model()
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0)
    loss_fn = nn.CrossEntropyLoss()
    order = torch.as_tensor(np.random.default_rng((seed, k, server_round)).permutation(len(y)))
    for b in range(0, len(order), BATCH):
        idx = order[b : b + BATCH]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"num-examples": len(y)}),
        }
    )
    return Message(content=reply, reply_to=msg)


# --- the server side (runs in a thread of this process) --------------------------------------


@dataclass
class Clock:
    """Wall times of the strategy's stages in one simulation."""

    called: float = 0.0  # run_simulation was called
    first_configure: float | None = None
    aggregated: list[float] = field(default_factory=list)  # end of each round's aggregation
    final: ArrayRecord | None = None


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, noting when the first round starts and each round ends."""

    def __init__(self, clock: Clock, **kwargs: Any):
        super().__init__(**kwargs)
        self.clock = clock

    def configure_train(self, server_round: int, *args: Any, **kwargs: Any) -> Any:
        if self.clock.first_configure is None:
            self.clock.first_configure = time.perf_counter()
        return super().configure_train(server_round, *args, **kwargs)

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        out = super().aggregate_train(server_round, replies)
        self.clock.aggregated.append(time.perf_counter())
        return out


def _server_app(n: int, rounds: int, seed: int, clock: Clock) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(seed)
        strategy = TimedFedAvg(
            clock,
            fraction_train=1.0,
            fraction_evaluate=0.0,  # no federated evaluation in the timed part
            min_train_nodes=n,
            min_available_nodes=n,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(_model().state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"seed": seed}),
        )
        clock.final = result.arrays

    return app


def simulate(n: int, rounds: int, seed: int) -> Clock:
    """One Flower simulation of ``rounds`` FedAvg rounds over ``n`` SuperNodes."""
    # Flower starts Ray only when it is not running, and shuts it down at the end
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    clock = Clock(called=time.perf_counter())
    try:
        run_simulation(
            server_app=_server_app(n, rounds, seed, clock),
            client_app=client_app,
            num_supernodes=n,
            backend_config={"client_resources": {"num_cpus": FLOWER_CLIENT_CPUS, "num_gpus": 0.0}},
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if clock.first_configure is None or len(clock.aggregated) != rounds:
        raise SystemExit(f"Flower ran {len(clock.aggregated)} of {rounds} rounds at N={n}")
    return clock


@dataclass
class FlowerRun:
    per_round: float  # steady state: mean of rounds 2..R
    median_round: float  # median of rounds 2..R (a cross-check)
    rounds_s: list[float]  # every round's wall seconds, round 1 included
    startup: float  # from the call to the end of round 1, less one steady round
    mean_acc: float


def _accuracy(arrays: ArrayRecord | None, n: int, seed: int) -> float:
    if arrays is None:
        return float("nan")
    _, x_te, y_te = _split(n, seed)
    model = _model()
    model.load_state_dict(arrays.to_torch_state_dict())
    with torch.no_grad():
        pred = model(torch.as_tensor(x_te)).argmax(1).numpy()
    return float((pred == y_te).mean())


def flower_run(n: int, rounds: int, seed: int) -> FlowerRun:
    clock = simulate(n, rounds, seed)
    assert clock.first_configure is not None
    rounds_s = np.diff([clock.first_configure, *clock.aggregated]).tolist()
    steady = statistics.mean(rounds_s[1:])
    return FlowerRun(
        per_round=steady,
        median_round=statistics.median(rounds_s[1:]),
        rounds_s=rounds_s,
        startup=clock.aggregated[0] - clock.called - steady,
        mean_acc=_accuracy(clock.final, n, seed),
    )


HEADER = (
    f"{'N':>5} {'protocol':<9}{'bare s/rnd':>11}{'flower s/rnd':>13}{'flower/bare':>12}"
    f"{'start-up s':>11}{'peak MB':>9}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be at least 2 (steady state leaves the first round out)")

    import flwr

    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    bare_loop(2, "fedavg", 2, args.seed)  # torch's first-call costs belong to no row
    print(
        f"Flower {flwr.__version__} simulation engine, FedAvg, digits, MLP 64-{HIDDEN}-10, IID, "
        f"{args.rounds} rounds; {FLOWER_CLIENT_CPUS:g} CPU per ClientApp on 2 cores",
        flush=True,
    )
    print(HEADER, flush=True)
    rows: list[dict[str, Any]] = []
    for n in args.peers:
        bare = bare_loop(n, "fedavg", args.rounds, args.seed)
        with PeakMemory() as mem:
            fl = flower_run(n, args.rounds, args.seed)
        ratio = fl.per_round / bare.steady
        print(
            f"{n:>5} {'fedavg':<9}{bare.steady:>11.4f}{fl.per_round:>13.4f}{ratio:>12.2f}"
            f"{fl.startup:>11.1f}{mem.peak_mb:>9.0f}",
            flush=True,
        )
        rows.append(
            {
                "n": n,
                "protocol": "fedavg",
                "bare": bare.steady,
                "flower": fl.per_round,
                "ratio": ratio,
                "startup": fl.startup,
                "peak_mb": mem.peak_mb,
                "detail": {"bare_per_round": bare.per_round, "bare_acc": bare.mean_acc}
                | asdict(fl),
            }
        )
    if args.json is not None:
        doc = {"flwr": flwr.__version__, "rounds": args.rounds, "seed": args.seed, "rows": rows}
        args.json.write_text(json.dumps(doc, indent=2))
        print(f"\nrows written to {args.json}")


if __name__ == "__main__":
    main()
