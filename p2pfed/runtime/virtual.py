"""Virtual time: the driver loop that advances one or many engines in lockstep windows.

The peers live in one or more :class:`~p2pfed.runtime.engine.PeerEngine` s ("hosts": one
in-process engine for :class:`~p2pfed.runtime.local.LocalRuntime`, one per Ray actor for
the Ray runtime). The driver repeatedly lets every host advance up to a cap, then the hosts
exchange the frames that crossed between them:

* the cap is the next evaluation tick, and every event before a tick is processed before
  the tick evaluates (an event at exactly the tick's time comes after it);
* a ``time.limit`` processes events up to and including the limit, then stops;
* below the cap, each host stops at its own safe horizon, decided by :class:`Hosts`: for
  several hosts, the earliest time a frame from another host could still reach it — the
  next event of every host that may send to it plus the minimum link latency (conservative
  synchronisation, Chandy & Misra 1979). A single host has no horizon.

Empty stretches of time are skipped (the next window starts at the earliest pending event
anywhere). The run completes once every peer has stopped and the frames still on the wire
have landed (nothing sent is silently dropped: ``sent == delivered + lost + rejected +
in_flight (+ dropped``, frames lost with a Ray host that died), and ``in_flight`` is
non-zero only when a time limit cut the run, or the landing of its last frames, short). A run
whose peers wait with nothing left to happen is a deadlock and fails with a clear error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from p2pfed.errors import RuntimeFailure
from p2pfed.runtime.base import MetricRow, RunObserver
from p2pfed.runtime.engine import Snapshot
from p2pfed.training import Evaluator


@dataclass
class RunOutcome:
    """How a run ended."""

    status: str  # "completed" | "time_limit"
    # frames: sent == delivered + lost + rejected + in_flight (in flight only at a time limit)
    virtual_time: float
    events: int
    final: list[MetricRow]
    frames: dict[str, int] = field(default_factory=dict)
    models: dict[int, np.ndarray] = field(default_factory=dict)  # every participant's last


def models_of(snapshots: Sequence[Snapshot]) -> dict[int, np.ndarray]:
    """Every participant's model in ``snapshots``, by peer id (coordinators included)."""
    return {i: snap.models[k] for snap in snapshots for k, i in enumerate(snap.ids)}


@dataclass
class HostsState:
    """The hosts taken together, after a start or a step."""

    next_time: float  # earliest pending event anywhere (frames in transit included)
    pending: int  # events pending anywhere (frames in transit included)
    frames_pending: int  # frames queued or in transit between hosts
    done: int  # participants that have stopped
    completed: int  # local rounds completed, summed over peers
    events: int  # events delivered so far
    now: float  # time of the latest event delivered
    frames: dict[str, int]  # sent / delivered / lost / rejected so far
    settled: int = -1  # participants done, or down with nothing left to do (-1: = done)


class Hosts(Protocol):
    """What the driver needs from the engines it drives."""

    def start(self) -> HostsState: ...

    def state(self) -> HostsState:
        """Where the hosts stand now, without advancing them (a resumed run's first look)."""
        ...

    def step(self, cap: float, inclusive: bool) -> HostsState:
        """Advance every host to ``cap`` (through it when ``inclusive``) or its own safe
        horizon, whichever comes first; at least the earliest pending event is processed."""
        ...

    def snapshot(self) -> list[Snapshot]: ...


