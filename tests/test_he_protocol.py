"""FedAvg under homomorphic encryption (:mod:`p2pfed.protocol.he`): settings refused before any
peer starts and what ``scheme: auto`` resolves to, training that matches plain FedAvg, a
coordinator that holds nothing secret, rounds driven by hand without a runtime (loss, malformed
updates, threshold partial decryptions, the end of a run), and a lossy network."""

from __future__ import annotations

import contextlib
import dataclasses
import types
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gmpy2
import numpy as np
import pytest
import yaml

import p2pfed.experiment as experiment
from p2pfed.config import config_from_mapping
from p2pfed.crypto.he import HEError
from p2pfed.crypto.paillier import KeyShare, PaillierPublicKey, PaillierSecretKey
from p2pfed.errors import ConfigError, ProtocolError
from p2pfed.experiment import Result, World, build_peers, build_world, run
from p2pfed.protocol import (
    Codec,
    Effect,
    Emit,
    Event,
    Message,
    MessageArrived,
    Protocol,
    Send,
    SetTimer,
    Started,
    Stop,
    TimerFired,
    Train,
    TrainingDone,
)
from p2pfed.protocol.he import (
    HE_MESSAGES,
    MAX_RESENDS,
    HeAggregate,
    HeFedAvg,
    HeKeys,
    HePartial,
    HePartials,
    HeUpdate,
    paillier_keys,
)
from p2pfed.runtime.base import PeerSlot
from tests.conftest import small_config
from tests.protocol_driver import DropRule, RecordingDriver, _never

# --- 1. settings refused before any peer starts, and what auto resolves to --------------------


def _cfg(security: dict[str, Any], *, n: int = 4, **protocol: Any) -> dict[str, Any]:
    cfg = small_config(
        topology={"kind": "ring", "n": n}, protocol={"kind": "fedavg", "rounds": 2, **protocol}
    )
    cfg["security"] = security
    return cfg


def _he(*, n: int = 4, **he: Any) -> dict[str, Any]:
    """aggregation he with 1024-bit Paillier keys (fast) and the given he settings."""
    return _cfg({"aggregation": "he", "he": {"key_bits": 1024, **he}}, n=n)


def _refused(cfg: dict[str, Any]) -> ConfigError:
    """The error building the experiment raises (validation first, then the world)."""
    with pytest.raises(ConfigError) as info:
        build_world(config_from_mapping(cfg))
    return info.value


@pytest.mark.parametrize("kind", ["gossip", "pushsum", "fedasync", "fedbuff"])
def test_he_is_refused_with_protocols_other_than_fedavg(kind: str) -> None:
    err = _refused(_cfg({"aggregation": "he"}, kind=kind))
    assert "security.aggregation he runs with protocol.kind fedavg" in err.message
    assert f"not {kind}" in err.message


@pytest.mark.parametrize(
    ("cfg", "key", "reason"),
    [
        (
            _cfg({"aggregation": "he"}, server_lr=0.5),
            None,
            "security.aggregation he needs protocol.server_lr 1",
        ),
        (
            _he(key_mode="threshold", threshold=5),
            None,
            "security.he.threshold 5 exceeds the 4 clients",
        ),
        (
            _cfg({"aggregation": "he", "he": {"scheme": "ckks", "key_mode": "threshold"}}),
            "security.he",
            "ckks runs with key_mode: group only",
        ),
        (
            _cfg({"aggregation": "plain", "he": {"scheme": "paillier"}}),
            "security",
            "the he section is used by aggregation: he only",
        ),
        (
            _cfg({"aggregation": "secagg", "he": {"key_bits": 1024}}, n=8),
            "security",
            "the he section is used by aggregation: he only",
        ),
        (_he(key_bits=1025), "security.he", "key_bits must be even, got 1025"),
        (_he(key_bits=1022), "security.he.key_bits", "greater than or equal to 1024"),
        (_he(key_bits=512), "security.he.key_bits", "greater than or equal to 1024"),
        (
            _he(scheme="ckks", poly_modulus_degree=4096),
            "security.he",
            "poly_modulus_degree must be 8192, 16384 or 32768, got 4096",
        ),
        (_he(threshold=3), "security.he", "threshold is used by key_mode: threshold only"),
        (_he(key_mode="threshold", threshold=1), "security.he.threshold", "greater than or equal"),
        (
            _cfg({"aggregation": "he", "phase_timeout": 1.0}),
            "security",
            "phase_timeout is used by secret-share and secagg only",
        ),
        # only TenSEAL knows: the inner primes are 40 bits, a 50-bit scale cannot rescale
        (_he(scheme="ckks", scale_bits=50), "security.he", "global_scale_bits 50 exceeds"),
    ],
    ids=[
        "server-lr",
        "threshold-above-clients",
        "ckks-threshold",
        "he-section-plain",
        "he-section-secagg",
        "odd-key-bits",
        "key-bits-1022",
        "key-bits-512",
        "poly-4096",
        "threshold-in-group-mode",
        "threshold-1",
        "phase-timeout",
        "ckks-scale-bits",
    ],
)
def test_inconsistent_he_settings_are_refused(
    cfg: dict[str, Any], key: str | None, reason: str
) -> None:
    err = _refused(cfg)
    assert err.key == key, err
    assert reason in err.message, err.message


def test_a_refused_he_config_makes_no_run_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run(_cfg({"aggregation": "he"}, kind="gossip"), out=tmp_path / "run")
    assert "runs with protocol.kind fedavg" in info.value.message
    assert not (tmp_path / "run").exists()


