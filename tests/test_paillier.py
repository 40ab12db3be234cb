"""Packed Paillier: the raw scheme against the textbook, exact sums of quantised vectors,
slot packing without carries, threshold decryption, what the aggregator holds, and the
serialised form."""

from __future__ import annotations

import dataclasses
import inspect
import math
import struct
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pfed.crypto.he import HEError
from p2pfed.crypto.paillier import (
    KeyShare,
    PackedPaillier,
    Packing,
    PaillierPublicKey,
    PaillierSecretKey,
    PaillierVector,
    combine_partials,
    generate_keypair,
    split_key,
)
from p2pfed.errors import P2PFedError

Keys = tuple[PaillierPublicKey, PaillierSecretKey]

R_MAX = 0.37  # clipping range of one value
STEP = R_MAX / (2**15 - 1)  # one unit of a 16-bit signed code
PEERS, DIM = 5, 2000
HEADER = struct.Struct(">8sIIQ")  # wire format: key id, length, ciphertexts, weight


@pytest.fixture(scope="module")
def keys() -> Keys:
    return generate_keypair(np.random.default_rng(20_480))


@pytest.fixture(scope="module")
def other_keys() -> Keys:
    return generate_keypair(np.random.default_rng(20_481))


@pytest.fixture(scope="module")
def small_keys() -> Keys:
    return generate_keypair(np.random.default_rng(10_240), 1024)


@pytest.fixture(scope="module")
def packed(keys: Keys) -> PackedPaillier:
    return PackedPaillier(keys[0], Packing(2048, R_MAX))


def rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def nearest_codes(x: np.ndarray) -> np.ndarray:
    """Signed 16-bit round-to-nearest codes, computed without the library."""
    clipped: np.ndarray = np.clip(x, -R_MAX, R_MAX)
    return np.rint(clipped / STEP).astype(np.int64)


def as_codes(total: np.ndarray) -> np.ndarray:
    """A decrypted real sum back on the integer code grid (it must lie on it)."""
    scaled = total / STEP
    codes = np.rint(scaled)
    assert np.abs(scaled - codes).max() < 1e-6
    return codes.astype(np.int64)


def lagrange_l(u: Any, n: Any) -> Any:
    return (u - 1) // n


# --- the raw scheme ----------------------------------------------------------------------------


def test_encryption_round_trips_including_the_ends_of_the_plaintext_range(keys: Keys) -> None:
    public, secret = keys
    rng = np.random.default_rng(1)
    n = public.n
    plaintexts = [0, 1, n - 1, n // 2] + [
        int.from_bytes(rng.bytes(256), "big") % n for _ in range(8)
    ]
    for m in plaintexts:
        c = public.encrypt(m, rng)
        assert 0 < c < public.n2 and c != m
        assert secret.decrypt(c) == m


def test_ciphertexts_add_and_scale_their_plaintexts_mod_n(keys: Keys) -> None:
    public, secret = keys
    rng = np.random.default_rng(2)
    n = public.n
    pairs = [(3, 4), (n - 1, 5), (n - 1, n - 1), (0, 0)] + [
        (int.from_bytes(rng.bytes(256), "big") % n, int.from_bytes(rng.bytes(256), "big") % n)
        for _ in range(4)
    ]
    for a, b in pairs:
        ca, cb = public.encrypt(a, rng), public.encrypt(b, rng)
        assert secret.decrypt(public.add(ca, cb)) == (a + b) % n
        assert secret.decrypt(ca * cb % public.n2) == (a + b) % n
        for k in (0, 1, 7, 255, 2**70 + 3):
            assert secret.decrypt(public.mul(ca, k)) == a * k % n
    with pytest.raises(HEError, match="non-negative"):
        public.mul(public.encrypt(1, rng), -1)


def test_encryption_is_randomised_and_reproducible_from_the_generator(keys: Keys) -> None:
    public, secret = keys
    rng = np.random.default_rng(3)
    c1, c2 = public.encrypt(42, rng), public.encrypt(42, rng)
    assert c1 != c2
    assert secret.decrypt(c1) == secret.decrypt(c2) == 42
    again = public.encrypt(42, np.random.default_rng(3))
    assert again == c1  # the randomness comes from the generator passed in, nothing else


