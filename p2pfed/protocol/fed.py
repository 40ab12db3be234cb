"""Star (coordinator) federated learning: FedAvg, FedAsync and FedBuff, as the centralised
baselines for the decentralised protocols.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017 (FedAvg); Xie, Koyejo & Gupta, "Asynchronous Federated Optimization",
OPT 2020 workshop, arXiv:1903.03934, 2019 (FedAsync); Nguyen et al., "Federated Learning
with Buffered Asynchronous Aggregation", AISTATS 2022 (FedBuff).

Peers. ``n`` clients have ids ``0..n-1``; the coordinator has id ``n``. The runtime hosts
the coordinator as one more participant with no data and no trainer: it never returns a
:class:`Train` effect. Clients talk only to the coordinator (whose id they derive from
``num_clients``) and drop anything from anyone else. Everyone starts from the same initial
model, which is global round/version 0.

FedAvg (synchronous), round r::

    coordinator -> every client : GlobalModel(r, x^r)
    client k    : x_k = local training from x^r                        (Train effect)
    client k    -> coordinator  : ClientUpdate(r, x_k, samples_k)
    coordinator : once all n updates are in (or at the round timeout, if at least
                  ceil(min_fraction n) are), with S the clients heard from:
                  mean = sum_{k in S} samples_k x_k / sum_{k in S} samples_k
                  x^{r+1} = (1 - server_lr) x^r + server_lr mean

The aggregation runs over the clients in id order, so the result does not depend on the
order in which updates arrived. Updates for a round already closed are dropped and counted.
Below the quorum at the timeout the round stays open (``round_stalled``) and closes as soon
as the quorum is reached.

FedAsync (asynchronous): a client trains as soon as it holds a model and sends the result
tagged with the global version tau it started from; the coordinator mixes it in at once and
replies with the new global model::

    x <- (1 - a) x + a x_k,   a = alpha s(t - tau),   t <- t + 1

FedBuff (buffered asynchronous): the client sends its delta x_k - x_tau; the coordinator
adds s(t - tau) (x_k - x_tau) to a buffer, replies with the *current* global model at once,
and when ``buffer_size`` deltas are in applies ``x <- x + server_lr * buffer / buffer_size``
and bumps the version t (staleness is counted in server steps, as in the paper). The partial
buffer left when the run ends is applied too (mean over what it holds), so no trained update
is thrown away. Updates are weighted by staleness only, not by sample counts, as in both
papers.

Staleness s(d), d = t - tau >= 0 (:class:`Staleness`): ``polynomial`` (1 + d)^-exponent
(exponent 0.5 gives FedBuff's 1/sqrt(1 + d)); ``constant`` 1; ``hinge`` 1 for d <= b, else
1 / (a (d - b) + 1) with defaults a = 10, b = 4.

Ending. FedAvg ends after ``rounds`` aggregations; the asynchronous kinds once every client
has sent its ``rounds``-th update (flagged ``last``). The coordinator then sends
``GlobalModel(final=True)`` to every client and stops. A client stops as soon as it has no
training left (right after its last update, or when a final model arrives earlier) and
adopts the final model whenever it lands, before or after it stopped: a stopped peer still
receives messages, and the runtime lands the frames still on the wire before its final
evaluation. So a lost final model costs that client a stale model, never a deadlock.

Loss and timeouts (``timeout``, seconds; the timers below are the only ones the runtime
must honour, and it may discard them once the peer has stopped):

* FedAvg: the coordinator arms ``round_timeout`` per round. Without it one lost message
  stalls the run for good. With it, at the deadline the coordinator aggregates if the
  quorum ``ceil(min_fraction n)`` is in; otherwise it re-sends the round's model to the
  clients it has not heard from (at most ``MAX_RESENDS`` times per round) and re-arms the
  timer. A client that receives the model of a round it already reported — its update was
  lost — sends the update again (it keeps its latest one). Only after the re-sends are used
  up does a round below the quorum stall, closing as soon as the quorum arrives. A lost
  final model leaves that client with the previous global model (it has stopped already).
  Clients set no timers.
* FedAsync/FedBuff: a client arms ``reply_timeout`` while it waits for a model; when it
  fires it trains again from the model it holds (a lost exchange costs one local round, as
  in :mod:`p2pfed.protocol.gossip`), and a late reply is still adopted if newer. The
  coordinator arms ``idle_timeout`` after each update: when no update arrived for
  ``timeout`` it gives up on the clients not yet finished and ends the run. ``timeout`` must
  therefore exceed a client's training time plus a round trip (as for FedAvg's round).

Roles, for the runtime's metrics:

* ``model(state)``: the coordinator's global model; for a client, the latest global model
  it adopted (its own training result is only sent, never kept), so after the run every
  client that received the final model holds it bit for bit.
* ``progress(state)``: a client's local rounds completed (updates sent, at most
  ``rounds``); the FedAvg coordinator's aggregations; the asynchronous coordinator's
  updates received divided by ``n`` (client rounds' worth of updates).

Precision: aggregation runs in float64; models are stored and sent as float32.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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
from p2pfed.robust import RobustConfig, RobustError, aggregate, buckets

FedKind = Literal["fedavg", "fedasync", "fedbuff"]
StalenessKind = Literal["polynomial", "constant", "hinge"]

# --- messages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GlobalModel(Message):
    """The coordinator's model: ``round`` is the FedAvg round it opens (the aggregations
    behind it) or the asynchronous global version; ``final`` marks the model the run ends
    with."""

    round: int
    params: np.ndarray  # (P,) float32
    final: bool


@dataclass(frozen=True)
class ClientUpdate(Message):
    """FedAvg: a client's model after training from round ``round``'s global model, and the
    number of samples it trained on (its aggregation weight)."""

    round: int
    params: np.ndarray  # (P,) float32, x_k
    samples: int


@dataclass(frozen=True)
class AsyncUpdate(Message):
    """FedAsync: a client's model after training from global version ``version``; ``last``
    marks its final local round."""

    version: int
    params: np.ndarray  # (P,) float32, x_k
    last: bool


@dataclass(frozen=True)
class ClientDelta(Message):
    """FedBuff: a client's local progress x_k - x_version after training from global
    version ``version``; ``last`` marks its final local round."""

    version: int
    delta: np.ndarray  # (P,) float32
    last: bool


AsyncMessage = AsyncUpdate | ClientDelta

# --- configuration checks and staleness -------------------------------------------------------


def _check_common(
    num_clients: int, rounds: int, epochs: int, steps: int | None, timeout: float | None
) -> None:
    if num_clients < 1:
        raise ProtocolError(f"a star needs at least one client, got num_clients={num_clients}")
    if rounds < 1:
        raise ProtocolError("rounds must be at least 1")
    if epochs < 1:
        raise ProtocolError(f"epochs must be at least 1, got {epochs}")
    if steps is not None and steps < 1:
        raise ProtocolError(f"steps must be at least 1 when set, got {steps}")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise ProtocolError(f"timeout must be a positive number of seconds, got {timeout}")


def _check_server_lr(server_lr: float) -> None:
    if not (math.isfinite(server_lr) and server_lr > 0):
        raise ProtocolError(f"server_lr must be positive, got {server_lr}")


@dataclass(frozen=True)
class Staleness:
    """The staleness weight s(d) of an update d global versions old (module docstring)."""

    kind: StalenessKind = "polynomial"
    exponent: float = 0.5  # polynomial: (1 + d)^-exponent
    hinge_a: float = 10.0  # hinge: 1 / (a (d - b) + 1) beyond b
    hinge_b: int = 4

    def __post_init__(self) -> None:
        if self.kind not in ("polynomial", "constant", "hinge"):
            raise ProtocolError(
                f"unknown staleness {self.kind!r}: expected polynomial, constant or hinge"
            )
        if not (math.isfinite(self.exponent) and self.exponent >= 0):
            raise ProtocolError(f"staleness_exponent must be >= 0, got {self.exponent}")
        if not (math.isfinite(self.hinge_a) and self.hinge_a > 0) or self.hinge_b < 0:
            raise ProtocolError("hinge staleness needs a > 0 and b >= 0")

    def weight(self, d: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "polynomial":
            return float((1.0 + d) ** -self.exponent)
        return 1.0 if d <= self.hinge_b else 1.0 / (self.hinge_a * (d - self.hinge_b) + 1.0)


# --- clients -----------------------------------------------------------------------------------


@dataclass
class FedClientState:
    """One client's state: the latest global model it adopted and where it is in its rounds."""

    params: np.ndarray  # (P,) float32, the latest global model adopted
    version: int = -1  # its round (FedAvg) or global version; -1: the initial model
    phase: str = "idle"  # idle -> waiting <-> training -> stopped
    base: int = -1  # version the training in flight started from
    sent: int = 0  # updates sent = local rounds completed
    final: bool = False  # holds the coordinator's final model
    stale_dropped: int = 0
    timeouts: int = 0
    last_update: Message | None = None  # the latest update sent, kept to answer a resend


