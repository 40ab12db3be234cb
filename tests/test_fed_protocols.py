"""Star protocols (FedAvg, FedAsync, FedBuff) driven without any runtime (protocol_driver.py)."""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ProtocolError
from p2pfed.protocol import (
    Codec,
    Effect,
    Emit,
    Event,
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
)
from p2pfed.protocol.fed import (
    FED_PROTOCOLS,
    MAX_RESENDS,
    AsyncUpdate,
    ClientDelta,
    ClientUpdate,
    FedAsyncClient,
    FedAsyncCoordinator,
    FedAvgClient,
    FedAvgCoordinator,
    FedBuffCoordinator,
    GlobalModel,
    Staleness,
    build_fed_protocol,
)
from tests.protocol_driver import Driver

P = 6  # parameter vector length in these tests
KINDS = sorted(FED_PROTOCOLS)


@dataclass
class StarDriver(Driver):
    """The protocol driver with per-client sample counts (the base reports 1) and a record
    of every effect; it fails as soon as the coordinator asks to train."""

    samples: dict[int, int] = field(default_factory=dict)
    effects: list[tuple[int, Effect]] = field(default_factory=list)

    def _execute(self, peer: int, eff: Effect) -> None:
        assert not (peer == len(self.protocols) - 1 and isinstance(eff, Train)), (
            "the coordinator has no trainer"
        )
        self.effects.append((peer, eff))
        super()._execute(peer, eff)
        if isinstance(eff, Train) and peer in self.samples:
            target, done = self.pending[-1]
            assert isinstance(done, TrainingDone)
            self.pending[-1] = (target, dataclasses.replace(done, samples=self.samples[peer]))

    def emits(self, name: str) -> list[tuple[int, dict[str, Any]]]:
        return [(p, e.fields) for p, e in self.effects if isinstance(e, Emit) and e.name == name]

    def step_where(self, pred: Callable[[int, Event], bool]) -> tuple[int, Event]:
        return self.step(next(k for k, (p, ev) in enumerate(self.pending) if pred(p, ev)))


def star(kind: str, n: int, rounds: int, **kw: Any) -> list[Protocol[Any]]:
    return [
        build_fed_protocol(kind, i, n, rounds=rounds, seed=0, **kw)  # type: ignore[arg-type]
        for i in range(n + 1)
    ]


def start(protos: list[Protocol[Any]], x0: np.ndarray, **kw: Any) -> StarDriver:
    d = StarDriver.start(protos, [x0] * len(protos), **kw)
    assert isinstance(d, StarDriver)
    return d


def chooser(data: st.DataObject) -> Callable[[int], int]:
    return lambda k: data.draw(st.integers(0, k - 1))


def affine(peer: int, p: np.ndarray) -> np.ndarray:
    """A pure stand-in for training that pulls each client toward its own point."""
    return 0.75 * p + np.float32(peer + 1) * np.arange(1, P + 1, dtype=np.float32)


def x0(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=P).astype(np.float32)


def is_msg(to: int, cls: type) -> Callable[[int, Event], bool]:
    return lambda p, ev: p == to and isinstance(ev, MessageArrived) and isinstance(ev.message, cls)


def is_training_done(peer: int) -> Callable[[int, Event], bool]:
    return lambda p, ev: p == peer and isinstance(ev, TrainingDone)


def assert_finished(d: StarDriver, rounds: int) -> None:
    n = len(d.protocols) - 1
    coordinator = d.protocols[n].model(d.states[n])
    assert d.done == set(range(n + 1))
    for k in range(n):
        np.testing.assert_array_equal(d.protocols[k].model(d.states[k]), coordinator)
        assert d.states[k].final
    assert [p.progress(s) for p, s in zip(d.protocols, d.states, strict=True)] == [rounds] * (n + 1)
    assert not d.training


# --- FedAvg ---------------------------------------------------------------------------------


