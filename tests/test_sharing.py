"""AES-CTR ring PRG and additive secret sharing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from p2pfed.crypto import FixedPoint
from p2pfed.crypto.sharing import expand, reconstruct, share

seeds = st.binary(min_size=16, max_size=16)


@given(seeds, st.integers(0, 500))
def test_expand_is_deterministic_and_seed_dependent(seed: bytes, n: int) -> None:
    a, b = expand(seed, n), expand(seed, n)
    assert a.dtype == np.uint32 and a.shape == (n,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(expand(seed, n + 7)[:n], a)  # a prefix of a longer stream
    if n >= 4:
        other = bytes([seed[0] ^ 1]) + seed[1:]
        assert not np.array_equal(expand(other, n), a)


def test_expand_matches_the_aes_ctr_keystream() -> None:
    from Crypto.Cipher import AES

    seed = bytes(range(16))
    block0 = AES.new(seed, AES.MODE_ECB).encrypt(bytes(16))  # CTR block 0 = E_k(0)
    assert expand(seed, 4).tobytes() == block0
    assert expand(seed, 2, np.uint64).tobytes() == block0


def test_prg_output_looks_uniform() -> None:
    x = expand(b"\x07" * 16, 200_000)
    counts = np.bincount(x & 0xFF, minlength=256)  # low byte
    assert stats.chisquare(counts).pvalue > 1e-4
    assert np.bincount(x >> 24, minlength=256).min() > 0


@settings(max_examples=50)
@given(st.lists(seeds, min_size=1, max_size=6), st.integers(1, 300), st.integers(0, 2**32 - 1))
def test_shares_add_up_to_the_secret(ss: list[bytes], d: int, seed: int) -> None:
    x = np.random.default_rng(seed).integers(0, 2**32, d, dtype=np.uint64).astype(np.uint32)
    parts = share(x, ss)
    assert len(parts) == len(ss) + 1
    np.testing.assert_array_equal(reconstruct(parts), x)


def test_fewer_than_all_shares_reveal_nothing_useful() -> None:
    fp = FixedPoint(clip=1.0, frac_bits=16)
    x = np.linspace(-1, 1, 100_000)  # a very structured secret
    parts = share(fp.encode(x), [b"\x01" * 16, b"\x02" * 16])
    last = parts[-1]  # the share that depends on x; alone it is masked by the others
    counts = np.bincount(last & 0xFF, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-4
    assert abs(np.corrcoef(last.astype(np.float64), x)[0, 1]) < 0.01
    sums = reconstruct([parts[0], parts[2]])  # two of three shares: still masked
    assert abs(np.corrcoef(sums.astype(np.float64), x)[0, 1]) < 0.01


def test_sums_of_shares_are_shares_of_sums() -> None:
    fp = FixedPoint(clip=2.0, frac_bits=20)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-2, 2, 1000) for _ in range(4)]
    per_peer = [
        share(fp.encode(x), [bytes([i, j]) * 8 for j in range(3)]) for i, x in enumerate(xs)
    ]
    partials = [reconstruct([p[m] for p in per_peer]) for m in range(4)]  # member m's sum
    total = fp.decode(reconstruct(partials))
    assert np.abs(total - np.sum(xs, axis=0)).max() <= 4 * fp.step


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        expand(b"short", 4)
    with pytest.raises(ValueError, match="unsigned"):
        expand(b"\x00" * 16, 4, np.int32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsigned"):
        share(np.zeros(3, np.float32), [b"\x00" * 16])
    with pytest.raises(ValueError, match="differ"):
        reconstruct([np.zeros(3, np.uint32), np.zeros(4, np.uint32)])