def test_a_threshold_of_every_client_is_accepted() -> None:
    for threshold in (4, None):  # None: n-of-n
        world = build_world(config_from_mapping(_he(key_mode="threshold", threshold=threshold)))
        keys = world.he_keys
        assert keys is not None and keys.scheme == "paillier"
        assert keys.threshold == 4 and len(keys.shares) == 4
        assert keys.secret is None  # the dealer dropped the key once it was split
        assert world.config.security.he.threshold == threshold


LOGREG_PARAMS = 64 * 10 + 10  # logreg on digits


@pytest.mark.parametrize(
    ("he", "scheme"),
    [
        ({}, "paillier"),
        ({"auto_paillier_max": LOGREG_PARAMS}, "paillier"),  # up to auto_paillier_max
        ({"auto_paillier_max": LOGREG_PARAMS - 1}, "ckks"),
        # ckks has no threshold decryption: a threshold key keeps paillier at any size
        ({"auto_paillier_max": LOGREG_PARAMS - 1, "key_mode": "threshold"}, "paillier"),
        ({"scheme": "ckks"}, "ckks"),
        ({"scheme": "paillier", "auto_paillier_max": 1}, "paillier"),
    ],
)
def test_scheme_auto_picks_paillier_for_small_models(he: dict[str, Any], scheme: str) -> None:
    asked = config_from_mapping(_he(**he))
    world = build_world(asked)
    assert world.num_params == LOGREG_PARAMS
    resolved = world.config.security.he
    assert resolved.scheme == scheme
    assert world.he_keys is not None and world.he_keys.scheme == scheme
    # nothing else of the section changes
    assert resolved.model_dump(exclude={"scheme"}) == asked.security.he.model_dump(
        exclude={"scheme"}
    )
    assert set(world.codec.message_types) == set(HE_MESSAGES)
    assert world.config.protocol.timeout is not None  # resolved from the time models


# --- 2. training with encrypted sums matches plain FedAvg -------------------------------------

MLP16 = {"kind": "mlp", "hidden": [16]}  # digits: 64*16 + 16 + 16*10 + 10 = 1210 parameters
TRAINING = {"lr": 0.05, "momentum": 0.9, "batch_size": 16, "local_epochs": 1, "local_steps": None}
ROUNDS = 8
MODES: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "paillier": {"aggregation": "he", "he": {"key_bits": 1024}},  # auto: 1210 <= 50000
    "ckks": {"aggregation": "he", "he": {"scheme": "ckks"}},
}
PAILLIER_STEP = 2.0 / (2**15 - 1)  # the default clip 2 over 16-bit values


def _fedavg(
    security: dict[str, Any] | None, *, n: int = 8, rounds: int = ROUNDS, **sections: Any
) -> dict[str, Any]:
    cfg = small_config(
        topology={"kind": "ring", "n": n},
        protocol={"kind": "fedavg", "rounds": rounds},
        model=MLP16,
        training=TRAINING,
        **sections,
    )
    if security is not None:
        cfg["security"] = security
    return cfg


@dataclass
class Finished:
    """A run, and every client's model when it ended (rows in client order)."""

    result: Result
    models: np.ndarray

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary


def _run(cfg: dict[str, Any], out: Path) -> Finished:
    """Run ``cfg`` in process, keeping the peers the runtime was given."""
    slots: list[PeerSlot] = []

    def keep(world: World, ids: Sequence[int], device: str) -> list[PeerSlot]:
        built = build_peers(world, ids, device)
        slots.extend(built)
        return built

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(experiment, "build_peers", keep)
        result = run(cfg, out=out)
    clients = sorted((s for s in slots if s.trainer is not None), key=lambda s: s.id)
    assert [s.id for s in clients] == list(range(result.config.num_peers))
    return Finished(result, np.stack([s.protocol.model(s.state) for s in clients]))


@pytest.fixture(scope="module")
def fedavg_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Finished]:
    """FedAvg with 8 clients, one seed: plain, packed Paillier (group key), CKKS."""
    out = tmp_path_factory.mktemp("he-fedavg")
    return {mode: _run(_fedavg(security), out / mode) for mode, security in MODES.items()}


def test_he_fedavg_trains_like_plain_fedavg(fedavg_runs: dict[str, Finished]) -> None:
    plain = fedavg_runs["plain"]
    assert plain.result.mean_accuracy > 0.8  # it learned something worth comparing
    for mode in ("paillier", "ckks"):
        run_ = fedavg_runs[mode]
        s = run_.summary
        assert s["status"] == "completed"
        assert s["params"] == 1210
        assert s["rounds_completed"] == [ROUNDS] * 8
        # no update refused, clipped or stalled
        assert s["protocol_events"] == {"round_aggregated": ROUNDS}
        # plain FedAvg's frames: the opening model, per round 8 updates in and 8 models out
        assert s["messages"] == plain.summary["messages"]
        assert s["messages"]["sent"] == 8 + 16 * ROUNDS
        assert s["bytes"]["payload"] > plain.summary["bytes"]["payload"]  # ciphertexts
        acc = run_.result.mean_accuracy
        assert abs(acc - plain.result.mean_accuracy) <= 0.005, (mode, acc)
        loss = s["final"]["mean_test_loss"]
        assert loss == pytest.approx(plain.summary["final"]["mean_test_loss"], abs=0.01)
        # every client decrypted the same final aggregate
        assert (run_.models == run_.models[0]).all()
        assert s["final"]["mean_consensus_dist"] == 0