def test_crt_decryption_equals_the_textbook_formula(keys: Keys) -> None:
    public, secret = keys
    n, n2 = public.n, public.n2
    p, q = secret.p, secret.q
    lam = gmpy2.lcm(p - 1, q - 1)
    assert secret.lam == lam
    mu = gmpy2.invert(lagrange_l(gmpy2.powmod(n + 1, lam, n2), n), n)
    rng = np.random.default_rng(4)
    ciphertexts = [public.encrypt(m, rng) for m in (0, 1, n - 1, 123_456_789)]
    # arbitrary units mod n^2 too: the two decryptions agree on all of Z_{n^2}^*
    ciphertexts += [gmpy2.mpz(int.from_bytes(rng.bytes(520), "big")) % n2 for _ in range(6)]
    for c in ciphertexts:
        assert gmpy2.gcd(c, n) == 1
        textbook = lagrange_l(gmpy2.powmod(c, lam, n2), n) * mu % n
        assert secret.decrypt(c) == textbook


@pytest.mark.parametrize("bits", [1024, 1026])
def test_key_generation_gives_an_exactly_sized_modulus(bits: int) -> None:
    public, secret = generate_keypair(np.random.default_rng(bits), bits)
    assert public.bits == bits and public.n.bit_length() == bits
    assert secret.p * secret.q == public.n and secret.p != secret.q
    assert secret.p.bit_length() == secret.q.bit_length() == bits // 2
    assert gmpy2.is_prime(secret.p) and gmpy2.is_prime(secret.q)


def test_the_fixture_key_is_2048_bits(keys: Keys) -> None:
    public, secret = keys
    assert public.bits == 2048 and public.ciphertext_bytes == 512
    assert gmpy2.gcd(public.n, (secret.p - 1) * (secret.q - 1)) == 1


@pytest.mark.parametrize("bits", [512, 1022, 1023, 1025, 2047])
def test_key_generation_refuses_short_or_odd_sizes(bits: int) -> None:
    with pytest.raises(HEError, match="even number of bits, at least 1024"):
        generate_keypair(np.random.default_rng(0), bits)


def test_a_public_key_refuses_a_short_or_even_modulus(keys: Keys) -> None:
    with pytest.raises(HEError):
        PaillierPublicKey(gmpy2.mpz(2) ** 1023 - 1)  # odd, but 1023 bits
    with pytest.raises(HEError):
        PaillierPublicKey(keys[0].n + 1)  # even
    with pytest.raises(HEError, match="do not match"):
        PaillierSecretKey(keys[0], keys[1].p, keys[1].q + 2)


def test_the_same_seed_gives_the_same_key() -> None:
    a, sa = generate_keypair(np.random.default_rng(77), 1024)
    b, sb = generate_keypair(np.random.default_rng(77), 1024)
    c, _ = generate_keypair(np.random.default_rng(78), 1024)
    assert a.n == b.n and a.key_id == b.key_id and (sa.p, sa.q) == (sb.p, sb.q)
    assert c.n != a.n and c.key_id != a.key_id


def test_out_of_range_plaintexts_and_ciphertexts_are_refused(keys: Keys) -> None:
    public, secret = keys
    rng = np.random.default_rng(5)
    for m in (-1, public.n, public.n + 5):
        with pytest.raises(HEError, match="plaintext"):
            public.encrypt(m, rng)
    for c in (0, -3, public.n2, public.n2 + 1):
        with pytest.raises(HEError, match="out of range"):
            secret.decrypt(c)
    share = split_key(secret, 3, 2, rng)[0]
    with pytest.raises(HEError, match="out of range"):
        share.partial(public.n2)
    assert issubclass(HEError, P2PFedError) and issubclass(HEError, ValueError)


# --- the issue: five peers, exact sums of quantised vectors ------------------------------------


