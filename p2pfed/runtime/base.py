"""What every runtime shares: the peer slot it drives and the observer it reports to.

A runtime owns time, placement and the wire; it delivers events to protocol state machines
and executes the effects they return. It reports everything a run directory records through
a :class:`RunObserver`, so recording, taps and progress display stay out of the engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from p2pfed.protocol.codec import FrameSize
from p2pfed.protocol.core import Protocol as PeerProtocol
from p2pfed.training import LocalTrainer

#: A wire tap sees every frame that enters the wire: (time, src, dst, frame bytes).
Tap = Callable[[float, int, int, bytes], None]

#: An on-path interceptor: (time, src, dst, frame bytes) -> the frames that go on instead
#: (``[frame]`` passes it, ``[]`` drops it, a changed frame tampers, two frames replay or
#: inject one). See :class:`~p2pfed.runtime.engine.PeerEngine`.
Interceptor = Callable[[float, int, int, bytes], Sequence[bytes]]


@dataclass
class PeerSlot:
    """One logical peer inside a runtime: its protocol, state and private trainer (``None``
    for a participant without data, such as a coordinator)."""

    id: int
    protocol: PeerProtocol[Any]
    state: Any
    trainer: LocalTrainer | None
    done: bool = False
    training: bool = False
    last_loss: float = math.nan
    samples_trained: int = 0
    trainings: int = 0  # local trainings run (each result is a release under DP)
    diverged: bool = False  # a training run returned a non-finite loss
    counters: dict[str, int] = field(default_factory=dict)
    #: a misbehaving peer's overlay on what it sends (p2pfed.adversary.poisoner)
    overlay: Overlay | None = None
    #: availability (p2pfed.availability): whether the peer is up, how many times it went
    #: down (events of an earlier incarnation are void), and the initial model a peer that
    #: rejoins from scratch starts again from
    up: bool = True
    incarnation: int = 0
    initial: np.ndarray | None = field(default=None, repr=False)


class Overlay(Protocol):
    """A behaviour a peer puts over its protocol (a poisoner): it sees what the peer starts
    training from and what it receives, and rewrites what it sends. The protocol itself
    stays honest; the engine calls the overlay around it."""

    def training(self, now: float, peer: int, start: np.ndarray) -> None:
        """The peer starts a local training from ``start``."""

    def trained(self, now: float, peer: int, start: np.ndarray, params: np.ndarray) -> np.ndarray:
        """The peer's local training from ``start`` produced ``params``: what the protocol is
        handed instead (``params`` itself is honest). Where shared messages hide the model
        (secure aggregation, HE) this is where a poisoner chooses its input."""
        ...

    def incoming(self, now: float, src: int, dst: int, message: Any) -> None:
        """The peer accepted ``message`` from ``src``."""

    def outgoing(self, now: float, src: int, dst: int, message: Any) -> list[tuple[float, Any]]:
        """What goes out instead of ``message``: (extra delay in seconds, message) pairs;
        ``[(0.0, message)]`` is honest, ``[]`` withholds it, several flood."""
        ...


@dataclass(frozen=True)
class PeerReport:
    """What a run summary says about one participant at the end of a run."""

    id: int
    rounds: int
    counters: dict[str, int]
    diverged: bool
    done: bool
    trainings: int = 0
    #: (start-model digest, shard rows) per training, when the trainer recorded them
    trained_on: tuple[tuple[bytes, np.ndarray], ...] = ()

    @classmethod
    def of(cls, slot: PeerSlot) -> PeerReport:
        return cls(
            slot.id,
            slot.protocol.progress(slot.state),
            dict(slot.counters),
            slot.diverged,
            slot.done,
            slot.trainings,
            tuple(slot.trainer.trained_on) if slot.trainer is not None else (),
        )


@dataclass(frozen=True)
class MetricRow:
    """One peer at one evaluation tick (a line of metrics.jsonl)."""

    tick: int
    t: float
    peer: int
    round: int
    train_loss: float | None
    test_acc: float
    test_loss: float
    consensus_dist: float


class RunObserver(Protocol):
    """Receives what a runtime reports. All times are run times (virtual seconds)."""

    def frame_sent(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None: ...

    def frame_lost(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None: ...

    def frame_rejected(self, t: float, src: int, dst: int, reason: str) -> None: ...

    def peer_event(self, t: float, peer: int, name: str, fields: dict[str, Any]) -> None: ...

    def evaluated(self, rows: list[MetricRow]) -> None: ...

    def progress(self, t: float, completed: int, total: int) -> None: ...


class NullObserver:
    """An observer that records nothing (for tests and embedding)."""

    def frame_sent(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        pass

    def frame_lost(self, t: float, src: int, dst: int, kind: str, size: FrameSize) -> None:
        pass

    def frame_rejected(self, t: float, src: int, dst: int, reason: str) -> None:
        pass

    def peer_event(self, t: float, peer: int, name: str, fields: dict[str, Any]) -> None:
        pass

    def evaluated(self, rows: list[MetricRow]) -> None:
        pass

    def progress(self, t: float, completed: int, total: int) -> None:
        pass