def test_fedavg_one_round_is_the_sample_weighted_mean_exactly() -> None:
    # weights 1/8, 3/8, 4/8 of models 8, 16, 24 times a ramp: the mean 19 * ramp is exact
    ramp = np.arange(1, P + 1, dtype=np.float32)
    d = start(
        star("fedavg", 3, 1),
        np.zeros(P, np.float32),
        train_fn=lambda peer, p: p + np.float32(8 * (peer + 1)) * ramp,
        samples={0: 1, 1: 3, 2: 4},
    )
    d.run()
    np.testing.assert_array_equal(d.protocols[3].model(d.states[3]), 19 * ramp)
    assert_finished(d, 1)
    updates = [e.message for _, e in d.effects if isinstance(e, Send)]
    assert sorted(m.samples for m in updates if isinstance(m, ClientUpdate)) == [1, 3, 4]


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_fedavg_matches_a_float64_reference(server_lr: float) -> None:
    n, samples = 4, {0: 5, 1: 1, 2: 7, 3: 2}
    start_model = x0(1)
    d = start(star("fedavg", n, 1, server_lr=server_lr), start_model, train_fn=affine)
    d.samples = samples
    d.run()
    trained = np.stack([affine(k, start_model) for k in range(n)]).astype(np.float64)
    mean = np.average(trained, axis=0, weights=[samples[k] for k in range(n)])
    expected = (1 - server_lr) * start_model.astype(np.float64) + server_lr * mean
    np.testing.assert_allclose(d.protocols[n].model(d.states[n]), expected, rtol=1e-6)
    assert_finished(d, 1)


@settings(max_examples=30, deadline=None)
@given(st.data(), st.integers(1, 5), st.integers(1, 3), st.lists(st.integers(0, 9), max_size=5))
def test_fedavg_any_interleaving_gives_the_in_order_result(
    data: st.DataObject, n: int, rounds: int, counts: list[int]
) -> None:
    samples = {k: c for k, c in enumerate(counts[:n])}  # zeros included: uniform fallback
    ref = start(star("fedavg", n, rounds), x0(n), train_fn=affine, samples=samples)
    ref.run()
    d = start(star("fedavg", n, rounds), x0(n), train_fn=affine, samples=samples)
    d.run(chooser(data))
    np.testing.assert_array_equal(d.models(), ref.models())
    assert_finished(d, rounds)


def test_fedavg_timeout_aggregates_the_quorum_and_drops_the_late_update() -> None:
    n = 4
    start_model = x0(2)
    d = start(
        star("fedavg", n, 2, timeout=1.0, min_fraction=0.5),
        start_model,
        train_fn=affine,
        samples={0: 1, 1: 2, 2: 3, 3: 4},
    )
    assert any(isinstance(e, SetTimer) and e.tag == "round_timeout" for _, e in d.effects)
    for k in range(n):
        d.step_where(is_msg(k, GlobalModel))
    for k in range(3):  # client 3 is a straggler: its training has not finished
        d.step_where(is_training_done(k))
        d.step_where(is_msg(n, ClientUpdate))
    assert d.states[n].round == 0  # 3 of 4: still waiting
    d.step_where(lambda p, ev: p == n and isinstance(ev, TimerFired))
    assert d.states[n].round == 1
    assert d.emits("clients_skipped") == [(n, {"round": 0, "peers": [3]})]
    trained = np.stack([affine(k, start_model) for k in range(3)]).astype(np.float64)
    expected = np.average(trained, axis=0, weights=[1, 2, 3]).astype(np.float32)
    np.testing.assert_allclose(d.protocols[n].model(d.states[n]), expected, rtol=1e-6)
    after_round_0 = d.protocols[n].model(d.states[n]).copy()
    # the straggler's round-0 update now arrives: dropped and counted, the model unchanged
    d.step_where(is_training_done(3))
    d.step_where(is_msg(n, ClientUpdate))
    assert d.emits("late_update_dropped") == [(n, {"sender": 3, "round": 0})]
    assert d.states[n].late_dropped == 1
    np.testing.assert_array_equal(d.protocols[n].model(d.states[n]), after_round_0)
    d.run()  # round 1 completes with everyone
    assert_finished(d, 2)
    assert d.states[3].sent == 2  # the straggler trained both rounds