class _StarClient(Protocol[FedClientState]):
    """What every client does: wait for a model, train, report, adopt the final model."""

    def __init__(
        self,
        peer: int,
        num_clients: int,
        *,
        rounds: int,
        epochs: int = 1,
        steps: int | None = None,
        timeout: float | None = None,
    ):
        _check_common(num_clients, rounds, epochs, steps, timeout)
        if not 0 <= peer < num_clients:
            raise ProtocolError(f"client id {peer} is outside 0..{num_clients - 1}")
        self.peer = peer
        self.num_clients = num_clients
        self.coordinator = num_clients
        self.rounds = rounds
        self.epochs = epochs
        self.steps = steps
        self.timeout = timeout

    def initial_state(self, params: np.ndarray) -> FedClientState:
        return FedClientState(params=np.array(params, dtype=np.float32))

    def model(self, state: FedClientState) -> np.ndarray:
        return state.params

    def progress(self, state: FedClientState) -> int:
        return state.sent

    def on_event(self, state: FedClientState, event: Event) -> tuple[FedClientState, list[Effect]]:
        if isinstance(event, Started):
            if state.phase != "idle":  # a model arrived before Started and training began
                return state, []
            state.phase = "waiting"
            return state, self._on_start(state)
        if isinstance(event, TrainingDone) and state.phase == "training":
            return self._on_trained(state, event)
        if isinstance(event, MessageArrived):
            msg = event.message
            if event.sender != self.coordinator or not isinstance(msg, GlobalModel):
                return state, [Emit("unexpected_message_dropped", {"sender": event.sender})]
            if msg.final:
                return self._adopt_final(state, msg)
            if state.phase == "stopped":
                return state, self._resend(state, msg)
            return self._on_model(state, msg)
        if isinstance(event, TimerFired):
            return self._on_timer(state, event)
        return state, []

    # hooks the three kinds fill in

    def _on_start(self, state: FedClientState) -> list[Effect]:
        return []

    @abc.abstractmethod
    def _on_model(
        self, state: FedClientState, msg: GlobalModel
    ) -> tuple[FedClientState, list[Effect]]:
        """A non-final global model arrived while the client still has rounds to run."""

    @abc.abstractmethod
    def _is_last(self, state: FedClientState) -> bool:
        """Whether the update just trained is the client's last."""

    @abc.abstractmethod
    def _update(self, state: FedClientState, event: TrainingDone, last: bool) -> Message:
        """The message that reports the training that just finished."""

    def _after_update(self, state: FedClientState) -> list[Effect]:
        return []

    def _resend(self, state: FedClientState, msg: GlobalModel) -> list[Effect]:
        """A stopped client got a non-final model: answer a coordinator's resend."""
        return []

    def _on_timer(
        self, state: FedClientState, event: TimerFired
    ) -> tuple[FedClientState, list[Effect]]:
        return state, []

    # shared steps

    def _train(self, state: FedClientState) -> Train:
        state.phase = "training"
        state.base = max(state.version, 0)  # the initial model is global version 0
        return Train(params=state.params, epochs=self.epochs, steps=self.steps)

    def _adopt(self, state: FedClientState, msg: GlobalModel) -> None:
        state.params = np.asarray(msg.params, dtype=np.float32)
        state.version = msg.round

    def _on_trained(
        self, state: FedClientState, event: TrainingDone
    ) -> tuple[FedClientState, list[Effect]]:
        state.sent += 1
        last = self._is_last(state)
        state.last_update = self._update(state, event, last)
        effects: list[Effect] = [Send(self.coordinator, state.last_update)]
        if last:
            state.phase = "stopped"
            return state, [*effects, Stop()]
        state.phase = "waiting"
        return state, effects + self._after_update(state)

    def _adopt_final(
        self, state: FedClientState, msg: GlobalModel
    ) -> tuple[FedClientState, list[Effect]]:
        if state.final:
            return state, []
        self._adopt(state, msg)
        state.final = True
        if state.phase == "stopped":
            return state, []
        # a training in flight is abandoned: its TrainingDone finds the client stopped
        state.phase = "stopped"
        return state, [Stop()]