class Evaluation:
    """Scores every evaluated peer at a tick: test accuracy and loss, and the distance of
    its model from the mean model (consensus distance). Peers lost with a failed host are
    missing from the snapshots and so from the rows and the mean."""

    def __init__(self, evaluator: Evaluator, evaluated: int, observer: RunObserver):
        self.evaluator = evaluator
        self.evaluated = evaluated  # peers 0..evaluated-1 are scored (not a coordinator)
        self.observer = observer
        self.tick = 0

    def __call__(self, t: float, snapshots: Sequence[Snapshot]) -> list[MetricRow]:
        ids: list[int] = []
        rounds: list[int] = []
        losses: list[float | None] = []
        blocks = []
        for snap in snapshots:
            keep = [k for k, i in enumerate(snap.ids) if i < self.evaluated]
            ids += [snap.ids[k] for k in keep]
            rounds += [snap.rounds[k] for k in keep]
            losses += [snap.train_loss[k] for k in keep]
            if keep:
                blocks.append(snap.models[keep])
        order = np.argsort(ids, kind="stable")
        if len(set(ids)) != len(ids):
            raise RuntimeFailure("evaluation found a peer twice (hosts overlap)")
        if not ids:
            raise RuntimeFailure("no peer is left to evaluate")
        models = np.concatenate(blocks)[order]  # (n, P)
        mean = models.mean(axis=0, dtype=np.float64)  # (P,)
        dists = np.linalg.norm(models - mean, axis=1)  # (n,)
        rows = []
        for k, params, dist in zip(order, models, dists, strict=True):
            ev = self.evaluator.evaluate(params)
            rows.append(
                MetricRow(
                    tick=self.tick,
                    t=t,
                    peer=ids[k],
                    round=rounds[k],
                    train_loss=losses[k],
                    test_acc=ev.accuracy,
                    test_loss=ev.loss,
                    consensus_dist=float(dist),
                )
            )
        self.tick += 1
        self.observer.evaluated(rows)
        return rows


def run_virtual(
    hosts: Hosts,
    *,
    participants: int,
    total_rounds: int,
    eval_interval: float,
    time_limit: float | None,
    evaluate: Callable[[float, Sequence[Snapshot]], list[MetricRow]],
    observer: RunObserver,
    after_tick: Callable[[float], None] | None = None,
    resume_at: float | None = None,
) -> RunOutcome:
    """Drive ``hosts`` to the end of the run (see the module docstring).

    ``after_tick(next_tick)`` is called after every evaluation tick but the last, when every
    event before the tick has been processed and none after it: the point a checkpoint
    captures. ``resume_at`` goes on from such a point, restored into ``hosts``: the hosts
    are not started again and the next tick is at ``resume_at``."""
    if eval_interval <= 0:
        raise ValueError("eval_interval must be positive")
    if resume_at is None:
        observer.progress(0.0, 0, total_rounds)
        evaluate(0.0, hosts.snapshot())
        state = hosts.start()
        tick = eval_interval
    else:
        state = hosts.state()
        tick = resume_at
        observer.progress(state.now, state.completed, total_rounds)
    status, cut = "completed", False
    while True:
        # the peers still running are all down, with nothing of theirs pending and nothing
        # on the wire (churn): the run ends without waiting for them to come back
        settled = state.done if state.settled < 0 else state.settled
        if settled >= participants and not state.frames_pending:
            break
        if state.done >= participants:
            if state.frames_pending == 0:
                break
            # every peer has stopped: land the frames still on the wire (push-sum mass, late
            # replies); stopped peers start no new work, so this ends — at the time limit
            # at the latest (the run completed; what is still on the wire is in flight)
            if time_limit is not None and state.next_time > time_limit:
                cut = True
                break
            end, inclusive = math.inf, False
            if time_limit is not None:
                end, inclusive = time_limit, True
        else:
            if state.pending == 0:
                raise RuntimeFailure(
                    f"no events left at t={state.now:.3f}s while "
                    f"{participants - state.done} peers still wait "
                    "(a lost message with no timeout? set protocol.timeout)"
                )
            t_next = state.next_time
            if tick <= t_next and (time_limit is None or tick <= time_limit):
                evaluate(tick, hosts.snapshot())
                tick += eval_interval
                if after_tick is not None:
                    after_tick(tick)
                continue
            if time_limit is not None and t_next > time_limit:
                status = "time_limit"
                break
            end, inclusive = tick, False
            if time_limit is not None and end > time_limit:
                end, inclusive = time_limit, True
        state = hosts.step(end, inclusive)
        observer.progress(state.now, state.completed, total_rounds)
    now = time_limit if status == "time_limit" and time_limit is not None else state.now
    in_flight = state.frames_pending if status == "time_limit" or cut else 0
    snapshots = hosts.snapshot()
    final = evaluate(now, snapshots)
    frames = {**state.frames, "in_flight": in_flight}
    return RunOutcome(status, now, state.events, final, frames, models_of(snapshots))