def test_the_resolved_scheme_is_what_the_run_records(fedavg_runs: dict[str, Finished]) -> None:
    for mode in ("paillier", "ckks"):
        result = fedavg_runs[mode].result
        assert result.config.security.he.scheme == mode
        written = yaml.safe_load((result.run_dir / "config.yaml").read_text())
        assert written["security"]["aggregation"] == "he"
        assert written["security"]["he"]["scheme"] == mode


def test_one_round_gives_every_client_plain_fedavgs_weighted_mean(tmp_path: Path) -> None:
    runs = {m: _run(_fedavg(sec, rounds=1), tmp_path / m) for m, sec in MODES.items()}
    plain = runs["plain"].models
    assert (plain == plain[0]).all()
    # Paillier: every value stochastically rounded to the step, so their weighted mean is
    # within one step; CKKS: noise around 1e-9
    assert np.abs(runs["paillier"].models - plain).max() <= PAILLIER_STEP
    assert np.abs(runs["ckks"].models - plain).max() <= 1e-6


def test_threshold_decryption_gives_the_group_key_models(tmp_path: Path) -> None:
    rounds = 3
    modes: dict[str, dict[str, Any]] = {
        "group": {},
        "3-of-4": {"key_mode": "threshold", "threshold": 3},
        "4-of-4": {"key_mode": "threshold"},
    }
    runs = {
        name: _run(
            _fedavg({"aggregation": "he", "he": {"key_bits": 1024, **he}}, n=4, rounds=rounds),
            tmp_path / name,
        )
        for name, he in modes.items()
    }
    group = runs["group"]
    assert group.summary["messages"]["sent"] == 4 + 8 * rounds
    for name in ("3-of-4", "4-of-4"):
        s = runs[name].summary
        assert s["status"] == "completed"
        assert s["rounds_completed"] == [rounds] * 4
        assert s["protocol_events"] == {"round_aggregated": rounds}
        assert runs[name].result.config.security.he.scheme == "paillier"
        # exact integer sums, the same stochastic rounding: the same bits as the group key
        np.testing.assert_array_equal(runs[name].models, group.models)
        assert runs[name].result.mean_accuracy == group.result.mean_accuracy
    # each aggregate is opened by a round trip of partial decryptions (4 in, 4 out)
    assert runs["4-of-4"].summary["messages"]["sent"] == 4 + 16 * rounds
    assert runs["3-of-4"].summary["messages"]["sent"] >= 4 + 16 * rounds


# --- 3. the coordinator holds nothing secret --------------------------------------------------


_LEAVES = (
    str,
    bytes,
    bytearray,
    memoryview,
    np.ndarray,
    int,
    float,
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
)