class FedAvgClient(_StarClient):
    """A FedAvg client: trains once per round from the round's global model."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, ClientUpdate)

    def __init__(
        self,
        peer: int,
        num_clients: int,
        *,
        rounds: int,
        epochs: int = 1,
        steps: int | None = None,
    ):
        super().__init__(peer, num_clients, rounds=rounds, epochs=epochs, steps=steps)

    def _on_model(
        self, state: FedClientState, msg: GlobalModel
    ) -> tuple[FedClientState, list[Effect]]:
        resend = self._resend(state, msg)
        if resend:
            return state, resend
        if msg.round <= state.version:  # overtaken by a later round (timeouts reorder them)
            state.stale_dropped += 1
            return state, [Emit("stale_model_dropped", {"round": msg.round})]
        self._adopt(state, msg)
        if state.phase in ("idle", "waiting"):
            return state, [self._train(state)]
        return state, []  # training an older round: this one follows (_after_update)

    def _is_last(self, state: FedClientState) -> bool:
        return state.base >= self.rounds - 1

    def _resend(self, state: FedClientState, msg: GlobalModel) -> list[Effect]:
        # The coordinator re-sends a round's model to clients it has not heard from; if this
        # client already reported that round, its update was lost: send it again.
        update = state.last_update
        if isinstance(update, ClientUpdate) and update.round == msg.round == state.version:
            return [Send(self.coordinator, update), Emit("update_resent", {"round": msg.round})]
        return []

    def _update(self, state: FedClientState, event: TrainingDone, last: bool) -> Message:
        return ClientUpdate(
            round=state.base,
            params=np.asarray(event.params, dtype=np.float32),
            samples=int(event.samples),
        )

    def _after_update(self, state: FedClientState) -> list[Effect]:
        # a later round's model arrived during training: the late update went out anyway
        # (the coordinator counts it), now train the round that is open
        return [self._train(state)] if state.version > state.base else []


class _AsyncClient(_StarClient):
    """A FedAsync/FedBuff client: every reply from the coordinator starts a local round."""

    def _on_start(self, state: FedClientState) -> list[Effect]:
        return self._after_update(state)

    def _on_model(
        self, state: FedClientState, msg: GlobalModel
    ) -> tuple[FedClientState, list[Effect]]:
        # every reply restarts a waiting client, but only a newer model replaces the one it
        # holds (a reply can land late, after a reply timeout sent the client on)
        if msg.round > state.version:
            self._adopt(state, msg)
        if state.phase in ("idle", "waiting"):
            return state, [self._train(state)]
        return state, []  # a late reply during training: adopted for the next round

    def _is_last(self, state: FedClientState) -> bool:
        return state.sent >= self.rounds

    def _after_update(self, state: FedClientState) -> list[Effect]:
        if self.timeout is None:
            return []
        return [SetTimer(self.timeout, "reply_timeout", state.sent)]

    def _on_timer(
        self, state: FedClientState, event: TimerFired
    ) -> tuple[FedClientState, list[Effect]]:
        if event.tag == "reply_timeout" and state.phase == "waiting" and event.round == state.sent:
            state.timeouts += 1
            emit = Emit("reply_timed_out", {"updates_sent": state.sent})
            return state, [emit, self._train(state)]
        return state, []


class FedAsyncClient(_AsyncClient):
    """A FedAsync client: sends its trained model."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, AsyncUpdate)

    def _update(self, state: FedClientState, event: TrainingDone, last: bool) -> Message:
        return AsyncUpdate(
            version=state.base, params=np.asarray(event.params, dtype=np.float32), last=last
        )


