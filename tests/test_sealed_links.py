"""Sealed links (security.channel: aead): the LinkGuard, and runs that use it end to end."""

from __future__ import annotations

import csv
import functools
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.config import config_from_mapping
from p2pfed.crypto import channel as sealing
from p2pfed.crypto import links
from p2pfed.crypto.channel import REPLAY_WINDOW, Identity, KeyAdvert, Opener, Sealer, SealError
from p2pfed.crypto.config import SecurityConfig
from p2pfed.crypto.links import SEAL_OVERHEAD, KeyDirectory, LinkGuard, identity_seed, link_guard
from p2pfed.experiment import build_world, run
from tests.conftest import small_config

SEED = 11
KIND = "ModelShare"
PLAIN = b"a frame's plaintext: " + bytes(range(200))


def _guard(local: Sequence[int], rotate_every: float | None = None, seed: int = SEED) -> LinkGuard:
    cfg = SecurityConfig(channel="aead", rotate_every=rotate_every)
    guard = link_guard(cfg, seed, 4, local)
    assert guard is not None
    return guard


@pytest.fixture
def pair() -> tuple[LinkGuard, LinkGuard]:
    """Two engines' guards: one carrying peer 0, one carrying peer 1 (rotation every 10 s)."""
    return _guard([0], 10.0), _guard([1], 10.0)


# --- the guard on its own -----------------------------------------------------------------


def test_a_sealed_frame_opens_at_its_receiver_only(pair: tuple[LinkGuard, LinkGuard]) -> None:
    a, b = pair
    frame = a.seal(0, 1, KIND, 1.0, PLAIN)
    assert len(frame) == len(PLAIN) + SEAL_OVERHEAD + len(KIND)
    assert PLAIN[:32] not in frame
    assert b.open(0, 1, 1.5, frame) == (KIND, PLAIN)
    assert (a.sealed, b.opened) == (1, 1)
    with pytest.raises(ValueError, match="not local"):  # peer 2 lives elsewhere
        _guard([2], 10.0).open(0, 1, 1.5, frame)


def test_guards_built_from_one_seed_agree_and_another_seed_does_not() -> None:
    frame = _guard([0]).seal(0, 1, KIND, 0.0, PLAIN)
    assert _guard([0]).seal(0, 1, KIND, 0.0, PLAIN) == frame  # reproducible runs
    assert _guard([1]).open(0, 1, 0.0, frame) == (KIND, PLAIN)
    stranger = _guard([1], seed=SEED + 1)
    with pytest.raises(SealError, match="authentication failed"):
        stranger.open(0, 1, 0.0, frame)


# offsets into ``len(kind) || kind || header || ciphertext || tag``; header =
# version (1), sender (4), receiver (4), epoch (4), counter (8)
_H = 1 + len(KIND)


def _flip(at: int) -> Callable[[bytes], bytes]:
    def tamper(frame: bytes) -> bytes:
        b = bytearray(frame)
        b[at] ^= 0x01
        return bytes(b)

    return tamper


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        pytest.param(_flip(_H + 21 + 50), "authentication failed", id="ciphertext"),
        pytest.param(_flip(-1), "authentication failed", id="tag"),
        pytest.param(_flip(_H + 20), "authentication failed", id="header-counter"),
        pytest.param(_flip(3), "authentication failed", id="message-type"),
        pytest.param(_flip(_H + 8), "sealed for another link", id="header-receiver"),
        pytest.param(_flip(_H + 11), "epoch not yet begun", id="header-epoch"),
        pytest.param(_flip(_H), "unknown seal version 0", id="header-version"),
        pytest.param(_flip(0), "unknown seal version 0", id="type-length"),  # header shifts
        pytest.param(
            lambda f: f[:1] + b"\xff" * len(KIND) + f[_H:],
            "malformed sealed frame",
            id="type-not-ascii",
        ),
        pytest.param(lambda f: f[:30], "sealed frame too short", id="truncated"),
        pytest.param(lambda f: b"", "sealed frame too short", id="empty"),
    ],
)
def test_a_tampered_frame_is_refused_with_its_reason(
    pair: tuple[LinkGuard, LinkGuard], tamper: Callable[[bytes], bytes], reason: str
) -> None:
    a, b = pair
    frame = a.seal(0, 1, KIND, 1.0, PLAIN)
    with pytest.raises(SealError) as caught:
        b.open(0, 1, 1.0, tamper(frame))
    assert caught.value.reason == reason
    assert b.rejected == {reason: 1}
    assert b.open(0, 1, 1.0, frame) == (KIND, PLAIN)  # a refusal changes nothing