def _reachable(*roots: object) -> Iterator[object]:
    """Every object reachable from ``roots`` through attributes and containers."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, _LEAVES):
            continue
        if isinstance(obj, dict):
            stack.extend(obj)
            stack.extend(obj.values())
            continue
        if isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
            continue
        with contextlib.suppress(TypeError):
            stack.extend(vars(obj).values())
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()):
                if hasattr(obj, name):
                    stack.append(getattr(obj, name))


def _secret_numbers(keys: HeKeys) -> set[int]:
    if keys.secret is not None and keys.scheme == "paillier":
        return {int(keys.secret.p), int(keys.secret.q), int(keys.secret.lam)}
    return {int(s.share) for s in keys.shares}


def _secrets_in(objs: Iterable[object], keys: HeKeys) -> list[str]:
    numbers = _secret_numbers(keys)
    ckks_secret = keys.secret if isinstance(keys.secret, bytes) else None
    found = []
    for obj in objs:
        if isinstance(obj, PaillierSecretKey | KeyShare):
            found.append(type(obj).__name__)
        elif isinstance(obj, int | gmpy2.mpz) and int(obj) in numbers:
            found.append("a secret number")
        elif isinstance(obj, bytes | bytearray | np.ndarray) and ckks_secret is not None:
            raw = obj.tobytes() if isinstance(obj, np.ndarray) else bytes(obj)
            if ckks_secret in raw:
                found.append("the CKKS secret context")
        has_secret_key = getattr(obj, "has_secret_key", None)
        if callable(has_secret_key) and has_secret_key():
            found.append(f"a {type(obj).__name__} with the secret key")
    return found


def _he_protocol(slot: PeerSlot) -> HeFedAvg:
    proto = slot.protocol
    assert isinstance(proto, HeFedAvg)
    return proto


def _shift(peer: int, p: np.ndarray) -> np.ndarray:
    return (p + 0.01 * (peer + 1)).astype(np.float32)


@pytest.mark.parametrize(
    "he",
    [
        {"scheme": "paillier"},
        {"scheme": "paillier", "key_mode": "threshold", "threshold": 2},
        {"scheme": "ckks"},
    ],
    ids=["paillier-group", "paillier-threshold", "ckks"],
)
def test_the_coordinator_holds_no_secret(he: dict[str, Any]) -> None:
    n = 3
    world = build_world(config_from_mapping(_he(n=n, **he)))
    keys = world.he_keys
    assert keys is not None
    slots = build_peers(world, range(n + 1), "cpu")
    coord = slots[n]
    assert coord.id == n and coord.trainer is None
    # the whole run through the peers' real protocol objects, so the coordinator's state
    # holds everything it ever holds
    d = HeDriver.start(
        [s.protocol for s in slots], [world.params0] * (n + 1), train_fn=_shift, codec=world.codec
    )
    assert isinstance(d, HeDriver)
    d.settle()
    assert d.done == set(range(n + 1))
    state = d.states[n]
    assert state.round == 2 and state.aggregate
    seen = list(_reachable(coord.protocol, state))
    assert _secrets_in(seen, keys) == []
    if keys.scheme == "paillier":
        assert any(isinstance(o, PaillierPublicKey) for o in seen)  # the walk got there
        # ... and a client's backend does hold its secret (the walk would have found it)
        assert _secrets_in(_reachable(slots[0].protocol), keys)
    else:
        assert any(callable(getattr(o, "has_secret_key", None)) for o in seen)
        assert _secrets_in(_reachable(slots[0].protocol), keys)
    # the coordinator's model never leaves x^0: it never held a plaintext one
    np.testing.assert_array_equal(coord.protocol.model(state), world.params0)
    backend = _he_protocol(coord).backend
    with pytest.raises(HEError, match="holds no"):
        backend.decrypt(state.aggregate, state.weight)
    with pytest.raises(HEError):
        backend.partial(state.aggregate)
    with pytest.raises(HEError):
        backend.combine(state.aggregate, state.weight, {})
    # a client opens the final aggregate: alone with the group key, with `threshold` partials
    # of its key share otherwise
    client = _he_protocol(slots[0]).backend
    final = d.models()[0]
    if keys.shares:
        with pytest.raises(HEError, match="holds no decryption key"):
            client.decrypt(state.aggregate, state.weight)
        partials = {
            i + 1: _he_protocol(slots[i]).backend.partial(state.aggregate) for i in range(n)
        }
        one = {1: partials[1]}
        with pytest.raises(HEError, match="2 needed"):
            client.combine(state.aggregate, state.weight, one)
        for pair in ({1: partials[1], 2: partials[2]}, {2: partials[2], 3: partials[3]}):
            mean = client.combine(state.aggregate, state.weight, pair)
            np.testing.assert_allclose(world.params0 + mean, final, atol=1e-6)
    else:
        mean = client.decrypt(state.aggregate, state.weight)
        np.testing.assert_allclose(world.params0 + mean, final, atol=1e-6)
    assert np.abs(final - world.params0).max() > 0.01  # it did move


# --- 4. rounds driven by hand ----------------------------------------------------------------

N = 3  # clients
COORD = N
P = 6  # parameters
SAMPLES = {0: 10, 1: 20, 2: 30}  # total 60, below the keys' max_weight of 100
MAX_WEIGHT = 100
STEP = 1.0 / (2**15 - 1)  # clip 1 over 16-bit values
TIMEOUT = 1.0
X0 = np.random.default_rng(7).normal(scale=0.2, size=P).astype(np.float32)
RAMP = np.linspace(-1.0, 1.0, P)


def affine(peer: int, p: np.ndarray) -> np.ndarray:
    """A pure stand-in for training that pulls each client toward its own point."""
    return (0.8 * p + 0.05 * (peer + 1) * RAMP).astype(np.float32)


def weighted_mean(start: np.ndarray, clients: Iterable[int]) -> np.ndarray:
    """The FedAvg model after ``clients`` trained from ``start``."""
    ks = list(clients)
    w = np.array([SAMPLES[k] for k in ks], dtype=np.float64)
    trained = np.stack([affine(k, start).astype(np.float64) for k in ks])
    return np.asarray((w[:, None] * trained).sum(axis=0) / w.sum())


def _keys(key_mode: str, threshold: int | None = None, seed: int = 0) -> HeKeys:
    return paillier_keys(
        np.random.default_rng(seed),
        num_clients=N,
        key_bits=1024,
        clip=1.0,
        value_bits=16,
        max_weight=MAX_WEIGHT,
        key_mode=key_mode,
        threshold=threshold,
    )


@pytest.fixture(scope="module")
def group_keys() -> HeKeys:
    return _keys("group")


@pytest.fixture(scope="module")
def threshold_keys() -> HeKeys:
    return _keys("threshold", 2)  # 2 of 3


@pytest.fixture(scope="module")
def all_keys() -> HeKeys:
    return _keys("threshold")  # 3 of 3


@pytest.fixture(scope="module")
def other_keys() -> HeKeys:
    return _keys("group", seed=1)


class HeDriver(RecordingDriver):
    """The recording driver (per-client sample counts, every effect, lost messages), plus
    the coordinator's deadlines."""

    def timers(self, peer: int = COORD) -> list[TimerFired]:
        return [
            ev
            for p, ev in self.pending
            if p == peer and isinstance(ev, TimerFired) and ev.tag != "he:compute"
        ]

    def fire(self, rnd: int) -> list[Effect]:
        """The coordinator's deadline of round ``rnd`` for the phase now open passes (its
        oldest pending timer with that phase's tag); returns the effects."""
        coord = self.protocols[COORD]
        partials = coord._awaiting_partials(self.states[COORD])  # type: ignore[attr-defined]
        tag = "he_partials" if partials else "he_round"
        k = next(
            k
            for k, (p, ev) in enumerate(self.pending)
            if p == COORD and isinstance(ev, TimerFired) and (ev.tag, ev.round) == (tag, rnd)
        )
        before = len(self.effects)
        self.step(k)
        return [e for p, e in self.effects[before:] if p == COORD]

    def take(self, peer: int, cls: type) -> Event:
        """Remove ``peer``'s first pending event of type ``cls`` (to deliver it later)."""
        k = next(k for k, (p, ev) in enumerate(self.pending) if p == peer and isinstance(ev, cls))
        return self.pending.pop(k)[1]

    def stops(self, peer: int) -> int:
        return sum(1 for p, e in self.effects if p == peer and isinstance(e, Stop))


