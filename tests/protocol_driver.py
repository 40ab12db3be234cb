"""A runtime-free driver for protocol state machines, used by the protocol tests.

It keeps a pool of pending events (trainings to finish, messages in flight, timers) and lets
the caller pick which happens next, so a test can explore arbitrary interleavings. Training
is replaced by a pure function of the parameters (identity by default), so mass conservation
and consensus can be checked exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pfed.protocol import (
    Effect,
    Emit,
    Event,
    Message,
    MessageArrived,
    Protocol,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
)
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.core import COMPUTE_SUFFIX


@dataclass
class Driver:
    protocols: list[Protocol[Any]]
    states: list[Any]
    train_fn: Callable[[int, np.ndarray], np.ndarray] = lambda peer, p: p.copy()
    codec: Codec | None = None  # when set, every message goes through encode/decode
    pending: list[tuple[int, Event]] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    emitted: list[tuple[int, str]] = field(default_factory=list)
    training: set[int] = field(default_factory=set)
    sent: int = 0

    @classmethod
    def start(cls, protocols: list[Protocol[Any]], params: list[np.ndarray], **kw: Any) -> Driver:
        d = cls(
            protocols, [p.initial_state(x) for p, x in zip(protocols, params, strict=True)], **kw
        )
        for i in range(len(protocols)):
            d.deliver(i, Started())
        return d

    def deliver(self, peer: int, event: Event) -> None:
        if isinstance(event, TrainingDone):
            self.training.discard(peer)
        self.states[peer], effects = self.protocols[peer].on_event(self.states[peer], event)
        for eff in effects:
            self._execute(peer, eff)

    def _execute(self, peer: int, eff: Effect) -> None:
        if isinstance(eff, Send):
            self.sent += 1
            msg = eff.message
            if self.codec is not None:
                frame, _ = self.codec.encode(peer, eff.to, msg)
                msg = self.codec.decode(frame).message
            self.pending.append((eff.to, MessageArrived(peer, msg)))
        elif isinstance(eff, Train):
            assert peer not in self.training, f"peer {peer} asked to train twice"
            assert peer not in self.done, f"peer {peer} trains after it stopped"
            self.training.add(peer)
            base = np.array(eff.params, dtype=np.float32)
            new = self.train_fn(peer, base).astype(np.float32)
            self.pending.append((peer, TrainingDone(new, base, 0.0, 1)))
        elif isinstance(eff, SetTimer):
            self.pending.append((peer, TimerFired(eff.tag, eff.round)))
        elif isinstance(eff, Emit):
            self.emitted.append((peer, eff.name))
        elif isinstance(eff, Stop):
            self.done.add(peer)

    def step(self, index: int = 0) -> tuple[int, Event]:
        peer, event = self.pending.pop(index)
        self.deliver(peer, event)
        return peer, event

    def run(self, choose: Callable[[int], int] = lambda n: 0, *, skip_timers: bool = True) -> None:
        """Deliver events until none is left. Timers are delivered last (only when nothing
        else is pending), which models timeouts long enough never to fire spuriously."""
        guard = 0
        while self.pending:
            guard += 1
            assert guard < 1_000_000, "driver did not terminate"
            live = [k for k, (_, ev) in enumerate(self.pending) if not isinstance(ev, TimerFired)]
            if live:
                self.step(live[choose(len(live))])
            elif skip_timers:
                self.pending.clear()
            else:
                self.step(0)

    def models(self) -> np.ndarray:
        return np.stack([p.model(s) for p, s in zip(self.protocols, self.states, strict=True)])


DropRule = Callable[[int, int, Message], bool]


def _never(src: int, dst: int, msg: Message) -> bool:
    return False


@dataclass
class RecordingDriver(Driver):
    """The driver, plus: per-peer sample counts (the base reports 1), a record of every
    effect, and a rule that loses chosen messages (the sender sent them; nobody gets them).
    Deadlines fire only when a test fires them; modelled computation (``...:compute``
    timers) ends like any other event."""

    samples: dict[int, int] = field(default_factory=dict)
    drop: DropRule = _never
    effects: list[tuple[int, Effect]] = field(default_factory=list)
    lost: list[tuple[int, int, Message]] = field(default_factory=list)

    def _execute(self, peer: int, eff: Effect) -> None:
        self.effects.append((peer, eff))
        if isinstance(eff, Send) and self.drop(peer, eff.to, eff.message):
            self.lost.append((peer, eff.to, eff.message))
            return
        super()._execute(peer, eff)
        if isinstance(eff, Train) and peer in self.samples:
            target, done = self.pending[-1]
            assert isinstance(done, TrainingDone)
            self.pending[-1] = (target, dataclasses.replace(done, samples=self.samples[peer]))

    def settle(self, hold: Callable[[int, Event], bool] = lambda peer, ev: False) -> None:
        """Deliver everything but deadlines (and events ``hold`` keeps back), in order,
        until nothing else is pending."""
        while True:
            live = [
                k
                for k, (p, ev) in enumerate(self.pending)
                if (not isinstance(ev, TimerFired) or ev.tag.endswith(COMPUTE_SUFFIX))
                and not hold(p, ev)
            ]
            if not live:
                return
            self.step(live[0])

    def sends(self, src: int, cls: type[Message]) -> list[tuple[int, Any]]:
        return [
            (e.to, e.message)
            for p, e in self.effects
            if p == src and isinstance(e, Send) and isinstance(e.message, cls)
        ]

    def emits(self, name: str, peer: int | None = None) -> list[dict[str, Any]]:
        return [
            e.fields
            for p, e in self.effects
            if isinstance(e, Emit) and e.name == name and peer in (None, p)
        ]

    def trains(self, peer: int) -> list[np.ndarray]:
        """The models ``peer`` started each training from."""
        return [e.params for p, e in self.effects if p == peer and isinstance(e, Train)]
