"""he-gossip: D-PSGD whose neighbourhood sums a relay computes on ciphertexts it cannot read.

The mixing maths against plain D-PSGD, the relay's rules (never a sum of one, serve at the
deadline with what arrived), what the relay holds, config validation, and whole runs on both
runtimes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from p2pfed import run
from p2pfed.config import config_from_mapping
from p2pfed.crypto.he import HEError
from p2pfed.crypto.paillier import KeyShare, PaillierSecretKey
from p2pfed.errors import ConfigError
from p2pfed.experiment import build_peers, build_world
from p2pfed.protocol.codec import Codec
from p2pfed.protocol.core import MessageArrived, Send, Started, TimerFired, TrainingDone
from p2pfed.protocol.he import (
    PAILLIER_COSTS,
    WEIGHT_SCALE,
    HeGossip,
    HeKeys,
    HeNeighbourSum,
    HeShare,
    paillier_keys,
)
from p2pfed.topology import build_schedule
from p2pfed.topology.spec import TopologySpec
from tests.conftest import small_config
from tests.protocol_driver import Driver

DIM = 40
CLIP = 1.0
STEP = CLIP / (2**15 - 1)


def _schedule(kind: str, n: int) -> Any:
    return build_schedule(TopologySpec(kind=kind, n=n), seed=0)


@pytest.fixture(scope="module")
def keys() -> HeKeys:
    return paillier_keys(
        np.random.default_rng(0),
        num_clients=5,
        key_bits=1024,
        clip=CLIP,
        value_bits=16,
        max_weight=WEIGHT_SCALE + 5,
        key_mode="group",
        threshold=None,
    )


def _protocols(schedule: Any, keys: HeKeys, rounds: int = 1) -> list[Any]:
    n = schedule.at(0).n
    params0 = np.zeros(DIM, dtype=np.float32)
    return [
        HeGossip(
            i,
            schedule,
            rounds=rounds,
            seed=i,
            backend=keys.backend(i, n, stochastic=False),
            params0=params0,
            timeout=1.0,
        )
        for i in range(n + 1)
    ]


def _shift(peer: int, p: np.ndarray) -> np.ndarray:
    """'Training': a different, deterministic step per peer."""
    return p + 0.01 * (peer + 1) ** 2 * np.linspace(-1, 1, p.size, dtype=np.float32)


def test_one_round_mixes_like_plain_dpsgd(keys: HeKeys) -> None:
    schedule = _schedule("ring", 5)
    protocols = _protocols(schedule, keys)
    codec = Codec(HeGossip.messages, vector_size=DIM)
    d = Driver.start(protocols, [np.zeros(DIM, np.float32)] * 6, train_fn=_shift, codec=codec)
    d.run()
    topo = schedule.at(0)
    halves = [_shift(i, np.zeros(DIM, np.float32)).astype(np.float64) for i in range(5)]
    for i in range(5):
        expected = sum(topo.weight(i, j) * halves[j] for j in range(5) if topo.weight(i, j))
        got = d.models()[i]
        # the neighbours' sum is quantised: two values of at most half a step each
        assert np.max(np.abs(got - expected)) < 2 * STEP
        assert np.max(np.abs(got - halves[i])) > 100 * STEP  # it really mixed
    assert d.done == set(range(6))  # every peer and the relay stopped


def test_the_relay_sees_only_ciphertexts_and_sends_only_sums(keys: HeKeys) -> None:
    schedule = _schedule("ring", 5)
    protocols = _protocols(schedule, keys)
    d = Driver.start(protocols, [np.zeros(DIM, np.float32)] * 6, train_fn=_shift)
    seen_by_peers: list[Any] = []
    while d.pending:
        peer, event = d.step(0)
        if isinstance(event, MessageArrived):
            if peer < 5:
                seen_by_peers.append(event.message)
                assert event.sender == 5  # peers hear only from the relay
            else:
                assert isinstance(event.message, HeShare)
    sums = [m for m in seen_by_peers if isinstance(m, HeNeighbourSum)]
    assert len(sums) == 5
    assert all(len(m.included) == 2 for m in sums)  # on a ring: both neighbours, never one


def test_a_sum_of_one_neighbour_is_never_sent(keys: HeKeys) -> None:
    schedule = _schedule("ring", 5)
    protocols = _protocols(schedule, keys)
    relay = protocols[5]
    state = relay.initial_state(np.zeros(DIM, np.float32))
    share0 = _share(keys, 0)
    state, effects = relay.on_event(state, MessageArrived(0, share0))
    sends = [e for e in effects if isinstance(e, Send)]
    assert not sends  # nobody's neighbourhood is complete yet
    # the deadline: peers 1 and 4 have neighbour 0 only, the others nothing
    state, effects = relay.on_event(state, TimerFired("he_relay", 0))
    out = {e.to: e.message for e in effects if isinstance(e, Send)}
    assert set(out) == set(range(5))
    for msg in out.values():
        assert isinstance(msg, HeNeighbourSum)
        assert msg.included.size == 0 and msg.blob.size == 0 and msg.weight == 0


def _share(keys: HeKeys, peer: int) -> HeShare:
    backend = keys.backend(peer, 5)
    blob, _ = backend.encrypt(np.full(DIM, 0.1 * (peer + 1)), np.random.default_rng(peer))
    return HeShare(0, np.frombuffer(blob, dtype=np.uint8))


def test_a_peer_without_a_sum_keeps_its_own_model_and_says_so(keys: HeKeys) -> None:
    schedule = _schedule("ring", 5)
    protocols = _protocols(schedule, keys)
    peer = protocols[0]
    state = peer.initial_state(np.zeros(DIM, np.float32))
    state, effects = peer.on_event(state, Started())
    half = np.full(DIM, 0.25, dtype=np.float32)
    state, effects = peer.on_event(state, TrainingDone(half, np.zeros(DIM, np.float32), 0.0, 10))
    assert any(isinstance(e, Send) and isinstance(e.message, HeShare) for e in effects)
    empty = HeNeighbourSum(0, np.zeros(0, dtype=np.int64), 0, np.zeros(0, dtype=np.uint8))
    state, effects = peer.on_event(state, MessageArrived(5, empty))
    np.testing.assert_array_equal(state.params, half)
    names = [getattr(e, "name", None) for e in effects]
    assert "neighbours_skipped" in names
    assert state.round == 1


def test_a_sum_naming_a_non_neighbour_is_refused(keys: HeKeys) -> None:
    schedule = _schedule("ring", 5)
    protocols = _protocols(schedule, keys)
    peer = protocols[0]
    state = peer.initial_state(np.zeros(DIM, np.float32))
    state, _ = peer.on_event(state, Started())
    half = np.full(DIM, 0.25, dtype=np.float32)
    state, _ = peer.on_event(state, TrainingDone(half, np.zeros(DIM, np.float32), 0.0, 10))
    relay_backend = keys.backend(5, 5)
    blob = relay_backend.aggregate([(bytes(_share(keys, j).blob), 1) for j in (2, 3)])
    bad = HeNeighbourSum(0, np.array([2, 3]), 2, np.frombuffer(blob, dtype=np.uint8))
    state, effects = peer.on_event(state, MessageArrived(5, bad))
    names = [getattr(e, "name", None) for e in effects]
    assert "he_sum_refused" in names
    np.testing.assert_array_equal(state.params, half)  # nothing mixed in


def test_the_relay_holds_no_secret(tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 5},
        security={"aggregation": "he", "he": {"scheme": "paillier", "key_bits": 1024}},
    )
    world = build_world(config_from_mapping(cfg))
    assert world.participants == 6
    (relay,) = build_peers(world, [5], "cpu")
    found: list[Any] = []
    _walk(relay.protocol, found, set())
    assert not any(isinstance(x, (PaillierSecretKey, KeyShare)) for x in found)
    with pytest.raises(HEError):
        relay.protocol.backend.decrypt(b"", 1)  # type: ignore[attr-defined]
    (client,) = build_peers(world, [0], "cpu")
    found = []
    _walk(client.protocol, found, set())
    assert any(isinstance(x, PaillierSecretKey) for x in found)  # the walk does reach keys


def _walk(obj: Any, out: list[Any], seen: set[int]) -> None:
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray, type)):
        return
    seen.add(id(obj))
    out.append(obj)
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            _walk(getattr(obj, f.name), out, seen)
    if hasattr(obj, "__dict__"):
        for v in vars(obj).values():
            _walk(v, out, seen)
    if isinstance(obj, (list, tuple, set)):
        for v in obj:
            _walk(v, out, seen)
    if isinstance(obj, dict):
        for v in obj.values():
            _walk(v, out, seen)


def test_config_refuses_threshold_keys_and_peers_with_one_neighbour(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key_mode group"):
        run(
            small_config(
                security={"aggregation": "he", "he": {"key_mode": "threshold"}},
            ),
            out=tmp_path / "a",
        )
    with pytest.raises(ConfigError, match="at least 2 in-neighbours"):
        run(
            small_config(
                topology={"kind": "star", "n": 5},
                security={"aggregation": "he", "he": {"key_bits": 1024}},
            ),
            out=tmp_path / "b",
        )


@pytest.mark.parametrize("scheme", ["paillier", "ckks"])
def test_a_digits_run_matches_plain_dpsgd(tmp_path: Path, scheme: str) -> None:
    base: dict[str, Any] = {
        "topology": {"kind": "torus", "n": 9},
        "model": {"kind": "mlp", "hidden": [16]},
        "protocol": {"kind": "dpsgd", "rounds": 4},
    }
    plain = run(small_config(**base), out=tmp_path / "plain").summary
    he: dict[str, Any] = {"scheme": scheme}
    if scheme == "paillier":
        he["key_bits"] = 1024
    result = run(
        small_config(**base, security={"aggregation": "he", "he": he}), out=tmp_path / scheme
    )
    sec = result.summary
    assert sec["status"] == "completed"
    assert sec["final"]["mean_acc"] == pytest.approx(plain["final"]["mean_acc"], abs=0.005)
    assert sec["bytes"]["total"] > plain["bytes"]["total"]  # ciphertexts are larger
    assert result.config.security.he.scheme == scheme


def test_ray_reproduces_the_in_process_he_gossip_run(ray_local: Any, tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 5},
        protocol={"kind": "dpsgd", "rounds": 2},
        security={"aggregation": "he", "he": {"scheme": "paillier", "key_bits": 1024}},
    )
    local = run(cfg, out=tmp_path / "local").summary
    on_ray = run({**cfg, "runtime": {"kind": "ray", "hosts": 2}}, out=tmp_path / "ray").summary
    assert on_ray["status"] == "completed"
    assert on_ray["final"]["mean_acc"] == local["final"]["mean_acc"]
    wall = run(
        {**cfg, "runtime": {"kind": "ray", "hosts": 2}, "time": {"mode": "wall"}},
        out=tmp_path / "wall",
    ).summary
    assert wall["status"] == "completed"


def test_clipped_encrypted_inputs_are_warned_about(tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 5},
        protocol={"kind": "dpsgd", "rounds": 2},
        security={"aggregation": "he", "he": {"key_bits": 1024, "clip": 1e-4}},
    )
    s = run(cfg, out=tmp_path / "clip").summary
    assert s["protocol_events"]["he_input_clipped"] == 10  # every peer, every round
    assert any("raise security.he.clip" in w for w in s["warnings"]), s["warnings"]


@pytest.mark.parametrize("kind", ["fedavg", "dpsgd"])
def test_virtual_time_charges_the_reference_cost_of_the_crypto(tmp_path: Path, kind: str) -> None:
    rounds = 3
    base = small_config(
        topology={"kind": "ring", "n": 5},
        model={"kind": "mlp", "hidden": [16]},
        protocol={"kind": kind, "rounds": rounds},
    )

    def go(charge: bool) -> Any:
        he = {"scheme": "paillier", "key_bits": 1024}
        sec = {"aggregation": "he", "he": he, "charge_compute": charge}
        return run({**base, "security": sec}, out=tmp_path / str(charge))

    free, charged = go(False), go(True)
    assert charged.summary["final"]["mean_acc"] == free.summary["final"]["mean_acc"]
    params = free.summary["params"]
    cts = -(-params // ((1024 - 1) // 32))  # 32-bit slots: 16-bit values + padding
    scale = 0.5**2.8
    # every round, on the critical path: a client's encryption and decryption at least
    floor = rounds * cts * scale * (PAILLIER_COSTS["encrypt_crt"] + PAILLIER_COSTS["decrypt"])
    extra = charged.summary["virtual_time"] - free.summary["virtual_time"]
    assert floor * 0.9 <= extra <= floor * 3, (extra, floor)


def test_wall_time_charges_nothing(tmp_path: Path) -> None:
    cfg = small_config(
        topology={"kind": "ring", "n": 5},
        runtime={"kind": "ray"},
        time={"mode": "wall"},
        security={"aggregation": "he", "he": {"key_bits": 1024}},
    )
    world = build_world(config_from_mapping(cfg))
    (peer,) = build_peers(world, [0], "cpu")
    assert peer.protocol.charge is False  # type: ignore[attr-defined]
    virtual = build_world(config_from_mapping({**cfg, "runtime": {}, "time": {}}))
    (peer,) = build_peers(virtual, [0], "cpu")
    assert peer.protocol.charge is True  # type: ignore[attr-defined]
