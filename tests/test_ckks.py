"""CKKS through TenSEAL: round trips, aggregation on the public side, weighting, refusals."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from p2pfed.crypto.ckks import (
    CkksKeys,
    CkksParams,
    CkksPublic,
    CkksVector,
    sum_vectors,
)
from p2pfed.crypto.he import HEError

SLOTS = CkksParams().slots


@pytest.fixture(scope="module")
def keys() -> CkksKeys:
    return CkksKeys.generate()


@pytest.fixture(scope="module")
def public(keys: CkksKeys) -> CkksPublic:
    return CkksPublic.from_bytes(keys.public_bytes())


def _close(got: np.ndarray, want: np.ndarray, rel: float = 1e-6) -> None:
    assert got.dtype == np.float64 and got.shape == want.shape
    err = float(np.abs(got - want).max())
    assert err <= rel * float(np.abs(want).max()), err


def test_round_trip_of_ten_thousand_values(keys: CkksKeys) -> None:
    x = np.random.default_rng(1).normal(size=10_000)
    v = keys.encrypt(x)
    assert v.length == 10_000 and len(v.chunks) == 3 and v.levels_left == 2
    _close(keys.decrypt(v), x)
    _close(keys.decrypt(keys.load(v.to_bytes())), x)


def test_mean_of_eight_peers_summed_by_the_public_side() -> None:
    group = CkksKeys.generate()
    secret, public_blob = group.to_bytes(), group.public_bytes()
    peers = [CkksKeys.from_bytes(secret) for _ in range(8)]  # the group key, shared at setup
    aggregator = CkksPublic.from_bytes(public_blob)  # as it arrives over the network
    assert all(p.key_id == aggregator.key_id for p in peers)
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=100_000) for _ in peers]
    uploads = [p.encrypt(x).to_bytes() for p, x in zip(peers, xs, strict=True)]
    total = sum_vectors(aggregator.load(b) for b in uploads)
    assert total.length == 100_000 and len(total.chunks) == 25
    mean = peers[3].decrypt(peers[3].load(total.to_bytes())) / 8
    want = np.mean(xs, axis=0)
    assert mean.dtype == np.float64 and mean.shape == want.shape
    assert float(np.abs(mean - want).max()) <= 1e-6 * float(np.abs(xs).max())


def test_weighted_sum_via_scale(keys: CkksKeys, public: CkksPublic) -> None:
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=3000) for _ in range(4)]
    counts = np.array([10.0, 250.0, 33.0, 707.0])
    w = counts / counts.sum()
    cts = [public.load(keys.encrypt(x).to_bytes()) for x in xs]
    total = sum_vectors(c.scale(float(wi)) for c, wi in zip(cts, w, strict=True))
    assert total.levels_left == 1 and total.depth == 1
    want = np.sum([wi * x for wi, x in zip(w, xs, strict=True)], axis=0)
    _close(keys.decrypt(total), want)
    # a second weighting (e.g. a relay's share of a two-level tree) uses the last level
    twice = total.scale(-2.5)
    _close(keys.decrypt(keys.load(twice.to_bytes())), -2.5 * want)


def test_scale_has_no_bias_from_the_rescaling_primes(keys: CkksKeys) -> None:
    # TenSEAL relabels the rescaled scale as 2**40 although the primes are 2**40 (1 - ~1e-7);
    # without the correction two multiplications by 1.0 come back ~8e-7 too large
    x = np.random.default_rng(4).uniform(0.5, 1.0, size=SLOTS)
    got = keys.decrypt(keys.encrypt(x).scale(1.0).scale(1.0))
    assert float(np.abs(got / x - 1).max()) < 1e-7


def test_mixed_levels_add_and_zero_weight(keys: CkksKeys) -> None:
    x = np.random.default_rng(5).normal(size=500)
    v = keys.encrypt(x)
    mixed = v + v.scale(0.5)
    assert mixed.levels_left == 1
    _close(keys.decrypt(mixed), 1.5 * x)
    _close(keys.decrypt(v.scale(0) + v), x)
    # TenSEAL switches the operand with more levels down in place; ours stay as they were
    half = v.scale(0.5)
    _close(keys.decrypt(half + v), 1.5 * x)
    _close(keys.decrypt(sum_vectors([half, half, v, v])), 3 * x)
    assert v.levels_left == 2 and half.levels_left == 1
    _close(keys.decrypt(v), x)


def test_third_multiplication_is_refused(keys: CkksKeys, public: CkksPublic) -> None:
    v = public.load(keys.encrypt(np.ones(10)).to_bytes())
    two = v.scale(0.5).scale(0.5)
    assert two.levels_left == 0 and two.depth == 2
    np.testing.assert_allclose(keys.decrypt(two), 0.25, atol=1e-7)
    with pytest.raises(HEError, match="no multiplicative level left"):
        two.scale(0.5)
    with pytest.raises(HEError, match="no multiplicative level left"):
        public.load(two.to_bytes()).scale(1.0)  # the level travels with the ciphertext


def test_public_side_cannot_decrypt(keys: CkksKeys, public: CkksPublic) -> None:
    assert not hasattr(public, "decrypt")
    assert public.context.has_secret_key() is False
    assert CkksPublic.from_bytes(keys.public_bytes()).context.is_public()
    v = public.load(keys.encrypt(np.arange(5.0)).to_bytes())
    with pytest.raises(ValueError, match="secret"):
        v.chunks[0].decrypt()  # TenSEAL itself refuses: no secret key in the context
    with pytest.raises(HEError, match="secret key"):
        CkksPublic.from_bytes(keys.to_bytes())  # an aggregator must never get the secret
    with pytest.raises(HEError, match="no secret key"):
        CkksKeys.from_bytes(keys.public_bytes())
    assert len(keys.public_bytes()) < len(keys.to_bytes())


def test_keys_serialise_and_only_group_mode(keys: CkksKeys) -> None:
    again = CkksKeys.from_bytes(keys.to_bytes())
    assert again.key_id == keys.key_id and again.params == keys.params
    x = np.linspace(-3, 3, 100)
    _close(again.decrypt(again.load(keys.encrypt(x).to_bytes())), x)
    with pytest.raises(HEError, match="group"):
        CkksKeys.generate(key_mode="threshold")


@pytest.mark.parametrize("n", [1, SLOTS - 1, SLOTS, SLOTS + 1, 2 * SLOTS + 7])
def test_lengths_not_a_multiple_of_slots(keys: CkksKeys, public: CkksPublic, n: int) -> None:
    x = np.random.default_rng(n).normal(size=n)
    v = public.load(keys.encrypt(x).to_bytes())
    assert v.length == n and len(v.chunks) == -(-n // SLOTS)
    assert v.nbytes == len(v.to_bytes())
    _close(keys.decrypt(keys.load((v + v).to_bytes())), 2 * x)


def test_length_mismatch_is_refused(keys: CkksKeys) -> None:
    a, b = keys.encrypt(np.ones(10)), keys.encrypt(np.ones(11))
    with pytest.raises(HEError, match="differ in length"):
        _ = a + b
    with pytest.raises(HEError, match="differ in length"):
        sum_vectors([keys.encrypt(np.ones(SLOTS)), keys.encrypt(np.ones(SLOTS + 1))])
    with pytest.raises(HEError, match="nothing to add"):
        sum_vectors([])
    with pytest.raises(HEError, match="cannot add"):
        _ = a + np.ones(10)


def test_other_keys_are_refused(keys: CkksKeys, public: CkksPublic) -> None:
    other = CkksKeys.generate()
    assert other.key_id != keys.key_id
    theirs = other.encrypt(np.ones(3))
    with pytest.raises(HEError, match="another key"):
        public.load(theirs.to_bytes())
    with pytest.raises(HEError, match="another key"):
        keys.decrypt(theirs)
    with pytest.raises(HEError, match="different keys"):
        _ = keys.encrypt(np.ones(3)) + theirs


def _tampered(blob: bytes, **changes: Any) -> bytes:
    obj = msgpack.unpackb(blob, raw=False)
    obj.update(changes)
    return bytes(msgpack.packb(obj, use_bin_type=True))


def test_malformed_blobs_are_refused(keys: CkksKeys, public: CkksPublic) -> None:
    good = keys.encrypt(np.ones(SLOTS + 3)).to_bytes()
    ct = msgpack.unpackb(good, raw=False)["ct"]
    bad = [
        b"",
        b"\x00garbage",
        good[: len(good) // 2],
        good + b"\x00",
        msgpack.packb([1, 2, 3]),
        _tampered(good, v=2),
        _tampered(good, n=SLOTS + 4),  # same chunk count, wrong last-chunk size
        _tampered(good, n=3 * SLOTS),  # wrong chunk count
        _tampered(good, n=0, ct=[]),
        _tampered(good, n="many"),
        _tampered(good, ct=[ct[0], b"not a ciphertext"]),
        _tampered(good, ct=[ct[0], ct[1][:-100]]),
        _tampered(good, ct=[ct[1], ct[0]]),  # chunk sizes out of order
        _tampered(good, ct=[ct[0], 7]),
    ]
    for blob in bad:
        with pytest.raises(HEError):
            public.load(blob)
    with pytest.raises(HEError):
        keys.load(bad[2])
    small = CkksKeys.generate(CkksParams(4096, (40, 20, 40), 20))
    foreign = small.encrypt(np.ones(3)).to_bytes()
    with pytest.raises(HEError):  # other parameters (and key): never reaches SEAL
        public.load(foreign)
    foreign_ct = msgpack.unpackb(foreign, raw=False)["ct"]
    with pytest.raises(HEError, match="malformed ciphertext"):  # reaches SEAL, refused
        public.load(_tampered(good, n=3, ct=foreign_ct))
    for ctx_blob in [b"", b"junk", keys.public_bytes()[:1000]]:
        with pytest.raises(HEError):
            CkksPublic.from_bytes(ctx_blob)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 2048},
        {"poly_modulus_degree": 10_000},
        {"poly_modulus_degree": 65536},
        {"poly_modulus_degree": True},
        {"coeff_mod_bit_sizes": (60,)},
        {"coeff_mod_bit_sizes": [60, 40, 40, 60]},
        {"coeff_mod_bit_sizes": (61, 40, 61)},
        {"coeff_mod_bit_sizes": (60, 40, 40, 40, 60)},  # 240 bits > 218: under 128-bit security
        {"coeff_mod_bit_sizes": (60, 40, 40, 50)},  # special prime smaller than the first
        {"coeff_mod_bit_sizes": (41, 40, 41)},  # no room above the scale
        {"global_scale_bits": 50},  # larger than the inner primes
        {"global_scale_bits": 10},
        {"global_scale_bits": 40.0},
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(HEError):
        CkksParams(**kwargs)


def test_params_properties() -> None:
    p = CkksParams()
    assert (p.slots, p.max_depth, p.max_magnitude) == (4096, 2, 2.0**18)
    assert (p.ciphertexts(1), p.ciphertexts(4096), p.ciphertexts(4097)) == (1, 1, 2)
    small = CkksParams(4096, (40, 20, 40), 20)
    assert (small.slots, small.max_depth) == (2048, 1)


def test_bad_inputs_are_refused(keys: CkksKeys) -> None:
    for x in [np.array([]), np.ones((2, 2)), np.array([1.0, np.nan]), np.array([np.inf])]:
        with pytest.raises(HEError):
            keys.encrypt(x)
    with pytest.raises(HEError, match="max_magnitude"):
        keys.encrypt(np.array([0.0, 2.0**19]))
    v = keys.encrypt(np.ones(4))
    for w in [float("nan"), float("inf"), True, 2.0**30]:
        with pytest.raises(HEError):
            v.scale(w)
    with pytest.raises(HEError):
        keys.decrypt(b"not a vector")  # type: ignore[arg-type]
    assert isinstance(v, CkksVector) and "length=4" in repr(v)