def he_star(
    keys: HeKeys,
    *,
    rounds: int = 2,
    drop: DropRule = _never,
    min_fraction: float = 1.0,
    samples: dict[int, int] | None = None,
) -> HeDriver:
    protos: list[Protocol[Any]] = [
        HeFedAvg(
            i,
            N,
            rounds=rounds,
            seed=100 + i,
            backend=keys.backend(i, N),
            params0=X0,
            timeout=TIMEOUT,
            min_fraction=min_fraction,
        )
        for i in range(N + 1)
    ]
    d = HeDriver.start(
        protos,
        [X0] * (N + 1),
        train_fn=affine,
        codec=Codec(HE_MESSAGES, vector_size=P),
        samples=dict(SAMPLES if samples is None else samples),
        drop=drop,
    )
    assert isinstance(d, HeDriver)
    return d


def drop_when(
    cls: type[Message],
    *,
    src: int | None = None,
    dst: int | None = None,
    rnd: int | None = None,
    times: int | None = None,
) -> DropRule:
    """Lose messages of type ``cls`` (from ``src``, to ``dst``, of round ``rnd``), the first
    ``times`` of them or all."""
    left = [times]

    def rule(s: int, t: int, msg: Message) -> bool:
        if not (
            isinstance(msg, cls)
            and src in (None, s)
            and dst in (None, t)
            and rnd in (None, _round(msg))
        ):
            return False
        if left[0] is None:
            return True
        left[0] -= 1
        return left[0] >= 0

    return rule


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=STEP + 1e-6)


def _sent(effects: Iterable[Effect]) -> list[tuple[int, Message]]:
    return [(e.to, e.message) for e in effects if isinstance(e, Send)]


def _round(msg: Message) -> int:
    assert isinstance(msg, HeAggregate | HeUpdate | HePartial | HePartials)
    return msg.round


def _train(effects: list[Effect]) -> Train:
    """The one effect, a Train."""
    assert len(effects) == 1 and isinstance(effects[0], Train), effects
    return effects[0]


def test_one_round_by_hand(group_keys: HeKeys) -> None:
    protos = [
        HeFedAvg(
            i, N, rounds=2, seed=100 + i, backend=group_keys.backend(i, N), params0=X0, timeout=2.5
        )
        for i in range(N + 1)
    ]
    states = [p.initial_state(X0) for p in protos]
    coordinator = protos[COORD]
    # round 0 opens with an empty aggregate (x^0 is public) and the round timer
    states[COORD], effects = coordinator.on_event(states[COORD], Started())
    assert effects[-1] == SetTimer(2.5, "he_round", 0)
    sent = _sent(effects)
    assert len(effects) == N + 1 and [k for k, _ in sent] == [0, 1, 2]
    opening = sent[0][1]
    assert isinstance(opening, HeAggregate)
    assert (opening.round, opening.blob.size, opening.weight, opening.final) == (0, 0, 0, False)
    updates = []
    for k in range(N):
        states[k], effects = protos[k].on_event(states[k], Started())
        assert effects == []  # a client waits for the coordinator
        states[k], effects = protos[k].on_event(states[k], MessageArrived(COORD, opening))
        np.testing.assert_array_equal(_train(effects).params, X0)
        done = TrainingDone(affine(k, X0), X0, 0.5, SAMPLES[k])
        states[k], effects = protos[k].on_event(states[k], done)
        [(to, update)] = _sent(effects)
        assert len(effects) == 1 and to == COORD and isinstance(update, HeUpdate)
        assert (update.round, update.samples) == (0, SAMPLES[k])
        assert protos[k].progress(states[k]) == 1
        updates.append(update)
    # the coordinator waits for every update, then sums them
    for k in range(N - 1):
        states[COORD], effects = coordinator.on_event(states[COORD], MessageArrived(k, updates[k]))
        assert effects == []
    states[COORD], effects = coordinator.on_event(states[COORD], MessageArrived(2, updates[2]))
    assert effects[0] == Emit("round_aggregated", {"round": 0, "clients": 3})
    assert effects[-1] == SetTimer(2.5, "he_round", 1)
    sent = _sent(effects)
    assert len(effects) == N + 2 and [k for k, _ in sent] == [0, 1, 2]
    agg = sent[0][1]
    assert isinstance(agg, HeAggregate)
    assert (agg.round, agg.weight, agg.final) == (1, sum(SAMPLES.values()), False)
    assert coordinator.progress(states[COORD]) == 1
    np.testing.assert_array_equal(coordinator.model(states[COORD]), X0)
    # each client decrypts the sample-weighted mean of the trained models and trains from it
    want = weighted_mean(X0, range(N))
    for k in range(N):
        states[k], effects = protos[k].on_event(states[k], MessageArrived(COORD, agg))
        _close(_train(effects).params, want)
        _close(protos[k].model(states[k]), want)
    # ... and the unweighted mean is not what they got
    unweighted = np.mean([affine(k, X0) for k in range(N)], axis=0)
    assert np.abs(protos[0].model(states[0]) - unweighted).max() > 100 * STEP