class FedBuffClient(_AsyncClient):
    """A FedBuff client: sends its local progress x_k - x_tau."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, ClientDelta)

    def _update(self, state: FedClientState, event: TrainingDone, last: bool) -> Message:
        delta = np.asarray(event.params, np.float64) - np.asarray(event.base, np.float64)
        return ClientDelta(version=state.base, delta=delta.astype(np.float32), last=last)


# --- the FedAvg coordinator ---------------------------------------------------------------

#: deadlines per round at which the FedAvg coordinator re-sends the round's model before it
#: settles for the quorum
MAX_RESENDS = 3


@dataclass
class FedAvgState:
    """The FedAvg coordinator's state: the global model and the open round's updates."""

    params: np.ndarray  # (P,) float32, x^r
    round: int = 0  # the open round = aggregations done
    phase: str = "idle"  # idle -> collecting -> done
    inbox: dict[int, tuple[np.ndarray, int]] = field(default_factory=dict)  # k -> (x_k, n_k)
    deadline_passed: bool = False  # the open round's timeout fired below the quorum
    resends: int = 0  # deadlines of the open round that re-sent its model
    down: set[int] = field(default_factory=set)  # clients the runtime reported gone
    late_dropped: int = 0
    clients_skipped: int = 0


class FedAvgCoordinator(Protocol[FedAvgState]):
    """The FedAvg server: sample-weighted averaging, one synchronous round at a time."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, ClientUpdate)

    def __init__(
        self,
        num_clients: int,
        *,
        rounds: int,
        timeout: float | None = None,
        min_fraction: float = 1.0,
        server_lr: float = 1.0,
        robust: RobustConfig | None = None,
        bucket_seed: int = 0,
    ):
        _check_common(num_clients, rounds, 1, None, timeout)
        if not (math.isfinite(min_fraction) and 0 < min_fraction <= 1):
            raise ProtocolError(f"min_fraction must be in (0, 1], got {min_fraction}")
        _check_server_lr(server_lr)
        self.robust = robust if robust is not None and robust.rule != "mean" else None
        self.bucket_seed = bucket_seed
        self.peer = num_clients
        self.num_clients = num_clients
        self.rounds = rounds
        self.timeout = timeout
        self.server_lr = server_lr
        # the epsilon keeps 0.3 * 10 = 3.0000000000000004 from needing 4 clients
        self.quorum = max(1, math.ceil(min_fraction * num_clients - 1e-9))

    def initial_state(self, params: np.ndarray) -> FedAvgState:
        return FedAvgState(params=np.array(params, dtype=np.float32))

    def model(self, state: FedAvgState) -> np.ndarray:
        return state.params

    def progress(self, state: FedAvgState) -> int:
        return state.round

    def on_event(self, state: FedAvgState, event: Event) -> tuple[FedAvgState, list[Effect]]:
        if isinstance(event, Started) and state.phase == "idle":
            state.phase = "collecting"
            return state, self._open_round(state)
        if isinstance(event, MessageArrived):
            if isinstance(event.message, ClientUpdate):
                return self._on_update(state, event.sender, event.message)
            return state, [Emit("unexpected_message_dropped", {"sender": event.sender})]
        if (
            isinstance(event, TimerFired)
            and event.tag == "round_timeout"
            and state.phase == "collecting"
            and event.round == state.round
        ):
            return self._on_deadline(state)
        if isinstance(event, PeerDown) and 0 <= event.peer < self.num_clients:
            # a client gone for good is not waited for (nor sent to) any more
            state.down.add(event.peer)
            if state.phase == "collecting" and self._all_in(state) and state.inbox:
                return self._aggregate(state)
        if isinstance(event, PeerUp) and 0 <= event.peer < self.num_clients:
            state.down.discard(event.peer)
            if state.phase == "collecting" and event.peer not in state.inbox:
                # back while a round is open: it gets the round's model now and is waited
                # for (it missed the broadcast while it was away)
                msg = GlobalModel(round=state.round, params=state.params, final=False)
                return state, [Send(event.peer, msg)]
        return state, []

    def _all_in(self, state: FedAvgState) -> bool:
        return all(k in state.inbox or k in state.down for k in range(self.num_clients))

    def _open_round(self, state: FedAvgState) -> list[Effect]:
        msg = GlobalModel(round=state.round, params=state.params, final=False)
        effects: list[Effect] = [
            Send(k, msg) for k in range(self.num_clients) if k not in state.down
        ]
        if self.timeout is not None:
            effects.append(SetTimer(self.timeout, "round_timeout", state.round))
        return effects

    def _on_update(
        self, state: FedAvgState, sender: int, msg: ClientUpdate
    ) -> tuple[FedAvgState, list[Effect]]:
        if not 0 <= sender < self.num_clients:
            return state, [Emit("unexpected_message_dropped", {"sender": sender})]
        if state.phase == "done" or msg.round < state.round:
            state.late_dropped += 1
            return state, [Emit("late_update_dropped", {"sender": sender, "round": msg.round})]
        if msg.round > state.round or sender in state.inbox:
            return state, [
                Emit("unexpected_update_dropped", {"sender": sender, "round": msg.round})
            ]
        state.inbox[sender] = (msg.params, msg.samples)
        received = len(state.inbox)
        if self._all_in(state) or (state.deadline_passed and received >= self.quorum):
            return self._aggregate(state)
        return state, []

    def _on_deadline(self, state: FedAvgState) -> tuple[FedAvgState, list[Effect]]:
        if len(state.inbox) >= self.quorum:
            return self._aggregate(state)
        missing = [
            k for k in range(self.num_clients) if k not in state.inbox and k not in state.down
        ]
        if state.resends < MAX_RESENDS:
            # a model or an update was lost: send the round's model again to the clients not
            # heard from (one that already reported answers with its update again)
            state.resends += 1
            msg = GlobalModel(round=state.round, params=state.params, final=False)
            assert self.timeout is not None
            return state, [
                *(Send(k, msg) for k in missing),
                SetTimer(self.timeout, "round_timeout", state.round),
                Emit("round_resent", {"round": state.round, "peers": missing}),
            ]
        state.deadline_passed = True  # close as soon as the quorum is reached
        fields = {"round": state.round, "received": len(state.inbox), "needed": self.quorum}
        return state, [Emit("round_stalled", fields)]

    def _robust_mean(self, state: FedAvgState, effects: list[Effect]) -> np.ndarray:
        assert self.robust is not None
        return _robust_mean(self.robust, state, effects, self.bucket_seed, self.num_clients)

    def _aggregate(self, state: FedAvgState) -> tuple[FedAvgState, list[Effect]]:
        effects: list[Effect] = []
        missing = [
            k for k in range(self.num_clients) if k not in state.inbox and k not in state.down
        ]
        if missing:
            state.clients_skipped += len(missing)
            effects.append(Emit("clients_skipped", {"round": state.round, "peers": missing}))
        if self.robust is None:
            mean = _weighted_mean(state.inbox)  # (P,) float64
        else:
            mean = self._robust_mean(state, effects)
        lr = self.server_lr
        # (1 - lr) x + lr mean rather than x + lr (mean - x): exactly the mean when lr = 1
        new = (1.0 - lr) * state.params.astype(np.float64) + lr * mean
        state.params = new.astype(np.float32)
        state.inbox = {}
        state.deadline_passed = False
        state.resends = 0
        state.round += 1
        if state.round < self.rounds:
            return state, effects + self._open_round(state)
        state.phase = "done"
        final = GlobalModel(round=state.round, params=state.params, final=True)
        sends = [Send(k, final) for k in range(self.num_clients) if k not in state.down]
        return state, [*effects, *sends, Stop()]


