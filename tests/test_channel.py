"""Sealed links: key agreement, AES-GCM frames, tamper and replay rejection, adverts."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.crypto import Identity, KeyAdvert, Opener, Sealer, SealError, link_key
from p2pfed.crypto.channel import REPLAY_WINDOW

SEED = b"run-seed-0123456789"


def pair(epoch: int = 0) -> tuple[Sealer, Opener]:
    """A link 3 -> 7: both ends derive the key from their own private and the other's advert."""
    a, b = Identity.from_seed(3, SEED), Identity.from_seed(7, SEED)
    adv_a, adv_b = a.advert(epoch), b.advert(epoch)
    adv_a.verify(a.public)
    adv_b.verify(b.public)
    k_send = link_key(a, adv_b, 3, 7)
    k_recv = link_key(b, adv_a, 3, 7)
    assert k_send == k_recv and len(k_send) == 16
    return Sealer(k_send, 3, 7, epoch), Opener(k_recv, 3, 7, epoch)


def test_a_sealed_frame_opens_and_hides_its_payload() -> None:
    sealer, opener = pair()
    payload = b"model update " * 50
    frame = sealer.seal("ModelShare", payload)
    assert payload[:16] not in frame
    assert opener.open("ModelShare", frame) == payload


def test_each_direction_and_epoch_has_its_own_key() -> None:
    a, b = Identity.from_seed(3, SEED), Identity.from_seed(7, SEED)
    ab = link_key(a, b.advert(0), 3, 7)
    ba = link_key(a, b.advert(0), 7, 3)
    ab1 = link_key(a, b.advert(1), 3, 7)
    assert len({ab, ba, ab1}) == 3


@pytest.mark.parametrize("where", ["header", "ciphertext", "tag", "kind"])
def test_any_change_is_refused_and_leaves_the_receiver_working(where: str) -> None:
    sealer, opener = pair()
    frame = bytearray(sealer.seal("ModelShare", b"x" * 64))
    kind = "ModelShare"
    if where == "header":
        frame[5] ^= 1  # sender id's low byte... still parses, fails the link or the tag
    elif where == "ciphertext":
        frame[30] ^= 1
    elif where == "tag":
        frame[-1] ^= 1
    else:
        kind = "GossipReply"  # the type is bound by the associated data
    with pytest.raises(SealError) as info:
        opener.open(kind, bytes(frame))
    assert info.value.reason in {"authentication failed", "sealed for another link"}
    good = sealer.seal("ModelShare", b"next")
    assert opener.open("ModelShare", good) == b"next"


def test_a_replayed_frame_is_refused_but_reordered_ones_pass_once() -> None:
    sealer, opener = pair()
    frames = [sealer.seal("ModelShare", bytes([i])) for i in range(5)]
    for i in (1, 0, 4, 2, 3):  # the network reordered them
        assert opener.open("ModelShare", frames[i]) == bytes([i])
    for f in frames:
        with pytest.raises(SealError, match="replayed"):
            opener.open("ModelShare", f)


def test_frames_older_than_the_window_are_refused() -> None:
    sealer, opener = pair()
    old = sealer.seal("ModelShare", b"old")
    for _ in range(REPLAY_WINDOW + 1):
        opener.open("ModelShare", sealer.seal("ModelShare", b""))
    with pytest.raises(SealError, match="too old"):
        opener.open("ModelShare", old)


def test_wrong_link_and_epoch_are_refused() -> None:
    sealer, opener = pair(epoch=2)
    frame = sealer.seal("ModelShare", b"hi")
    _, other_epoch = pair(epoch=3)
    with pytest.raises(SealError, match="another epoch"):
        other_epoch.open("ModelShare", frame)
    with pytest.raises(SealError, match="too short"):
        opener.open("ModelShare", frame[:10])


def test_an_advert_must_carry_its_owners_signature() -> None:
    a, mallory = Identity.from_seed(3, SEED), Identity.from_seed(9, SEED)
    forged = dataclasses.replace(mallory.advert(0), peer=3)  # mallory's key, a's name
    with pytest.raises(SealError, match="signature"):
        forged.verify(a.public)
    swapped = KeyAdvert(3, 0, mallory.advert(0).link_key, a.advert(0).signature)
    with pytest.raises(SealError, match="signature"):
        swapped.verify(a.public)
    a.advert(0).verify(a.public)


def test_seeded_identities_are_reproducible_and_distinct() -> None:
    assert Identity.from_seed(3, SEED).public == Identity.from_seed(3, SEED).public
    assert Identity.from_seed(3, SEED).public != Identity.from_seed(4, SEED).public
    assert Identity.generate(3).public != Identity.generate(3).public
    assert "seed" not in repr(Identity.from_seed(3, SEED)).lower().replace("from_seed", "")


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 3))
def test_no_key_nonce_pair_repeats_over_ten_thousand_frames(rotations: int) -> None:
    """10^4 frames over both directions and several epochs: every (key, nonce) is new."""
    a, b = Identity.from_seed(3, SEED), Identity.from_seed(7, SEED)
    used: set[tuple[bytes, bytes]] = set()
    per_epoch = 10_000 // (2 * (rotations + 1))
    for epoch in range(rotations + 1):
        for src, dst, me, other in ((3, 7, a, b), (7, 3, b, a)):
            sealer = Sealer(link_key(me, other.advert(epoch), src, dst), src, dst, epoch)
            for _ in range(per_epoch):
                frame = sealer.seal("ModelShare", b"")
                nonce = (sealer.counter - 1).to_bytes(12, "big")
                assert frame[13:21] == nonce[4:]  # the header carries the counter
                used.add((sealer.key, nonce))
    assert len(used) == 2 * (rotations + 1) * per_epoch