def test_a_full_run_through_the_codec(group_keys: HeKeys, threshold_keys: HeKeys) -> None:
    for keys in (group_keys, threshold_keys):
        d = he_star(keys, rounds=3)
        d.settle()
        assert d.done == set(range(N + 1))
        x = X0.astype(np.float64)
        for rnd in range(3):
            for k in range(N):
                _close(d.trains(k)[rnd], x)
            x = weighted_mean(d.trains(0)[rnd], range(N))
        for k in range(N):
            _close(d.models()[k], x)
        assert [r["clients"] for r in d.emits("round_aggregated", COORD)] == [3, 3, 3]
        assert {name for _, name in d.emitted} == {"round_aggregated"}


@pytest.mark.parametrize("corrupt", ["truncated", "garbage", "another-key"])
def test_a_malformed_update_is_refused_and_never_leaves_a_sum_of_two(
    group_keys: HeKeys, other_keys: HeKeys, corrupt: str
) -> None:
    d = he_star(group_keys)
    honest = d._execute
    damaged = [False]

    def tamper(peer: int, eff: Effect) -> None:  # client 1's first update arrives damaged
        if peer == 1 and isinstance(eff, Send) and isinstance(eff.message, HeUpdate):
            msg = eff.message
            if msg.round == 0 and not damaged[0]:
                damaged[0] = True
                if corrupt == "truncated":
                    blob = msg.blob[:-1]
                elif corrupt == "garbage":
                    blob = np.zeros(7, dtype=np.uint8)
                else:
                    raw, _ = other_keys.backend(1, N).encrypt(np.zeros(P), np.random.default_rng(0))
                    blob = np.frombuffer(raw, dtype=np.uint8)
                eff = Send(eff.to, dataclasses.replace(msg, blob=blob))
        honest(peer, eff)

    d._execute = tamper  # type: ignore[method-assign]
    d.settle()
    [refused] = d.emits("he_update_refused", COORD)
    assert refused["sender"] == 1
    reason = {"truncated": "wrong size", "garbage": "too short", "another-key": "another key"}
    assert reason[corrupt] in refused["reason"]
    # two good updates are no sum to release: each would reveal the other to its sender
    assert d.emits("he_round_too_small", COORD) == [{"round": 0, "updates": 2}]
    assert not d.emits("round_aggregated", COORD)
    effects = d.fire(0)  # the deadline asks client 1 again; its update now arrives intact
    assert [k for k, _ in _sent(effects)] == [1]
    d.settle()
    aggregated = d.emits("round_aggregated", COORD)
    assert aggregated == [{"round": 0, "clients": 3}, {"round": 1, "clients": 3}]
    for k in range(N):
        _close(d.trains(k)[1], weighted_mean(X0, range(N)))
    assert d.done == set(range(N + 1))


@pytest.mark.parametrize("case", ["length", "weight"])
def test_updates_refused_only_together_do_not_hang_the_coordinator(
    group_keys: HeKeys, case: str
) -> None:
    # length: client 1 encrypts one value too many (a well-formed ciphertext); weight: the
    # sample counts sum past the packing's max_weight, though each is within it
    samples = {**SAMPLES, 2: 90} if case == "weight" else None
    d = he_star(group_keys, samples=samples)
    honest = d._execute

    def longer(peer: int, eff: Effect) -> None:
        msg = eff.message if isinstance(eff, Send) else None
        if case == "length" and peer == 1 and isinstance(msg, HeUpdate) and msg.round == 0:
            raw, _ = group_keys.backend(1, N).encrypt(np.zeros(P + 1), np.random.default_rng(0))
            eff = Send(COORD, dataclasses.replace(msg, blob=np.frombuffer(raw, np.uint8)))
        honest(peer, eff)

    d._execute = longer  # type: ignore[method-assign]
    recursed = False
    try:
        d.settle()
    except RecursionError:  # not re-raised: pytest takes a minute to format its ~1000 causes
        recursed = True
    assert not recursed, "RecursionError in the coordinator"
    assert d.emits("he_update_refused", COORD)


def test_a_client_asked_again_resends_its_lost_update(group_keys: HeKeys) -> None:
    d = he_star(group_keys, drop=drop_when(HeUpdate, src=1, rnd=0, times=1))
    d.settle()
    ((_, _, lost),) = d.lost
    assert isinstance(lost, HeUpdate)
    assert d.states[COORD].round == 0  # waiting for client 1
    effects = d.fire(0)
    # the deadline re-sends the aggregate of the open round to the silent client only
    assert [(k, type(m)) for k, m in _sent(effects)] == [(1, HeAggregate)]
    assert effects[-1] == SetTimer(TIMEOUT, "he_round", 0)
    d.settle()
    # client 1 had reported round 0 already: it sends the same update again, not a new one
    resent = [m for _, m in d.sends(1, HeUpdate) if m.round == 0]
    assert len(resent) == 2
    np.testing.assert_array_equal(resent[1].blob, lost.blob)
    assert len(d.trains(1)) == 2  # rounds 0 and 1; the final model is not trained
    assert d.emits("round_aggregated", COORD)[0] == {"round": 0, "clients": 3}
    _close(d.trains(1)[1], weighted_mean(X0, range(N)))
    assert d.done == set(range(N + 1))