def test_a_replayed_frame_is_refused(pair: tuple[LinkGuard, LinkGuard]) -> None:
    a, b = pair
    first, second = a.seal(0, 1, KIND, 1.0, PLAIN), a.seal(0, 1, KIND, 1.0, PLAIN)
    assert b.open(0, 1, 2.0, second)[1] == PLAIN  # overtaken frames are fine, once
    assert b.open(0, 1, 2.0, first)[1] == PLAIN
    for frame in (first, second):
        with pytest.raises(SealError, match="replayed or too old"):
            b.open(0, 1, 3.0, frame)
    assert b.rejected == {"replayed or too old": 2} and b.opened == 2


def test_a_frame_for_another_link_is_refused(pair: tuple[LinkGuard, LinkGuard]) -> None:
    a, b = pair
    frame = a.seal(0, 1, KIND, 1.0, PLAIN)
    with pytest.raises(SealError, match="sealed for another link"):
        b.open(2, 1, 1.0, frame)  # the transport claims another sender


def test_keys_rotate_at_epoch_boundaries_and_old_ones_are_forgotten(
    pair: tuple[LinkGuard, LinkGuard],
) -> None:
    a, b = pair
    e0, e1, e2 = (a.seal(0, 1, KIND, t, PLAIN) for t in (5.0, 15.0, 25.0))
    assert len({f[_H + 9 : _H + 13] for f in (e0, e1, e2)}) == 3  # three epochs, three keys
    assert a.held_epochs(0) == {1, 2}  # epoch 0 forgotten once epoch 2 began
    assert b.open(0, 1, 15.0, e0)[1] == PLAIN  # in flight across a boundary: still accepted
    assert b.open(0, 1, 25.0, e1)[1] == PLAIN
    with pytest.raises(SealError, match="epoch expired"):
        b.open(0, 1, 25.0, e0)
    assert b.open(0, 1, 25.0, e2)[1] == PLAIN
    assert b.held_epochs(1) == {1, 2}
    e4 = a.seal(0, 1, KIND, 45.0, PLAIN)
    assert a.held_epochs(0) == {4}  # nothing of epochs 1-2 is left
    with pytest.raises(SealError, match="epoch not yet begun"):
        b.open(0, 1, 25.0, e4)  # two epochs ahead of the receiver's clock
    assert b.open(0, 1, 35.0, e4)[1] == PLAIN  # one ahead: clock skew between hosts
    with pytest.raises(SealError, match="epoch expired"):  # a replay after rotation
        b.open(0, 1, 45.0, e2)


def test_without_rotation_every_time_is_epoch_zero() -> None:
    a, b = _guard([0]), _guard([1])
    assert a.epoch(0.0) == a.epoch(1e9) == 0
    assert b.open(0, 1, 1e9, a.seal(0, 1, KIND, 0.0, PLAIN))[1] == PLAIN


def _forged(peer: int, epoch: int) -> KeyAdvert:
    """An advert for ``peer`` signed by somebody else's identity key."""
    return Identity.from_seed(peer, b"an attacker's own seed").advert(epoch)


