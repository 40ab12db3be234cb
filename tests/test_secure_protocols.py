"""Secure aggregation protocols (:mod:`p2pfed.protocol.secure`): settings refused before any
peer starts, training that matches plain aggregation, sessions with dropouts and aborts
driven without a runtime, what a wire tap sees, and Ray reproducing the in-process run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.stats import chisquare

from p2pfed.config import config_from_mapping
from p2pfed.crypto.fixedpoint import FixedPoint
from p2pfed.crypto.secagg import pair_key_directory, pair_keys
from p2pfed.errors import ConfigError
from p2pfed.experiment import Result, build_world, run
from p2pfed.protocol import (
    Codec,
    Effect,
    Emit,
    Message,
    MessageArrived,
    Protocol,
    Send,
    SetTimer,
    TimerFired,
    TrainingDone,
)
from p2pfed.protocol.fed import GlobalModel
from p2pfed.protocol.secure import (
    SECURE_COSTS,
    SESSION_MESSAGES,
    SaAdvert,
    SaMasked,
    SaReveal,
    SaRoster,
    SaShares,
    SaUnmask,
    SecureDPSGD,
    SecureFedAvg,
    SecureMode,
    SecureSettings,
    SecureState,
    SecureSum,
    SsReady,
    SsShare,
)
from p2pfed.topology import StaticSchedule, Topology, TopologySpec, build_topology
from tests.conftest import small_config
from tests.protocol_driver import DropRule, RecordingDriver

C, Q = 8.0, 2**22  # clipping_range and quantization_range (the defaults): step 2C/Q
STEP = 2 * C / Q
KEY_SEED = bytes(range(16))
P = 6  # parameter vector length in the driven tests
TORUS = {"kind": "torus", "n": 16}
MLP = {"kind": "mlp", "hidden": [64]}  # digits: 64*64 + 64 + 64*10 + 10 = 4810 parameters
TRAINING = {"lr": 0.05, "momentum": 0.9, "batch_size": 16, "local_epochs": 1, "local_steps": None}


# --- 1. settings refused before any peer starts -----------------------------------------------


def _cfg(
    security: dict[str, Any], topology: dict[str, Any] = TORUS, kind: str = "dpsgd"
) -> dict[str, Any]:
    return {
        **small_config(topology=topology, protocol={"kind": kind, "rounds": 2}),
        "security": security,
    }


def _refused(cfg: dict[str, Any]) -> ConfigError:
    """The error building the experiment raises (validation first, then the world)."""
    with pytest.raises(ConfigError) as info:
        build_world(config_from_mapping(cfg))
    return info.value


@pytest.mark.parametrize("mode", ["secagg", "secret-share"])
def test_a_ring_is_refused_because_a_sum_of_two_reveals_the_other(
    mode: str, tmp_path: Path
) -> None:
    cfg = _cfg({"aggregation": mode}, {"kind": "ring", "n": 6})
    err = _refused(cfg)
    assert err.key == "security.aggregation"
    assert "at least 3" in err.message and "has 2" in err.message
    assert "a sum of two reveals either input to the other party" in err.message
    assert "every peer has at least 3 in-neighbours" in err.message
    # fedavg sums every client at the coordinator: the advice is about the clients
    fed = _refused(_cfg({"aggregation": mode}, {"kind": "ring", "n": 2}, "fedavg"))
    assert "the star of coordinator 2 has 2" in fed.message
    assert fed.message.endswith("use at least 3 clients")
    # and p2pfed.run refuses it before any peer starts: no run directory is made
    with pytest.raises(ConfigError, match="a sum of two reveals"):
        run(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["secagg", "secret-share"])
def test_a_4x4_torus_is_accepted(mode: str) -> None:
    world = build_world(config_from_mapping(_cfg({"aggregation": mode})))
    assert world.config.security.aggregation == mode
    assert world.pair_publics is not None and len(world.pair_publics) == 16
    assert set(world.codec.message_types) == set(SecureDPSGD.messages)
    assert min(len(world.schedule.at(0).in_neighbours(i)) for i in range(16)) == 4


@pytest.mark.parametrize(
    ("security", "kind", "terms"),
    [
        # 4 in-neighbours of +-8 at 2**30 levels: 4 * 2**29 codes reach 33 bits
        ({"aggregation": "secret-share", "quantization_range": 2**30}, "dpsgd", 4),
        ({"aggregation": "secagg", "quantization_range": 2**31}, "dpsgd", 4),
        # 8 clients at 2**29 levels: 8 * 2**28 codes reach 33 bits
        ({"aggregation": "secagg", "quantization_range": 2**29}, "fedavg", 8),
    ],
)
def test_a_ring_that_could_overflow_for_the_group_size_is_refused(
    security: dict[str, Any], kind: str, terms: int
) -> None:
    topology = TORUS if kind == "dpsgd" else {"kind": "ring", "n": 8}
    err = _refused(_cfg(security, topology, kind))
    assert err.key == "security.aggregation"
    assert f"a sum of {terms} values" in err.message
    assert "can overflow Z_2^32" in err.message
    # the same quantisation fits a 2**64 ring, and a quarter of it the 2**32 one
    fits = {**security, "modulus_range": 2**64}
    build_world(config_from_mapping(_cfg(fits, topology, kind)))
    smaller = {**security, "quantization_range": security["quantization_range"] // 4}
    build_world(config_from_mapping(_cfg(smaller, topology, kind)))


def test_fedavg_refuses_a_clipping_range_that_would_clip_the_sample_weight() -> None:
    # each client sends (w x_k, w) with w <= 1: clipping w skews sum(w x_k) / sum(w)
    star = {"kind": "ring", "n": 8}
    err = _refused(_cfg({"aggregation": "secagg", "clipping_range": 0.5}, star, "fedavg"))
    assert err.key == "security.aggregation"
    assert "clipping_range 0.5 is below 1" in err.message
    build_world(
        config_from_mapping(_cfg({"aggregation": "secagg", "clipping_range": 1}, star, "fedavg"))
    )
    # D-PSGD sends no weight
    build_world(config_from_mapping(_cfg({"aggregation": "secagg", "clipping_range": 0.5})))


@pytest.mark.parametrize(
    ("security", "topology", "kind", "key", "reason"),
    [
        (
            {"aggregation": "secagg", "num_shares": 3, "reconstruction_threshold": 4},
            TORUS,
            "dpsgd",
            "security",
            "reconstruction_threshold 4 must lie in 2..3",
        ),
        (
            {"aggregation": "secagg", "reconstruction_threshold": 5},
            TORUS,
            "dpsgd",
            "security.aggregation",
            "reconstruction_threshold 5 exceeds the 4 shares of a group of 4",
        ),
        (
            {"aggregation": "secagg", "reconstruction_threshold": 9},
            {"kind": "ring", "n": 8},
            "fedavg",
            "security.aggregation",
            "reconstruction_threshold 9 exceeds the 8 shares of a group of 8",
        ),
        (
            {"aggregation": "secagg", "num_shares": 5},
            TORUS,
            "dpsgd",
            "security.aggregation",
            "num_shares 5 exceeds the largest group (4 clients)",
        ),
        (
            # with num_shares null every group shares among all of it: 3 of 8 is not a
            # majority (it used to be raised to 5 without a word)
            {"aggregation": "secagg", "reconstruction_threshold": 3},
            {"kind": "ring", "n": 8},
            "fedavg",
            "security.aggregation",
            "reconstruction_threshold 3 is not more than half of the 8 shares of a group of 8",
        ),
        (
            # a sparse graph with threshold 2: two survivors masked only with each other
            {"aggregation": "secagg", "num_shares": 3, "reconstruction_threshold": 2},
            {"kind": "ring", "n": 8},
            "fedavg",
            "security.aggregation",
            "reconstruction_threshold 2 is below 3 with 3 of a group of 8 holding shares",
        ),
        (
            {"aggregation": "secagg", "num_shares": 9},
            {"kind": "ring", "n": 8},
            "fedavg",
            "security.aggregation",
            "num_shares 9 exceeds the largest group (8 clients)",
        ),
    ],
)
def test_share_settings_no_group_can_meet_are_refused(
    security: dict[str, Any], topology: dict[str, Any], kind: str, key: str, reason: str
) -> None:
    err = _refused(_cfg(security, topology, kind))
    assert err.key == key
    assert reason in err.message


def test_share_settings_every_group_can_meet_are_accepted() -> None:
    for security in (
        {"aggregation": "secagg", "reconstruction_threshold": 4},
        {"aggregation": "secagg", "num_shares": 4, "reconstruction_threshold": 3},
        {"aggregation": "secagg", "num_shares": 3},
    ):
        build_world(config_from_mapping(_cfg(security)))


@pytest.mark.parametrize("kind", ["gossip", "pushsum", "fedasync", "fedbuff"])
@pytest.mark.parametrize("mode", ["secagg", "secret-share"])
def test_aggregation_is_refused_with_protocols_that_sum_two_models(mode: str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_cfg({"aggregation": mode}, kind=kind))
    assert f"security.aggregation {mode} runs with protocol.kind dpsgd" in str(info.value)
    assert f"not {kind}" in str(info.value)
    assert "a sum of two reveals the other" in str(info.value)


@pytest.mark.parametrize(
    ("security", "reason"),
    [
        ({"rotate_every": 1.0}, "rotate_every rotates link keys: it needs channel: aead"),
        (
            {"aggregation": "secagg", "modulus_range": 2**16},
            "modulus_range must be 2**32 or 2**64, got 65536",
        ),
        (
            {"aggregation": "secret-share", "modulus_range": 2**48},
            "modulus_range must be 2**32 or 2**64",
        ),
        (
            {"aggregation": "secret-share", "num_shares": 3},
            "num_shares is used by aggregation: secagg only",
        ),
    ],
)
def test_inconsistent_security_sections_are_refused_on_load(
    security: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(_cfg(security))
    assert info.value.key == "security"
    assert reason in info.value.message
    # rotation is fine once links are sealed
    config_from_mapping(_cfg({"rotate_every": 1.0, "channel": "aead"}))


# --- 2. training with secure sums matches plain aggregation -----------------------------------


@dataclass
class Recorded:
    """One engine run and what was seen of it: the secure-sum inputs each client put in
    (``(client, aggregator, round) -> real vector``) and the share vectors a wire tap
    decoded (``(client, aggregator, round) -> ring vector``)."""

    result: Result
    inputs: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)
    tapped: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)
    types: set[str] = field(default_factory=set)


def _recorded_run(cfg: dict[str, Any], out: Path) -> Recorded:
    """Run ``cfg`` in process with a wire tap that decodes every frame with the run's codec,
    and with each client's secure-sum input recorded as it enters the session."""
    world = build_world(config_from_mapping(cfg))
    codec = world.codec
    inputs: dict[tuple[int, int, int], np.ndarray] = {}
    tapped: dict[tuple[int, int, int], np.ndarray] = {}
    types: set[str] = set()

    def tap(t: float, src: int, dst: int, frame: bytes) -> None:
        msg = codec.decode(frame).message
        types.add(type(msg).__name__)
        if isinstance(msg, (SaMasked, SsShare)):
            assert msg.agg == dst
            tapped[(src, msg.agg, msg.round)] = (
                msg.y if isinstance(msg, SaMasked) else msg.z
            ).copy()

    contribute = SecureSum.contribute

    def recording(self: SecureSum, st: Any, agg: int, rnd: int, *args: Any, **kw: Any) -> Any:
        x = args[1] if len(args) > 1 else kw["x"]  # contribute(st, agg, rnd, clients, x, ...)
        inputs[(self.peer, agg, rnd)] = np.array(x, dtype=np.float64)
        return contribute(self, st, agg, rnd, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        if world.config.security.secure_aggregation:
            mp.setattr(SecureSum, "contribute", recording)
        result = run(cfg, out=out, taps=[tap])
    return Recorded(result, inputs, tapped, types)


MODES = ("plain", "secagg", "secret-share")
ROUNDS = 8


def _training(kind: str, mode: str, rounds: int) -> dict[str, Any]:
    topology = TORUS if kind == "dpsgd" else {"kind": "ring", "n": 8}  # fedavg: 8 clients
    cfg = small_config(
        topology=topology,
        protocol={"kind": kind, "rounds": rounds},
        model=MLP,
        training=TRAINING,
    )
    cfg["security"] = {"aggregation": mode}
    return cfg


@pytest.fixture(scope="module")
def dpsgd_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Recorded]:
    """D-PSGD on a 4x4 torus, one seed, plain vs secagg vs secret-share (MLP, d = 4810)."""
    out = tmp_path_factory.mktemp("dpsgd")
    return {m: _recorded_run(_training("dpsgd", m, ROUNDS), out / m) for m in MODES}