def test_a_deadline_below_the_quorum_resends_then_stalls_until_the_update_comes(
    group_keys: HeKeys,
) -> None:
    d = he_star(group_keys, drop=drop_when(HeAggregate, dst=2, rnd=0))
    d.settle()
    assert d.states[COORD].round == 0 and len(d.states[COORD].inbox) == 2
    for _ in range(MAX_RESENDS):
        effects = d.fire(0)
        assert [(k, _round(m)) for k, m in _sent(effects)] == [(2, 0)]
        assert isinstance(effects[-1], SetTimer)
        d.settle()
    assert d.fire(0) == [Emit("he_round_stalled", {"round": 0, "missing": 1})]
    assert not d.timers()  # no more deadlines: it waits
    assert not d.emits("round_aggregated")
    # the opening reaches client 2 at last: its update closes the round
    d.drop = _never
    opening = next(m for _, k, m in d.lost if k == 2)
    d.deliver(2, MessageArrived(COORD, opening))
    d.settle()
    assert d.emits("round_aggregated", COORD) == [
        {"round": 0, "clients": 3},
        {"round": 1, "clients": 3},
    ]
    assert d.done == set(range(N + 1))


def test_a_deadline_never_closes_a_round_on_fewer_than_three_updates(
    group_keys: HeKeys,
) -> None:
    # min_fraction 0.6 of 3 clients would be 2: the quorum is raised to 3 (a sum of two
    # would give each of the two the other's update)
    d = he_star(group_keys, min_fraction=0.6)
    assert d.protocols[COORD].quorum == 3  # type: ignore[attr-defined]
    d.settle(hold=lambda peer, ev: peer == 2 and isinstance(ev, TrainingDone))  # 2 is slow
    held = d.take(2, TrainingDone)
    effects = d.fire(0)
    assert not d.emits("round_aggregated", COORD)
    assert [(k, type(m)) for k, m in _sent(effects)] == [(2, HeAggregate)]  # asked again
    d.settle()
    assert len(d.trains(2)) == 1  # the repeated opening does not start a second training
    d.deliver(2, held)
    d.settle()
    assert d.emits("round_aggregated", COORD)[0] == {"round": 0, "clients": 3}
    assert d.done == set(range(N + 1))


def test_fewer_than_three_clients_are_refused(group_keys: HeKeys) -> None:
    with pytest.raises(ProtocolError, match="at least 3 clients"):
        HeFedAvg(2, 2, rounds=1, seed=0, backend=group_keys.backend(2, N), params0=X0, timeout=1.0)


def test_threshold_partials_are_forwarded_once_enough_are_in(threshold_keys: HeKeys) -> None:
    # round 1's partial decryptions of clients 1 and 2 are lost: 1 of the 2 needed is in
    d = he_star(
        threshold_keys,
        drop=lambda src, dst, msg: isinstance(msg, HePartial) and msg.round == 1 and src != 0,
    )
    d.settle()
    assert d.states[COORD].round == 1
    assert not d.sends(COORD, HePartials)
    assert all(len(d.trains(k)) == 1 for k in range(N))  # nobody can open round 1's model
    for _ in range(MAX_RESENDS):
        effects = d.fire(1)
        # re-sent to the clients whose partial is missing
        assert [(k, _round(m)) for k, m in _sent(effects)] == [(1, 1), (2, 1)]
        d.settle()
        assert not d.sends(COORD, HePartials)
    assert d.fire(1) == [Emit("he_round_stalled", {"round": 1, "missing": 2})]
    assert [t.round for t in d.timers()] == [0]  # round 0's, stale: no more deadlines
    # client 1's partial gets through at last: the first two partials go to every client
    d.drop = _never
    d.deliver(1, MessageArrived(COORD, d.sends(COORD, HeAggregate)[-1][1]))
    d.settle()
    forwarded = [(k, m) for k, m in d.sends(COORD, HePartials) if m.round == 1]
    assert [k for k, _ in forwarded] == [0, 1, 2]
    assert forwarded[0][1].holders.tolist() == [1, 2]  # key shares of clients 0 and 1
    for k in range(N):
        _close(d.trains(k)[1], weighted_mean(X0, range(N)))
    assert d.done == set(range(N + 1))


def test_a_client_that_lost_the_partials_gets_them_again(all_keys: HeKeys) -> None:
    d = he_star(all_keys, drop=drop_when(HePartials, dst=2, rnd=1, times=1))
    d.settle()
    ((_, _, lost),) = d.lost
    assert isinstance(lost, HePartials)
    assert len(d.trains(2)) == 1 and len(d.trains(0)) == 2  # 0 and 1 moved on
    effects = d.fire(1)  # the update phase's deadline: client 2 is silent
    assert [(k, type(m)) for k, m in _sent(effects)] == [(2, HeAggregate)]
    d.settle()
    # client 2 sent its partial again; the coordinator answered with the partials it forwarded
    assert len([m for _, m in d.sends(2, HePartial) if m.round == 1]) == 2
    again = [(k, m) for k, m in d.sends(COORD, HePartials) if m.round == 1][-1]
    assert again[0] == 2
    assert again[1].holders.tolist() == lost.holders.tolist()
    np.testing.assert_array_equal(again[1].blob, lost.blob)
    _close(d.trains(2)[1], weighted_mean(X0, range(N)))
    assert d.emits("round_aggregated", COORD)[1] == {"round": 1, "clients": 3}
    assert d.done == set(range(N + 1))