def peer_inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Five peers' vectors in [-r, r], with about 5% of the values beyond; and their clipped
    form."""
    rng = np.random.default_rng(seed)
    xs = rng.uniform(-R_MAX, R_MAX, (PEERS, DIM))
    outside = rng.random((PEERS, DIM)) < 0.05
    xs[outside] = rng.choice([-1.0, 1.0], outside.sum()) * rng.uniform(1.01, 4.0, outside.sum())
    xs[outside] *= R_MAX
    xs[0, :3] = [R_MAX, -R_MAX, 0.0]
    return xs, np.clip(xs, -R_MAX, R_MAX)


def test_the_decrypted_sum_of_five_peers_is_the_exact_quantised_sum(
    keys: Keys, packed: PackedPaillier
) -> None:
    xs, clipped = peer_inputs(6)
    assert np.abs(xs.sum(axis=0) - clipped.sum(axis=0)).max() > R_MAX  # clipping mattered
    peer_rngs = rngs(6, PEERS)
    updates = [packed.encrypt(x, r) for x, r in zip(xs, peer_rngs, strict=True)]
    assert all(len(u.ciphertexts) == 24 and u.weight == 1 for u in updates)
    total = packed.add(updates)
    assert total.weight == PEERS and total.length == DIM
    out = packed.decrypt(total, keys[1])
    assert out.shape == (DIM,) and out.dtype == np.float64
    np.testing.assert_array_equal(as_codes(out), nearest_codes(xs).sum(axis=0))
    error = np.abs(out - clipped.sum(axis=0)).max()
    assert error <= PEERS * STEP
    assert error <= PEERS * STEP / 2 + 1e-12  # round to nearest: half a step per value


def test_stochastic_rounding_keeps_the_error_within_one_step_per_peer(
    keys: Keys, packed: PackedPaillier
) -> None:
    xs, clipped = peer_inputs(7)
    peer_rngs = rngs(7, PEERS)
    updates = [packed.encrypt(x, r, stochastic=True) for x, r in zip(xs, peer_rngs, strict=True)]
    out = packed.decrypt(packed.add(updates), keys[1])
    codes = as_codes(out)
    nearest = nearest_codes(xs).sum(axis=0)
    assert np.mean(codes != nearest) > 0.3  # stochastic rounding was used
    error = out - clipped.sum(axis=0)
    assert np.abs(error).max() <= PEERS * STEP
    assert abs(error.mean()) < 0.2 * STEP  # unbiased: 2000 sums, sd of the mean ~0.03 step
    exact = np.abs(clipped.sum(axis=0) - R_MAX * PEERS) < 1e-12  # all five at +clip
    np.testing.assert_array_equal(codes[exact], PEERS * (2**15 - 1))


# --- packing ----------------------------------------------------------------------------------


def test_a_2048_bit_key_holds_85_values_in_24_bit_slots() -> None:
    packing = Packing(2048, R_MAX)
    assert (packing.value_bits, packing.max_weight) == (16, 255)
    assert (packing.slots, packing.slot_bits, packing.slot_bytes) == (85, 24, 3)
    assert packing.offset == 2**15 - 1
    assert packing.ciphertexts(DIM) == 24 and packing.ciphertexts(85) == 1
    assert packing.ciphertexts(86) == 2
    assert packing.fixed.step == pytest.approx(STEP, rel=1e-15)
    assert packing.slots * packing.slot_bits < 2048 - 1  # the packed integer stays below n


def test_more_weight_than_max_weight_is_refused(keys: Keys) -> None:
    pp = PackedPaillier(keys[0], Packing(2048, R_MAX, max_weight=4))
    rng = np.random.default_rng(8)
    vs = [pp.encrypt(rng.uniform(-R_MAX, R_MAX, 3), rng) for _ in range(5)]
    assert pp.add(vs[:4]).weight == 4
    with pytest.raises(HEError, match="max_weight 4"):
        pp.add(vs)
    with pytest.raises(HEError, match="max_weight 4"):
        pp.scale(vs[0], 5)
    with pytest.raises(HEError, match="max_weight 4"):
        pp.scale(pp.add(vs[:3]), 2)
    with pytest.raises(HEError, match="max_weight 4"):
        pp.add([pp.add(vs[:3]), pp.scale(vs[3], 2)])
    assert pp.scale(vs[0], 4).weight == 4
    for k in (0, -1):
        with pytest.raises(HEError, match="integers >= 1"):
            pp.scale(vs[0], k)


def test_scaling_by_k_multiplies_the_sum(keys: Keys, packed: PackedPaillier) -> None:
    rng = np.random.default_rng(9)
    xs = rng.uniform(-1.2 * R_MAX, 1.2 * R_MAX, (3, 300))
    total = packed.add([packed.encrypt(x, rng) for x in xs])
    base = nearest_codes(xs).sum(axis=0)
    for k in (1, 2, 85):
        scaled = packed.scale(total, k)
        assert scaled.weight == 3 * k
        np.testing.assert_array_equal(as_codes(packed.decrypt(scaled, keys[1])), k * base)


def test_a_weighted_average_matches_numpy(keys: Keys, packed: PackedPaillier) -> None:
    samples = np.array([12, 40, 7, 100, 33])  # sample counts: total weight 192 <= 255
    rng = np.random.default_rng(10)
    xs = rng.uniform(-0.8 * R_MAX, 0.8 * R_MAX, (PEERS, 500))
    xs += 0.1 * R_MAX * np.arange(-2, 3)[:, None]  # peers differ, so the weights matter
    peer_rngs = rngs(10, PEERS)
    scaled = [
        packed.scale(packed.encrypt(x, r), int(w))
        for x, r, w in zip(xs, peer_rngs, samples, strict=True)
    ]
    total = packed.add(scaled)
    assert total.weight == samples.sum()
    average = packed.decrypt(total, keys[1]) / total.weight
    want = np.average(xs, axis=0, weights=samples)
    assert np.abs(average - want).max() <= STEP / 2 + 1e-12
    assert np.abs(want - xs.mean(axis=0)).max() > 100 * STEP
    np.testing.assert_array_equal(
        as_codes(average * total.weight), (samples[:, None] * nearest_codes(xs)).sum(axis=0)
    )


@pytest.mark.parametrize("pattern", ["all +clip", "all -clip", "alternating"])
def test_extreme_codes_summed_max_weight_times_do_not_carry(
    keys: Keys, packed: PackedPaillier, pattern: str
) -> None:
    packing = packed.packing
    length = 2 * packing.slots + 1
    signs = {
        "all +clip": np.ones(length),
        "all -clip": -np.ones(length),
        "alternating": (-1.0) ** np.arange(length),
    }[pattern]
    x = 3 * R_MAX * signs  # beyond the clip: every code is an extreme one
    v = packed.encrypt(x, np.random.default_rng(11))
    summed = packed.add([v] * packing.max_weight)
    scaled = packed.scale(v, packing.max_weight)
    want_codes = (packing.max_weight * (2**15 - 1) * signs).astype(np.int64)
    for agg in (summed, scaled):
        assert agg.weight == 255
        np.testing.assert_array_equal(as_codes(packed.decrypt(agg, keys[1])), want_codes)
        slots = packing.unpack([keys[1].decrypt(c) for c in agg.ciphertexts], length)
        top = packing.max_weight * (2**16 - 2)
        assert top < 2**packing.slot_bits  # the worst slot sum fits its slot
        np.testing.assert_array_equal(slots, np.where(signs > 0, top, 0))


@pytest.mark.parametrize("length", [1, 85, 86])
def test_short_and_boundary_lengths_round_trip(
    keys: Keys, packed: PackedPaillier, length: int
) -> None:
    rng = np.random.default_rng(length)
    x = rng.uniform(-1.1 * R_MAX, 1.1 * R_MAX, length)
    v = packed.encrypt(x, rng)
    assert v.length == length and len(v.ciphertexts) == (1 if length <= 85 else 2)
    out = packed.decrypt(v, keys[1])
    assert out.shape == (length,)
    np.testing.assert_array_equal(as_codes(out), nearest_codes(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"value_bits": 1}, "value_bits"),
        ({"value_bits": 31}, "value_bits"),
        ({"value_bits": 0}, "value_bits"),
        ({"max_weight": 0}, "max_weight"),
        ({"max_weight": -3}, "max_weight"),
        ({"key_bits": 16}, "at least 1024"),
        ({"value_bits": 30, "max_weight": 2**27}, "at most 56"),
        ({"clip": 0.0}, "clip"),
    ],
)
def test_bad_packings_are_refused(kwargs: dict[str, int], match: str) -> None:
    args: dict[str, Any] = {"key_bits": 2048, "clip": R_MAX, **kwargs}
    with pytest.raises(HEError, match=match):
        Packing(**args)


def test_a_packing_for_another_key_size_is_refused(keys: Keys) -> None:
    with pytest.raises(HEError, match="packing is for 1024-bit keys"):
        PackedPaillier(keys[0], Packing(1024, R_MAX))


@settings(max_examples=25, deadline=None)
@given(
    value_bits=st.integers(2, 30),
    max_weight=st.integers(1, 2**20),
    data=st.data(),
)
def test_pack_then_unpack_is_the_identity(
    small_keys: Keys, value_bits: int, max_weight: int, data: st.DataObject
) -> None:
    packing = Packing(1024, 1.0, value_bits, max_weight)
    assert packing.slot_bits <= 56 and packing.slot_bits % 8 == 0
    length = data.draw(st.integers(1, 2 * packing.slots + 3), label="length")
    top = 2**packing.slot_bits - 1
    edges = st.sampled_from([0, 1, top - 1, top])
    values = data.draw(st.lists(st.integers(0, top) | edges, min_size=length, max_size=length))
    codes = np.array(values, dtype=np.int64)
    plaintexts = packing.pack(codes)
    assert len(plaintexts) == packing.ciphertexts(length)
    assert all(0 <= m < 2 ** (packing.slots * packing.slot_bits) for m in plaintexts)
    np.testing.assert_array_equal(packing.unpack(plaintexts, length), codes)
    # and through the key: encryption preserves every packed plaintext
    public, secret = small_keys
    rng = np.random.default_rng(length)
    decrypted = [secret.decrypt(public.encrypt(m, rng)) for m in plaintexts]
    np.testing.assert_array_equal(packing.unpack(decrypted, length), codes)


# --- threshold decryption ---------------------------------------------------------------------


def partials_of(c: Any, shares: list[KeyShare]) -> dict[int, Any]:
    return {s.index: s.partial(c) for s in shares}


@pytest.mark.parametrize(
    ("threshold", "subsets"),
    [(5, [(1, 2, 3, 4, 5)]), (3, [(1, 2, 3), (2, 4, 5), (1, 3, 5)])],
)
def test_any_threshold_partials_decrypt_a_ciphertext(
    small_keys: Keys, threshold: int, subsets: list[tuple[int, ...]]
) -> None:
    public, secret = small_keys
    rng = np.random.default_rng(12)
    shares = split_key(secret, 5, threshold, rng)
    assert [s.index for s in shares] == [1, 2, 3, 4, 5]
    assert all((s.parties, s.threshold) == (5, threshold) for s in shares)
    for m in (0, 1, public.n - 1, int.from_bytes(rng.bytes(128), "big") % public.n):
        c = public.encrypt(m, rng)
        partials = partials_of(c, shares)
        for subset in subsets:
            chosen = {i: partials[i] for i in subset}
            assert combine_partials(public, 5, threshold, chosen) == m
        assert combine_partials(public, 5, threshold, partials) == m  # more than enough


@pytest.mark.parametrize("threshold", [5, 3])
def test_threshold_decryption_of_a_vector_equals_the_group_key_decryption(
    small_keys: Keys, threshold: int
) -> None:
    public, secret = small_keys
    pp = PackedPaillier(public, Packing(1024, R_MAX))
    rng = np.random.default_rng(13)
    xs = rng.uniform(-1.1 * R_MAX, 1.1 * R_MAX, (3, 100))
    total = pp.add([pp.encrypt(x, rng) for x in xs])
    assert len(total.ciphertexts) == 3
    group = pp.decrypt(total, secret)
    np.testing.assert_array_equal(as_codes(group), nearest_codes(xs).sum(axis=0))
    shares = split_key(secret, 5, threshold, rng)
    partials = {s.index: pp.partial(total, s) for s in shares}
    subsets = [(1, 2, 3, 4, 5)] if threshold == 5 else [(1, 2, 3), (2, 4, 5)]
    for subset in subsets:
        out = pp.combine(total, {i: partials[i] for i in subset}, 5, threshold)
        np.testing.assert_array_equal(out, group)
    fewer = {i: partials[i] for i in range(1, threshold)}
    with pytest.raises(HEError, match=f"{threshold - 1} partial decryptions, {threshold} needed"):
        pp.combine(total, fewer, 5, threshold)
    short = {i: ps[:-1] for i, ps in partials.items()}
    with pytest.raises(HEError, match="wrong length"):
        pp.combine(total, short, 5, threshold)


@pytest.mark.parametrize("threshold", [5, 3])
def test_fewer_than_threshold_partials_are_refused(small_keys: Keys, threshold: int) -> None:
    public, secret = small_keys
    rng = np.random.default_rng(14)
    shares = split_key(secret, 5, threshold, rng)
    partials = partials_of(public.encrypt(99, rng), shares)
    for held in ((5, 1), (2, 3, 4, 5), (1,)):
        chosen = {i: partials[i] for i in held[: threshold - 1]}
        with pytest.raises(HEError, match=f"{threshold} needed"):
            combine_partials(public, 5, threshold, chosen)
    with pytest.raises(HEError):
        combine_partials(public, 5, threshold, {})


def test_partials_of_different_ciphertexts_do_not_combine(small_keys: Keys) -> None:
    public, secret = small_keys
    rng = np.random.default_rng(15)
    shares = split_key(secret, 5, 3, rng)
    a = partials_of(public.encrypt(1111, rng), shares)
    b = partials_of(public.encrypt(2222, rng), shares)
    with pytest.raises(HEError, match="do not combine"):
        combine_partials(public, 5, 3, {1: a[1], 2: a[2], 3: b[3]})
    with pytest.raises(HEError, match="do not combine"):
        combine_partials(public, 5, 3, {2: b[2], 4: a[4], 5: a[5]})
    assert combine_partials(public, 5, 3, {2: b[2], 4: b[4], 5: b[5]}) == 2222
    # and for whole vectors
    pp = PackedPaillier(public, Packing(1024, R_MAX))
    v, w = (pp.encrypt(rng.uniform(-R_MAX, R_MAX, 50), rng) for _ in range(2))
    pv = {s.index: pp.partial(v, s) for s in shares[:3]}
    pv[3] = pp.partial(w, shares[2])
    with pytest.raises(HEError, match="do not combine"):
        pp.combine(v, pv, 5, 3)


def test_a_partial_from_an_index_outside_the_parties_is_refused(small_keys: Keys) -> None:
    public, secret = small_keys
    rng = np.random.default_rng(16)
    shares = split_key(secret, 5, 3, rng)
    c = public.encrypt(7, rng)
    p = partials_of(c, shares)
    for bad in (0, 6, -1):
        with pytest.raises(HEError, match=r"outside 1\.\.5"):
            combine_partials(public, 5, 3, {1: p[1], 2: p[2], bad: p[3]})
    with pytest.raises(HEError, match="out of range"):
        combine_partials(public, 5, 3, {1: p[1], 2: p[2], 3: public.n2})
    # an extra partial beyond the threshold is checked too, not silently ignored
    with pytest.raises(HEError, match=r"outside 1\.\.5"):
        combine_partials(public, 5, 3, {1: p[1], 2: p[2], 3: p[3], 7: p[4]})


@pytest.mark.parametrize("threshold", [0, 1, 6])
def test_combining_refuses_a_threshold_outside_2_to_parties(
    small_keys: Keys, threshold: int
) -> None:
    public, _ = small_keys
    with pytest.raises(HEError, match=r"threshold must lie in 2\.\.parties"):
        combine_partials(public, 5, threshold, {})


def test_a_ciphertext_that_is_no_packed_aggregate_is_refused_at_decryption(
    keys: Keys, packed: PackedPaillier
) -> None:
    public, secret = keys
    rng = np.random.default_rng(17)
    bogus = PaillierVector(public.key_id, 4, 1, (public.encrypt(public.n - 1, rng),))
    with pytest.raises(HEError, match="does not fit the packing"):
        packed.decrypt(bogus, secret)


@pytest.mark.parametrize(("parties", "threshold"), [(5, 1), (5, 0), (5, 6), (2, 3), (1, 1)])
def test_split_key_refuses_a_threshold_outside_2_to_parties(
    small_keys: Keys, parties: int, threshold: int
) -> None:
    with pytest.raises(HEError, match=r"threshold must lie in 2\.\.parties"):
        split_key(small_keys[1], parties, threshold, np.random.default_rng(0))


@pytest.mark.parametrize("threshold", [5, 3])
def test_fewer_than_threshold_holders_learn_nothing_by_doing_the_maths_themselves(
    small_keys: Keys, threshold: int
) -> None:
    public, secret = small_keys
    n, n2 = public.n, public.n2
    rng = np.random.default_rng(17)
    shares = split_key(secret, 5, threshold, rng)
    delta = math.factorial(5)
    m = 31_337
    c = public.encrypt(m, rng)
    partials = partials_of(c, shares)
    lam = secret.lam
    d = lam * gmpy2.invert(lam, n)
    assert all(s.share != d and s.share % lam != 0 for s in shares)
    for partial in partials.values():
        # one holder treats its partial as if it were the whole key (Lagrange weight Delta)
        acc = gmpy2.powmod(partial, delta, n2)
        assert (acc - 1) % n != 0  # not of the form 1 + m n: no plaintext to lift
        assert lagrange_l(acc, n) * gmpy2.invert(delta**2, n) % n != m
        assert lagrange_l(partial, n) % n != m
        assert partial != c and partial % n != 1
    # t-1 holders pool their partials and pretend the threshold is t-1
    pooled = {i: partials[i] for i in range(1, threshold)}
    with pytest.raises(HEError, match="do not combine"):
        combine_partials(public, 5, threshold - 1, pooled)
    # ...while t of them, with the same maths, do recover it (the attack above is fair)
    assert combine_partials(public, 5, threshold, {**pooled, 5: partials[5]}) == m


# --- the aggregator holds no secret -----------------------------------------------------------

MPZ = type(gmpy2.mpz(0))


def _leaves(obj: object, seen: set[int]) -> Iterator[int | bytes]:
    """Every integer and bytes value reachable from ``obj`` through attributes, dataclass
    fields, mappings and sequences."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, bool | float | str):
        return
    if isinstance(obj, int | MPZ):
        yield int(obj)
    elif isinstance(obj, bytes | bytearray):
        yield bytes(obj)
    elif isinstance(obj, np.ndarray):
        yield obj.tobytes()
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _leaves(k, seen)
            yield from _leaves(v, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for item in obj:
            yield from _leaves(item, seen)
    elif not isinstance(obj, type):
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                yield from _leaves(getattr(obj, f.name), seen)
        if hasattr(obj, "__dict__"):
            yield from _leaves(vars(obj), seen)
        for name in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, name):
                yield from _leaves(getattr(obj, name), seen)