@pytest.fixture(scope="module")
def fedavg_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Result]:
    out = tmp_path_factory.mktemp("fedavg")
    return {m: run(_training("fedavg", m, ROUNDS), out=out / m) for m in MODES}


# frames per round: D-PSGD sends one model per (client, aggregator) pair; secagg turns it into
# 7 messages per pair (advert, roster, shares, routed, masked, unmask, reveal), secret-share
# into 3 (offer, seeds, share). FedAvg adds the coordinator's broadcast and final model.
DPSGD_PAIRS = 16 * 4
FRAMES_PER_PAIR = {"plain": 1, "secagg": 7, "secret-share": 3}


def _clean(summary: dict[str, Any], rounds: int, peers: int) -> None:
    """Every peer finished every round, and no session aborted, refused or dropped."""
    assert summary["status"] == "completed"
    assert summary["rounds_completed"] == [rounds] * peers
    events = summary["protocol_events"]
    assert "secure_round_aborted" not in events
    assert not [e for e in events if e.startswith("secure_") or e == "neighbours_skipped"]
    msgs = summary["messages"]
    assert msgs["lost"] == msgs["rejected"] == msgs["in_flight"] == 0


def test_secure_dpsgd_trains_like_plain_dpsgd(dpsgd_runs: dict[str, Recorded]) -> None:
    plain = dpsgd_runs["plain"].result
    for mode in MODES:
        s = dpsgd_runs[mode].result.summary
        _clean(s, ROUNDS, 16)
        assert s["params"] == 4810
        # every session ran every phase with every neighbour
        assert s["messages"]["sent"] == ROUNDS * DPSGD_PAIRS * FRAMES_PER_PAIR[mode]
        acc = dpsgd_runs[mode].result.mean_accuracy
        assert abs(acc - plain.mean_accuracy) <= 0.005, (mode, acc, plain.mean_accuracy)
    assert plain.mean_accuracy > 0.6  # it learned something worth comparing
    # secret-share costs one vector per model sent, as plain D-PSGD does, plus 16-byte seeds
    shared = dpsgd_runs["secret-share"].result.summary["bytes"]["total"]
    assert shared <= 1.1 * plain.summary["bytes"]["total"]