def test_fedavg_below_the_quorum_stalls_then_closes_at_the_quorum() -> None:
    n = 4
    coord = FedAvgCoordinator(n, rounds=1, timeout=1.0, min_fraction=0.75)
    assert coord.quorum == 3
    s = coord.initial_state(np.zeros(P, np.float32))
    s, effects = coord.on_event(s, Started())
    assert [e.to for e in effects if isinstance(e, Send)] == [0, 1, 2, 3]

    def update(k: int) -> MessageArrived:
        return MessageArrived(k, ClientUpdate(0, np.full(P, k + 1, np.float32), 1))

    s, _ = coord.on_event(s, update(0))
    for _ in range(MAX_RESENDS):  # first the model goes out again to the silent clients
        s, effects = coord.on_event(s, TimerFired("round_timeout", 0))
        assert [e.to for e in effects if isinstance(e, Send)] == [1, 2, 3]
        assert effects[-1] == Emit("round_resent", {"round": 0, "peers": [1, 2, 3]})
        assert SetTimer(1.0, "round_timeout", 0) in effects
    s, effects = coord.on_event(s, TimerFired("round_timeout", 0))
    assert effects == [Emit("round_stalled", {"round": 0, "received": 1, "needed": 3})]
    s, effects = coord.on_event(s, update(1))
    assert effects == [] and s.round == 0
    s, effects = coord.on_event(s, update(2))  # the quorum, after the deadline: closes at once
    assert s.round == 1 and s.phase == "done"
    assert effects[0] == Emit("clients_skipped", {"round": 0, "peers": [3]})
    assert isinstance(effects[-1], Stop)
    finals = [e for e in effects if isinstance(e, Send)]
    assert [e.to for e in finals] == [0, 1, 2, 3]
    assert all(isinstance(e.message, GlobalModel) and e.message.final for e in finals)
    np.testing.assert_array_equal(coord.model(s), np.full(P, 2.0, np.float32))
    # a timer of a closed round does nothing
    assert coord.on_event(s, TimerFired("round_timeout", 0))[1] == []


def test_fedavg_quorum_rounds_a_product_that_floats_up() -> None:
    assert FedAvgCoordinator(10, rounds=1, min_fraction=0.3).quorum == 3
    assert FedAvgCoordinator(10, rounds=1, min_fraction=0.01).quorum == 1


def test_fedavg_client_follows_a_round_that_overtook_its_training() -> None:
    client = FedAvgClient(0, 3, rounds=3)
    x = np.zeros(P, np.float32)
    s = client.initial_state(x)
    s, effects = client.on_event(s, Started())
    assert effects == []  # clients wait for the coordinator
    s, effects = client.on_event(s, MessageArrived(3, GlobalModel(0, x + 1, False)))
    assert isinstance(effects[0], Train) and s.base == 0
    # round 1 opens (the coordinator timed this client out) while it trains round 0
    s, effects = client.on_event(s, MessageArrived(3, GlobalModel(1, x + 2, False)))
    assert effects == [] and s.version == 1
    np.testing.assert_array_equal(client.model(s), x + 2)
    s, effects = client.on_event(s, TrainingDone(x + 5, x + 1, 0.1, 10))
    sent, train = effects
    assert isinstance(sent, Send) and sent.to == 3 and isinstance(sent.message, ClientUpdate)
    assert sent.message.round == 0 and sent.message.samples == 10
    assert isinstance(train, Train) and s.base == 1
    np.testing.assert_array_equal(train.params, x + 2)
    # the round-0 model delivered late is dropped
    s, effects = client.on_event(s, MessageArrived(3, GlobalModel(0, x, False)))
    assert effects == [Emit("stale_model_dropped", {"round": 0})]
    # messages from another client are ignored
    s, effects = client.on_event(s, MessageArrived(1, GlobalModel(2, x, False)))
    assert effects == [Emit("unexpected_message_dropped", {"sender": 1})] and s.version == 1
    assert client.progress(s) == 1


def test_fedavg_client_stops_after_its_last_update_and_still_adopts_the_final_model() -> None:
    client = FedAvgClient(1, 2, rounds=1)
    x = np.zeros(P, np.float32)
    s = client.initial_state(x)
    s, _ = client.on_event(s, Started())
    s, _ = client.on_event(s, MessageArrived(2, GlobalModel(0, x, False)))
    s, effects = client.on_event(s, TrainingDone(x + 1, x, 0.1, 4))
    assert isinstance(effects[-1], Stop) and s.phase == "stopped"
    final = np.full(P, 7.0, np.float32)
    s, effects = client.on_event(s, MessageArrived(2, GlobalModel(1, final, True)))
    assert effects == [] and s.final
    np.testing.assert_array_equal(client.model(s), final)