def _robust_mean(
    robust: RobustConfig,
    state: FedAvgState,
    effects: list[Effect],
    bucket_seed: int,
    num_clients: int,
) -> np.ndarray:
    """The clients' models aggregated by the robust rule, centred on the global model they
    trained from, weighted by samples (over the means of the round's buckets when
    ``robust.bucket_size`` is set: :mod:`p2pfed.robust.buckets`); what it rejected and
    clipped is reported."""
    ids = sorted(state.inbox)
    models = np.stack([np.asarray(state.inbox[k][0], np.float64) for k in ids])
    samples = np.array([max(state.inbox[k][1], 0) for k in ids], dtype=np.float64)
    weights = samples if samples.sum() > 0 else np.ones(len(ids))
    if robust.bucket_size is not None:
        at = {k: pos for pos, k in enumerate(ids)}
        groups = buckets.assign(range(num_clients), robust.bucket_size, bucket_seed, state.round)
        present = [[at[k] for k in members if k in at] for members in groups]
        models, weights = buckets.bucket_means(models, weights, [g for g in present if g])
    try:
        agg = aggregate(
            robust, None, models, weights, 0.0, reference=state.params.astype(np.float64)
        )
    except RobustError as exc:  # too few clients for the rule: the round keeps the model
        effects.append(Emit("robust_skipped", {"round": state.round, "reason": str(exc)}))
        return state.params.astype(np.float64)
    effects += robust_events(agg, state.round)
    return agg.value