def test_secure_fedavg_trains_like_plain_fedavg(fedavg_runs: dict[str, Result]) -> None:
    plain = fedavg_runs["plain"]
    for mode in MODES:
        s = fedavg_runs[mode].summary
        _clean(s, ROUNDS, 8)
        per_round = 8 + 8 * FRAMES_PER_PAIR[mode]  # global model out, one exchange per client
        assert s["messages"]["sent"] == ROUNDS * per_round + 8  # + the final model
        if mode != "plain":
            assert s["protocol_events"] == {"round_aggregated": ROUNDS}
        acc = fedavg_runs[mode].mean_accuracy
        assert abs(acc - plain.mean_accuracy) <= 0.005, (mode, acc, plain.mean_accuracy)
    assert plain.mean_accuracy > 0.8
    shared = fedavg_runs["secret-share"].summary["bytes"]["total"]
    assert shared <= 1.1 * plain.summary["bytes"]["total"]


# --- 3. sessions with dropouts and aborts, driven without a runtime --------------------------


def secure_sums(
    mode: SecureMode,
    participants: int,
    dim: int,
    *,
    scope: str,
    timeout: float = 1.0,
    phase_timeout: float = 0.1,
    num_shares: int | None = None,
    threshold: int | None = None,
) -> list[SecureSum]:
    """Every participant's secure-sum logic, with long-term pair keys from one seed."""
    seeds, publics = pair_key_directory(KEY_SEED, range(participants))
    settings = SecureSettings(
        mode=mode,
        fixed=FixedPoint.from_range(C, Q),
        stochastic=True,
        timeout=timeout,
        phase_timeout=phase_timeout,
        num_shares=num_shares,
        threshold=threshold,
        scope=scope,
    )
    return [
        SecureSum(p, settings, pair_keys(p, seeds[p], publics), dim) for p in range(participants)
    ]


@dataclass
class SecureDriver(RecordingDriver):
    """The recording driver (per-client sample counts, every effect, lost messages), plus
    the sessions' phase deadlines (:meth:`fire`)."""

    def fire(self, peer: int, phase: str, rnd: int) -> None:
        """The deadline of ``peer``'s session phase in round ``rnd`` passes (once)."""
        tag = f"secure:{phase}"
        self.step(
            next(
                k
                for k, (p, ev) in enumerate(self.pending)
                if p == peer and isinstance(ev, TimerFired) and (ev.tag, ev.round) == (tag, rnd)
            )
        )

    def expire(self, peer: int, phase: str, rnd: int) -> list[int]:
        """The phase's deadline passes twice, with everything deliverable delivered between:
        the first time the aggregator asks the silent clients again (a lost frame is not a
        dropout), the second time it gives up on them. Returns who was asked again."""
        sent = len(self.effects)
        self.fire(peer, phase, rnd)
        again = sorted(e.to for p, e in self.effects[sent:] if p == peer and isinstance(e, Send))
        self.settle()
        self.fire(peer, phase, rnd)
        return again


def drop_from(
    cls: type[Message], senders: set[int], rnd: int = 0, to: int | None = None
) -> DropRule:
    def rule(src: int, dst: int, msg: Message) -> bool:
        return (
            isinstance(msg, cls)
            and src in senders
            and msg.round == rnd  # type: ignore[attr-defined]
            and to in (None, dst)
        )

    return rule


RAMP = np.linspace(-1.0, 1.0, P)


def affine(peer: int, p: np.ndarray) -> np.ndarray:
    """A pure stand-in for training that pulls each peer toward its own point."""
    return (0.75 * p + 0.1 * (peer + 1) * RAMP).astype(np.float32)


# -- FedAvg through a coordinator that sees only the sum

N_CLIENTS = 8
COORD = N_CLIENTS
MAX_WEIGHT = 100.0
SAMPLES = {k: 10 * (k + 1) for k in range(N_CLIENTS)}  # weights 0.1 .. 0.8


def fedavg_star(mode: SecureMode, rounds: int, drop: DropRule, **kw: Any) -> SecureDriver:
    sums = secure_sums(mode, N_CLIENTS + 1, P + 1, scope="star", **kw)
    protos: list[Protocol[Any]] = [
        SecureFedAvg(
            i, N_CLIENTS, rounds=rounds, seed=100 + i, secure=sums[i], max_weight=MAX_WEIGHT
        )
        for i in range(N_CLIENTS + 1)
    ]
    x0 = np.random.default_rng(0).normal(scale=0.5, size=P).astype(np.float32)
    d = SecureDriver.start(
        protos,
        [x0] * len(protos),
        train_fn=affine,
        codec=Codec(SecureFedAvg.messages, vector_size=P),
        samples=SAMPLES,
        drop=drop,
    )
    assert isinstance(d, SecureDriver)
    return d


def weighted_average(x0: np.ndarray, clients: list[int]) -> np.ndarray:
    w = np.array([min(SAMPLES[k], MAX_WEIGHT) / MAX_WEIGHT for k in clients])
    trained = np.stack([affine(k, x0).astype(np.float64) for k in clients])
    return (w[:, None] * trained).sum(axis=0) / w.sum()