# --- every kind ------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.data(), st.sampled_from(KINDS), st.integers(1, 5), st.integers(1, 3))
def test_every_peer_stops_holding_the_final_model(
    data: st.DataObject, kind: str, n: int, rounds: int
) -> None:
    d = start(star(kind, n, rounds, buffer_size=min(n, 2)), x0(n), train_fn=affine)
    d.run(chooser(data))
    assert_finished(d, rounds)
    finals = [e for p, e in d.effects if isinstance(e, Send) and p == n and e.message.final]  # type: ignore[attr-defined]
    assert sorted(e.to for e in finals) == list(range(n))
    assert not any(isinstance(e, Train) for p, e in d.effects if p == n)


@pytest.mark.parametrize("kind", KINDS)
def test_messages_round_trip_through_the_codec(kind: str) -> None:
    n = 3
    protos = star(kind, n, 3, buffer_size=2)
    messages = FED_PROTOCOLS[kind].messages
    assert all(type(p).messages == messages for p in protos)
    plain = start(protos, x0(), train_fn=affine)
    plain.run()
    codec = Codec(messages, vector_size=P)
    wired = start(star(kind, n, 3, buffer_size=2), x0(), train_fn=affine, codec=codec)
    wired.run()
    np.testing.assert_array_equal(wired.models(), plain.models())
    kinds = {type(e.message) for _, e in wired.effects if isinstance(e, Send)}
    assert kinds == set(messages)
    for _, eff in plain.effects:
        if isinstance(eff, Send):
            msg = codec.decode(codec.encode(n, 0, eff.message)[0]).message
            for f in dataclasses.fields(msg):
                np.testing.assert_array_equal(getattr(msg, f.name), getattr(eff.message, f.name))


@pytest.mark.parametrize("kind", KINDS)
def test_states_and_protocols_pickle(kind: str) -> None:
    d = start(star(kind, 2, 2), x0(), train_fn=affine)
    d.run()
    restored = pickle.loads(pickle.dumps((d.protocols, d.states)))
    for proto, state in zip(*restored, strict=True):
        assert proto.progress(state) == 2


# --- FedAsync ----------------------------------------------------------------------------------


def test_fedasync_alpha_one_constant_makes_the_global_the_last_update() -> None:
    n = 3
    d = start(star("fedasync", n, 3, alpha=1.0, staleness="constant"), x0(), train_fn=affine)
    last = None
    while d.pending:
        peer, event = d.step(len(d.pending) - 1)  # newest first: plenty of staleness
        if peer == n and isinstance(event, MessageArrived):
            assert isinstance(event.message, AsyncUpdate)
            last = event.message.params
            np.testing.assert_array_equal(d.protocols[n].model(d.states[n]), last)
    assert last is not None and d.states[n].max_staleness > 0
    assert_finished(d, 3)
    assert d.states[n].version == n * 3  # one version per update


def test_fedasync_weights_a_stale_update_by_its_staleness() -> None:
    coord = FedAsyncCoordinator(2, rounds=2, alpha=0.5)  # polynomial, exponent 0.5
    s = coord.initial_state(np.zeros(P, np.float32))
    s, effects = coord.on_event(s, Started())
    assert {e.to for e in effects if isinstance(e, Send)} == {0, 1}
    s, effects = coord.on_event(
        s, MessageArrived(0, AsyncUpdate(0, np.full(P, 4, np.float32), False))
    )
    np.testing.assert_array_equal(coord.model(s), 2.0)  # a = 0.5: halfway to 4
    assert effects == [Send(0, GlobalModel(1, s.params, False))]
    # client 1 trained from version 0 while version 1 appeared: staleness 1
    s, effects = coord.on_event(
        s, MessageArrived(1, AsyncUpdate(0, np.full(P, 10, np.float32), False))
    )
    a = 0.5 / math.sqrt(2.0)
    np.testing.assert_allclose(coord.model(s), (1 - a) * 2.0 + a * 10.0, rtol=1e-6)
    assert s.version == 2 and s.max_staleness == 1
    reply = effects[0]
    assert isinstance(reply, Send) and reply.to == 1
    assert isinstance(reply.message, GlobalModel) and reply.message.round == 2
    # an update from a version that does not exist yet is refused
    s, effects = coord.on_event(s, MessageArrived(1, AsyncUpdate(9, np.ones(P, np.float32), False)))
    assert effects == [Emit("unexpected_update_dropped", {"sender": 1})] and s.version == 2


