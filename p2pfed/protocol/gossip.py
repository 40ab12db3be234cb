"""Asynchronous pairwise gossip (AD-PSGD style).

Lian et al., "Asynchronous Decentralized Parallel Stochastic Gradient Descent", ICML 2018;
pairwise averaging as in Boyd et al., "Randomized Gossip Algorithms", IEEE Trans. IT 2006.

Each peer loops on its own clock: train locally, then average with one neighbour drawn at
random from its own generator. There is no round barrier; a fast peer simply gossips more
often. The exchange is two messages::

    i -> j : GossipRequest(nonce, x_i)          i remembers the x_i it sent
    j      : replies GossipReply(nonce, x_j), then x_j += (x_i - x_j) / 2
    i      : on the reply, x_i += (x_j - x_i_sent) / 2

Both corrections use the *same pair of values* (what i sent, what j replied), so they cancel
exactly: the network sum is preserved however exchanges interleave with each other and with
local training — no lock is needed. AD-PSGD needs an atomic averaging step for the same
reason. A training run that overlaps an exchange keeps its progress: on TrainingDone the
peer adds ``params - base`` (its local progress) to whatever its model has become.

A lost request costs one round; a lost reply makes the pair disagree about the correction
(j applied it, i did not), which is exactly what a lossy link does to real gossip. A reply
that arrives after the peer gave up waiting is still applied, so late replies keep the sum.

A neighbour reported gone (:class:`PeerDown`) is never chosen again; a request waiting on it
is abandoned at once (``partner_down``), and a peer whose neighbours are all gone keeps
training alone.

Robust gossip (``robust``, :mod:`p2pfed.robust`). Each exchange mixes one neighbour, so only
the rules that judge a single input against the peer's own model apply: ``norm_clip`` and
``clipped_gossip`` with a fixed radius (``x_i += clip(x_j - x_i, tau) / 2``: self-centred
clipping, He, Karimireddy & Jaggi 2022, on a pool of one), ``centered_clip`` and ``balance``
(accept ``x_j`` only within ``gamma exp(-kappa t/T) ||x_i||``, then ``alpha x_i + (1 - alpha)
x_j``; with the default ``alpha`` 0.5 exactly the plain half step). Both sides of an exchange
apply the rule to what they received, so a clipped or refused exchange no longer preserves
the network sum: that is the point, a Byzantine partner's push is what gets cut. Counting
rules (median, trimmed mean, Krum, geometric median) need a pool and are refused by the
config; so is ClippedGossip's adaptive radius, which on a pool of one clips everything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from p2pfed.errors import ProtocolError
from p2pfed.protocol.core import (
    Effect,
    Emit,
    Event,
    Message,
    MessageArrived,
    PeerDown,
    PeerUp,
    Protocol,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
    robust_events,
)
from p2pfed.robust import RobustConfig, RobustError, aggregate
from p2pfed.topology import TopologySchedule


@dataclass(frozen=True)
class GossipRequest(Message):
    """A request to average: the requester's model as sent, tagged with its round."""

    nonce: int
    params: np.ndarray  # (P,) float32


@dataclass(frozen=True)
class GossipReply(Message):
    """The replier's model as it was when the request arrived."""

    nonce: int
    params: np.ndarray  # (P,) float32


@dataclass
class GossipState:
    """One peer's gossip state: its model, its generator, and requests awaiting replies."""

    params: np.ndarray  # (P,) float64 while in the state, so repeated halving stays exact
    rng: np.random.Generator
    round: int = 0
    phase: str = "idle"  # idle -> training -> waiting -> training ... -> done
    sent: dict[int, np.ndarray] = field(default_factory=dict)  # nonce -> x_i as sent
    exchanges: int = 0
    timeouts: int = 0
    partner: int = -1  # who the open request went to
    down: set[int] = field(default_factory=set)  # peers the runtime reported gone