def test_a_forged_key_advert_is_refused_where_it_is_used(pair: tuple[LinkGuard, LinkGuard]) -> None:
    a, b = pair
    a.directory.publish(_forged(1, 0))
    with pytest.raises(SealError, match="key advert signature invalid"):
        a.seal(0, 1, KIND, 1.0, PLAIN)  # the sender will not seal to the attacker's key
    assert a.rejected == {"key advert signature invalid": 1} and a.sealed == 0
    b.directory.publish(_forged(0, 0))
    frame = _guard([0], 10.0).seal(0, 1, KIND, 1.0, PLAIN)
    with pytest.raises(SealError, match="key advert signature invalid"):
        b.open(0, 1, 1.0, frame)  # nor open a frame under it
    # a signature over another peer's advert does not transfer either
    real = Identity.from_seed(2, identity_seed(SEED, 2)).advert(0)
    a.directory.publish(KeyAdvert(1, 0, real.link_key, real.signature))
    with pytest.raises(SealError, match="key advert signature invalid"):
        a.seal(0, 1, KIND, 1.0, PLAIN)
    # the genuine advert, published again, restores the link
    a.directory.publish(Identity.from_seed(1, identity_seed(SEED, 1)).advert(0))
    assert _guard([1], 10.0).open(0, 1, 1.0, a.seal(0, 1, KIND, 1.0, PLAIN))[1] == PLAIN


def test_the_directory_refuses_unknown_peers_and_mislabelled_adverts() -> None:
    directory = KeyDirectory.from_seed(3, SEED)
    with pytest.raises(SealError, match="no identity key registered for peer 7"):
        directory.advert(7, 0)
    good = directory.advert(1, 3)
    directory.publish(KeyAdvert(1, 4, good.link_key, good.signature))
    with pytest.raises(SealError, match="key advert signature invalid"):  # epoch 3's, not 4's
        directory.advert(1, 4)
    directory.publish(good)  # filed under (1, 3) again
    assert directory.advert(1, 3) == good
    bare = KeyDirectory({0: directory.identity_key(0)})
    with pytest.raises(SealError, match="posted no key advert"):
        bare.advert(0, 0)


def test_plain_channels_build_no_guard() -> None:
    assert link_guard(SecurityConfig(), SEED, 4, [0, 1]) is None


def _link() -> tuple[Sealer, Opener]:
    a, b = _guard([0]).identities[0], _guard([1]).identities[1]
    key = sealing.link_key(a, b.advert(0), 0, 1)
    return Sealer(key, 0, 1, 0), Opener(key, 0, 1, 0)


@functools.cache
def _link_frames() -> tuple[bytes, tuple[bytes, ...]]:
    """One link's key and its first 3 * REPLAY_WINDOW + 1 frames (sealed once: slow)."""
    sealer, _ = _link()
    return sealer.key, tuple(sealer.seal(KIND, b"") for _ in range(3 * REPLAY_WINDOW + 1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3 * REPLAY_WINDOW), max_size=300), st.integers(0, 2**32))
def test_the_replay_window_accepts_what_a_naive_reference_accepts(
    order: list[int], shuffle: int
) -> None:
    """Differential: each arrival (reordered, repeated, or far behind) is accepted exactly when
    its counter is new and within REPLAY_WINDOW of the highest accepted (RFC 4303)."""
    key, frames = _link_frames()
    opener = Opener(key, 0, 1, 0)
    edge = [REPLAY_WINDOW + 5, 5, 6, 4]  # just outside, just inside, outside the window
    arrivals = edge + order + random.Random(shuffle).sample(order, len(order))  # and replays
    accepted: set[int] = set()
    for c in arrivals:
        fresh = c not in accepted and c > max(accepted, default=-1) - REPLAY_WINDOW
        try:
            opener.open(KIND, frames[c])
        except SealError as exc:
            assert not fresh and exc.reason == "replayed or too old"
        else:
            assert fresh
            accepted.add(c)


def test_a_links_replay_state_stays_small_however_long_the_run() -> None:
    """Counters seen are kept as a bitmap: a set of them reached ~180 KiB a link."""
    sealer, opener = _link()
    for _ in range(3 * REPLAY_WINDOW):
        opener.open(KIND, sealer.seal(KIND, b""))
    assert sum(sys.getsizeof(v) for v in vars(opener).values()) < 1024


# --- runs --------------------------------------------------------------------------------

AEAD = {"channel": "aead"}
FEDAVG = {"kind": "fedavg", "rounds": 4}