@pytest.mark.parametrize(
    ("lost", "dropouts", "deadline"),
    [
        (SaMasked, [], None),  # nobody drops
        # they sent their masked input, then went silent: still in the sum, unmasked by the
        # shares of the other six (threshold 6)
        (SaReveal, [2, 5], "last"),
        # their masked input never came: the sum is over the six that did, and the other six
        # release the shares of the two dropouts' mask keys to cancel their pairwise masks
        (SaMasked, [2, 5], "masked"),
    ],
    ids=["nobody-drops", "two-never-reveal", "two-drop-before-masking"],
)
def test_secagg_fedavg_recovers_from_dropouts(
    lost: type[Message], dropouts: list[int], deadline: str | None
) -> None:
    survivors = [k for k in range(N_CLIENTS) if lost is SaReveal or k not in dropouts]
    drop = drop_from(lost, set(dropouts))
    d = fedavg_star("secagg", 2, drop)
    x0 = np.asarray(d.sends(COORD, GlobalModel)[0][1].params)
    d.settle()
    if deadline is not None:
        assert d.states[COORD].round == 0  # waiting for the dropouts...
        assert not d.emits("round_aggregated")
        assert d.expire(COORD, deadline, 0) == dropouts  # ... asks them again, then gives up
        d.settle()
    assert d.emits("round_aggregated", COORD) == [
        {"round": 0, "clients": len(survivors)},
        {"round": 1, "clients": 8},
    ]
    models = {m.round: np.asarray(m.params) for _, m in d.sends(COORD, GlobalModel)}
    np.testing.assert_allclose(models[1], weighted_average(x0, survivors), atol=1e-4)
    # the quantisation error is that of a sum of 8 stochastically rounded values, no more
    np.testing.assert_allclose(models[1], weighted_average(x0, survivors), atol=20 * STEP)
    assert not d.emits("secure_round_aborted") and not d.emits("secure_step_refused")
    assert d.done == set(range(N_CLIENTS + 1))