def test_staleness_functions() -> None:
    poly = Staleness("polynomial", exponent=0.5)
    assert [poly.weight(d) for d in (0, 3, 8)] == [1.0, 0.5, 1 / 3]
    assert Staleness("constant").weight(100) == 1.0
    hinge = Staleness("hinge")  # a = 10, b = 4
    assert [hinge.weight(d) for d in (0, 4, 5, 6)] == [1.0, 1.0, 1 / 11, 1 / 21]


def test_async_client_retrains_after_a_reply_timeout_and_adopts_a_late_reply() -> None:
    client = FedAsyncClient(0, 2, rounds=3, timeout=0.5)
    x = np.zeros(P, np.float32)
    s = client.initial_state(x)
    s, effects = client.on_event(s, Started())
    assert effects == [SetTimer(0.5, "reply_timeout", 0)]
    s, effects = client.on_event(s, MessageArrived(2, GlobalModel(0, x + 1, False)))
    assert isinstance(effects[0], Train)
    s, effects = client.on_event(s, TrainingDone(x + 3, x + 1, 0.1, 5))
    update, timer = effects
    assert isinstance(update, Send) and isinstance(update.message, AsyncUpdate)
    assert (update.message.version, update.message.last) == (0, False)
    np.testing.assert_array_equal(update.message.params, x + 3)
    assert timer == SetTimer(0.5, "reply_timeout", 1)
    # the reply is lost: the client trains again from the model it holds
    s, effects = client.on_event(s, TimerFired("reply_timeout", 1))
    assert effects[0] == Emit("reply_timed_out", {"updates_sent": 1})
    assert isinstance(effects[1], Train) and s.timeouts == 1
    np.testing.assert_array_equal(effects[1].params, x + 1)
    # the reply shows up late, during training: adopted, no second training
    s, effects = client.on_event(s, MessageArrived(2, GlobalModel(4, x + 9, False)))
    assert effects == [] and s.version == 4
    s, effects = client.on_event(s, TrainingDone(x + 2, x + 1, 0.1, 5))
    assert isinstance(effects[0], Send) and effects[0].message.version == 0  # type: ignore[attr-defined]
    # a stale timer does nothing
    assert client.on_event(s, TimerFired("reply_timeout", 1))[1] == []


def test_async_coordinator_gives_up_on_silent_clients() -> None:
    coord = FedAsyncCoordinator(2, rounds=1, timeout=2.0)
    s = coord.initial_state(np.zeros(P, np.float32))
    s, effects = coord.on_event(s, Started())
    assert effects[-1] == SetTimer(2.0, "idle_timeout", 0)
    s, effects = coord.on_event(s, MessageArrived(0, AsyncUpdate(0, np.ones(P, np.float32), True)))
    assert effects == [SetTimer(2.0, "idle_timeout", 1)]  # no reply to a last update
    assert coord.on_event(s, TimerFired("idle_timeout", 0))[1] == []  # superseded
    s, effects = coord.on_event(s, TimerFired("idle_timeout", 1))
    assert effects[0] == Emit("clients_given_up", {"peers": [1]})
    assert isinstance(effects[-1], Stop) and s.phase == "done"
    s, effects = coord.on_event(s, MessageArrived(1, AsyncUpdate(0, np.ones(P, np.float32), True)))
    assert effects == [Emit("late_update_dropped", {"sender": 1})]


# --- FedBuff ----------------------------------------------------------------------------------


def test_fedbuff_applies_only_when_the_buffer_fills() -> None:
    coord = FedBuffCoordinator(3, rounds=2, buffer_size=2, server_lr=0.5)
    s = coord.initial_state(np.ones(P, np.float32))
    s, _ = coord.on_event(s, Started())

    def delta(k: int, version: int, value: float, last: bool) -> list[Effect]:
        nonlocal s
        msg = ClientDelta(version, np.full(P, value, np.float32), last)
        s, effects = coord.on_event(s, MessageArrived(k, msg))
        return effects

    effects = delta(0, 0, 2.0, False)  # buffered: the model and its version stay
    np.testing.assert_array_equal(coord.model(s), 1.0)
    assert effects == [Send(0, GlobalModel(0, s.params, False))]  # the current model, at once
    delta(1, 0, 4.0, False)  # full: x = 1 + 0.5 (2 + 4) / 2
    np.testing.assert_array_equal(coord.model(s), 2.5)
    assert s.version == 1
    delta(2, 0, 8.0, False)  # staleness 1, weight 1/sqrt(2): buffered
    np.testing.assert_array_equal(coord.model(s), 2.5)
    delta(0, 1, -2.0, True)
    expected = 2.5 + 0.5 * (8.0 / math.sqrt(2) - 2.0) / 2
    np.testing.assert_allclose(coord.model(s), expected, rtol=1e-6)
    assert s.version == 2
    delta(1, 1, 1.0, True)  # from version 1 at version 2: staleness 1
    effects = delta(2, 1, 3.0, True)  # staleness 1 too; fills the buffer, and all are done
    expected = float(np.float32(expected)) + 0.5 * (1.0 / math.sqrt(2) + 3.0 / math.sqrt(2)) / 2
    np.testing.assert_allclose(coord.model(s), expected, rtol=1e-6)
    assert s.version == 3 and s.phase == "done" and isinstance(effects[-1], Stop)
    assert not any(isinstance(e, Emit) for e in effects)  # nothing left to flush