def test_a_sealed_run_learns_like_a_plain_one_and_a_tap_sees_no_plaintext(
    tmp_path: Path,
) -> None:
    cfg = small_config(protocol=FEDAVG)
    # the coordinator's first broadcast is the initial model, as it is
    needle = build_world(config_from_mapping(cfg)).params0.tobytes()
    seen: dict[str, list[bytes]] = {"plain": [], "aead": []}
    results = {}
    for channel in seen:
        results[channel] = run(
            small_config(protocol=FEDAVG, security={"channel": channel}),
            out=tmp_path / channel,
            taps=[lambda t, src, dst, frame, c=channel: seen[c].append(frame)],
        )
    plain, aead = results["plain"], results["aead"]
    assert aead.summary["status"] == "completed"
    assert aead.mean_accuracy == pytest.approx(plain.mean_accuracy, abs=0.02)
    assert aead.summary["messages"] == plain.summary["messages"]
    assert aead.summary["frames_rejected"] == 0
    assert any(needle in f for f in seen["plain"])
    assert len(seen["aead"]) == len(seen["plain"])
    assert not any(needle[k : k + 16] in f for f in seen["aead"] for k in range(0, 256, 16))
    # the seal's overhead is counted on every edge, and only there
    assert plain.summary["bytes"]["crypto"] == 0
    crypto = aead.summary["bytes"]["crypto"]
    assert crypto >= SEAL_OVERHEAD * aead.summary["messages"]["sent"]
    with (aead.run_dir / "edges.csv").open() as f:
        assert sum(int(e["crypto_bytes"]) for e in csv.DictReader(f)) == crypto
    for key in ("payload", "metadata"):
        assert aead.summary["bytes"][key] == plain.summary["bytes"][key]
    assert aead.summary["bytes"]["total"] == plain.summary["bytes"]["total"] + crypto


