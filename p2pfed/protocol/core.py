"""The seam between protocols and runtimes: events in, effects out.

A protocol is a pure state machine, one instance per peer::

    state = protocol.initial_state(params0)
    state, effects = protocol.on_event(state, event)

It never touches the network, a clock or a device. It asks the runtime to act by returning
effects (:class:`Send`, :class:`Train`, :class:`SetTimer`, :class:`Emit`, :class:`Stop`)
and learns the outcome through events (:class:`TrainingDone`, :class:`MessageArrived`,
:class:`TimerFired`). The same code therefore runs in-process under virtual time, on Ray
actors under wall time, and inside property and stateful tests with no runtime at all.

State objects are dataclasses; ``on_event`` may update the one it was given in place (model
vectors are large) but always returns the state the caller must keep.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

# --- events: what the runtime tells a peer ---------------------------------------------


@dataclass(frozen=True)
class Started:
    """The run has started; the peer may begin work. ``rejoin``: the peer is back after
    being down (:mod:`p2pfed.availability`), with its state or from scratch."""

    rejoin: bool = False


@dataclass(frozen=True)
class TrainingDone:
    """A :class:`Train` effect finished.

    ``params`` is the trained flat parameter vector (P,), float32; ``base`` is the vector the
    training started from, so a protocol whose model changed meanwhile (an averaging step that
    arrived during training) can apply just the local progress ``params - base``.
    """

    params: np.ndarray
    base: np.ndarray
    loss: float
    samples: int


@dataclass(frozen=True)
class MessageArrived:
    """A message from ``sender`` was delivered (already decoded from its frame)."""

    sender: int
    message: Message


@dataclass(frozen=True)
class TimerFired:
    """A timer set with :class:`SetTimer` fired; ``tag`` is what the peer chose."""

    tag: str
    round: int


@dataclass(frozen=True)
class PeerDown:
    """The runtime learned that ``peer`` is gone (crash, departure)."""

    peer: int


@dataclass(frozen=True)
class PeerUp:
    """``peer``, reported gone before, is back (it rejoined after leaving)."""

    peer: int


Event = Started | TrainingDone | MessageArrived | TimerFired | PeerDown | PeerUp


# --- messages: what peers say to each other ---------------------------------------------


@dataclass(frozen=True)
class Message:
    """Base of every protocol message. Subclasses are frozen dataclasses whose fields are
    ints, floats, strings or numpy arrays; :mod:`p2pfed.protocol.codec` turns them into
    msgpack frames.

    ``free_shape`` names array fields exempt from the codec's model-size check (id lists,
    masked vectors with an extra weight slot); the protocol checks their shapes itself."""

    free_shape: ClassVar[frozenset[str]] = frozenset()


# --- effects: what a peer asks the runtime to do ------------------------------------------


@dataclass(frozen=True)
class Send:
    """Deliver ``message`` to peer ``to`` over the link between them."""

    to: int
    message: Message


@dataclass(frozen=True)
class Train:
    """Run local training starting from ``params`` (P,) for ``epochs`` passes over the peer's
    shard, or for ``steps`` minibatch steps when ``steps`` is set. Answered by
    :class:`TrainingDone`. A peer has at most one Train in flight."""

    params: np.ndarray
    epochs: int = 1
    steps: int | None = None


#: a timer whose tag ends with this models computation in progress (its result is held
#: until the timer fires): the runtime fires it even after the peer stopped
COMPUTE_SUFFIX = ":compute"


@dataclass(frozen=True)
class SetTimer:
    """Fire :class:`TimerFired(tag, round)` after ``delay`` seconds of (virtual or wall) time.
    A stopped peer's timers are dropped, except those tagged ``...:compute``
    (:data:`COMPUTE_SUFFIX`)."""

    delay: float
    tag: str
    round: int = 0


@dataclass(frozen=True)
class Emit:
    """Record a protocol event in the run's event log (``name`` is a past-tense snake_case
    event name; ``fields`` hold plain JSON values — never parameters or data)."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """The peer has finished its work. It still answers messages (others may be mid-exchange
    with it) but starts no more training."""


Effect = Send | Train | SetTimer | Emit | Stop


@dataclass
class Busy:
    """Effects held back while a peer's modelled computation runs (virtual time charging
    the reference cost of, say, an encryption before its result leaves).

    :meth:`after` parks effects behind a timer tagged ``tag`` (which must end with
    :data:`COMPUTE_SUFFIX`, so the runtime fires it even after the peer stopped: the work
    was under way) and :meth:`release` hands them back when it fires. A peer's computations
    are charged as delays side by side, not queued on one CPU: an approximation that matters
    only when one peer runs several at once. Callers put a ``Stop`` behind the effects it
    follows, so a peer is done only when its work is."""

    tag: str
    held: dict[int, list[Effect]] = field(default_factory=dict)
    seq: int = 0

    def __post_init__(self) -> None:
        if not self.tag.endswith(COMPUTE_SUFFIX):
            raise ValueError(f"a compute timer's tag ends with {COMPUTE_SUFFIX!r}: {self.tag!r}")

    def after(self, seconds: float, effects: list[Effect], *, charge: bool = True) -> list[Effect]:
        """``effects`` once ``seconds`` have passed (when ``charge``), else at once."""
        if not charge or seconds <= 0 or not effects:
            return effects
        key = self.seq
        self.seq += 1
        self.held[key] = effects
        return [SetTimer(seconds, self.tag, key)]

    def release(self, event: Event) -> list[Effect] | None:
        """The effects a timer of this queue releases, or None for any other event."""
        if isinstance(event, TimerFired) and event.tag == self.tag:
            return list(self.held.pop(event.round, []))
        return None

    def pending(self, key: int) -> bool:
        """Whether the effects behind timer ``key`` are still held."""
        return key in self.held


def robust_events(agg: Any, rnd: int) -> list[Emit]:
    """What a robust rule did to one pool (:class:`~p2pfed.robust.Aggregate`): a
    ``robust_rejected`` and a ``robust_clipped`` event for round ``rnd``, each when non-zero,
    with the ``count`` the run's counters add up."""
    counts = (("robust_rejected", agg.rejected), ("robust_clipped", agg.clipped))
    return [Emit(name, {"round": rnd, "count": n}) for name, n in counts if n]