class AsyncGossip(Protocol[GossipState]):
    """Asynchronous pairwise averaging with a random neighbour (see the module docstring)."""

    messages: ClassVar[tuple[type[Message], ...]] = (GossipRequest, GossipReply)

    #: how many unanswered requests a peer remembers before it forgets the oldest
    MAX_PENDING = 8

    def __init__(
        self,
        peer: int,
        schedule: TopologySchedule,
        *,
        rounds: int,
        seed: int,
        epochs: int = 1,
        steps: int | None = None,
        reply_timeout: float | None = None,
        robust: RobustConfig | None = None,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        robust = robust if robust is not None and robust.rule != "mean" else None
        if robust is not None:
            check_pairwise(robust)
        if schedule.directed:
            raise ProtocolError(
                f"pairwise gossip replies over the link it was asked on, so it needs an "
                f"undirected topology; {schedule.name} is directed: use protocol.kind pushsum"
            )
        self.peer = peer
        self.schedule = schedule
        self.rounds = rounds
        self.seed = seed
        self.epochs = epochs
        self.steps = steps
        self.reply_timeout = reply_timeout
        self.robust = robust

    def initial_state(self, params: np.ndarray) -> GossipState:
        return GossipState(
            params=np.array(params, dtype=np.float64), rng=np.random.default_rng(self.seed)
        )

    def fresh(self, state: GossipState, params: np.ndarray) -> GossipState:
        """The initial model, the round count kept (see :meth:`Protocol.fresh`)."""
        return dataclasses.replace(self.initial_state(params), round=state.round)

    def model(self, state: GossipState) -> np.ndarray:
        return state.params.astype(np.float32)

    def progress(self, state: GossipState) -> int:
        return state.round

    def on_event(self, state: GossipState, event: Event) -> tuple[GossipState, list[Effect]]:
        if isinstance(event, Started):
            state.phase = "training"
            return state, [self._train(state)]
        if isinstance(event, TrainingDone) and state.phase == "training":
            state.params += np.asarray(event.params, np.float64) - event.base
            return self._start_exchange(state)
        if isinstance(event, MessageArrived):
            msg = event.message
            if isinstance(msg, GossipRequest):
                reply = GossipReply(nonce=msg.nonce, params=state.params.astype(np.float32))
                # both halves are computed in float64 from the same two float32 vectors, so
                # they cancel to float64 rounding
                effects: list[Effect] = [Send(to=event.sender, message=reply)]
                state.params += self._step(state, reply.params, msg.params, effects)
                return state, effects
            if isinstance(msg, GossipReply):
                return self._on_reply(state, msg)
        if isinstance(event, PeerDown):
            state.down.add(event.peer)
            if state.phase == "waiting" and state.partner == event.peer:
                # no reply will come: the exchange is void (the partner never applied it)
                state.sent.pop(state.round, None)
                return self._finish_round(state, [Emit("partner_down", {"gone": event.peer})])
            return state, []
        if isinstance(event, PeerUp):
            state.down.discard(event.peer)
            return state, []
        if (
            isinstance(event, TimerFired)
            and event.tag == "reply_timeout"
            and state.phase == "waiting"
            and event.round == state.round
        ):
            state.timeouts += 1
            return self._finish_round(state, [Emit("gossip_timed_out", {"round": state.round})])
        return state, []

    def _train(self, state: GossipState) -> Train:
        return Train(params=state.params.astype(np.float32), epochs=self.epochs, steps=self.steps)

    def _start_exchange(self, state: GossipState) -> tuple[GossipState, list[Effect]]:
        candidates: Sequence[int] = self.schedule.at(state.round).out_neighbours(self.peer)
        if state.down:
            candidates = [j for j in candidates if j not in state.down]
            if not candidates:  # every neighbour is gone: keep training alone
                return self._finish_round(state, [Emit("no_partner_up", {"round": state.round})])
        partner = int(candidates[int(state.rng.integers(len(candidates)))])
        state.partner = partner
        sent = state.params.astype(np.float32)
        state.sent[state.round] = sent
        while len(state.sent) > self.MAX_PENDING:
            del state.sent[min(state.sent)]
        state.phase = "waiting"
        effects: list[Effect] = [
            Send(to=partner, message=GossipRequest(nonce=state.round, params=sent))
        ]
        if self.reply_timeout is not None:
            effects.append(SetTimer(self.reply_timeout, "reply_timeout", state.round))
        return state, effects

    def _on_reply(self, state: GossipState, msg: GossipReply) -> tuple[GossipState, list[Effect]]:
        sent = state.sent.pop(msg.nonce, None)
        if sent is None:
            return state, [Emit("unexpected_reply_dropped", {"nonce": msg.nonce})]
        effects: list[Effect] = []
        state.params += self._step(state, sent, msg.params, effects)
        state.exchanges += 1
        if state.phase == "waiting" and msg.nonce == state.round:
            return self._finish_round(state, effects)
        return state, effects

    def _step(
        self, state: GossipState, mine: np.ndarray, theirs: np.ndarray, effects: list[Effect]
    ) -> np.ndarray:
        """The change one exchange makes to a model that held ``mine`` when it met
        ``theirs``: half the difference, or the robust rule's step (module docstring)."""
        own = np.asarray(mine, np.float64)
        other = np.asarray(theirs, np.float64)
        if self.robust is None:
            return (other - own) / 2.0
        try:
            agg = aggregate(
                self.robust,
                own,
                other[None, :],
                np.array([0.5]),
                0.5,
                step=state.round,
                total_steps=self.rounds,
            )
        except RobustError as exc:  # a non-finite own model: nothing to mix into
            effects.append(Emit("robust_skipped", {"round": state.round, "reason": str(exc)}))
            return np.zeros_like(own)
        effects += robust_events(agg, state.round)
        return agg.value - own

    def _finish_round(
        self, state: GossipState, effects: list[Effect]
    ) -> tuple[GossipState, list[Effect]]:
        state.round += 1
        if state.round >= self.rounds:
            state.phase = "done"
            return state, [*effects, Stop()]
        state.phase = "training"
        return state, [*effects, self._train(state)]


#: the rules pairwise gossip can apply to one partner at a time (module docstring)
PAIRWISE_RULES = frozenset({"mean", "norm_clip", "clipped_gossip", "centered_clip", "balance"})


def check_pairwise(robust: RobustConfig) -> None:
    """Raise :class:`~p2pfed.robust.RobustError` unless ``robust`` judges one input at a
    time, as pairwise gossip needs."""
    if robust.rule not in PAIRWISE_RULES:
        raise RobustError(
            f"{robust.rule} needs a pool of inputs, but pairwise gossip mixes one neighbour at "
            f"a time: use one of {sorted(PAIRWISE_RULES - {'mean'})}, or protocol.kind dpsgd"
        )
    if robust.rule == "clipped_gossip" and robust.cg_tau is None:
        raise RobustError(
            "clipped_gossip in pairwise gossip needs a fixed cg_tau: the adaptive radius clips "
            "the heaviest neighbours, and a pool of one is all heaviest"
        )