class FlipEvery:
    """Flips one bit in the middle of every ``k``-th frame it sees (an on-path adversary)."""

    def __init__(self, k: int):
        self.k, self.seen, self.flipped = k, 0, 0

    def __call__(self, t: float, src: int, dst: int, frame: bytes) -> list[bytes]:
        self.seen += 1
        if self.seen % self.k:
            return [frame]
        self.flipped += 1
        b = bytearray(frame)
        b[len(b) // 2] ^= 0x01
        return [bytes(b)]


class ReplayEvery:
    """Sends every ``k``-th frame twice."""

    def __init__(self, k: int):
        self.k, self.seen, self.replayed = k, 0, 0

    def __call__(self, t: float, src: int, dst: int, frame: bytes) -> list[bytes]:
        self.seen += 1
        if self.seen % self.k:
            return [frame]
        self.replayed += 1
        return [frame, frame]


def _events(run_dir: Path, name: str) -> list[dict[str, Any]]:
    with (run_dir / "events.jsonl").open() as f:
        return [e for e in map(json.loads, f) if e["event"] == name]


def _ticks(rows: list[dict[str, Any]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for r in rows:
        out.setdefault(r["tick"], []).append(r["peer"])
    return out


def test_tampered_and_replayed_frames_are_refused_and_the_run_goes_on(tmp_path: Path) -> None:
    cfg = small_config(security=AEAD)
    clean = run(cfg, out=tmp_path / "clean")
    flip, replay = FlipEvery(5), ReplayEvery(7)
    attacked = run(cfg, out=tmp_path / "attacked", interceptors=[flip, replay])
    s = attacked.summary
    assert s["status"] == "completed"
    assert s["rounds_completed"] == clean.summary["rounds_completed"]
    reasons = s["frames_rejected_by_reason"]
    # every flipped frame fails its tag, every replayed one its counter (a replayed flipped
    # frame fails its tag twice)
    assert flip.flipped > 0 and replay.replayed > 0
    assert reasons["authentication failed"] >= flip.flipped
    assert reasons["replayed or too old"] > 0
    assert sum(reasons.values()) == s["frames_rejected"] == s["messages"]["rejected"]
    assert s["frames_rejected"] == flip.flipped + replay.replayed
    m = s["messages"]
    assert m["sent"] == m["delivered"] + m["lost"] + m["rejected"]
    assert m["sent"] == clean.summary["messages"]["sent"] + replay.replayed
    logged = _events(attacked.run_dir, "frame_rejected")
    assert len(logged) == s["frames_rejected"]
    assert {e["reason"] for e in logged} == set(reasons)
    assert all({"peer", "sender", "t"} <= set(e) for e in logged)
    # no metric is lost: every tick scores every peer, as many ticks as the clean run or
    # more (a refused model is waited for until the round's timeout)
    ticks, clean_ticks = _ticks(attacked.metrics()), _ticks(clean.metrics())
    assert list(ticks) == list(range(len(ticks))) and len(ticks) >= len(clean_ticks)
    assert all(sorted(peers) == list(range(6)) for peers in ticks.values())


def test_plain_links_deliver_what_sealed_links_refuse(tmp_path: Path) -> None:
    flips = {"plain": FlipEvery(5), "aead": FlipEvery(5)}
    out = {
        c: run(
            small_config(security={"channel": c}),
            out=tmp_path / c,
            interceptors=[flips[c]],
        ).summary
        for c in flips
    }
    # sealed: every altered frame is refused; plain: altered tensors decode fine and reach
    # the model (a flip in the middle of a frame lands in its parameters)
    assert out["aead"]["frames_rejected"] == flips["aead"].flipped > 0
    assert out["plain"]["frames_rejected"] < flips["plain"].flipped
    assert out["plain"]["messages"]["delivered"] == out["plain"]["messages"]["sent"]


def test_a_forged_key_advert_in_a_run_is_refused_and_the_run_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peer 2's advert is forged on every engine's directory: its links fail closed at both
    ends, each refusal counted and logged, and the run still completes (by timeouts)."""
    original = links.KeyDirectory.from_seed

    def forged(num_participants: int, run_seed: int) -> KeyDirectory:
        directory = original(num_participants, run_seed)
        directory.publish(_forged(2, 0))
        return directory

    monkeypatch.setattr(links.KeyDirectory, "from_seed", staticmethod(forged))
    res = run(small_config(security=AEAD), out=tmp_path)
    s = res.summary
    assert s["status"] == "completed"
    reasons = s["frames_rejected_by_reason"]
    assert reasons.keys() == {
        "cannot seal: key advert signature invalid",
        "key advert signature invalid",
    }
    refused = {(e["sender"], e["peer"]) for e in _events(res.run_dir, "frame_rejected")}
    assert refused == {(1, 2), (3, 2), (2, 1), (2, 3)}  # peer 2's links in the ring, both ways
    assert all(sorted(peers) == list(range(6)) for peers in _ticks(res.metrics()).values())


def test_keys_rotating_every_round_change_nothing_but_the_bytes(tmp_path: Path) -> None:
    still = run(small_config(security=AEAD), out=tmp_path / "still")
    rotating = run(small_config(security={**AEAD, "rotate_every": 0.1}), out=tmp_path / "rot")
    assert rotating.summary["frames_rejected"] == 0
    assert rotating.metrics() == still.metrics()
    # too short an epoch for the latency: frames expire in flight, the run survives
    short = run(small_config(security={**AEAD, "rotate_every": 0.004}), out=tmp_path / "short")
    assert short.summary["status"] == "completed"
    assert short.summary["frames_rejected_by_reason"].get("epoch expired", 0) > 0
    assert any("rotate_every (0.004s) should be well above" in w for w in short.summary["warnings"])
    assert not any("rotate_every" in w for w in rotating.summary["warnings"])


def test_no_key_nonce_pair_repeats_in_a_run_with_rotation_and_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The (key, nonce) pairs that AES-GCM really sealed with, over a whole run whose keys
    rotate about every round and whose frames an on-path adversary replays: all distinct."""
    used: list[tuple[bytes, bytes]] = []
    inside: list[bool] = []  # within Sealer.seal
    seal, new = sealing.Sealer.seal, sealing.AES.new

    def watched_seal(self: Sealer, kind: str, plaintext: bytes) -> bytes:
        inside.append(True)
        try:
            return seal(self, kind, plaintext)
        finally:
            inside.pop()

    def watched_new(key: bytes, mode: int, *args: Any, **kwargs: Any) -> Any:
        if inside and mode == sealing.AES.MODE_GCM:  # GCM itself makes an ECB cipher
            used.append((bytes(key), bytes(kwargs["nonce"])))
        return new(key, mode, *args, **kwargs)

    monkeypatch.setattr(sealing.Sealer, "seal", watched_seal)
    monkeypatch.setattr(sealing.AES, "new", watched_new)
    cfg = small_config(security={**AEAD, "rotate_every": 0.1})
    replay = ReplayEvery(3)
    s = run(cfg, out=tmp_path, interceptors=[replay]).summary
    assert s["frames_rejected_by_reason"]["replayed or too old"] == replay.replayed > 0
    assert len({k for k, _ in used}) > 2 * 6 * 2  # several epochs of every directed link
    assert len(used) == len(set(used)) == s["messages"]["sent"] - replay.replayed


def _stateless_attack(t: float, src: int, dst: int, frame: bytes) -> list[bytes]:
    """Flips or replays a frame by its last byte alone: the same frames on every host."""
    if frame[-1] % 5 == 0:
        return [frame[:-2] + bytes([frame[-2] ^ 1]) + frame[-1:]]
    return [frame, frame] if frame[-1] % 7 == 0 else [frame]


@pytest.mark.ray
@pytest.mark.parametrize("attacked", [False, True], ids=["clean", "attacked"])
def test_sealed_links_on_two_ray_hosts_reproduce_the_in_process_run(
    ray_local: Any, tmp_path: Path, attacked: bool
) -> None:
    cfg = small_config(
        topology={"kind": "random_regular", "n": 8, "degree": 3},
        security={**AEAD, "rotate_every": 0.1},  # keys rotate about every round
        network={"latency": {"min": 0.002, "dist": "exponential", "scale": 0.01}},
    )
    interceptors = [_stateless_attack] if attacked else []
    local = run(cfg, out=tmp_path / "local", interceptors=interceptors)
    on_ray = run(
        {**cfg, "runtime": {"kind": "ray", "hosts": 2, "cpus_per_host": 0.5}},
        out=tmp_path / "ray",
        interceptors=interceptors,
    )
    for name in ("metrics.jsonl", "edges.csv"):
        assert (local.run_dir / name).read_text() == (on_ray.run_dir / name).read_text(), name
    for key in ("events", "virtual_time", "bytes", "rounds_completed", "final"):
        assert local.summary[key] == on_ray.summary[key], key
    assert on_ray.summary["bytes"]["crypto"] > 0
    reasons = on_ray.summary["frames_rejected_by_reason"]
    assert reasons == local.summary["frames_rejected_by_reason"]
    assert set(reasons) == ({"authentication failed", "replayed or too old"} if attacked else set())
    msgs = on_ray.summary["messages"]
    assert msgs.pop("dropped") == 0
    assert msgs == local.summary["messages"]


@pytest.mark.ray
def test_sealed_links_under_wall_time_rotate_and_lose_nothing(
    ray_local: Any, tmp_path: Path
) -> None:
    """Wall time: hosts' clocks, not the event order, decide the epochs; frames crossing a
    boundary (or sealed by a host whose clock is a little ahead) are still accepted."""
    cfg = small_config(
        topology={"kind": "ring", "n": 8},
        protocol={"kind": "gossip", "rounds": 15},
        time={"mode": "wall"},
        eval={"interval": 0.5},
        # a frame may take up to one epoch plus one in flight: generous on a loaded machine
        security={**AEAD, "rotate_every": 0.3},
        runtime={"kind": "ray", "hosts": 2, "cpus_per_host": 1},
    )
    s = run(cfg, out=tmp_path).summary
    assert s["status"] == "completed" and s["rounds_completed"] == [15] * 8
    m = s["messages"]
    assert m["sent"] == m["delivered"] > 0 and m["rejected"] == m["dropped"] == 0
    assert s["bytes"]["crypto"] >= SEAL_OVERHEAD * m["sent"]