def test_fedbuff_applies_the_partial_buffer_at_the_end() -> None:
    coord = FedBuffCoordinator(3, rounds=1, buffer_size=2, staleness=Staleness("constant"))
    s = coord.initial_state(np.zeros(P, np.float32))
    s, _ = coord.on_event(s, Started())
    for k, value in enumerate([2.0, 4.0, 10.0]):
        s, effects = coord.on_event(
            s, MessageArrived(k, ClientDelta(0, np.full(P, value, np.float32), True))
        )
    assert Emit("partial_buffer_applied", {"updates": 1, "buffer_size": 2}) in effects
    np.testing.assert_array_equal(coord.model(s), 3.0 + 10.0)
    assert s.version == 2


def test_fedbuff_client_sends_its_local_progress() -> None:
    d = start(star("fedbuff", 2, 1), np.ones(P, np.float32), train_fn=lambda k, p: p + k + 1)
    d.run()
    deltas = {p: e.message for p, e in d.effects if isinstance(e, Send) and p < 2}
    assert all(isinstance(m, ClientDelta) and m.last for m in deltas.values())
    np.testing.assert_array_equal(deltas[0].delta, 1.0)  # type: ignore[attr-defined]
    np.testing.assert_array_equal(deltas[1].delta, 2.0)  # type: ignore[attr-defined]
    # buffer size defaults to min(n, 10) = 2: one step of the mean delta
    np.testing.assert_array_equal(d.protocols[2].model(d.states[2]), 1.0 + 1.5)


# --- loss and timers -----------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.data(), st.sampled_from(KINDS), st.integers(1, 4), st.integers(1, 3))
def test_early_timers_and_lost_messages_never_deadlock(
    data: st.DataObject, kind: str, n: int, rounds: int
) -> None:
    """Timers fire at any moment (timeouts too short). The asynchronous kinds also lose
    messages; FedAvg's losses are tested below, with timeouts that are not too short (early
    deadlines use up its re-sends, after which a round below the quorum stalls)."""
    lossy = kind != "fedavg"
    fraction = data.draw(st.sampled_from([0.5, 1.0]))
    d = start(
        star(kind, n, rounds, timeout=1.0, min_fraction=fraction, buffer_size=1),
        x0(),
        train_fn=affine,
    )
    for _ in range(200):
        if not d.pending:
            break
        k = data.draw(st.integers(0, len(d.pending) - 1))
        if lossy and isinstance(d.pending[k][1], MessageArrived) and data.draw(st.booleans()):
            d.pending.pop(k)
        else:
            d.step(k)
        assert all(0 <= p.progress(s) <= rounds for p, s in zip(d.protocols, d.states, strict=True))
    d.run(skip_timers=False)
    assert d.done == set(range(n + 1)), "deadlock"
    assert not d.training


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(1, 4), st.integers(1, 3))
def test_fedavg_recovers_lost_messages_by_resending(
    data: st.DataObject, n: int, rounds: int
) -> None:
    """Timeouts longer than a round trip (a timer fires only when nothing else can happen)
    and up to MAX_RESENDS lost messages, models or updates: every round still completes
    with every client, because the coordinator re-sends and clients answer with their
    kept update."""
    d = start(star("fedavg", n, rounds, timeout=1.0), x0(), train_fn=affine)
    losses = 0
    for _ in range(1000):
        if not d.pending:
            break
        live = [k for k, (_, ev) in enumerate(d.pending) if not isinstance(ev, TimerFired)]
        k = data.draw(st.sampled_from(live)) if live else 0
        event = d.pending[k][1]
        if isinstance(event, MessageArrived) and losses < MAX_RESENDS and data.draw(st.booleans()):
            d.pending.pop(k)
            losses += 1
        else:
            d.step(k)
    assert not d.pending
    coord = d.states[n]
    assert coord.round == rounds and coord.clients_skipped == 0
    assert d.done == set(range(n + 1))


