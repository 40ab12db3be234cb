"""The in-process runtime: a discrete-event simulation under virtual time.

Events wait in one heap ordered by ``(time, sequence)``; the sequence number breaks ties in
the order events were scheduled, so two runs from the same seed process the same events in
the same order and produce identical metrics, however asynchronous the protocol.

Effects become future events:

* ``Train`` runs the peer's real SGD now and schedules ``TrainingDone`` after the virtual
  duration from the cost model (training is instantaneous in wall time, timed in virtual);
* ``Send`` encodes the message into a frame, shows it to every tap, asks the network model
  for departure, arrival and loss, and schedules the frame's arrival; the receiver decodes
  the *bytes* (never the sender's objects), so the wire is real;
* ``SetTimer`` schedules ``TimerFired``; ``Emit`` goes to the event log; ``Stop`` retires
  the peer from training.

Evaluation ticks are scheduled by the runtime itself every ``eval_interval`` virtual
seconds, plus one final tick when every peer has stopped and the frames still on the wire
have landed (nothing sent is silently dropped: ``sent == delivered + lost + rejected +
in_flight``, and ``in_flight`` is non-zero only when a time limit cut the run short).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from p2pfed.errors import FrameError, ProtocolError, RuntimeFailure
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.core import (
    Effect,
    Emit,
    Event,
    MessageArrived,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
)
from p2pfed.runtime.base import MetricRow, NullObserver, PeerSlot, RunObserver, Tap
from p2pfed.timing import CostModel, NetworkModel
from p2pfed.training import Evaluator

_EVAL, _EVENT, _FRAME = 0, 1, 2


@dataclass
class RunOutcome:
    """How a run ended."""

    status: str  # "completed" | "time_limit"
    # frames: sent == delivered + lost + rejected + in_flight (in flight only at a time limit)
    virtual_time: float
    events: int
    final: list[MetricRow]
    frames: dict[str, int] = field(default_factory=dict)


class LocalRuntime:
    """Drives every peer in this process."""

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
    ):
        if [p.id for p in peers] != list(range(len(peers))):
            raise ValueError("peers must be numbered 0..n-1 in order")
        if eval_interval <= 0:
            raise ValueError("eval_interval must be positive")
        self.peers = list(peers)
        self.codec = codec
        self.network = network
        self.cost = cost
        self.evaluator = evaluator
        self.eval_interval = eval_interval
        self.time_limit = time_limit
        self.observer: RunObserver = observer or NullObserver()
        self.taps = list(taps)
        self.now = 0.0
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = itertools.count()
        self._pending_work = 0  # scheduled events other than evaluation ticks
        self._tick = 0
        self._completed = 0
        self._done = 0
        self._frames = {"sent": 0, "delivered": 0, "lost": 0, "rejected": 0, "in_flight": 0}

    # --- scheduling ---------------------------------------------------------------------

    def _push(self, t: float, kind: int, target: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, target, payload))
        if kind != _EVAL:
            self._pending_work += 1

    # --- the loop -------------------------------------------------------------------------

    def run(self) -> RunOutcome:
        total = sum(p.protocol.rounds for p in self.peers)
        self.observer.progress(0.0, 0, total)
        self._evaluate(0.0)
        self._push(self.eval_interval, _EVAL, -1, None)
        for peer in self.peers:
            self._push(0.0, _EVENT, peer.id, Started())
        events, status = 0, "completed"
        while self._done < len(self.peers):
            if self._pending_work == 0:
                waiting = [p.id for p in self.peers if not p.done]
                raise RuntimeFailure(
                    f"no events left at t={self.now:.3f}s while peers {waiting[:10]} still wait "
                    "(a lost message with no timeout? set protocol.timeout)"
                )
            t, _, kind, target, payload = heapq.heappop(self._heap)
            if self.time_limit is not None and t > self.time_limit:
                status = "time_limit"
                self.now = self.time_limit
                break
            self.now = t
            if kind == _EVAL:
                self._evaluate(t)
                self._push(t + self.eval_interval, _EVAL, -1, None)
                continue
            self._pending_work -= 1
            events += 1
            if kind == _FRAME:
                self._on_frame(target, payload)
            else:
                self._deliver(self.peers[target], payload)
            self.observer.progress(self.now, self._completed, total)
        if status == "completed":
            events += self._settle()
        self._frames["in_flight"] = sum(1 for e in self._heap if e[2] == _FRAME)
        final = self._evaluate(self.now)
        return RunOutcome(status, self.now, events, final, dict(self._frames))

    def _settle(self) -> int:
        """Every peer has stopped: deliver the frames still on the wire (push-sum mass, late
        replies) so nothing sent is silently dropped. Stopped peers start no new work, so
        this ends; timers are moot and discarded."""
        delivered = 0
        while self._heap:
            t, _, kind, target, payload = heapq.heappop(self._heap)
            if kind != _FRAME:
                continue
            self.now = t
            self._on_frame(target, payload)
            delivered += 1
        self._pending_work = 0
        return delivered

    # --- delivering events and executing effects -------------------------------------------

    def _deliver(self, peer: PeerSlot, event: Event) -> None:
        if isinstance(event, TrainingDone):
            peer.training = False
            peer.last_loss = event.loss
            peer.samples_trained += event.samples
            if not math.isfinite(event.loss) and not peer.diverged:
                peer.diverged = True
                self.observer.peer_event(self.now, peer.id, "training_diverged", {})
        before = peer.protocol.progress(peer.state)
        peer.state, effects = peer.protocol.on_event(peer.state, event)
        self._completed += peer.protocol.progress(peer.state) - before
        for effect in effects:
            self._execute(peer, effect)

    def _execute(self, peer: PeerSlot, effect: Effect) -> None:
        if isinstance(effect, Send):
            self._send(peer.id, effect)
        elif isinstance(effect, Train):
            if peer.training:
                raise ProtocolError(f"peer {peer.id} asked to train while already training")
            base = np.array(effect.params, dtype=np.float32)
            result = peer.trainer.train(base, epochs=effect.epochs, steps=effect.steps)
            peer.training = True
            done = TrainingDone(result.params, base, result.loss, result.samples)
            self._push(
                self.now + self.cost.train_time(peer.id, result.samples), _EVENT, peer.id, done
            )
        elif isinstance(effect, SetTimer):
            self._push(
                self.now + effect.delay, _EVENT, peer.id, TimerFired(effect.tag, effect.round)
            )
        elif isinstance(effect, Emit):
            peer.counters[effect.name] = peer.counters.get(effect.name, 0) + 1
            self.observer.peer_event(self.now, peer.id, effect.name, effect.fields)
        elif isinstance(effect, Stop):
            if not peer.done:
                self._done += 1
            peer.done = True
            self.observer.peer_event(self.now, peer.id, "peer_finished", {})
        else:  # pragma: no cover - the Effect union is closed
            raise ProtocolError(f"unknown effect {effect!r}")

    def _send(self, src: int, effect: Send) -> None:
        dst = effect.to
        if not (0 <= dst < len(self.peers)) or dst == src:
            raise ProtocolError(f"peer {src} tried to send to invalid peer {dst}")
        frame, size = self.codec.encode(src, dst, effect.message)
        kind = type(effect.message).__name__
        for tap in self.taps:
            tap(self.now, src, dst, frame)
        tx = self.network.transmit(src, size.total, self.now)
        self._frames["sent"] += 1
        if tx.lost:
            self._frames["lost"] += 1
            self.observer.frame_lost(self.now, src, dst, kind, size)
            return
        self.observer.frame_sent(self.now, src, dst, kind, size)
        self._push(tx.arrive, _FRAME, dst, (src, frame))

    def _on_frame(self, dst: int, payload: tuple[int, bytes]) -> None:
        src, frame = payload
        try:
            decoded = self.codec.decode(frame)
        except FrameError as exc:
            self._frames["rejected"] += 1
            self.observer.frame_rejected(self.now, src, dst, str(exc))
            return
        if decoded.dst != dst or decoded.src != src:
            self._frames["rejected"] += 1
            self.observer.frame_rejected(self.now, src, dst, "envelope does not match the link")
            return
        self._frames["delivered"] += 1
        self._deliver(self.peers[dst], MessageArrived(src, decoded.message))

    # --- evaluation ---------------------------------------------------------------------

    def _evaluate(self, t: float) -> list[MetricRow]:
        models = np.stack([p.protocol.model(p.state) for p in self.peers])  # (n, P)
        mean = models.mean(axis=0, dtype=np.float64)  # (P,)
        dists = np.linalg.norm(models - mean, axis=1)  # (n,)
        rows = []
        for peer, params, dist in zip(self.peers, models, dists, strict=True):
            ev = self.evaluator.evaluate(params)
            rows.append(
                MetricRow(
                    tick=self._tick,
                    t=t,
                    peer=peer.id,
                    round=peer.protocol.progress(peer.state),
                    train_loss=peer.last_loss if peer.samples_trained else None,
                    test_acc=ev.accuracy,
                    test_loss=ev.loss,
                    consensus_dist=float(dist),
                )
            )
        self._tick += 1
        self.observer.evaluated(rows)
        return rows
