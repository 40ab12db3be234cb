"""Protocol state machines, driven without any runtime (see protocol_driver.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.errors import ProtocolError
from p2pfed.protocol import (
    DPSGD,
    PROTOCOLS,
    AsyncGossip,
    Codec,
    GossipReply,
    GossipRequest,
    MessageArrived,
    ModelShare,
    PeerDown,
    PushSum,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
    build_protocol,
)
from p2pfed.topology import (
    OnePeerExponential,
    StaticSchedule,
    Topology,
    TopologySpec,
    build_schedule,
    build_topology,
)
from tests.protocol_driver import Driver

P = 6  # parameter vector length in these tests


def ring(n: int) -> StaticSchedule:
    return StaticSchedule(build_topology(TopologySpec(kind="ring", n=n)))


def random_params(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=P).astype(np.float32) for _ in range(n)]


def chooser(data: st.DataObject):  # type: ignore[no-untyped-def]
    return lambda k: data.draw(st.integers(0, k - 1))


# --- D-PSGD -----------------------------------------------------------------------------


def test_dpsgd_one_round_equals_mixing_matrix_product() -> None:
    sched = ring(5)
    W = sched.at(0).mixing.toarray()
    x0 = random_params(5)
    d = Driver.start([DPSGD(i, sched, rounds=1) for i in range(5)], x0)
    d.run()
    expected = W @ np.stack(x0).astype(np.float64)
    np.testing.assert_allclose(d.models(), expected, rtol=1e-6, atol=1e-6)
    assert d.done == set(range(5))


@settings(max_examples=30, deadline=None)
@given(st.data(), st.integers(3, 8), st.integers(1, 4))
def test_dpsgd_any_interleaving_gives_w_power_r(data: st.DataObject, n: int, rounds: int) -> None:
    sched = ring(n)
    W = sched.at(0).mixing.toarray()
    x0 = random_params(n, seed=n)
    d = Driver.start([DPSGD(i, sched, rounds=rounds) for i in range(n)], x0)
    d.run(chooser(data))
    expected = np.linalg.matrix_power(W, rounds) @ np.stack(x0).astype(np.float64)
    np.testing.assert_allclose(d.models(), expected, rtol=1e-5, atol=1e-5)
    # doubly stochastic mixing preserves the network mean
    np.testing.assert_allclose(d.models().mean(0), np.stack(x0).mean(0), atol=1e-5)


def test_dpsgd_through_the_codec_matches_in_memory() -> None:
    sched = ring(4)
    x0 = random_params(4)
    a = Driver.start([DPSGD(i, sched, rounds=3) for i in range(4)], x0)
    b = Driver.start([DPSGD(i, sched, rounds=3) for i in range(4)], x0, codec=Codec(DPSGD.messages))
    a.run()
    b.run()
    np.testing.assert_array_equal(a.models(), b.models())


def test_dpsgd_one_peer_exponential_reaches_exact_average() -> None:
    n = 8  # tau = 3 rounds of the one-peer exponential graph average exactly
    sched = OnePeerExponential(n)
    x0 = random_params(n)
    d = Driver.start([DPSGD(i, sched, rounds=3) for i in range(n)], x0)
    d.run()
    mean = np.stack(x0).astype(np.float64).mean(0)
    np.testing.assert_allclose(d.models(), np.tile(mean, (n, 1)), atol=1e-6)


def test_dpsgd_timeout_skips_a_silent_neighbour() -> None:
    sched = ring(4)
    topo = sched.at(0)
    proto = DPSGD(0, sched, rounds=2, round_timeout=1.0)
    x = np.ones(P, np.float32)
    state = proto.initial_state(x)
    state, effects = proto.on_event(state, Started())
    assert isinstance(effects[0], Train)
    state, effects = proto.on_event(state, TrainingDone(2 * x, x, 0.5, 10))
    sends = [e for e in effects if isinstance(e, Send)]
    assert sorted(s.to for s in sends) == list(topo.out_neighbours(0))
    assert any(isinstance(e, SetTimer) and e.round == 0 for e in effects)
    # only neighbour 1 answers; 3 stays silent
    state, effects = proto.on_event(state, MessageArrived(1, ModelShare(0, 4 * x)))
    assert effects == [] and state.round == 0
    state, effects = proto.on_event(state, TimerFired("round_timeout", 0))
    assert state.round == 1
    w_self = topo.weight(0, 0) + topo.weight(0, 3)
    np.testing.assert_allclose(state.params, w_self * 2 + topo.weight(0, 1) * 4)
    assert isinstance(effects[-1], Train)
    assert state.neighbours_skipped == 1
    # the late model of round 0 is dropped, not mixed into round 1
    state, effects = proto.on_event(state, MessageArrived(3, ModelShare(0, 100 * x)))
    assert state.stale_dropped == 1 and effects[0].name == "stale_model_dropped"  # type: ignore[union-attr]
    # a timer of an old round does nothing
    state, effects = proto.on_event(state, TimerFired("round_timeout", 0))
    assert effects == [] and state.round == 1


def test_dpsgd_ignores_models_from_strangers() -> None:
    sched = ring(6)
    proto = DPSGD(0, sched, rounds=1)
    state = proto.initial_state(np.zeros(P, np.float32))
    state, _ = proto.on_event(state, Started())
    state, effects = proto.on_event(state, MessageArrived(3, ModelShare(0, np.ones(P, np.float32))))
    assert 0 not in state.inbox or 3 not in state.inbox[0]
    assert effects[0].name == "unexpected_model_dropped"  # type: ignore[union-attr]


def test_dpsgd_stops_after_its_rounds_and_trains_no_more() -> None:
    sched = ring(3)
    d = Driver.start([DPSGD(i, sched, rounds=2) for i in range(3)], random_params(3))
    d.run()
    assert d.done == {0, 1, 2}
    assert [s.round for s in d.states] == [2, 2, 2]
    assert not d.training


def test_dpsgd_rejects_push_weights_that_are_not_doubly_stochastic() -> None:
    # 0 -> 1, 0 -> 2, 1 -> 0, 2 -> 0: out-degrees differ, push weights are only column-stochastic
    topo = Topology(3, [(0, 1), (0, 2), (1, 0), (2, 0)], directed=True)
    with pytest.raises(ProtocolError, match="pushsum"):
        DPSGD(0, StaticSchedule(topo), rounds=1)


def test_dpsgd_keeps_training_progress() -> None:
    n = 4
    sched = ring(n)
    d = Driver.start(
        [DPSGD(i, sched, rounds=1) for i in range(n)],
        [np.zeros(P, np.float32)] * n,
        train_fn=lambda peer, p: p + 1.0,
    )
    d.run()
    np.testing.assert_allclose(d.models(), np.ones((n, P)), atol=1e-6)


# --- asynchronous pairwise gossip -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(2, 7), st.integers(1, 5), st.integers(0, 10_000))
def test_gossip_preserves_the_network_sum_under_any_interleaving(
    data: st.DataObject, n: int, rounds: int, seed: int
) -> None:
    sched = ring(n) if n > 2 else StaticSchedule(Topology(2, [(0, 1)]))
    # large values: a float32 rounding anywhere in the exchange would show up as ~1e-4
    x0 = [1e3 * x for x in random_params(n, seed)]
    d = Driver.start([AsyncGossip(i, sched, rounds=rounds, seed=seed + i) for i in range(n)], x0)
    d.run(chooser(data))
    total = np.stack([s.params for s in d.states]).sum(0)  # float64 state, not the f32 model
    np.testing.assert_allclose(total, np.stack(x0).astype(np.float64).sum(0), rtol=0, atol=1e-9)
    assert d.done == set(range(n))


def test_gossip_converges_to_consensus() -> None:
    n = 8
    sched = ring(n)
    x0 = random_params(n, 3)
    spread0 = np.ptp(np.stack(x0), axis=0).max()
    d = Driver.start([AsyncGossip(i, sched, rounds=60, seed=i) for i in range(n)], x0)
    d.run()
    assert np.ptp(d.models(), axis=0).max() < 1e-2 * spread0
    np.testing.assert_allclose(d.models().mean(0), np.stack(x0).mean(0), atol=1e-5)


def test_gossip_exchange_is_two_messages_that_cancel() -> None:
    sched = ring(3)
    a, b = AsyncGossip(0, sched, rounds=1, seed=1), AsyncGossip(1, sched, rounds=1, seed=2)
    xa, xb = np.full(P, 2.0, np.float32), np.full(P, 6.0, np.float32)
    sa, sb = a.initial_state(xa), b.initial_state(xb)
    sa, _ = a.on_event(sa, Started())
    sa, effects = a.on_event(sa, TrainingDone(xa, xa, 0.1, 5))
    req = next(e for e in effects if isinstance(e, Send))
    assert isinstance(req.message, GossipRequest)
    sb, effects = b.on_event(sb, MessageArrived(0, req.message))
    reply = effects[0]
    assert isinstance(reply, Send) and isinstance(reply.message, GossipReply)
    np.testing.assert_allclose(b.model(sb), 4.0)
    sa, effects = a.on_event(sa, MessageArrived(1, reply.message))
    np.testing.assert_allclose(a.model(sa), 4.0)
    assert any(isinstance(e, Stop) for e in effects)


def test_gossip_applies_local_progress_on_top_of_an_averaging_during_training() -> None:
    sched = ring(3)
    g = AsyncGossip(0, sched, rounds=2, seed=0)
    x = np.zeros(P, np.float32)
    s = g.initial_state(x)
    s, _ = g.on_event(s, Started())  # training from 0
    # a neighbour's request arrives mid-training: 0 averages with 10 -> 5
    s, _ = g.on_event(s, MessageArrived(1, GossipRequest(0, np.full(P, 10.0, np.float32))))
    np.testing.assert_allclose(g.model(s), 5.0)
    # training finishes with progress +1 relative to its base 0: the model becomes 6, not 1
    s, _ = g.on_event(s, TrainingDone(x + 1, x, 0.1, 5))
    np.testing.assert_allclose(g.model(s), 6.0)


def test_gossip_reply_timeout_moves_on_and_late_reply_still_counts() -> None:
    sched = ring(3)
    g = AsyncGossip(0, sched, rounds=3, seed=0, reply_timeout=0.5)
    x = np.zeros(P, np.float32)
    s = g.initial_state(x)
    s, _ = g.on_event(s, Started())
    s, effects = g.on_event(s, TrainingDone(x, x, 0.1, 5))
    assert any(isinstance(e, SetTimer) for e in effects)
    s, effects = g.on_event(s, TimerFired("reply_timeout", 0))
    assert s.round == 1 and s.timeouts == 1 and isinstance(effects[-1], Train)
    # the reply for nonce 0 arrives late: applied, round unchanged
    s, effects = g.on_event(s, MessageArrived(1, GossipReply(0, np.full(P, 2.0, np.float32))))
    np.testing.assert_allclose(g.model(s), 1.0)
    assert s.round == 1 and effects == []
    # an unknown nonce is dropped
    s, effects = g.on_event(s, MessageArrived(1, GossipReply(42, np.ones(P, np.float32))))
    assert effects[0].name == "unexpected_reply_dropped"  # type: ignore[union-attr]


def test_gossip_partner_choice_depends_only_on_its_seed() -> None:
    sched = ring(8)

    def partners(seed: int) -> list[int]:
        g = AsyncGossip(0, sched, rounds=20, seed=seed)
        s = g.initial_state(np.zeros(P, np.float32))
        s, _ = g.on_event(s, Started())
        out = []
        for r in range(20):
            s, eff = g.on_event(s, TrainingDone(g.model(s), g.model(s), 0.0, 1))
            out.append(next(e.to for e in eff if isinstance(e, Send)))
            s, _ = g.on_event(s, TimerFired("reply_timeout", r))
        return out

    assert partners(1) == partners(1)
    assert partners(1) != partners(2)
    assert set(partners(1)) == {1, 7}


# --- push-sum ------------------------------------------------------------------------------


def directed_ring(n: int) -> StaticSchedule:
    return StaticSchedule(Topology(n, [(i, (i + 1) % n) for i in range(n)], directed=True))


def test_push_sum_converges_to_the_mean_on_a_directed_ring() -> None:
    n = 7
    sched = directed_ring(n)
    x0 = random_params(n, 5)
    d = Driver.start([PushSum(i, sched, rounds=200) for i in range(n)], x0)
    d.run()
    mean = np.stack(x0).astype(np.float64).mean(0)
    np.testing.assert_allclose(d.models(), np.tile(mean, (n, 1)), atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(st.data(), st.integers(2, 7), st.integers(1, 6))
def test_push_sum_conserves_mass_under_any_interleaving(
    data: st.DataObject, n: int, rounds: int
) -> None:
    sched = directed_ring(n)
    x0 = [1e3 * x for x in random_params(n, n)]
    ps = [PushSum(i, sched, rounds=rounds) for i in range(n)]
    d = Driver.start(ps, x0)
    d.run(chooser(data))
    xs = np.stack([s.x for s in d.states])
    ws = np.array([s.w for s in d.states])
    np.testing.assert_allclose(ws.sum(), n, rtol=1e-12)
    np.testing.assert_allclose(xs.sum(0), np.stack(x0).astype(np.float64).sum(0), rtol=0, atol=1e-9)


def test_push_sum_on_a_time_varying_graph() -> None:
    n = 8
    sched = OnePeerExponential(n)
    x0 = random_params(n, 9)
    # asynchronous: shares of round r may land after the receiver's round r+1 push, so the
    # exact tau-round average of the synchronous schedule is not expected, only convergence
    d = Driver.start([PushSum(i, sched, rounds=60) for i in range(n)], x0)
    d.run()
    mean = np.stack(x0).astype(np.float64).mean(0)
    np.testing.assert_allclose(d.models(), np.tile(mean, (n, 1)), atol=1e-4)


def test_push_sum_random_regular_dynamic() -> None:
    n = 10
    sched = build_schedule(TopologySpec(kind="random_regular_dynamic", n=n, degree=3), seed=4)
    x0 = random_params(n, 1)
    d = Driver.start([PushSum(i, sched, rounds=40) for i in range(n)], x0)
    d.run()
    mean = np.stack(x0).astype(np.float64).mean(0)
    np.testing.assert_allclose(d.models(), np.tile(mean, (n, 1)), atol=1e-4)


@pytest.mark.parametrize("kind", ["dpsgd", "gossip", "pushsum"])  # fed kinds: their tests
def test_protocols_reject_zero_rounds(kind: str) -> None:
    cls = PROTOCOLS[kind]
    kwargs = {"seed": 0} if cls is AsyncGossip else {}
    with pytest.raises(ProtocolError):
        cls(0, ring(3), rounds=0, **kwargs)  # type: ignore[call-arg]


def test_gossip_refuses_a_directed_topology() -> None:
    with pytest.raises(ProtocolError, match="undirected"):
        AsyncGossip(0, directed_ring(4), rounds=1, seed=0)


def test_protocol_topology_mismatch_is_a_config_error(tmp_path: Path) -> None:
    import p2pfed
    from tests.conftest import small_config

    cfg = small_config(
        protocol={"kind": "gossip"}, topology={"kind": "ring", "n": 6, "directed": True}
    )
    with pytest.raises(p2pfed.ConfigError, match="undirected"):
        p2pfed.run(cfg, out=tmp_path)


# --- peers reported gone (a crashed host) -------------------------------------------------


def _run_without(d: Driver, dead: int) -> None:
    """Deliver everything except what goes to ``dead``; timers only when nothing else is left
    (and then only of live peers, to show nobody needs a timeout to get past the dead)."""
    for _ in range(100_000):
        d.pending = [(p, ev) for p, ev in d.pending if p != dead]
        live = [k for k, (_, ev) in enumerate(d.pending) if not isinstance(ev, TimerFired)]
        if not live:
            break
        d.step(live[0])


@pytest.mark.parametrize("kind", ["dpsgd", "gossip", "pushsum"])
def test_survivors_finish_without_timeouts_once_a_peer_is_reported_down(kind: str) -> None:
    n, dead, rounds = 5, 2, 4
    sched = (
        ring(n)
        if kind != "pushsum"
        else build_schedule(TopologySpec(kind="ring", n=n, directed=True), seed=0)
    )
    protos = [build_protocol(kind, i, sched, rounds=rounds, seed=i) for i in range(n)]
    d = Driver.start(protos, random_params(n))
    d.pending = [(p, ev) for p, ev in d.pending if p != dead]
    for i in range(n):
        if i != dead:
            d.deliver(i, PeerDown(dead))
    _run_without(d, dead)
    survivors = set(range(n)) - {dead}
    assert survivors <= d.done, f"{kind}: peers {survivors - d.done} still wait"
    assert all(d.protocols[i].progress(d.states[i]) == rounds for i in survivors)
    assert "neighbours_skipped" not in {name for _, name in d.emitted}
    if kind == "pushsum":  # nothing was pushed into the dead peer: the survivors keep the mass
        total_w = sum(d.states[i].w for i in survivors)
        assert total_w == pytest.approx(n - 1, abs=1e-9)


def test_gossip_stops_waiting_for_a_partner_that_went_down() -> None:
    protos = [build_protocol("gossip", i, ring(3), rounds=3, seed=i) for i in range(3)]
    d = Driver.start(protos, random_params(3))
    d.step(0)  # peer 0 finishes training and asks a neighbour
    partner = d.states[0].partner
    d.pending = [(p, ev) for p, ev in d.pending if p != partner]
    d.deliver(0, PeerDown(partner))
    assert (0, "partner_down") in d.emitted and d.states[0].round == 1
    _run_without(d, partner)
    assert 0 in d.done
