"""The event loop every runtime shares: a discrete-event engine for a set of local peers.

A :class:`PeerEngine` owns some peers (all of them in-process; a slice of them inside a Ray
``PeerHost``) and one heap of their pending events. It delivers events to the peers'
protocol state machines and executes the effects they return:

* ``Train`` runs the peer's real SGD now and schedules ``TrainingDone`` after the virtual
  duration from the cost model (training is instantaneous in wall time, timed in virtual);
* ``Send`` encodes the message into a frame, shows it to every tap, asks the network model
  for departure, arrival and loss, and schedules the frame's arrival — on this engine's heap
  when the receiver is local, in the outbox when it lives elsewhere; the receiver decodes the
  *bytes* (never the sender's objects), so the wire is real. With a
  :class:`~p2pfed.crypto.links.LinkGuard` (``security.channel: aead``) the whole frame is
  sealed for its link before anything else sees it: taps see only sealed bytes, the byte
  accounting counts the seal's overhead as ``crypto``, and the receiver opens the frame
  before decoding it. A frame that fails to open (tampered, replayed, expired, or under a
  refused key advert) is counted as rejected and reported with its reason; the receiving
  peer never sees it and keeps running. A frame that cannot be sealed (the receiver's advert
  is refused) counts as sent and rejected, at the sender. Sealing gives up the broadcast
  body sharing described at :class:`OutFrame`: each link's ciphertext differs, so every
  frame of a broadcast carries its own copy;
* ``SetTimer`` schedules ``TimerFired``; ``Emit`` goes to the event log; ``Stop`` retires
  the peer from training. A stopped peer still receives frames (others may be mid-exchange
  with it) but its timers and training completions are discarded — except timers whose tag
  ends with ``:compute``, which stand for modelled work in progress (an encryption whose
  result is still to be sent) and fire whatever the peer's state.

Ordering. Events are processed in ``(time, target, origin, origin_seq)`` order: ``origin``
is the peer whose action scheduled the event (the sender of a frame, the peer itself for its
timers and training) and ``origin_seq`` counts the events that peer has scheduled. Every
part of that key is decided by one peer's own history, never by how peers on different
hosts interleave, so any split of the peers over engines that advance in windows shorter
than the minimum link latency (conservative lookahead: a frame sent in a window lands in a
later one) processes every peer's events in exactly the order one engine would. Together
with per-peer random streams (:mod:`p2pfed.timing`) this makes a multi-host run reproduce
the in-process run bit for bit. (Earlier versions broke ties by global scheduling order,
which only a single process can know; the new key changed tie order, not semantics.)

Wall time. Given a ``clock`` (seconds since the run started), the engine runs the same
events in real time instead: an event is handled when its time has come, ``now`` is the
clock's reading, a training run takes as long as it takes (a straggler's completion is
delayed by ``slowdown - 1`` times its measured duration, without blocking the other peers
of its host), and frames are sent at the current time with the network model's latency.
The engine never reads a clock itself; the host that drives it owns one.

On-path interceptors. ``interceptors`` stand for an adversary on the path (and let tests
tamper): each is called with every frame after sealing and after the taps, before the
network model, and returns the frames that go on in its place — none drops it (counted as
lost), a changed one tampers with it, several replay it or inject others. Every frame that
goes on is a frame sent: it takes its own pass through the network model, with the original
frame's byte split when its length is unchanged (so tampering in place keeps the run's
timing) and as all-metadata bytes otherwise. Interceptors must be deterministic in their
arguments and calls for runs to be reproducible; under Ray every host calls its own copy.

Misbehaving peers. A peer slot may carry an ``overlay`` (:class:`~p2pfed.runtime.base.Overlay`,
a poisoner): the engine tells it where each local training starts and what the peer accepted,
and sends what it returns in place of each message the protocol sends — rewritten, withheld,
several copies, or later (an extra delay on top of the network's); where messages hide the
model (secure sums, HE) it rewrites the trained model before the protocol sees it. Each
message or trained model it changed counts once in the peer's ``poisoned`` counter. The
protocol underneath stays honest and never learns.

Endpoint views. ``inbox_taps`` see what a receiver saw: every frame a local peer accepted,
after opening its seal, with the time it was handled. A curious peer or coordinator is an
endpoint of its links, so its view of a run is the inbox frames with it at either end
(:mod:`p2pfed.adversary`); an eavesdropper's is the ``taps``' sealed bytes.

Availability. With an :class:`~p2pfed.availability.Availability` the engine takes its local
peers down and up at the times it gives (:mod:`p2pfed.availability`). A peer going down gets
a new *incarnation*: its timers and the training in flight, scheduled by the old one, are
discarded, and frames that reach it while it is down are counted ``unreachable`` (a subset
of ``lost``). A ``leave`` tells every local peer :class:`PeerDown`, and :class:`PeerUp` when
the peer is back; a ``crash`` tells nobody. A returning peer keeps its protocol state, or
gets the initial state back (``rejoin: scratch``, its optimiser's momentum forgotten), and
its protocol receives ``Started`` again. A peer that goes down for good counts as done.
These events are keyed by the churning peer and a negative sequence number derived from its
spell, so every host orders them alike.

Evaluation and termination are the driver's business (:mod:`p2pfed.runtime.virtual` under
virtual time, the Ray runtime's wall loop under wall time).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from p2pfed.availability import Availability, Spell
from p2pfed.crypto.channel import SealError
from p2pfed.crypto.links import LinkGuard
from p2pfed.errors import FrameError, ProtocolError
from p2pfed.protocol.codec import Codec, FrameSize
from p2pfed.protocol.core import (
    COMPUTE_SUFFIX,
    Effect,
    Emit,
    Event,
    MessageArrived,
    PeerDown,
    PeerUp,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
)
from p2pfed.runtime.base import (
    Interceptor,
    NullObserver,
    PeerReport,
    PeerSlot,
    RunObserver,
    Tap,
)
from p2pfed.timing import CostModel, NetworkModel

_EVENT, _FRAME, _AVAIL = 0, 1, 2


class _Turn(NamedTuple):
    """An availability event: peer ``spell.peer`` goes down (``up`` False) or comes back, or
    (``notice``) a local peer is told so."""

    spell: Spell
    k: int  # the spell's place among the peer's spells
    up: bool
    notice: bool = False
    advance: bool = False  # a remote peer's spell is over: queue its next one here


class OutFrame(NamedTuple):
    """A frame on its way to a peer that lives in another engine: ``head + body`` (the
    codec's envelope and the message body, kept apart so that the frames of one broadcast
    share one body object and a batch carries it once). A sealed frame, or one an
    interceptor passed on, is all ``head`` with an empty body: nothing is shared then."""

    arrive: float
    dst: int
    src: int
    seq: int  # the sender's event counter when it sent the frame
    head: bytes
    body: bytes = b""

    @property
    def frame(self) -> bytes:
        return self.head + self.body


@dataclass(frozen=True)
class Snapshot:
    """What evaluation needs from one engine's peers, in ascending peer id order."""

    ids: list[int]
    models: np.ndarray  # (k, P) float32
    rounds: list[int]
    train_loss: list[float | None]