# --- the protocol interface ---------------------------------------------------------------

S = TypeVar("S")


class Protocol(abc.ABC, Generic[S]):
    """A peer's protocol logic. Subclasses hold only immutable configuration (peer id,
    topology schedule, hyper-parameters); everything that changes lives in the state ``S``."""

    #: the message types this protocol sends (the codec is built from them)
    messages: ClassVar[tuple[type[Message], ...]] = ()
    #: this peer's id, and how many local rounds it runs before it stops
    peer: int
    rounds: int

    @abc.abstractmethod
    def initial_state(self, params: np.ndarray) -> S:
        """State before :class:`Started`, holding a copy of the initial model ``params``."""

    @abc.abstractmethod
    def on_event(self, state: S, event: Event) -> tuple[S, list[Effect]]:
        """Advance the state machine by one event."""

    def fresh(self, state: S, params: np.ndarray) -> S:
        """The state of this peer when it rejoins from scratch (:mod:`p2pfed.availability`):
        the initial model ``params``; by default the whole initial state. Protocols that
        count their own rounds keep the count, so a peer that keeps coming back still
        reaches the end of its run."""
        return self.initial_state(params)

    @abc.abstractmethod
    def model(self, state: S) -> np.ndarray:
        """The peer's current model estimate (P,), as used for evaluation."""

    @abc.abstractmethod
    def progress(self, state: S) -> int:
        """Completed local rounds, for progress reporting and metrics."""
