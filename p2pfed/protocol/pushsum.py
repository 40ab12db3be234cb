"""Push-sum gossip for directed and time-varying graphs (Stochastic Gradient Push).

Kempe, Dobra & Gehrke, "Gossip-Based Computation of Aggregate Information", FOCS 2003;
Nedić & Olshevsky, "Stochastic Gradient-Push for Strongly Convex Functions on Time-Varying
Directed Graphs", IEEE TAC 2016; Assran et al., "Stochastic Gradient Push for Distributed
Deep Learning", ICML 2019.

Every peer holds a numerator x and a weight w; its model is the de-biased z = x / w. After
each local training run it pushes column-stochastic shares of (x, w) to its out-neighbours
of W^r and keeps its own share::

    z' = local training from z;   x += w (z' - z)
    send (W^r_ji x, W^r_ji w) to every out-neighbour j;  x, w *= W^r_ii

Incoming shares are added to (x, w) the moment they arrive, whatever the peer is doing, so
the protocol is asynchronous with no waiting at all, and mass (Σ x, Σ w) is conserved
however messages interleave: a sender keeps exactly what it did not send, so the only
error is float64 rounding. Only column stochasticity is needed, which is why
push-sum works on directed graphs where symmetric averaging cannot. A lost share loses its
mass; z stays a weighted average of models, only with a bias toward the peers whose mass
survived.

Precision: x and w are float64 inside the state; shares travel as float32 numerators and a
float64 weight.

A neighbour reported gone (:class:`PeerDown`) gets no more shares; its column weight stays
with the sender, so the survivors keep all the mass they hold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from p2pfed.errors import ProtocolError
from p2pfed.protocol.core import (
    Effect,
    Event,
    Message,
    MessageArrived,
    PeerDown,
    PeerUp,
    Protocol,
    Send,
    Started,
    Stop,
    Train,
    TrainingDone,
)
from p2pfed.topology import TopologySchedule


@dataclass(frozen=True)
class PushSumShare(Message):
    """A share of the sender's push-sum numerator and weight."""

    round: int
    x: np.ndarray  # (P,) float32 share of the numerator
    w: float  # share of the push-sum weight


@dataclass
class PushSumState:
    """One peer's push-sum numerator x and weight w; its model is x / w."""

    x: np.ndarray  # (P,) float64 numerator
    w: float = 1.0
    round: int = 0
    phase: str = "idle"  # idle -> training -> ... -> done
    received: int = 0
    down: set[int] = field(default_factory=set)  # peers the runtime reported gone


class PushSum(Protocol[PushSumState]):
    """Asynchronous push-sum over column-stochastic weights (see the module docstring)."""

    messages: ClassVar[tuple[type[Message], ...]] = (PushSumShare,)

    def __init__(
        self,
        peer: int,
        schedule: TopologySchedule,
        *,
        rounds: int,
        epochs: int = 1,
        steps: int | None = None,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        cols = np.asarray(schedule.at(0).mixing.sum(axis=0)).ravel()
        if not np.allclose(cols, 1.0, atol=1e-9):
            raise ProtocolError(
                f"push-sum needs column-stochastic weights; {schedule.name} has none"
            )
        self.peer = peer
        self.schedule = schedule
        self.rounds = rounds
        self.epochs = epochs
        self.steps = steps

    def initial_state(self, params: np.ndarray) -> PushSumState:
        return PushSumState(x=np.array(params, dtype=np.float64))

    def fresh(self, state: PushSumState, params: np.ndarray) -> PushSumState:
        """The initial model, the round count kept (see :meth:`Protocol.fresh`)."""
        return dataclasses.replace(self.initial_state(params), round=state.round)

    def model(self, state: PushSumState) -> np.ndarray:
        return (state.x / state.w).astype(np.float32)

    def progress(self, state: PushSumState) -> int:
        return state.round

    def on_event(self, state: PushSumState, event: Event) -> tuple[PushSumState, list[Effect]]:
        if isinstance(event, Started):
            state.phase = "training"
            return state, [self._train(state)]
        if isinstance(event, TrainingDone) and state.phase == "training":
            state.x += state.w * (np.asarray(event.params, np.float64) - event.base)
            return self._push(state)
        if isinstance(event, PeerDown):
            state.down.add(event.peer)
            return state, []
        if isinstance(event, PeerUp):
            state.down.discard(event.peer)
            return state, []
        if isinstance(event, MessageArrived) and isinstance(event.message, PushSumShare):
            state.x += event.message.x
            state.w += float(event.message.w)
            state.received += 1
        return state, []

    def _train(self, state: PushSumState) -> Train:
        return Train(params=self.model(state), epochs=self.epochs, steps=self.steps)

    def _push(self, state: PushSumState) -> tuple[PushSumState, list[Effect]]:
        topo = self.schedule.at(state.round)
        if topo.weight(self.peer, self.peer) <= 0.0:
            raise ProtocolError(f"push-sum needs a positive self weight at peer {self.peer}")
        effects: list[Effect] = []
        for j in topo.out_neighbours(self.peer):
            if j in state.down:  # its share stays here: the survivors keep all the mass
                continue
            share = topo.weight(j, self.peer)
            msg = PushSumShare(
                round=state.round, x=(share * state.x).astype(np.float32), w=share * state.w
            )
            # Keep exactly what was not sent (the float32 rounding of a share included), so
            # the network's mass is conserved to float64 precision, not float32.
            state.x -= msg.x
            state.w -= msg.w
            effects.append(Send(to=j, message=msg))
        state.round += 1
        if state.round >= self.rounds:
            state.phase = "done"
            return state, [*effects, Stop()]
        return state, [*effects, self._train(state)]