#: ``partitioned`` counts the ``lost`` frames a network partition cut, ``unreachable`` those
#: that reached a peer while it was down
FRAME_COUNTERS = ("sent", "delivered", "lost", "rejected", "partitioned", "unreachable")


class PeerEngine:
    """Runs the events of the peers it owns (see the module docstring)."""

    def __init__(
        self,
        peers: Sequence[PeerSlot],
        num_participants: int,
        codec: Codec,
        network: NetworkModel,
        cost: CostModel,
        *,
        observer: RunObserver | None = None,
        taps: Sequence[Tap] = (),
        clock: Callable[[], float] | None = None,
        links: LinkGuard | None = None,
        interceptors: Sequence[Interceptor] = (),
        inbox_taps: Sequence[Tap] = (),
        availability: Availability | None = None,
    ):
        """``links`` seals every frame of the local peers (it must hold all of them);
        ``interceptors`` act on every frame sent; ``inbox_taps`` see every frame a local
        peer accepted, opened; ``availability`` takes peers down and up (see the module
        docstring)."""
        self.peers: dict[int, PeerSlot] = {p.id: p for p in peers}
        if len(self.peers) != len(peers):
            raise ValueError("peer ids must be unique")
        if any(not 0 <= i < num_participants for i in self.peers):
            raise ValueError(f"peer ids must lie in 0..{num_participants - 1}")
        if links is not None and not set(self.peers) <= links.local:
            missing = sorted(set(self.peers) - links.local)
            raise ValueError(f"the LinkGuard holds no identity for local peers {missing[:10]}")
        self.num_participants = num_participants
        self.codec = codec
        self.network = network
        self.cost = cost
        self.observer: RunObserver = observer or NullObserver()
        self.taps = list(taps)
        self.clock = clock  # None: virtual time
        self.links = links
        self.interceptors = list(interceptors)
        self.inbox_taps = list(inbox_taps)
        self.availability = availability
        self.now = 0.0  # time of the last event delivered
        self.last_work = 0.0  # ... of the last one that reached a peer (not churn bookkeeping)
        self.events = 0  # events delivered (discarded ones not counted)
        self.completed = 0  # local rounds completed by all local peers
        self.done = 0  # local peers that have stopped
        self.down = 0  # local peers down now (and not done)
        self._avail_queued = 0  # availability events on the heap
        self.frames = dict.fromkeys(FRAME_COUNTERS, 0)
        self.outbox: list[OutFrame] = []
        self._heap: list[tuple[float, int, int, int, int, Any]] = []
        self._seq = dict.fromkeys(self.peers, 0)
        self._frames_queued = 0
        self.started = False
        # message bodies packed while executing one event's effects, by message identity:
        # a message sent to many peers is packed once (see Codec.encode_body)
        self._bodies: dict[int, tuple[Any, bytes, int]] = {}

    # --- scheduling -----------------------------------------------------------------------

    def _push(self, t: float, target: int, origin: int, kind: int, payload: Any) -> None:
        seq = self._seq[origin]
        self._seq[origin] = seq + 1
        if kind == _EVENT:  # a peer's own event belongs to its current incarnation
            payload = (self.peers[target].incarnation, payload)
        heapq.heappush(self._heap, (t, target, origin, seq, kind, payload))
        if kind == _FRAME:
            self._frames_queued += 1

    def start(self) -> None:
        """Schedule ``Started`` for every local peer at time 0, and the first down spell of
        every churning peer (its own turns, or notices to the local peers)."""
        self.started = True
        for i in sorted(self.peers):
            self._push(0.0, i, i, _EVENT, Started())
        if self.availability is not None:
            for j in self.availability.churning:
                self._schedule_spell(j, 0)

    def _push_turn(self, t: float, target: int, origin: int, seq: int, turn: _Turn) -> None:
        heapq.heappush(self._heap, (t, target, origin, seq, _AVAIL, turn))
        self._avail_queued += 1

    def _schedule_spell(self, peer: int, index: int) -> None:
        """Queue spell ``index`` of ``peer``: its going down and coming back if it is local,
        and the notices of a ``leave`` to every local peer."""
        assert self.availability is not None
        if self.done >= len(self.peers):
            return  # every local peer has finished: nobody here cares any more
        spell = self.availability.spell(peer, index)
        if spell is None:
            return
        # negative sequence numbers: never equal to a peer's own (>= 0), the same on every host
        seq = -5 * (index + 1)
        finite = math.isfinite(spell.up)
        if peer not in self.peers and self.peers and finite:
            marker = _Turn(spell, index, True, notice=True, advance=True)
            self._push_turn(spell.up, min(self.peers), peer, seq + 4, marker)
        if peer in self.peers:
            self._push_turn(spell.down, peer, peer, seq, _Turn(spell, index, False))
            if finite:
                self._push_turn(spell.up, peer, peer, seq + 1, _Turn(spell, index, True))
        if spell.how == "leave":
            for i in sorted(self.peers):
                if i == peer:
                    continue
                self._push_turn(spell.down, i, peer, seq + 2, _Turn(spell, index, False, True))
                if finite:
                    self._push_turn(spell.up, i, peer, seq + 3, _Turn(spell, index, True, True))

    def peers_down(self, ids: Iterable[int], t: float) -> None:
        """Tell every local peer still running, at time ``t``, that peers ``ids`` are gone."""
        self._tell(ids, t, PeerDown)

    def peers_up(self, ids: Iterable[int], t: float) -> None:
        """Tell every local peer still running, at time ``t``, that peers ``ids`` are back."""
        self._tell(ids, t, PeerUp)

    def _tell(self, ids: Iterable[int], t: float, news: type[PeerDown | PeerUp]) -> None:
        about = sorted(ids)
        for i in sorted(self.peers):
            if not self.peers[i].done:
                for j in about:
                    self._push(t, i, i, _EVENT, news(j))

    def rejoin(self, t: float) -> None:
        """This engine was restored from a checkpoint after its host crashed: every local
        peer comes back with the state it had then. What its peers had scheduled (timers,
        training in flight) is discarded with a new incarnation, and so are the frames that
        were queued for them (the crashed host had received them, and counted them, already:
        a crash loses what was in flight to it); every peer up and not done gets
        ``Started(rejoin=True)`` at ``t``, as after a churn crash (see the module docstring).
        The counters start again from zero: the restored host reports what it does from now
        on. An engine checkpointed before it started just starts."""
        if not self.started:
            self.start()
            return
        self._heap = [e for e in self._heap if e[4] == _AVAIL]
        heapq.heapify(self._heap)
        self._frames_queued = 0
        for i in sorted(self.peers):
            peer = self.peers[i]
            peer.incarnation += 1
            peer.training = False
            if peer.up and not peer.done:
                self._push(t, i, i, _EVENT, Started(rejoin=True))
            self.observer.peer_event(t, i, "peer_restored", {"done": peer.done})
        self.frames = dict.fromkeys(FRAME_COUNTERS, 0)
        self.events = self.completed = 0

    def accept(self, frames: Iterable[OutFrame]) -> None:
        """Queue frames that other engines sent to this engine's peers."""
        for f in frames:
            if f.dst not in self.peers:
                raise ProtocolError(f"frame for peer {f.dst} reached an engine that lacks it")
            if self.clock is None and self.events and f.arrive <= self.now:
                # conservative windows make this impossible unless a peer sent outside the
                # topology the runtime planned its windows from: fail, never reorder silently
                raise ProtocolError(
                    f"frame from peer {f.src} to {f.dst} arrives at t={f.arrive:.6f}s, but "
                    f"this host is already at t={self.now:.6f}s (a send outside the topology?)"
                )
            heapq.heappush(self._heap, (f.arrive, f.dst, f.src, f.seq, _FRAME, (f.src, f.frame)))
            self._frames_queued += 1

    def take_outbox(self) -> list[OutFrame]:
        out, self.outbox = self.outbox, []
        return out

    # --- inspection ------------------------------------------------------------------------

    def next_time(self) -> float:
        return self._heap[0][0] if self._heap else math.inf

    @property
    def pending(self) -> int:
        """Events waiting on this engine's heap (frames included)."""
        return len(self._heap)

    @property
    def settled(self) -> int:
        """Local peers with nothing left to do: the done ones, and the down ones when no
        event but availability ones is pending here (a run may end without waiting for a
        down peer to come back: it keeps the state it had)."""
        own = len(self._heap) - self._avail_queued - self._frames_queued
        return self.done + (self.down if own == 0 else 0)

    @property
    def frames_pending(self) -> int:
        """Frames waiting on this engine's heap."""
        return self._frames_queued

    def snapshot(self, ids: Iterable[int] | None = None) -> Snapshot:
        chosen = sorted(self.peers if ids is None else ids)
        slots = [self.peers[i] for i in chosen]
        models = (
            np.stack([p.protocol.model(p.state) for p in slots])
            if slots
            else np.zeros((0, 0), dtype=np.float32)
        )
        return Snapshot(
            ids=chosen,
            models=models,
            rounds=[p.protocol.progress(p.state) for p in slots],
            train_loss=[p.last_loss if p.samples_trained else None for p in slots],
        )

    def reports(self) -> list[PeerReport]:
        return [PeerReport.of(self.peers[i]) for i in sorted(self.peers)]

    # --- the loop -------------------------------------------------------------------------

    def advance(self, end: float, *, inclusive: bool = False) -> int:
        """Process every event before ``end`` (at or before it when ``inclusive``); frames
        for peers elsewhere collect in :attr:`outbox`. Returns the events delivered."""
        heap = self._heap
        before = self.events
        while heap and (heap[0][0] < end or (inclusive and heap[0][0] == end)):
            t, target, _, _, kind, payload = heapq.heappop(heap)
            peer = self.peers[target]
            if kind == _FRAME:
                self._frames_queued -= 1
                self.now = self.last_work = t if self.clock is None else max(t, self.clock())
                self.events += 1
                if peer.up:
                    self._on_frame(peer, payload)
                else:  # nobody there to receive it
                    self.frames["lost"] += 1
                    self.frames["unreachable"] += 1
                continue
            if kind == _AVAIL:
                self._avail_queued -= 1
                self.now = t if self.clock is None else max(t, self.clock())
                if self._turn(peer, payload):  # it reached a protocol: it counts as work
                    self.last_work = self.now
                    self.events += 1
                continue
            incarnation, event = payload
            if incarnation != peer.incarnation or not peer.up:
                continue  # scheduled before the peer went down: lost with it
            if not peer.done or _work_in_progress(event):
                self.now = self.last_work = t if self.clock is None else max(t, self.clock())
                self.events += 1
                self._deliver(peer, event)
        return self.events - before

    def _turn(self, peer: PeerSlot, turn: _Turn) -> bool:
        """An availability event for local ``peer`` (see the module docstring); whether it
        reached the peer's protocol (markers and the turns of finished peers do not, and do
        not count as events: they differ with the split of peers over hosts)."""
        spell = turn.spell
        if turn.advance:
            self._schedule_spell(spell.peer, turn.k + 1)
            return False
        if turn.notice:
            if not peer.done and peer.up:
                self._deliver(peer, PeerUp(spell.peer) if turn.up else PeerDown(spell.peer))
                return True
            return False
        if not turn.up:
            peer.up = False
            self.down += not peer.done
            peer.incarnation += 1
            peer.training = False  # the training in flight is lost with the peer
            fields: dict[str, Any] = {"how": spell.how, "until": spell.up}
            self.observer.peer_event(self.now, peer.id, "peer_went_down", fields)
            if not math.isfinite(spell.up) and not peer.done:
                peer.done = True  # gone for good: nothing more to wait for
                self.done += 1
                self.down -= 1
            return False
        if not peer.done:
            self.down -= 1
        peer.up = True
        self.observer.peer_event(self.now, peer.id, "peer_came_up", {"how": spell.how})
        # a finished peer still churns: its leaves are news to neighbours still running
        self._schedule_spell(peer.id, turn.k + 1)
        if peer.done:
            return False
        assert self.availability is not None
        if self.availability.cfg.rejoin == "scratch" and peer.initial is not None:
            peer.state = peer.protocol.fresh(peer.state, peer.initial)
            if peer.trainer is not None:
                peer.trainer.forget()
        self._deliver(peer, Started(rejoin=True))
        return True

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
        self.completed += peer.protocol.progress(peer.state) - before
        # the body cache spans one event's effects only: no protocol code runs between
        # them, so a message object cannot change between two of its sends
        self._bodies.clear()
        for effect in effects:
            self._execute(peer, effect)

    def _execute(self, peer: PeerSlot, effect: Effect) -> None:
        if isinstance(effect, Send):
            self._send(peer.id, effect)
        elif isinstance(effect, Train):
            if peer.trainer is None:
                raise ProtocolError(f"peer {peer.id} has no data to train on")
            if peer.training:
                raise ProtocolError(f"peer {peer.id} asked to train while already training")
            base = np.array(effect.params, dtype=np.float32)
            if peer.overlay is not None:
                peer.overlay.training(self.now, peer.id, base)
            result = peer.trainer.train(base, epochs=effect.epochs, steps=effect.steps)
            peer.training = True
            peer.trainings += 1
            params = result.params
            if peer.overlay is not None:
                params = peer.overlay.trained(self.now, peer.id, base, params)
                if params is not result.params:
                    peer.counters["poisoned"] = peer.counters.get("poisoned", 0) + 1
            done = TrainingDone(params, base, result.loss, result.samples)
            if self.clock is None:
                at = self.now + self.cost.train_time(peer.id, result.samples)
            else:  # it took real time; a straggler's result comes later still
                finished = self.clock()
                at = finished + (finished - self.now) * (float(self.cost.slowdown[peer.id]) - 1)
                self.now = finished
            self._push(at, peer.id, peer.id, _EVENT, done)
        elif isinstance(effect, SetTimer):
            fired = TimerFired(effect.tag, effect.round)
            self._push(self.now + effect.delay, peer.id, peer.id, _EVENT, fired)
        elif isinstance(effect, Emit):
            # an event counts once, or ``count`` times when it says how many it stands for
            count = effect.fields.get("count", 1)
            step = count if isinstance(count, int) else 1
            peer.counters[effect.name] = peer.counters.get(effect.name, 0) + step
            self.observer.peer_event(self.now, peer.id, effect.name, effect.fields)
        elif isinstance(effect, Stop):
            if not peer.done:
                self.done += 1
                peer.done = True
                self.observer.peer_event(self.now, peer.id, "peer_finished", {})
        else:  # pragma: no cover - the Effect union is closed
            raise ProtocolError(f"unknown effect {effect!r}")

    def _send(self, src: int, effect: Send) -> None:
        dst = effect.to
        if not (0 <= dst < self.num_participants) or dst == src:
            raise ProtocolError(f"peer {src} tried to send to invalid peer {dst}")
        overlay = self.peers[src].overlay
        if overlay is None:
            self._send_message(src, dst, effect.message)
            return
        out = overlay.outgoing(self.now, src, dst, effect.message)
        if len(out) != 1 or out[0][0] != 0.0 or out[0][1] is not effect.message:
            counters = self.peers[src].counters
            counters["poisoned"] = counters.get("poisoned", 0) + 1
        for delay, message in out:
            self._send_message(src, dst, message, delay)

    def _send_message(self, src: int, dst: int, message: Any, delay: float = 0.0) -> None:
        kind = type(message).__name__
        packed = self._bodies.get(id(message))
        if packed is None or packed[0] is not message:
            packed = (message, *self.codec.encode_body(message))
            self._bodies[id(message)] = packed
        _, body, payload = packed
        head = self.codec.envelope(src, dst, kind)
        size = FrameSize(payload=payload, metadata=len(head) + len(body) - payload)
        if self.clock is not None:
            self.now = max(self.now, self.clock())
        if self.links is not None:
            try:
                head = self.links.seal(src, dst, kind, self.now, head + body)
            except SealError as exc:  # the receiver's key advert was refused: fail closed
                self.frames["sent"] += 1
                self._reject(src, dst, f"cannot seal: {exc.reason}")
                return
            body = b""
            size = dataclasses.replace(size, crypto=len(head) - size.total)
        if self.taps:
            frame = head + body
            for tap in self.taps:
                tap(self.now, src, dst, frame)
        if not self.interceptors:
            self._transmit(src, dst, kind, head, body, size, delay)
            return
        wire = [head + body]
        for intercept in self.interceptors:
            wire = [out for f in wire for out in intercept(self.now, src, dst, f)]
        if not wire:  # dropped on the path: to the peers, a lost frame
            self.frames["sent"] += 1
            self.frames["lost"] += 1
            self.observer.frame_lost(self.now, src, dst, kind, size)
            return
        for f in wire:
            f = bytes(f)
            same = len(f) == size.total
            self._transmit(src, dst, kind, f, b"", size if same else FrameSize(0, len(f)), delay)

    def _transmit(
        self,
        src: int,
        dst: int,
        kind: str,
        head: bytes,
        body: bytes,
        size: FrameSize,
        delay: float = 0.0,
    ) -> None:
        """Put one frame (``head + body``) on the wire from ``src`` to ``dst``, ``delay``
        seconds late (a misbehaving sender's choice)."""
        tx = self.network.transmit(src, dst, size.total, self.now)
        if delay:
            tx = dataclasses.replace(tx, arrive=tx.arrive + delay)
        self.frames["sent"] += 1
        if tx.lost:
            self.frames["lost"] += 1
            self.frames["partitioned"] += tx.partitioned
            self.observer.frame_lost(self.now, src, dst, kind, size)
            return
        self.observer.frame_sent(self.now, src, dst, kind, size)
        if dst in self.peers:
            self._push(tx.arrive, dst, src, _FRAME, (src, head + body))
        else:
            seq = self._seq[src]
            self._seq[src] = seq + 1
            self.outbox.append(OutFrame(tx.arrive, dst, src, seq, head, body))

    def _reject(self, src: int, dst: int, reason: str) -> None:
        self.frames["rejected"] += 1
        self.observer.frame_rejected(self.now, src, dst, reason)

    def _on_frame(self, peer: PeerSlot, payload: tuple[int, bytes]) -> None:
        src, frame = payload
        sealed_as = None
        if self.links is not None:
            try:
                sealed_as, frame = self.links.open(src, peer.id, self.now, frame)
            except SealError as exc:
                self._reject(src, peer.id, exc.reason)
                return
        try:
            decoded = self.codec.decode(frame)
        except FrameError as exc:
            self._reject(src, peer.id, str(exc))
            return
        if decoded.dst != peer.id or decoded.src != src:
            self._reject(src, peer.id, "envelope does not match the link")
            return
        if sealed_as is not None and type(decoded.message).__name__ != sealed_as:
            self._reject(src, peer.id, "message type does not match its seal")
            return
        self.frames["delivered"] += 1
        for tap in self.inbox_taps:
            tap(self.now, src, peer.id, frame)
        if peer.overlay is not None:
            peer.overlay.incoming(self.now, src, peer.id, decoded.message)
        self._deliver(peer, MessageArrived(src, decoded.message))


def frame_totals(engines: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum frame counters over engines."""
    out = dict.fromkeys(FRAME_COUNTERS, 0)
    for counters in engines:
        for k in FRAME_COUNTERS:
            out[k] += counters[k]
    return out


def _work_in_progress(event: Any) -> bool:
    """A timer that models computation still running (see the module docstring)."""
    return isinstance(event, TimerFired) and event.tag.endswith(COMPUTE_SUFFIX)
