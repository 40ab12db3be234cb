"""Stateful tests: Hypothesis drives every protocol through arbitrary interleavings of
training completions, message deliveries, message losses and timer firings, and checks the
invariants after every step, then that every peer still finishes (no deadlock)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from p2pfed.protocol import (
    DPSGD,
    AsyncGossip,
    GossipReply,
    MessageArrived,
    Protocol,
    PushSum,
    PushSumShare,
    TimerFired,
)
from p2pfed.topology import StaticSchedule, Topology, TopologySpec, build_topology
from tests.protocol_driver import Driver

P = 4
ROUNDS = 4


def _schedule(n: int, directed: bool) -> StaticSchedule:
    if directed:
        edges = [(i, (i + 1) % n) for i in range(n)] + [(0, n // 2)]
        return StaticSchedule(Topology(n, edges, directed=True))
    return StaticSchedule(build_topology(TopologySpec(kind="ring", n=n)))


class ProtocolMachine(RuleBasedStateMachine):
    """Subclasses say which protocol runs and which invariants hold for it."""

    directed = False
    conserves_mass = False  # sum of models preserved while no (relevant) message is lost
    stays_in_hull = False  # every model stays a convex combination of the initial models

    def make(self, peer: int, sched: StaticSchedule) -> Protocol[Any]:
        raise NotImplementedError

    def mass(self) -> np.ndarray:
        return self.driver.models().astype(np.float64).sum(0)

    def loss_breaks_mass(self, event: MessageArrived) -> bool:
        return True

    @initialize(n=st.integers(3, 6), seed=st.integers(0, 1000))
    def start(self, n: int, seed: int) -> None:
        sched = _schedule(n, self.directed)
        rng = np.random.default_rng(seed)
        self.x0 = np.stack([(1e3 * rng.normal(size=P)).astype(np.float32) for _ in range(n)])
        self.driver = Driver.start([self.make(i, sched) for i in range(n)], list(self.x0))
        self.mass0 = self.mass()
        self.mass_intact = True

    def _indices(self, timers: bool) -> list[int]:
        return [
            k
            for k, (_, ev) in enumerate(self.driver.pending)
            if isinstance(ev, TimerFired) == timers
        ]

    @precondition(lambda self: hasattr(self, "driver") and self._indices(False))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        live = self._indices(False)
        self.driver.step(live[data.draw(st.integers(0, len(live) - 1))])

    @precondition(lambda self: hasattr(self, "driver") and self._indices(True))
    @rule(data=st.data())
    def fire_timer(self, data: st.DataObject) -> None:
        timers = self._indices(True)
        self.driver.step(timers[data.draw(st.integers(0, len(timers) - 1))])

    @precondition(
        lambda self: (
            hasattr(self, "driver")
            and any(isinstance(ev, MessageArrived) for _, ev in self.driver.pending)
        )
    )
    @rule(data=st.data())
    def lose_message(self, data: st.DataObject) -> None:
        msgs = [
            k for k, (_, ev) in enumerate(self.driver.pending) if isinstance(ev, MessageArrived)
        ]
        _, event = self.driver.pending.pop(msgs[data.draw(st.integers(0, len(msgs) - 1))])
        assert isinstance(event, MessageArrived)
        if self.loss_breaks_mass(event):
            self.mass_intact = False

    @rule()
    def wait(self) -> None:
        """Nothing happens (keeps the machine runnable once every event is drained)."""

    @invariant()
    def rounds_are_bounded(self) -> None:
        if hasattr(self, "driver"):
            for proto, state in zip(self.driver.protocols, self.driver.states, strict=True):
                assert 0 <= proto.progress(state) <= ROUNDS

    @invariant()
    def mass_is_conserved(self) -> None:
        if hasattr(self, "driver") and self.conserves_mass and self.mass_intact:
            np.testing.assert_allclose(self.mass(), self.mass0, rtol=0, atol=1e-8)

    @invariant()
    def models_stay_in_the_convex_hull(self) -> None:
        if hasattr(self, "driver") and self.stays_in_hull:
            models = self.driver.models()
            assert np.all(models >= self.x0.min(0) - 1e-3)
            assert np.all(models <= self.x0.max(0) + 1e-3)

    def teardown(self) -> None:
        if hasattr(self, "driver"):
            self.driver.run(skip_timers=False)  # drain: timers fire once nothing else is left
            assert self.driver.done == set(range(len(self.driver.protocols))), "deadlock"


class DPSGDMachine(ProtocolMachine):
    stays_in_hull = True

    def make(self, peer: int, sched: StaticSchedule) -> Protocol[Any]:
        return DPSGD(peer, sched, rounds=ROUNDS, round_timeout=1.0)


class GossipMachine(ProtocolMachine):
    conserves_mass = True

    def make(self, peer: int, sched: StaticSchedule) -> Protocol[Any]:
        return AsyncGossip(peer, sched, rounds=ROUNDS, seed=peer, reply_timeout=1.0)

    def loss_breaks_mass(self, event: MessageArrived) -> bool:
        # a lost request changes nobody; a lost reply leaves only the replier corrected
        return isinstance(event.message, GossipReply)

    def mass(self) -> np.ndarray:
        # a reply in flight carries the requester's half of a correction already applied by
        # the replier: count it as the requester will apply it
        total = np.stack([s.params for s in self.driver.states]).sum(0)
        for peer, ev in self.driver.pending:
            if isinstance(ev, MessageArrived) and isinstance(ev.message, GossipReply):
                sent = self.driver.states[peer].sent.get(ev.message.nonce)
                if sent is not None:
                    total += (ev.message.params.astype(np.float64) - sent) / 2.0
        return total


class PushSumMachine(ProtocolMachine):
    directed = True
    conserves_mass = True
    stays_in_hull = True

    def make(self, peer: int, sched: StaticSchedule) -> Protocol[Any]:
        return PushSum(peer, sched, rounds=ROUNDS)

    def mass(self) -> np.ndarray:
        # shares in flight are mass that has left one peer and not yet reached another
        total = np.stack([s.x for s in self.driver.states]).sum(0)
        for _, ev in self.driver.pending:
            if isinstance(ev, MessageArrived) and isinstance(ev.message, PushSumShare):
                total += ev.message.x
        return total

    @invariant()
    def weights_are_conserved(self) -> None:
        if hasattr(self, "driver") and self.mass_intact:
            w = sum(s.w for s in self.driver.states) + sum(
                ev.message.w
                for _, ev in self.driver.pending
                if isinstance(ev, MessageArrived) and isinstance(ev.message, PushSumShare)
            )
            assert abs(w - len(self.driver.states)) < 1e-9


_settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestDPSGDStateful = DPSGDMachine.TestCase
TestDPSGDStateful.settings = _settings
TestGossipStateful = GossipMachine.TestCase
TestGossipStateful.settings = _settings
TestPushSumStateful = PushSumMachine.TestCase
TestPushSumStateful.settings = _settings