def _weighted_mean(inbox: dict[int, tuple[np.ndarray, int]]) -> np.ndarray:
    """Sample-weighted mean (P,) float64 of the models in ``inbox``, summed in client id
    order so the result does not depend on arrival order; uniform if no client reports
    a positive sample count."""
    total = sum(max(samples, 0) for _, samples in inbox.values())
    acc: np.ndarray | None = None
    for k in sorted(inbox):
        params, samples = inbox[k]
        weight = float(max(samples, 0)) if total > 0 else 1.0
        term = weight * np.asarray(params, np.float64)
        acc = term if acc is None else acc + term
    assert acc is not None  # the quorum is at least one client
    return acc / (total if total > 0 else len(inbox))


# --- the asynchronous coordinators ----------------------------------------------------------


@dataclass
class AsyncCoordinatorState:
    """The FedAsync/FedBuff coordinator's state: the global model, its version and, for
    FedBuff, the buffer of staleness-weighted deltas."""

    params: np.ndarray  # (P,) float32, the global model x
    version: int = 0  # t: updates merged (FedAsync) or buffers applied (FedBuff)
    phase: str = "idle"  # idle -> running -> done
    received: int = 0  # client updates accepted
    finished: set[int] = field(default_factory=set)  # clients that sent their last update
    buffer: np.ndarray | None = None  # (P,) float64, sum of s(d) (x_k - x_tau) (FedBuff)
    buffered: int = 0  # updates in the buffer
    max_staleness: int = 0
    dropped: int = 0
    down: set[int] = field(default_factory=set)  # clients the runtime reported gone


