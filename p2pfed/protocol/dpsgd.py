"""Synchronous decentralised SGD (D-PSGD) with neighbour averaging.

Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms? A Case Study
for Decentralized Parallel Stochastic Gradient Descent", NeurIPS 2017; with several local
steps per round as in Koloskova et al., "A Unified Theory of Decentralized SGD with Changing
Topology and Local Updates", ICML 2020.

Round r at peer i::

    x_i^{r+1/2} = local training from x_i^r                      (Train effect)
    send x_i^{r+1/2} to the out-neighbours of W^r                 (Send effects)
    x_i^{r+1}   = sum_j W^r_ij x_j^{r+1/2}   once every in-neighbour's round-r model arrived

"Synchronous" means each peer waits for its *neighbours'* round-r models, never for a global
barrier. An optional round timeout bounds the wait: a neighbour whose model has not arrived
by then is skipped and its weight moves onto the peer's own model, which keeps the row
stochastic (but no longer doubly stochastic — the mean then drifts, which is the honest
price of stragglers and lost messages). Models that arrive for a round already closed are
dropped and counted.

``W^r`` must be doubly stochastic (Metropolis–Hastings weights or a one-peer exponential
graph); push-sum handles everything else.

A neighbour the runtime reports gone (:class:`PeerDown`, after its host died or when it
leaves) is no longer sent to or waited for; its weight stays with the peer, exactly like a
timeout skip but without waiting for one; :class:`PeerUp` brings it back.

A peer that comes back after being down (``Started`` again, mid-run) restarts its round from
its model, and catches up: the first share it receives from a later round tells it that its
neighbours moved on, and it joins that round (``caught_up``) instead of waiting, round after
round, for shares that were sent while it was away.
"""

from __future__ import annotations

import dataclasses
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
from p2pfed.topology import Topology, TopologySchedule


@dataclass(frozen=True)
class ModelShare(Message):
    """A peer's half-step model x_i^{r+1/2} for round ``round``."""

    round: int
    params: np.ndarray  # (P,) float32


@dataclass
class DPSGDState:
    """One peer's D-PSGD state: its model, its round, and models received early."""

    params: np.ndarray  # (P,) float32, x_i^r
    round: int = 0
    phase: str = "idle"  # idle -> training -> mixing -> training ... -> done
    half: np.ndarray | None = None  # x_i^{r+1/2} while mixing
    inbox: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # round -> sender
    stale_dropped: int = 0
    neighbours_skipped: int = 0
    down: set[int] = field(default_factory=set)  # peers the runtime reported gone
    rejoined: bool = False  # back after being down, not caught up yet