def test_the_aggregator_object_holds_no_secret_integer(keys: Keys, packed: PackedPaillier) -> None:
    public, secret = keys
    n = public.n
    p, q = secret.p, secret.q
    lam = gmpy2.lcm(p - 1, q - 1)
    d = lam * gmpy2.invert(lam, n)
    shares = split_key(secret, 5, 3, np.random.default_rng(18))
    secrets = {int(v) for v in (p, q, lam, d, (p - 1) * (q - 1), gmpy2.invert(lam, n))}
    secrets |= {int(secret._hp), int(secret._hq), *(int(s.share) for s in shares)}
    assert len(secrets) == 6 + 2 + 5

    rng = np.random.default_rng(19)
    aggregator = PackedPaillier(public, Packing(2048, R_MAX))
    updates = [aggregator.encrypt(rng.uniform(-R_MAX, R_MAX, 200), rng) for _ in range(3)]
    total = aggregator.scale(aggregator.add(updates), 2)  # it has done its work
    for held_by in (aggregator, total, updates):
        leaves = list(_leaves(held_by, set()))
        integers = {v for v in leaves if isinstance(v, int)}
        blobs = [v for v in leaves if isinstance(v, bytes)]
        assert not integers & secrets
        for s in secrets:
            raw = s.to_bytes((s.bit_length() + 7) // 8, "big")
            assert not any(raw in b for b in blobs)
    integers = {v for v in _leaves(aggregator, set()) if isinstance(v, int)}
    assert {int(n), int(public.n2), 255, 16, 2048} <= integers  # the walk saw the key
    assert [v for v in _leaves(aggregator, set()) if v == public.key_id]


def test_the_aggregator_has_no_way_to_decrypt_without_a_key(
    keys: Keys, other_keys: Keys, packed: PackedPaillier
) -> None:
    public, secret = keys
    other_public, other_secret = other_keys
    assert not hasattr(public, "decrypt")
    assert not {"p", "q", "lam", "_hp", "_hq"} & set(dir(public))

    # the only methods that can yield a plaintext take a secret key or a key share
    needs_key = set()
    for name, method in inspect.getmembers(PackedPaillier, inspect.isfunction):
        hints = typing.get_type_hints(method)
        if {PaillierSecretKey, KeyShare} & set(hints.values()):
            needs_key.add(name)
    assert needs_key == {"decrypt", "partial"}

    rng = np.random.default_rng(20)
    x = rng.uniform(-R_MAX, R_MAX, 170)
    update = packed.encrypt(x, rng)
    with pytest.raises(HEError, match="another public key"):
        packed.decrypt(update, other_secret)
    other_share = split_key(other_secret, 3, 2, rng)[0]
    with pytest.raises(HEError, match="another public key"):
        packed.partial(update, other_share)
    for nothing in (None, public):
        with pytest.raises((HEError, AttributeError)):
            packed.decrypt(update, nothing)  # type: ignore[arg-type]
    # fabricated "partials" (the ciphertexts themselves) do not combine
    fake = dict.fromkeys((1, 2, 3), update.ciphertexts)
    with pytest.raises(HEError, match="do not combine"):
        packed.combine(update, fake, 5, 3)
    # another key's primes, used on this key's ciphertexts, give other plaintexts
    plain = packed.packing.pack(packed.packing.encode(x))
    for c, m in zip(update.ciphertexts, plain, strict=True):
        if c < other_public.n2:
            assert other_secret.decrypt(c) != m
        else:
            with pytest.raises(HEError):
                other_secret.decrypt(c)
    assert [secret.decrypt(c) for c in update.ciphertexts] == plain  # the true key does


# --- serialisation ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blob_case(keys: Keys, packed: PackedPaillier) -> tuple[PaillierVector, bytes]:
    rng = np.random.default_rng(21)
    vs = [packed.encrypt(rng.uniform(-R_MAX, R_MAX, DIM), rng) for _ in range(3)]
    total = packed.add(vs)
    return total, total.to_bytes(keys[0])


def test_a_vector_survives_serialisation(
    keys: Keys, packed: PackedPaillier, blob_case: tuple[PaillierVector, bytes]
) -> None:
    v, blob = blob_case
    back = PaillierVector.from_bytes(blob, keys[0], packed.packing)
    assert (back.key_id, back.length, back.weight) == (v.key_id, DIM, 3)
    assert back.ciphertexts == v.ciphertexts
    np.testing.assert_array_equal(packed.decrypt(back, keys[1]), packed.decrypt(v, keys[1]))
    assert back.to_bytes(keys[0]) == blob


def test_the_serialised_size_is_a_header_plus_512_bytes_per_ciphertext(
    keys: Keys, blob_case: tuple[PaillierVector, bytes]
) -> None:
    v, blob = blob_case
    assert HEADER.size == 24 and len(v.ciphertexts) == 24
    assert len(blob) == HEADER.size + 24 * 512
    assert HEADER.unpack_from(blob) == (keys[0].key_id, DIM, 24, 3)
    assert len(blob) / DIM == pytest.approx(512 * 24 / DIM, abs=HEADER.size / DIM)  # ~6.2
    one = PackedPaillier(keys[0], Packing(2048, R_MAX)).encrypt(
        np.zeros(1), np.random.default_rng(0)
    )
    assert len(one.to_bytes(keys[0])) == HEADER.size + 512


def _with_header(blob: bytes, **fields: Any) -> bytes:
    key_id, length, count, weight = HEADER.unpack_from(blob)
    values = {"key_id": key_id, "length": length, "count": count, "weight": weight, **fields}
    head = HEADER.pack(values["key_id"], values["length"], values["count"], values["weight"])
    return head + blob[HEADER.size :]


def test_malformed_or_foreign_blobs_are_refused(
    keys: Keys,
    other_keys: Keys,
    packed: PackedPaillier,
    blob_case: tuple[PaillierVector, bytes],
) -> None:
    public = keys[0]
    packing = packed.packing
    _, blob = blob_case

    def refused(bad: bytes, match: str, key: PaillierPublicKey = public) -> None:
        with pytest.raises(HEError, match=match):
            PaillierVector.from_bytes(bad, key, packing)

    refused(blob, "another key", other_keys[0])
    refused(_with_header(blob, key_id=other_keys[0].key_id), "another key")
    refused(b"", "too short")
    refused(blob[:20], "too short")
    refused(blob[:-1], "wrong size")
    refused(blob[: HEADER.size + 23 * 512], "wrong size")
    refused(blob + b"\x00", "wrong size")
    refused(_with_header(blob, count=23), "wrong size")
    refused(_with_header(blob, count=25) + bytes(512), "wrong size")
    refused(_with_header(blob, length=85 * 25), "wrong size")
    refused(_with_header(blob, weight=0), "weight 0 outside 1..255")
    refused(_with_header(blob, weight=256), "weight 256 outside 1..255")
    n2 = int(public.n2)
    for c in (n2, n2 + 1, 0, 2**4096 - 1):
        bad = bytearray(blob)
        at = HEADER.size + 5 * 512
        bad[at : at + 512] = c.to_bytes(512, "big")
        refused(bytes(bad), "out of range")
    # the untouched blob still parses, and a legal public weight change is accepted
    assert PaillierVector.from_bytes(_with_header(blob, weight=255), public, packing).weight == 255


def test_a_share_modulo_its_holders_indices_tells_nothing_about_the_key(
    small_keys: Keys,
) -> None:
    """Integer Shamir shares satisfy f(i) = f(0) mod i: shares of d itself would give
    t - 1 holders d modulo the product of their indices. The shared secret is Delta d,
    which every index divides, so that residue is always 0."""
    public, secret = small_keys
    shares = split_key(secret, 13, 4, np.random.default_rng(18))
    for s in shares:
        assert s.share % s.index == 0
    # and the shares still decrypt: 4 of 13 combine to the plaintext
    c = public.encrypt(4242, np.random.default_rng(20))
    pooled = {s.index: s.partial(c) for s in shares if s.index in (2, 11, 12, 13)}
    assert combine_partials(public, 13, 4, pooled) == 4242


def test_a_partial_that_is_no_unit_is_refused(small_keys: Keys) -> None:
    public, secret = small_keys
    rng = np.random.default_rng(19)
    shares = split_key(secret, 5, 3, rng)
    c = public.encrypt(7, rng)
    p = partials_of(c, shares)
    with pytest.raises(HEError, match="not a unit"):
        combine_partials(public, 5, 3, {1: p[1], 2: public.n, 3: p[3]})