@pytest.mark.parametrize(
    ("mode", "lost", "phase"),
    [
        ("secagg", SaMasked, "masked"),
        ("secagg", SaReveal, "last"),
        ("secret-share", SsShare, "last"),
    ],
)
def test_a_lost_answer_is_asked_for_again_and_answered_the_same(
    mode: SecureMode, lost: type[Message], phase: str
) -> None:
    first_only: set[int] = set()

    def drop(src: int, dst: int, msg: Message) -> bool:
        if isinstance(msg, lost) and src in (2, 5) and src not in first_only:
            first_only.add(src)
            return True
        return False

    d = fedavg_star(mode, 1, drop)
    x0 = np.asarray(d.sends(COORD, GlobalModel)[0][1].params)
    d.settle()
    assert d.states[COORD].round == 0
    d.fire(COORD, phase, 0)  # the deadline: clients 2 and 5 are asked again...
    d.settle()  # ... and their answers, the same as before, complete the sum
    assert d.emits("round_aggregated", COORD) == [{"round": 0, "clients": 8}]
    for k in (2, 5):
        (_, a), (_, b) = d.sends(k, lost)
        assert all(
            np.array_equal(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    final = next(m for _, m in d.sends(COORD, GlobalModel) if m.final)
    np.testing.assert_allclose(final.params, weighted_average(x0, list(range(8))), atol=1e-4)
    assert not d.emits("secure_step_refused") and not d.emits("secure_round_aborted")


def test_secagg_fedavg_with_too_few_left_aborts_the_round_and_moves_on() -> None:
    # three of eight drop before masking: five masked inputs, threshold ceil(2/3 8) = 6
    d = fedavg_star("secagg", 2, drop_from(SaMasked, {1, 2, 5}))
    assert d.protocols[COORD].secure.settings.group_policy(8) == (8, 6)  # type: ignore[attr-defined]
    x0 = np.asarray(d.sends(COORD, GlobalModel)[0][1].params)
    d.settle()
    assert d.states[COORD].round == 0
    assert d.expire(COORD, "masked", 0) == [1, 2, 5]
    aborted = d.emits("secure_round_aborted", COORD)
    assert len(aborted) == 1 and aborted[0]["round"] == 0
    assert "5 masked inputs arrived, threshold is 6" in aborted[0]["reason"]
    # the global model is unchanged, and the next round opens with it
    round1 = [(k, m) for k, m in d.sends(COORD, GlobalModel) if m.round == 1]
    assert sorted(k for k, _ in round1) == list(range(N_CLIENTS))
    for _, m in round1:
        np.testing.assert_array_equal(m.params, x0)
        assert not m.final
    assert not d.sends(COORD, SaUnmask)  # nobody was asked to release anything
    d.settle()  # round 1 has no dropouts
    assert d.emits("round_aggregated", COORD) == [{"round": 1, "clients": 8}]
    final = [m for _, m in d.sends(COORD, GlobalModel) if m.final]
    np.testing.assert_allclose(final[0].params, weighted_average(x0, list(range(8))), atol=1e-4)
    assert d.states[COORD].aborted_rounds == 1
    assert d.done == set(range(N_CLIENTS + 1))


def test_a_sparse_fedavg_session_never_reveals_the_sum_of_two_survivors() -> None:
    # num_shares 3: every client masks with its two neighbours on a cycle. Clients a and b
    # survive while their other neighbours drop after sharing, so {a, b} is a connected part
    # of the survivors' masking graph: with threshold 2 the coordinator could unmask x_a + x_b
    # on its own (tests/test_secagg.py shows how). The threshold is 3: the round aborts.
    sums = secure_sums("secagg", N_CLIENTS + 1, P + 1, scope="star", num_shares=3)
    assert sums[COORD].settings.group_policy(N_CLIENTS) == (3, 3)
    assert sums[COORD].settings.group_policy(3) == (3, 2)  # dense: every survivor masks with all
    nbrs = sums[COORD]._spec(COORD, 0, range(N_CLIENTS)).neighbours
    a = 0
    b = nbrs[a][0]
    cut = {*nbrs[a], *nbrs[b]} - {a, b}
    d = fedavg_star("secagg", 1, drop_from(SaMasked, cut), num_shares=3)
    d.settle()
    assert d.expire(COORD, "masked", 0) == sorted(cut)
    d.settle()
    (aborted,) = d.emits("secure_round_aborted", COORD)
    assert "fewer than 3 shares arrived" in aborted["reason"]
    assert not d.emits("round_aggregated")


def _settle_holding(d: SecureDriver, held: Callable[[int, Any], bool]) -> None:
    """Deliver everything but timers and the events ``held(peer, event)`` picks."""
    while True:
        live = [
            k
            for k, (p, ev) in enumerate(d.pending)
            if not isinstance(ev, TimerFired) and not held(p, ev)
        ]
        if not live:
            return
        d.step(live[0])


def test_a_slow_fedavg_client_trains_the_round_that_opened_while_it_trained() -> None:
    d = fedavg_star("secagg", 2, drop_from(SaMasked, set()))
    x0 = np.asarray(d.sends(COORD, GlobalModel)[0][1].params)

    def slow(peer: int, ev: Any) -> bool:
        return peer == 0 and isinstance(ev, TrainingDone)

    _settle_holding(d, slow)
    d.fire(COORD, "first", 0)  # client 0 is still training: round 0 goes on without it
    _settle_holding(d, slow)
    assert d.emits("round_aggregated", COORD) == [{"round": 0, "clients": 7}]
    round1 = next(m for k, m in d.sends(COORD, GlobalModel) if k == 0 and m.round == 1)
    d.step(next(k for k, (p, ev) in enumerate(d.pending) if slow(p, ev)))
    d.settle()
    # its round-0 input would find the session closed: it trains round 1's model instead,
    # and round 1 completes with all eight, no deadline needed
    assert not [m for _, m in d.sends(0, SaAdvert) if m.round == 0]
    assert [m.round for _, m in d.sends(0, SaAdvert)] == [1]
    np.testing.assert_array_equal(d.trains(0)[0], x0)
    np.testing.assert_array_equal(d.trains(0)[1], round1.params)
    assert d.emits("round_aggregated", COORD)[1:] == [{"round": 1, "clients": 8}]
    assert d.done == set(range(N_CLIENTS + 1))


def test_a_replayed_global_model_is_neither_trained_nor_joined_again() -> None:
    # client 3 misses round 0's model; it trains round 1's and joins that session
    d = fedavg_star("secagg", 3, drop_from(GlobalModel, {COORD}, rnd=0, to=3))
    d.settle()
    d.fire(COORD, "first", 0)
    while not d.sends(3, SaAdvert):
        d.step(next(k for k, (_, ev) in enumerate(d.pending) if not isinstance(ev, TimerFired)))
    ((_, advert),) = d.sends(3, SaAdvert)
    assert advert.round == 1
    round1 = next(m for k, m in d.sends(COORD, GlobalModel) if k == 3 and m.round == 1)
    sent = len(d.effects)
    d.deliver(3, MessageArrived(COORD, round1))  # the coordinator sends it again
    assert d.effects[sent:] == []  # no second training, so no second input to session 1
    d.settle()
    assert [m.round for _, m in d.sends(3, SaAdvert)] == [1, 2]
    assert [e["clients"] for e in d.emits("round_aggregated", COORD)] == [7, 8, 8]
    assert not d.emits("secure_step_refused")


@pytest.mark.parametrize("mode", ["secagg", "secret-share"])
def test_a_client_joins_a_session_once(mode: SecureMode) -> None:
    # a second input would seal new shares under the session's (key, nonce) pairs, and two
    # share vectors of one session differ by the difference of the inputs' shares
    sums = secure_sums(mode, 5, P, scope="nbhd")
    st = SecureState(np.random.default_rng(0))
    x = np.full(P, 0.5)
    first = sums[0].contribute(st, 4, 5, [0, 1, 2], x)
    assert [type(e) for e in first] == [Send]
    joined = st.clients[(4, 5)]
    # the encoded input, and the answers that will carry released shares, stay out of reprs
    assert "vector" not in repr(st) and "answered" not in repr(st)
    refused = Emit(
        "secure_step_refused",
        {"agg": 4, "round": 5, "reason": "a second input to a session already joined"},
    )
    assert sums[0].contribute(st, 4, 5, [0, 1, 2], x) == [refused]
    assert sums[0].contribute(st, 4, 4, [0, 1, 2], x)[0].fields["round"] == 4  # type: ignore[union-attr]
    assert st.clients[(4, 5)] is joined and st.refused == 2
    # another aggregator's session in the same round, and the next round, are joined
    assert [type(e) for e in sums[0].contribute(st, 3, 5, [0, 1, 2], x)] == [Send]
    assert [type(e) for e in sums[0].contribute(st, 4, 6, [0, 1, 2], x)] == [Send]


# -- D-PSGD whose neighbourhood averages are secure sums

TORUS_SCHEDULE = StaticSchedule(build_topology(TopologySpec(kind="torus", n=16)))


def dpsgd_torus(mode: SecureMode, rounds: int, drop: DropRule) -> tuple[SecureDriver, list]:
    sums = secure_sums(mode, 16, P, scope="nbhd")
    protos: list[Protocol[Any]] = [
        SecureDPSGD(i, TORUS_SCHEDULE, rounds=rounds, seed=200 + i, secure=sums[i])
        for i in range(16)
    ]
    rng = np.random.default_rng(1)
    x0 = [rng.normal(scale=0.5, size=P).astype(np.float32) for _ in range(16)]
    d = SecureDriver.start(
        protos, x0, train_fn=affine, codec=Codec(SecureDPSGD.messages, vector_size=P), drop=drop
    )
    assert isinstance(d, SecureDriver)
    return d, x0


def mixed(topo: Topology, i: int, half: list[np.ndarray], got: set[int]) -> np.ndarray:
    """D-PSGD's rule: x_i = (W_ii + the missing W_ij) h_i + sum over contributors W_ij h_j."""
    nbrs = topo.in_neighbours(i)
    own = topo.weight(i, i) + sum(topo.weight(i, j) for j in nbrs if j not in got)
    return own * half[i] + sum(topo.weight(i, j) * half[j].astype(np.float64) for j in got)


@pytest.mark.parametrize("mode", ["secagg", "secret-share"])
def test_secure_dpsgd_mixes_exactly_like_dpsgd(mode: SecureMode) -> None:
    d, x0 = dpsgd_torus(mode, 2, drop_from(SaMasked, set()))
    d.settle()
    assert d.done == set(range(16))
    topo = TORUS_SCHEDULE.at(0)
    half = [affine(i, x0[i]) for i in range(16)]
    for i in range(16):
        x1 = mixed(topo, i, half, set(topo.in_neighbours(i)))
        np.testing.assert_allclose(d.trains(i)[1], x1, atol=4 * STEP + 1e-6)
    assert not d.emits("secure_round_aborted") and not d.emits("neighbours_skipped")


def test_secret_share_dpsgd_aborts_when_a_share_is_missing() -> None:
    # peer 0's neighbour 1 never returns its share vector for 0's round-0 session
    d, x0 = dpsgd_torus("secret-share", 2, drop_from(SsShare, {1}, to=0))
    topo = TORUS_SCHEDULE.at(0)
    d.settle()
    assert d.states[0].round == 0 and d.states[0].phase == "mixing"  # stuck until the deadline
    assert len(d.trains(0)) == 1
    assert d.expire(0, "last", 0) == [1]
    aborted = d.emits("secure_round_aborted", 0)
    assert len(aborted) == 1 and aborted[0]["round"] == 0
    assert "shares missing from peers [1]" in aborted[0]["reason"]
    # no sum at all: peer 0 keeps (W_00 + every missing W_0j) h_0 = h_0 and trains round 1
    half0 = affine(0, x0[0])
    assert len(d.trains(0)) == 2
    np.testing.assert_allclose(d.trains(0)[1], mixed(topo, 0, [half0] * 16, set()), rtol=1e-6)
    np.testing.assert_allclose(d.trains(0)[1], half0, rtol=1e-6)
    assert d.states[0].aborted_rounds == 1
    # peer 1's shares for its other aggregators went through: their sums are exact
    half = [affine(i, x0[i]) for i in range(16)]
    for i in topo.out_neighbours(1):
        if i != 0:
            full = mixed(topo, i, half, set(topo.in_neighbours(i)))
            np.testing.assert_allclose(d.trains(i)[1], full, atol=4 * STEP + 1e-6)
    d.settle()
    assert d.done == set(range(16))
    assert len(d.emits("secure_round_aborted")) == 1


def test_secagg_dpsgd_skips_a_neighbour_that_drops_before_masking() -> None:
    # groups of 4, threshold ceil(2/3 4) = 3: peer 0 can still sum the other three
    d, x0 = dpsgd_torus("secagg", 2, drop_from(SaMasked, {1}, to=0))
    topo = TORUS_SCHEDULE.at(0)
    d.settle()
    assert d.states[0].round == 0
    assert d.expire(0, "masked", 0) == [1]
    d.settle()
    assert d.emits("neighbours_skipped", 0) == [{"round": 0, "peers": [1]}]
    half = [affine(i, x0[i]) for i in range(16)]
    got = set(topo.in_neighbours(0)) - {1}
    np.testing.assert_allclose(d.trains(0)[1], mixed(topo, 0, half, got), atol=3 * STEP + 1e-6)
    assert not d.emits("secure_round_aborted")
    assert d.done == set(range(16))


# -- refusals


def test_a_client_asked_to_unmask_twice_never_reveals_twice() -> None:
    d = fedavg_star("secagg", 1, drop_from(SaReveal, set(range(N_CLIENTS))))
    d.settle()  # every reveal was lost
    ((_, first),) = [(k, m) for k, m in d.sends(COORD, SaUnmask) if k == 3]
    assert first.survivors.tolist() == list(range(8))
    ((_, reveal),) = d.sends(3, SaReveal)
    assert reveal.kinds == b"b" * 8  # the shares of the eight self masks
    # the same request again (the aggregator's retry): the same answer, byte for byte
    d.deliver(3, MessageArrived(COORD, first))
    assert len(d.sends(3, SaReveal)) == 2
    again = d.sends(3, SaReveal)[1][1]
    assert (again.owners.tolist(), again.kinds, again.shares) == (
        reveal.owners.tolist(),
        reveal.kinds,
        reveal.shares,
    )
    # a second request naming client 6 as dropped: answering it would release the share of
    # 6's mask key next to the share of its self mask, and enough of those unmask x_6
    conflicting = SaUnmask(COORD, 0, np.array([0, 1, 2, 3, 4, 5, 7], dtype=np.int64))
    d.deliver(3, MessageArrived(COORD, conflicting))
    assert len(d.sends(3, SaReveal)) == 2
    (refused,) = d.emits("secure_step_refused", 3)
    assert refused["agg"] == COORD and refused["round"] == 0
    assert "peer 6's other share was released already" in refused["reason"]
    assert d.states[3].sec.refused == 1
    # ... and the session is over for client 3: even the first request gets nothing now
    d.deliver(3, MessageArrived(COORD, first))
    assert len(d.sends(3, SaReveal)) == 2
    assert all(m.kinds == b"b" * 8 for _, m in d.sends(3, SaReveal))


@pytest.mark.parametrize(
    ("survivors", "reason"),
    [
        ([0, 1, 2, 4, 5, 6, 7], "unmask asked of a client the aggregator counts as dropped"),
        ([0, 1, 2, 3, 4], "5 survivors, need 6"),
        ([0, 1, 2, 3, 4, 5, 6, 7, 9], "survivors include clients that never advertised"),
    ],
)
def test_an_unmask_request_that_would_leak_is_refused(survivors: list[int], reason: str) -> None:
    d = fedavg_star("secagg", 1, drop_from(SaUnmask, {COORD}))
    d.settle()  # every masked input is in; the unmask requests were lost
    assert d.states[COORD].round == 0
    forged = SaUnmask(COORD, 0, np.array(survivors, dtype=np.int64))
    d.deliver(3, MessageArrived(COORD, forged))
    assert d.emits("secure_step_refused", 3) == [{"agg": COORD, "round": 0, "reason": reason}]
    assert not d.sends(3, SaReveal)
    assert d.states[3].sec.refused == 1
    # the client is done with the session: a genuine request afterwards gets nothing either
    d.deliver(3, MessageArrived(COORD, SaUnmask(COORD, 0, np.arange(8, dtype=np.int64))))
    assert not d.sends(3, SaReveal)


def test_session_messages_from_the_wrong_peer_are_refused() -> None:
    # D-PSGD on the torus: peer 0 aggregates 1, 3, 4, 12; its rosters are lost
    d, _ = dpsgd_torus("secagg", 1, drop_from(SaRoster, {0}))
    d.settle()
    roster = next(m for _, k, m in d.lost if k == 1)
    sent = len(d.effects)
    d.deliver(1, MessageArrived(4, roster))  # relayed by client 4, not by the aggregator 0
    masked = SaMasked(0, 0, np.zeros(P, dtype=np.uint32))
    d.deliver(5, MessageArrived(1, masked))  # an input for 0's session, sent to peer 5
    d.deliver(0, MessageArrived(1, roster))  # a roster sent to its own aggregator
    new = d.effects[sent:]
    assert not [e for _, e in new if isinstance(e, Send)]
    assert [(p, e.name, e.fields["reason"]) for p, e in new if isinstance(e, Emit)] == [
        (1, "secure_step_refused", "session message relayed by peer 4"),
        (5, "secure_step_refused", "aggregator message for another aggregator"),
        (0, "secure_step_refused", "client message sent to its aggregator"),
    ]
    assert [d.states[k].sec.refused for k in (1, 5, 0)] == [1, 1, 1]
    # the genuine roster still works: client 1 answers it with its sealed shares
    d.deliver(1, MessageArrived(0, roster))
    assert [k for k, _ in d.sends(1, SaShares)].count(0) == 1


def test_fedavg_clients_drop_session_messages_not_from_the_coordinator() -> None:
    d = fedavg_star("secagg", 1, drop_from(SaRoster, {COORD}))
    d.settle()  # adverts are in; the rosters were lost
    roster = next(m for _, k, m in d.lost if k == 4)
    sent = len(d.effects)
    d.deliver(4, MessageArrived(3, roster))
    assert [e for _, e in d.effects[sent:]] == [Emit("unexpected_message_dropped", {"sender": 3})]
    d.deliver(4, MessageArrived(COORD, roster))
    assert len(d.sends(4, SaShares)) == 1


def test_a_relayed_ready_list_is_refused_and_the_session_still_completes() -> None:
    d, x0 = dpsgd_torus("secret-share", 1, drop_from(SsReady, {0}, to=1))
    d.settle()
    ((_, _, ready),) = d.lost
    # neighbour 4 forwards peer 0's ready list to peer 1 as if it were the aggregator
    d.deliver(1, MessageArrived(4, ready))
    assert d.emits("secure_step_refused", 1) == [
        {"agg": 0, "round": 0, "reason": "session message relayed by peer 4"}
    ]
    assert not [m for k, m in d.sends(1, SsShare) if k == 0]
    d.deliver(1, MessageArrived(0, ready))  # the real one, late: the session was kept
    d.settle()
    assert d.done == set(range(16))
    topo = TORUS_SCHEDULE.at(0)
    half = [affine(i, x0[i]) for i in range(16)]
    np.testing.assert_allclose(
        d.protocols[0].model(d.states[0]),
        mixed(topo, 0, half, set(topo.in_neighbours(0))),
        atol=4 * STEP + 1e-6,
    )


def test_a_ready_list_of_two_or_without_the_receiver_is_refused() -> None:
    d, _ = dpsgd_torus("secret-share", 1, drop_from(SsReady, {0}, to=1))
    d.settle()
    for members in ([1, 3], [3, 4, 12]):  # a sum of two; a list that leaves peer 1 out
        d.deliver(1, MessageArrived(0, SsReady(0, 0, np.array(members, dtype=np.int64))))
    refused = [e["reason"] for e in d.emits("secure_step_refused", 1)]
    assert refused == ["the ready list is not a group of 3 with this peer"] * 2
    assert not [m for k, m in d.sends(1, SsShare) if k == 0]


# --- 4. what a wire tap sees ----------------------------------------------------------------


def _signed(v: np.ndarray) -> np.ndarray:
    return v.view(np.int32).astype(np.float64)


def _standardised(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize(("mode", "cls"), [("secagg", "SaMasked"), ("secret-share", "SsShare")])
def test_a_wire_tap_sees_only_uniform_noise(
    dpsgd_runs: dict[str, Recorded], mode: str, cls: str
) -> None:
    rec = dpsgd_runs[mode]
    assert rec.types == {m.__name__ for m in SESSION_MESSAGES if m.__name__[:2] == cls[:2]}
    assert set(rec.tapped) == set(rec.inputs)  # one share vector per client input
    assert len(rec.tapped) == ROUNDS * DPSGD_PAIRS
    fixed = FixedPoint.from_range(C, Q)
    d = 4810
    bound = 6 / math.sqrt(d)  # |r| of unrelated vectors is about N(0, 1/d)
    pooled_y, pooled_x = [], []
    for rnd in range(ROUNDS):
        keys = sorted(k for k in rec.tapped if k[2] == rnd)
        ys = np.stack([rec.tapped[k] for k in keys])  # (64, d) ring elements on the wire
        xs = np.stack([fixed.encode(rec.inputs[k]) for k in keys])  # (64, d) plain encodings
        assert ys.dtype == xs.dtype == np.uint32 and ys.shape == (DPSGD_PAIRS, d)
        assert (ys == xs).mean() < 1e-3  # no vector carries its input as it is
        # the correlation of every vector on the wire with every input of the round
        r = _standardised(_signed(ys)) @ _standardised(_signed(xs)).T  # (64, 64)
        assert np.abs(r).max() < bound, np.abs(r).max()
        pooled_y.append(_signed(ys).ravel())
        pooled_x.append(_signed(xs).ravel())
        assert np.abs(np.corrcoef(_signed(xs)[0], _signed(xs)[1])[0, 1]) > bound  # inputs do
    r_all = np.corrcoef(np.concatenate(pooled_y), np.concatenate(pooled_x))[0, 1]
    assert abs(r_all) < 0.01, r_all
    # every byte of the ring elements, the low one first, is uniform: vector by vector
    # (Bonferroni over all of them) and pooled
    lanes = np.stack([v.view(np.uint8).reshape(d, 4) for v in rec.tapped.values()])
    tests = lanes.shape[0] * 4
    for lane in range(4):
        counts = [np.bincount(v[:, lane], minlength=256) for v in lanes]
        assert min(chisquare(c).pvalue for c in counts) > 0.001 / tests, lane
        assert chisquare(np.sum(counts, axis=0)).pvalue > 0.001, lane
    plain_lanes = fixed.encode(next(iter(rec.inputs.values()))).view(np.uint8).reshape(d, 4)
    assert chisquare(np.bincount(plain_lanes[:, 3], minlength=256)).pvalue < 1e-9  # they don't


# --- 5. Ray --------------------------------------------------------------------------------


@pytest.mark.ray
def test_secagg_dpsgd_on_two_ray_hosts_reproduces_the_in_process_run(
    ray_local: Any, tmp_path: Path
) -> None:
    cfg = small_config(
        topology=TORUS,
        protocol={"kind": "dpsgd", "rounds": 3},
        time={"compute_jitter": 0.3},
        network={"latency": {"min": 0.002, "dist": "exponential", "scale": 0.01}},
    )
    cfg["security"] = {"aggregation": "secagg"}
    local = run(cfg, out=tmp_path / "local")
    on_ray = run({**cfg, "runtime": {"kind": "ray", "hosts": 2}}, out=tmp_path / "ray")
    assert on_ray.summary["runtime"] == "ray" and len(on_ray.summary["hosts"]) == 2
    for name in ("metrics.jsonl", "edges.csv"):
        assert (local.run_dir / name).read_text() == (on_ray.run_dir / name).read_text(), name
    for key in ("events", "virtual_time", "bytes", "rounds_completed", "final", "protocol_events"):
        assert local.summary[key] == on_ray.summary[key], key
    msgs = on_ray.summary["messages"]
    assert msgs.pop("dropped") == 0
    assert msgs == local.summary["messages"]
    assert msgs["sent"] == 3 * DPSGD_PAIRS * FRAMES_PER_PAIR["secagg"]
    _clean(on_ray.summary, 3, 16)


def test_a_malformed_masked_input_counts_as_a_dropout_not_the_end_of_the_session() -> None:
    d = fedavg_star("secagg", 1, lambda src, dst, msg: False)
    honest = d._execute

    def truncate(peer: int, eff: Effect) -> None:  # client 2 sends a vector one value short
        if peer == 2 and isinstance(eff, Send) and isinstance(eff.message, SaMasked):
            eff = Send(eff.to, dataclasses.replace(eff.message, y=eff.message.y[:-1]))
        honest(peer, eff)

    d._execute = truncate  # type: ignore[method-assign]
    x0 = np.asarray(d.sends(COORD, GlobalModel)[0][1].params)
    d.settle()
    assert d.emits("secure_input_malformed", COORD) == [{"agg": COORD, "round": 0, "peers": [2]}]
    assert d.emits("round_aggregated", COORD) == [{"round": 0, "clients": 7}]
    others = [k for k in range(N_CLIENTS) if k != 2]
    final = next(m for _, m in d.sends(COORD, GlobalModel) if m.final)
    np.testing.assert_allclose(final.params, weighted_average(x0, others), atol=1e-4)


@pytest.mark.ray
def test_secure_fedavg_in_wall_time_on_ray_completes_every_round(
    ray_local: Any, tmp_path: Path
) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 6},
        protocol={"kind": "fedavg", "rounds": 3},
        time={"mode": "wall"},
        eval={"interval": 0.5},
        runtime={"kind": "ray", "hosts": 2},
    )
    cfg["security"] = {"aggregation": "secagg", "channel": "aead"}
    res = run(cfg, out=tmp_path / "wall")
    s = res.summary
    assert s["status"] == "completed" and s["time_mode"] == "wall"
    assert s["protocol_events"].get("round_aggregated") == 3, s["protocol_events"]
    assert "secure_round_aborted" not in s["protocol_events"]
    assert s["frames_rejected"] == 0 and s["bytes"]["crypto"] > 0
    assert s["final"]["mean_acc"] > 0.3


def test_sealed_links_and_secure_sums_compose(tmp_path: Path) -> None:
    """Sealing changes the bytes on the wire, never what a secure sum computes."""
    base = small_config(topology=TORUS, protocol={"kind": "dpsgd", "rounds": 3})
    plain = run({**base, "security": {"aggregation": "secagg"}}, out=tmp_path / "a")
    sealed = run(
        {**base, "security": {"aggregation": "secagg", "channel": "aead", "rotate_every": 0.05}},
        out=tmp_path / "b",
    )
    assert sealed.summary["bytes"]["crypto"] > 0 == plain.summary["bytes"]["crypto"]
    assert sealed.summary["frames_rejected"] == 0
    assert sealed.summary["messages"]["sent"] == plain.summary["messages"]["sent"]
    assert sealed.mean_accuracy == pytest.approx(plain.mean_accuracy, abs=1e-9)
    _clean(sealed.summary, 3, 16)


def test_a_weight_above_max_weight_is_capped_and_says_so() -> None:
    d = fedavg_star("secagg", 1, lambda src, dst, msg: False)
    d.samples[3] = 250  # max_weight is 100
    d.settle()
    assert d.emits("secure_weight_capped", 3) == [
        {"round": 0, "samples": 250, "max_weight": MAX_WEIGHT}
    ]
    assert not d.emits("secure_weight_capped", 2)
    assert d.emits("round_aggregated", COORD) == [{"round": 0, "clients": 8}]


def test_the_summary_warns_when_secure_inputs_were_clipped(tmp_path: Path) -> None:
    cfg = small_config(topology=TORUS, protocol={"kind": "dpsgd", "rounds": 2})
    cfg["security"] = {"aggregation": "secret-share", "clipping_range": 0.01}
    s = run(cfg, out=tmp_path / "clip").summary
    assert s["protocol_events"]["secure_input_clipped"] > 0
    assert any("clipped: raise security.clipping_range" in w for w in s["warnings"]), s["warnings"]
    cfg["security"]["clipping_range"] = 8.0
    assert not run(cfg, out=tmp_path / "fine").summary["warnings"]


@pytest.mark.parametrize(("kind", "mode"), [("dpsgd", "secagg"), ("fedavg", "secret-share")])
def test_virtual_time_charges_the_clients_crypto(tmp_path: Path, kind: str, mode: str) -> None:
    rounds = 3
    topology = {"kind": "torus", "n": 9} if kind == "dpsgd" else {"kind": "ring", "n": 5}
    base = small_config(
        topology=topology,
        model={"kind": "mlp", "hidden": [64]},
        protocol={"kind": kind, "rounds": rounds},
    )

    def go(charge: bool) -> Result:
        sec = {"aggregation": mode, "charge_compute": charge}
        return run({**base, "security": sec}, out=tmp_path / f"{charge}")

    free, charged = go(False), go(True)
    # the same sums, later: charging changes when messages leave, not what they carry
    assert charged.summary["final"]["mean_acc"] == free.summary["final"]["mean_acc"]
    assert charged.summary["protocol_events"] == free.summary["protocol_events"]
    assert charged.summary["virtual_time"] != free.summary["virtual_time"]
    if kind == "fedavg":
        # one star session a round: its clients' encoding and masking are on the critical
        # path (on a torus, held messages can also reorder uplink queues either way)
        d = free.summary["params"] + 1
        expansion = 4 * d * SECURE_COSTS["expand_byte"]
        extra = charged.summary["virtual_time"] - free.summary["virtual_time"]
        floor = rounds * (d * SECURE_COSTS["encode_value"] + expansion)
        assert floor < extra < 50 * floor, (extra, floor)


def test_a_charged_client_holds_each_message_for_its_reference_cost() -> None:
    d, clients = 1000, [0, 1, 2, 3]
    seeds, publics = pair_key_directory(b"charge-test-seed", range(5))
    fixed = FixedPoint.from_range(8.0, 2**22)
    settings = SecureSettings("secagg", fixed, False, 1.0, 1.0, charge=True)
    sums = {u: SecureSum(u, settings, pair_keys(u, seeds[u], publics), d) for u in clients}
    st = {u: SecureState(np.random.default_rng(u)) for u in clients}
    effects = sums[0].contribute(st[0], 4, 0, clients, np.zeros(d))
    (timer,) = effects
    assert isinstance(timer, SetTimer) and timer.tag == "secure:compute"
    assert timer.delay == pytest.approx(d * SECURE_COSTS["encode_value"] + SECURE_COSTS["keygen"])
    released, _ = sums[0].on_event(st[0], TimerFired(timer.tag, timer.round))
    (send,) = released
    assert isinstance(send, Send) and isinstance(send.message, SaAdvert)
    assert sums[0].on_event(st[0], TimerFired(timer.tag, timer.round))[0] == []  # once only


def test_work_in_progress_outlives_a_stop(tmp_path: Path) -> None:
    """A client that stops right after its last contribution still sends it: compute
    timers fire after Stop (the engine drops only deadlines)."""
    cfg = small_config(
        topology={"kind": "ring", "n": 5},
        protocol={"kind": "fedavg", "rounds": 2},
        security={"aggregation": "secagg"},
    )
    s = run(cfg, out=tmp_path / "stop").summary
    assert s["status"] == "completed"
    assert s["protocol_events"].get("round_aggregated") == 2
    assert "secure_round_aborted" not in s["protocol_events"]