# --- arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "peer", "kwargs", "match"),
    [
        ("fedsgd", 0, {}, "unknown federated protocol"),
        ("fedavg", 0, {"rounds": 0}, "rounds"),
        ("fedavg", 0, {"num_clients": 0}, "at least one client"),
        ("fedavg", -1, {}, "neither a client"),
        ("fedavg", 4, {}, "neither a client"),
        ("fedavg", 0, {"epochs": 0}, "epochs"),
        ("fedavg", 0, {"steps": 0}, "steps"),
        ("fedavg", 3, {"timeout": 0.0}, "timeout"),
        ("fedavg", 0, {"min_fraction": 0.0}, "min_fraction"),
        ("fedavg", 0, {"min_fraction": 1.5}, "min_fraction"),
        ("fedavg", 3, {"server_lr": 0.0}, "server_lr"),
        ("fedasync", 0, {"alpha": 0.0}, "alpha"),
        ("fedasync", 3, {"alpha": 1.5}, "alpha"),
        ("fedasync", 0, {"staleness": "linear"}, "unknown staleness"),
        ("fedbuff", 0, {"staleness_exponent": -1.0}, "staleness_exponent"),
        ("fedbuff", 0, {"buffer_size": 4}, "buffer_size"),  # a client checks it too
        ("fedbuff", 3, {"buffer_size": 0}, "buffer_size"),
        ("fedbuff", 3, {"server_lr": float("nan")}, "server_lr"),
    ],
)
def test_bad_arguments_are_protocol_errors(
    kind: str, peer: int, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"num_clients": 3, "rounds": 2, "seed": 0, **kwargs}
    n = args.pop("num_clients")
    with pytest.raises(ProtocolError, match=match):
        build_fed_protocol(kind, peer, n, **args)  # type: ignore[arg-type]


def test_factory_builds_the_roles() -> None:
    protos = star("fedasync", 2, 1)
    assert [type(p).__name__ for p in protos] == [
        "FedAsyncClient",
        "FedAsyncClient",
        "FedAsyncCoordinator",
    ]
    assert [p.peer for p in protos] == [0, 1, 2]
    assert isinstance(build_fed_protocol("fedavg", 0, 1, rounds=1, seed=0), FedAvgClient)


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_reported_down_is_no_longer_waited_for(kind: str) -> None:
    n, rounds, dead = 4, 3, 2
    d = start(star(kind, n, rounds, buffer_size=1), x0(), train_fn=affine)
    d.pending = [(p, ev) for p, ev in d.pending if p != dead]
    d.deliver(n, PeerDown(dead))  # no timeout set: without PeerDown this would deadlock
    for _ in range(10_000):
        d.pending = [(p, ev) for p, ev in d.pending if p != dead]
        live = [k for k, (_, ev) in enumerate(d.pending) if not isinstance(ev, TimerFired)]
        if not live:
            break
        d.step(live[0])
    assert set(range(n + 1)) - {dead} <= d.done
    assert d.protocols[n].progress(d.states[n]) >= 1


def test_a_client_back_while_a_round_is_open_gets_the_round_model() -> None:
    """Issue 8: a client that left and came back mid-round missed the broadcast; the FedAvg
    coordinator sends it the open round's model at once and waits for it again."""
    n = 3
    coordinator = FedAvgCoordinator(n, rounds=2)
    state = coordinator.initial_state(x0())
    state, _ = coordinator.on_event(state, PeerDown(1))
    state, opened = coordinator.on_event(state, Started())
    assert sorted(e.to for e in opened if isinstance(e, Send)) == [0, 2]  # 1 was away
    state, effects = coordinator.on_event(state, PeerUp(1))
    assert [e.to for e in effects if isinstance(e, Send)] == [1]
    (send,) = effects
    assert isinstance(send, Send) and isinstance(send.message, GlobalModel)
    assert send.message.round == 0 and not send.message.final
    assert not coordinator._all_in(state)  # and it is waited for again