def test_threshold_update_phase_stalls_once(all_keys: HeKeys) -> None:
    d = he_star(all_keys, drop=drop_when(HeUpdate, src=2, rnd=1))
    d.settle()
    assert d.sends(COORD, HePartials)  # round 1's partials went out
    while d.timers():  # every deadline, stale ones (of a phase already over) included
        k = next(k for k, (p, ev) in enumerate(d.pending) if p == COORD and ev in d.timers())
        d.step(k)
        d.settle()
    resent = [k for k, m in d.sends(COORD, HeAggregate) if m.round == 1][N:]
    assert resent == [2] * MAX_RESENDS
    assert d.emits("he_round_stalled", COORD) == [{"round": 1, "missing": 1}]


def test_messages_from_anyone_but_the_coordinator_are_dropped(group_keys: HeKeys) -> None:
    d = he_star(group_keys, drop=drop_when(HeAggregate, rnd=0))  # nobody hears the opening
    d.settle()
    opening = d.lost[0][2]
    before = len(d.effects)
    d.deliver(0, MessageArrived(1, opening))  # a client relays the coordinator's message
    d.deliver(COORD, MessageArrived(COORD, HeUpdate(0, np.zeros(3, np.uint8), 5)))
    d.deliver(COORD, MessageArrived(N + 4, HePartial(0, np.zeros(3, np.uint8))))
    assert [(p, e) for p, e in d.effects[before:]] == [
        (0, Emit("unexpected_message_dropped", {"sender": 1})),
        (COORD, Emit("unexpected_message_dropped", {"sender": COORD})),
        (COORD, Emit("unexpected_message_dropped", {"sender": N + 4})),
    ]
    assert d.states[0].version == -1 and not d.trains(0)
    assert not d.states[COORD].inbox
    # the same message from the coordinator is taken
    d.deliver(0, MessageArrived(COORD, opening))
    assert len(d.trains(0)) == 1


@pytest.mark.parametrize("mode", ["group", "threshold"])
def test_the_last_round_ends_everyone_once(group_keys: HeKeys, all_keys: HeKeys, mode: str) -> None:
    d = he_star(group_keys if mode == "group" else all_keys, rounds=2)
    d.settle()
    assert d.done == set(range(N + 1))
    assert [d.stops(p) for p in range(N + 1)] == [1] * (N + 1)
    coord = [e for p, e in d.effects if p == COORD]
    last = coord.index(Stop())
    final = [(k, m) for k, m in _sent(coord[:last]) if _round(m) == 2]
    if mode == "group":
        # the coordinator sends the final aggregate, marked final, and stops at once
        assert [(k, isinstance(m, HeAggregate) and m.final) for k, m in final] == [
            (k, True) for k in range(N)
        ]
        assert coord[last - N - 1] == Emit("round_aggregated", {"round": 1, "clients": 3})
    else:
        # ... or, in threshold mode, the final aggregate's partials once enough are in
        assert [(k, type(m)) for k, m in final[-N:]] == [(k, HePartials) for k in range(N)]
        # the clients had stopped after their last update, and still sent their partials
        for k in range(N):
            mine = [e for p, e in d.effects if p == k]
            after = _sent(mine[mine.index(Stop()) :])
            assert [(to, type(m), _round(m)) for to, m in after] == [(COORD, HePartial, 2)]
    assert not [e for e in coord[last:] if isinstance(e, Send | SetTimer)]
    # every client trained twice, stopped right after its second update, adopted the final model
    x2 = weighted_mean(d.trains(0)[1], range(N))
    for k in range(N):
        assert len(d.trains(k)) == 2
        mine = [e for p, e in d.effects if p == k]
        [(_, update)] = _sent(mine[mine.index(Stop()) - 1 : mine.index(Stop())])
        assert isinstance(update, HeUpdate) and update.round == 1
        _close(d.models()[k], x2)
        assert d.protocols[k].progress(d.states[k]) == 2
    assert d.protocols[COORD].progress(d.states[COORD]) == 2
    # late deadlines and a duplicate final message change nothing
    before = len(d.effects)
    while d.timers():
        d.step(next(k for k, (_, ev) in enumerate(d.pending) if isinstance(ev, TimerFired)))
    last_msg = d.sends(COORD, HeAggregate if mode == "group" else HePartials)[-1][1]
    for k in range(N):
        d.deliver(k, MessageArrived(COORD, last_msg))
    assert d.effects[before:] == []
    assert [d.stops(p) for p in range(N + 1)] == [1] * (N + 1)


# --- 5. a lossy network ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("he", "lossless"),
    [({}, 8 + 16 * 4), ({"key_mode": "threshold"}, 8 + 32 * 4)],
    ids=["group", "threshold"],
)
def test_a_lossy_network_still_completes_every_round(
    tmp_path: Path, he: dict[str, Any], lossless: int
) -> None:
    cfg = _fedavg(
        {"aggregation": "he", "he": {"key_bits": 1024, **he}},
        rounds=4,
        network={"loss": 0.1},
    )
    cfg["seed"] = 5
    s = run(cfg, out=tmp_path / "lossy").summary
    assert s["status"] == "completed"
    assert s["rounds_completed"] == [4] * 8
    assert s["protocol_events"].get("round_aggregated") == 4
    assert "he_round_stalled" not in s["protocol_events"]
    msgs = s["messages"]
    assert msgs["lost"] > 0 and msgs["in_flight"] == 0
    assert msgs["sent"] > lossless  # lost frames were sent again
    assert s["final"]["mean_acc"] > 0.5