class DPSGD(Protocol[DPSGDState]):
    """Synchronous neighbour averaging after local training (see the module docstring)."""

    messages: ClassVar[tuple[type[Message], ...]] = (ModelShare,)

    def __init__(
        self,
        peer: int,
        schedule: TopologySchedule,
        *,
        rounds: int,
        epochs: int = 1,
        steps: int | None = None,
        round_timeout: float | None = None,
        robust: RobustConfig | None = None,
    ):
        if rounds < 1:
            raise ProtocolError("rounds must be at least 1")
        if schedule.directed and not schedule.at(0).is_doubly_stochastic():
            raise ProtocolError(
                f"D-PSGD needs doubly stochastic mixing weights; {schedule.name} is directed "
                "with push weights: use protocol.kind pushsum"
            )
        self.peer = peer
        self.schedule = schedule
        self.rounds = rounds
        self.epochs = epochs
        self.steps = steps
        self.round_timeout = round_timeout
        self.robust = robust if robust is not None and robust.rule != "mean" else None

    def initial_state(self, params: np.ndarray) -> DPSGDState:
        return DPSGDState(params=np.array(params, dtype=np.float32))

    def fresh(self, state: DPSGDState, params: np.ndarray) -> DPSGDState:
        """The initial model, the round count kept (see :meth:`Protocol.fresh`)."""
        return dataclasses.replace(self.initial_state(params), round=state.round)

    def model(self, state: DPSGDState) -> np.ndarray:
        return state.params

    def progress(self, state: DPSGDState) -> int:
        return state.round

    def on_event(self, state: DPSGDState, event: Event) -> tuple[DPSGDState, list[Effect]]:
        if isinstance(event, Started):
            state.rejoined = event.rejoin  # back after being down: catch up when it can
            state.phase = "training"
            state.half = None
            return state, [self._train(state)]
        if isinstance(event, TrainingDone) and state.phase == "training":
            return self._on_trained(state, event)
        if isinstance(event, MessageArrived) and isinstance(event.message, ModelShare):
            return self._on_share(state, event.sender, event.message)
        if (
            isinstance(event, TimerFired)
            and event.tag == "round_timeout"
            and state.phase == "mixing"
            and event.round == state.round
        ):
            return self._mix(state, force=True)
        if isinstance(event, PeerDown):
            state.down.add(event.peer)
            if state.phase == "mixing":  # it may have been the last one waited for
                return self._mix(state, force=False)
        if isinstance(event, PeerUp):
            state.down.discard(event.peer)
        return state, []

    def _train(self, state: DPSGDState) -> Train:
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)

    def _on_trained(
        self, state: DPSGDState, event: TrainingDone
    ) -> tuple[DPSGDState, list[Effect]]:
        state.half = np.asarray(event.params, dtype=np.float32)
        state.phase = "mixing"
        topo = self.schedule.at(state.round)
        effects: list[Effect] = [
            Send(to=j, message=ModelShare(round=state.round, params=state.half))
            for j in topo.out_neighbours(self.peer)
            if j not in state.down
        ]
        if self.round_timeout is not None:
            effects.append(SetTimer(self.round_timeout, "round_timeout", state.round))
        state, more = self._mix(state, force=False)
        return state, effects + more

    def _on_share(
        self, state: DPSGDState, sender: int, msg: ModelShare
    ) -> tuple[DPSGDState, list[Effect]]:
        if msg.round < state.round or state.phase == "done":
            state.stale_dropped += 1
            return state, [Emit("stale_model_dropped", {"sender": sender, "round": msg.round})]
        if sender not in self.schedule.at(msg.round).in_neighbours(self.peer):
            state.stale_dropped += 1
            return state, [Emit("unexpected_model_dropped", {"sender": sender})]
        effects: list[Effect] = []
        if state.rejoined and msg.round > state.round and msg.round < self.rounds:
            effects = self._catch_up(state, msg.round)
        state.inbox.setdefault(msg.round, {})[sender] = msg.params
        if state.phase == "mixing" and msg.round == state.round:
            state, more = self._mix(state, force=False)
            return state, effects + more
        return state, effects

    def _catch_up(self, state: DPSGDState, rnd: int) -> list[Effect]:
        """A peer back from being down joins round ``rnd`` its neighbours are in: a model
        it already trained is shared as its round-``rnd`` half step, one in training will
        be when it is done (module docstring)."""
        effects: list[Effect] = [Emit("caught_up", {"from": state.round, "to": rnd})]
        state.round, state.rejoined = rnd, False
        state.inbox = {r: got for r, got in state.inbox.items() if r >= rnd}
        if state.phase == "mixing" and state.half is not None:
            topo = self.schedule.at(rnd)
            effects += [
                Send(to=j, message=ModelShare(round=rnd, params=state.half))
                for j in topo.out_neighbours(self.peer)
                if j not in state.down
            ]
            if self.round_timeout is not None:
                effects.append(SetTimer(self.round_timeout, "round_timeout", rnd))
        return effects

    def _robust_mix(
        self,
        state: DPSGDState,
        topo: Topology,
        received: dict[int, np.ndarray],
        self_weight: float,
        effects: list[Effect],
    ) -> np.ndarray:
        """The neighbourhood aggregated by the robust rule (own half-step model as the
        centre), reporting what the rule rejected and clipped (``robust_rejected`` counts
        the rule's own unit: neighbours for Krum and BALANCE, values per coordinate for the
        trimmed mean). A pool the rule cannot take (shrunk by timeouts) keeps the peer's
        own model for the round (``robust_skipped``)."""
        assert self.robust is not None and state.half is not None
        senders = [j for j in topo.in_neighbours(self.peer) if j in received]
        inputs = (
            np.stack([received[j] for j in senders])
            if senders
            else np.zeros((0, state.half.size), np.float32)
        )
        try:
            agg = aggregate(
                self.robust,
                state.half,
                inputs,
                np.array([topo.weight(self.peer, j) for j in senders]),
                self_weight,
                step=state.round,
                total_steps=self.rounds,
            )
        except RobustError as exc:  # the pool shrank below what the rule needs (timeouts)
            effects.append(Emit("robust_skipped", {"round": state.round, "reason": str(exc)}))
            return state.half.astype(np.float64)
        effects += robust_events(agg, state.round)
        return agg.value

    def _mix(self, state: DPSGDState, *, force: bool) -> tuple[DPSGDState, list[Effect]]:
        assert state.half is not None
        topo = self.schedule.at(state.round)
        received = state.inbox.get(state.round, {})
        expected = topo.in_neighbours(self.peer)
        missing = [j for j in expected if j not in received]
        # a neighbour reported gone is not waited for; its weight stays here like a skip
        alive_missing = [j for j in missing if j not in state.down]
        if alive_missing and not force:
            return state, []
        # x_i <- W_ii x_i + sum_j W_ij x_j; a missing neighbour's weight stays with i.
        self_weight = topo.weight(self.peer, self.peer) + sum(
            topo.weight(self.peer, j) for j in missing
        )
        effects: list[Effect] = []
        if self.robust is None:
            mixed = self_weight * state.half.astype(np.float64)
            for j in expected:
                if j in received:
                    mixed += topo.weight(self.peer, j) * received[j]
        else:
            mixed = self._robust_mix(state, topo, received, self_weight, effects)
        if alive_missing:
            state.neighbours_skipped += len(alive_missing)
            effects.append(
                Emit("neighbours_skipped", {"round": state.round, "peers": alive_missing})
            )
        state.params = mixed.astype(np.float32)
        state.half = None
        state.inbox.pop(state.round, None)
        state.round += 1
        if state.round >= self.rounds:
            state.phase = "done"
            state.inbox.clear()
            effects.append(Stop())
        else:
            state.phase = "training"
            effects.append(self._train(state))
        return state, effects