class _AsyncCoordinator(Protocol[AsyncCoordinatorState]):
    """Merges each client update on arrival and replies with the current global model."""

    #: the update message this kind's clients send
    update_type: ClassVar[type[AsyncUpdate] | type[ClientDelta]]

    def __init__(
        self, num_clients: int, *, rounds: int, timeout: float | None, staleness: Staleness
    ):
        _check_common(num_clients, rounds, 1, None, timeout)
        self.peer = num_clients
        self.num_clients = num_clients
        self.rounds = rounds
        self.timeout = timeout
        self.staleness = staleness

    def initial_state(self, params: np.ndarray) -> AsyncCoordinatorState:
        return AsyncCoordinatorState(params=np.array(params, dtype=np.float32))

    def model(self, state: AsyncCoordinatorState) -> np.ndarray:
        return state.params

    def progress(self, state: AsyncCoordinatorState) -> int:
        return state.received // self.num_clients

    def on_event(
        self, state: AsyncCoordinatorState, event: Event
    ) -> tuple[AsyncCoordinatorState, list[Effect]]:
        if isinstance(event, Started) and state.phase == "idle":
            state.phase = "running"
            msg = GlobalModel(round=state.version, params=state.params, final=False)
            effects: list[Effect] = [Send(k, msg) for k in range(self.num_clients)]
            return state, effects + self._watchdog(state)
        if isinstance(event, MessageArrived):
            if isinstance(event.message, self.update_type):
                return self._on_update(state, event.sender, event.message)
            return state, [Emit("unexpected_message_dropped", {"sender": event.sender})]
        if (
            isinstance(event, TimerFired)
            and event.tag == "idle_timeout"
            and state.phase == "running"
            and event.round == state.received
        ):
            waiting = [k for k in range(self.num_clients) if k not in state.finished]
            return self._finish(state, [Emit("clients_given_up", {"peers": waiting})])
        if isinstance(event, PeerDown) and 0 <= event.peer < self.num_clients:
            state.down.add(event.peer)  # gone for good: counts as finished
            state.finished.add(event.peer)
            if state.phase == "running" and len(state.finished) == self.num_clients:
                return self._finish(state, [])
        if isinstance(event, PeerUp) and event.peer in state.down:
            state.down.discard(event.peer)  # back: it will send again
            state.finished.discard(event.peer)
        return state, []

    def _watchdog(self, state: AsyncCoordinatorState) -> list[Effect]:
        if self.timeout is None:
            return []
        return [SetTimer(self.timeout, "idle_timeout", state.received)]

    def _on_update(
        self, state: AsyncCoordinatorState, sender: int, msg: AsyncMessage
    ) -> tuple[AsyncCoordinatorState, list[Effect]]:
        if state.phase != "running":
            state.dropped += 1
            return state, [Emit("late_update_dropped", {"sender": sender})]
        tau = msg.version
        if (
            not 0 <= sender < self.num_clients
            or sender in state.finished
            or not 0 <= tau <= state.version
        ):
            state.dropped += 1
            return state, [Emit("unexpected_update_dropped", {"sender": sender})]
        d = state.version - tau
        state.max_staleness = max(state.max_staleness, d)
        effects = self._merge(state, msg, self.staleness.weight(d))
        state.received += 1
        if msg.last:
            state.finished.add(sender)
        else:
            reply = GlobalModel(round=state.version, params=state.params, final=False)
            effects.append(Send(sender, reply))
        if len(state.finished) == self.num_clients:
            return self._finish(state, effects)
        return state, effects + self._watchdog(state)

    @abc.abstractmethod
    def _merge(self, state: AsyncCoordinatorState, msg: AsyncMessage, s: float) -> list[Effect]:
        """Fold one update with staleness weight ``s`` into the state."""

    def _flush(self, state: AsyncCoordinatorState) -> list[Effect]:
        """Apply whatever is still pending before the final model goes out."""
        return []

    def _finish(
        self, state: AsyncCoordinatorState, effects: list[Effect]
    ) -> tuple[AsyncCoordinatorState, list[Effect]]:
        effects = effects + self._flush(state)
        state.phase = "done"
        final = GlobalModel(round=state.version, params=state.params, final=True)
        sends = [Send(k, final) for k in range(self.num_clients) if k not in state.down]
        return state, [*effects, *sends, Stop()]


