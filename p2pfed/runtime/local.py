"""The in-process runtime: every peer in one :class:`~p2pfed.runtime.engine.PeerEngine`,
driven under virtual time by :func:`~p2pfed.runtime.virtual.run_virtual`.

With a single engine no frame ever crosses hosts, so the driver's windows simply run from
one evaluation tick to the next. The Ray runtime drives the same engine code split over
actors and reproduces this runtime's metrics exactly (see :mod:`p2pfed.runtime.engine`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from p2pfed.availability import Availability
from p2pfed.crypto.links import LinkGuard
from p2pfed.protocol.codec import Codec
from p2pfed.runtime.base import (
    Interceptor,
    NullObserver,
    PeerReport,
    PeerSlot,
    RunObserver,
    Tap,
)
from p2pfed.runtime.engine import PeerEngine, Snapshot
from p2pfed.runtime.virtual import Evaluation, HostsState, RunOutcome, run_virtual
from p2pfed.timing import CostModel, NetworkModel
from p2pfed.training import Evaluator

__all__ = ["LocalRuntime", "RunOutcome"]


class _OneHost:
    """The driver's view of a single in-process engine."""

    def __init__(self, engine: PeerEngine):
        self.engine = engine

    def _state(self) -> HostsState:
        e = self.engine
        return HostsState(
            next_time=e.next_time(),
            pending=e.pending,
            frames_pending=e.frames_pending,
            done=e.done,
            completed=e.completed,
            events=e.events,
            now=e.last_work,
            frames=dict(e.frames),
            settled=e.settled,
        )

    def start(self) -> HostsState:
        self.engine.start()
        return self._state()

    def state(self) -> HostsState:
        return self._state()

    def step(self, end: float, inclusive: bool) -> HostsState:
        self.engine.advance(end, inclusive=inclusive)
        return self._state()

    def snapshot(self) -> list[Snapshot]:
        return [self.engine.snapshot()]


class LocalRuntime:
    """Drives every participant in this process.

    ``peers`` are numbered 0..n-1 in order; the first ``evaluated`` of them (default: all)
    are scored at every evaluation tick (a coordinator holds no data and is not). ``links``
    seals every frame (it holds every peer's identity), ``interceptors`` sit on the path;
    see :class:`~p2pfed.runtime.engine.PeerEngine`.

    Checkpoints. ``run(after_tick=...)`` is told the next tick's time after every
    evaluation tick; :meth:`checkpoint_state` is then what a checkpoint needs from this
    runtime (the engine with every peer in it, and the evaluation count), and a runtime
    built with ``restored=`` that state goes on with ``run(resume_at=next_tick)`` exactly as
    the original would have (see :mod:`p2pfed.checkpoint`).
    """

    def __init__(
        self,
        peers: Sequence[PeerSlot],
        codec: Codec,
        network: NetworkModel,
        cost: CostModel,
        evaluator: Evaluator,
        *,
        eval_interval: float,
        time_limit: float | None = None,
        observer: RunObserver | None = None,
        taps: Sequence[Tap] = (),
        evaluated: int | None = None,
        links: LinkGuard | None = None,
        interceptors: Sequence[Interceptor] = (),
        inbox_taps: Sequence[Tap] = (),
        availability: Availability | None = None,
        restored: dict[str, Any] | None = None,
    ):
        if restored is not None:
            peers = list(restored["engine"].peers.values())
        if [p.id for p in peers] != list(range(len(peers))):
            raise ValueError("peers must be numbered 0..n-1 in order")
        if eval_interval <= 0:
            raise ValueError("eval_interval must be positive")
        self.peers = list(peers)
        self.observer: RunObserver = observer or NullObserver()
        self.engine = PeerEngine(
            peers,
            len(peers),
            codec,
            network,
            cost,
            observer=self.observer,
            taps=taps,
            links=links,
            interceptors=interceptors,
            inbox_taps=inbox_taps,
            availability=availability,
        )
        self.evaluation = Evaluation(
            evaluator, len(peers) if evaluated is None else evaluated, self.observer
        )
        if restored is not None:
            self.engine = restored["engine"]
            self.evaluation.tick = int(restored["eval_tick"])
        self.eval_interval = eval_interval
        self.time_limit = time_limit

    @property
    def now(self) -> float:
        return self.engine.now

    def peer_reports(self) -> list[PeerReport]:
        return self.engine.reports()

    def checkpoint_state(self) -> dict[str, Any]:
        """This runtime's part of a checkpoint (call it at an ``after_tick`` point)."""
        return {"engine": self.engine, "eval_tick": self.evaluation.tick}

    def run(
        self,
        after_tick: Callable[[float], None] | None = None,
        resume_at: float | None = None,
    ) -> RunOutcome:
        return run_virtual(
            _OneHost(self.engine),
            participants=len(self.peers),
            total_rounds=sum(p.protocol.rounds for p in self.peers),
            eval_interval=self.eval_interval,
            time_limit=self.time_limit,
            evaluate=self.evaluation,
            observer=self.observer,
            after_tick=after_tick,
            resume_at=resume_at,
        )