class FedAsyncCoordinator(_AsyncCoordinator):
    """The FedAsync server: x <- (1 - a) x + a x_k with a = alpha s(staleness)."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, AsyncUpdate)
    update_type: ClassVar[type[AsyncUpdate] | type[ClientDelta]] = AsyncUpdate

    def __init__(
        self,
        num_clients: int,
        *,
        rounds: int,
        timeout: float | None = None,
        alpha: float = 0.6,
        staleness: Staleness | None = None,
    ):
        super().__init__(
            num_clients, rounds=rounds, timeout=timeout, staleness=staleness or Staleness()
        )
        if not (math.isfinite(alpha) and 0 < alpha <= 1):
            raise ProtocolError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha

    def _merge(self, state: AsyncCoordinatorState, msg: AsyncMessage, s: float) -> list[Effect]:
        assert isinstance(msg, AsyncUpdate)
        a = self.alpha * s
        mixed = (1.0 - a) * state.params.astype(np.float64) + a * np.asarray(msg.params, np.float64)
        state.params = mixed.astype(np.float32)
        state.version += 1
        return []


class FedBuffCoordinator(_AsyncCoordinator):
    """The FedBuff server: buffers staleness-weighted deltas, steps every ``buffer_size``."""

    messages: ClassVar[tuple[type[Message], ...]] = (GlobalModel, ClientDelta)
    update_type: ClassVar[type[AsyncUpdate] | type[ClientDelta]] = ClientDelta

    #: the buffer size when none is given: min(n, DEFAULT_BUFFER), K = 10 as in the paper
    DEFAULT_BUFFER = 10

    def __init__(
        self,
        num_clients: int,
        *,
        rounds: int,
        timeout: float | None = None,
        server_lr: float = 1.0,
        buffer_size: int | None = None,
        staleness: Staleness | None = None,
    ):
        super().__init__(
            num_clients, rounds=rounds, timeout=timeout, staleness=staleness or Staleness()
        )
        _check_server_lr(server_lr)
        if buffer_size is None:
            buffer_size = min(num_clients, self.DEFAULT_BUFFER)
        if not 1 <= buffer_size <= num_clients:
            raise ProtocolError(
                f"buffer_size must be between 1 and the number of clients ({num_clients}), "
                f"got {buffer_size}"
            )
        self.server_lr = server_lr
        self.buffer_size = buffer_size

    def _merge(self, state: AsyncCoordinatorState, msg: AsyncMessage, s: float) -> list[Effect]:
        assert isinstance(msg, ClientDelta)
        term = s * np.asarray(msg.delta, np.float64)
        state.buffer = term if state.buffer is None else state.buffer + term
        state.buffered += 1
        if state.buffered >= self.buffer_size:
            self._apply(state)
        return []

    def _flush(self, state: AsyncCoordinatorState) -> list[Effect]:
        if state.buffered == 0:
            return []
        fields = {"updates": state.buffered, "buffer_size": self.buffer_size}
        self._apply(state)
        return [Emit("partial_buffer_applied", fields)]

    def _apply(self, state: AsyncCoordinatorState) -> None:
        assert state.buffer is not None
        step = self.server_lr * state.buffer / state.buffered
        state.params = (state.params.astype(np.float64) + step).astype(np.float32)
        state.buffer = None
        state.buffered = 0
        state.version += 1


# --- registry and factory --------------------------------------------------------------------

#: config name -> a class whose ``messages`` are every message of that kind (the kind's client
#: class speaks the same ones); the codec is built from them
FED_PROTOCOLS: dict[str, type[Protocol[Any]]] = {
    "fedavg": FedAvgCoordinator,
    "fedasync": FedAsyncCoordinator,
    "fedbuff": FedBuffCoordinator,
}


def build_fed_protocol(
    kind: FedKind,
    peer: int,
    num_clients: int,
    *,
    rounds: int,
    seed: int,
    epochs: int = 1,
    steps: int | None = None,
    timeout: float | None = None,
    min_fraction: float = 1.0,
    server_lr: float = 1.0,
    alpha: float = 0.6,
    staleness: StalenessKind = "polynomial",
    staleness_exponent: float = 0.5,
    buffer_size: int | None = None,
    robust: RobustConfig | None = None,
    bucket_seed: int = 0,
) -> Protocol[Any]:
    """Build one participant of a star: client ``peer`` (``0 <= peer < num_clients``) or the
    coordinator (``peer == num_clients``).

    ``seed`` is accepted for a uniform factory signature; these protocols draw nothing at
    random (``bucket_seed``, the run's public seed of the FedAvg coordinator's robust
    buckets, is not a draw of theirs). Settings a kind does not use are ignored (``alpha``
    outside FedAsync, ``buffer_size`` outside FedBuff, ...); the ones it uses are checked on
    every peer, so a client fails exactly as the coordinator would.
    """
    if kind not in FED_PROTOCOLS:
        raise ProtocolError(
            f"unknown federated protocol {kind!r}: expected one of {sorted(FED_PROTOCOLS)}"
        )
    _check_common(num_clients, rounds, epochs, steps, timeout)
    if not 0 <= peer <= num_clients:
        raise ProtocolError(
            f"peer {peer} is neither a client (0..{num_clients - 1}) "
            f"nor the coordinator ({num_clients})"
        )
    # the coordinator is built for every peer so that every peer validates the same settings
    coordinator: Protocol[Any]
    client: type[_StarClient]
    if kind == "fedavg":
        coordinator = FedAvgCoordinator(
            num_clients,
            rounds=rounds,
            timeout=timeout,
            min_fraction=min_fraction,
            server_lr=server_lr,
            robust=robust,
            bucket_seed=bucket_seed,
        )
        if peer == num_clients:
            return coordinator
        return FedAvgClient(peer, num_clients, rounds=rounds, epochs=epochs, steps=steps)
    weights = Staleness(kind=staleness, exponent=staleness_exponent)
    if kind == "fedasync":
        coordinator = FedAsyncCoordinator(
            num_clients, rounds=rounds, timeout=timeout, alpha=alpha, staleness=weights
        )
        client = FedAsyncClient
    else:
        coordinator = FedBuffCoordinator(
            num_clients,
            rounds=rounds,
            timeout=timeout,
            server_lr=server_lr,
            buffer_size=buffer_size,
            staleness=weights,
        )
        client = FedBuffClient
    if peer == num_clients:
        return coordinator
    return client(peer, num_clients, rounds=rounds, epochs=epochs, steps=steps, timeout=timeout)


__all__ = [
    "FED_PROTOCOLS",
    "AsyncCoordinatorState",
    "AsyncUpdate",
    "ClientDelta",
    "ClientUpdate",
    "FedAsyncClient",
    "FedAsyncCoordinator",
    "FedAvgClient",
    "FedAvgCoordinator",
    "FedAvgState",
    "FedBuffClient",
    "FedBuffCoordinator",
    "FedClientState",
    "FedKind",
    "GlobalModel",
    "Staleness",
    "StalenessKind",
    "build_fed_protocol",
]
