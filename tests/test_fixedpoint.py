"""Fixed-point encoding into Z_2^32 / Z_2^64: round trips, ring sums, rounding, overflow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfed.crypto import FixedPoint, FixedPointError

FP = FixedPoint(clip=4.0, frac_bits=16)

values = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=40),
    elements=st.floats(-10, 10, allow_nan=False),
)


@given(values)
def test_round_trip_is_within_half_a_step_of_the_clipped_value(x: np.ndarray) -> None:
    enc = FP.encode(x)
    assert enc.dtype == np.uint32 and enc.shape == x.shape
    err = np.abs(FP.decode(enc) - np.clip(x, -4, 4))
    assert err.max(initial=0) <= FP.step / 2 + 1e-12


@given(
    st.lists(values.filter(lambda a: a.ndim == 1), min_size=1, max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_a_ring_sum_decodes_to_the_sum_within_n_steps(xs: list[np.ndarray], seed: int) -> None:
    d = min(len(a) for a in xs)
    xs = [a[:d] for a in xs]
    rng = np.random.default_rng(seed)
    total = np.zeros(d, dtype=np.uint32)
    for a in xs:
        total += FP.encode(a, rng)  # wrapping uint32 addition is the ring's
    want = np.sum([np.clip(a, -4, 4) for a in xs], axis=0)
    assert np.abs(FP.decode(total) - want).max(initial=0) < len(xs) * FP.step + 1e-9


def test_negative_values_are_twos_complement() -> None:
    enc = FixedPoint(clip=1.0, frac_bits=0).encode(np.array([-1.0, 0.0, 1.0]))
    assert enc.tolist() == [2**32 - 1, 0, 1]


def test_masks_cancel_exactly_in_the_ring() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 1000)
    mask = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    masked = FP.encode(x) + mask  # what a peer sends: uniform noise to anyone without the mask
    np.testing.assert_array_equal(masked - mask, FP.encode(x))


def test_stochastic_rounding_is_unbiased() -> None:
    fp = FixedPoint(clip=1.0, frac_bits=2)  # step 0.25
    x = np.full(200_000, 0.1)  # 0.4 of a step above 0
    got = fp.decode(fp.encode(x, np.random.default_rng(1)))
    assert set(np.unique(got)) == {0.0, 0.25}
    assert got.mean() == pytest.approx(0.1, abs=0.002)
    assert fp.decode(fp.encode(x)).mean() == 0.0  # nearest rounding is biased here


def test_sixty_four_bit_ring() -> None:
    fp = FixedPoint(clip=1000.0, frac_bits=40, ring_bits=64)
    x = np.array([-999.123456789, 0.5, 1e-9])
    enc = fp.encode(x)
    assert enc.dtype == np.uint64
    assert np.abs(fp.decode(enc) - x).max() <= fp.step


def test_capacity_and_overflow_check() -> None:
    fp = FixedPoint(clip=1.0, frac_bits=24)  # one value uses 26 signed bits of 32
    assert fp.capacity() == (2**31 - 1) // 2**24  # 127
    fp.check_capacity(127)
    with pytest.raises(FixedPointError, match=r"can overflow Z_2\^32.*at most 127 terms"):
        fp.check_capacity(128)
    with pytest.raises(FixedPointError, match="weights up to 2"):
        fp.check_capacity(100, max_weight=2.0)
    # the check is right: 127 values at +clip sum without wrapping, 128 wrap
    top = fp.encode(np.ones(1))
    assert fp.decode(np.sum([top] * 127, axis=0, dtype=np.uint32))[0] == 127.0
    assert fp.decode(np.sum([top] * 128, axis=0, dtype=np.uint32))[0] < 0


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"clip": 0.0, "frac_bits": 8}, "positive"),
        ({"clip": float("inf"), "frac_bits": 8}, "positive"),
        ({"clip": 1.0, "frac_bits": 31}, "frac_bits"),
        ({"clip": 1.0, "frac_bits": 8, "ring_bits": 16}, "32 or 64"),
        ({"clip": 2.0**10, "frac_bits": 22}, "more than Z_2\\^32"),
    ],
)
def test_settings_that_cannot_work_are_refused(kwargs: dict, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(FixedPointError, match=reason):
        FixedPoint(**kwargs)


def test_non_finite_input_and_wrong_dtype_are_refused() -> None:
    with pytest.raises(FixedPointError, match="NaN"):
        FP.encode(np.array([0.0, np.nan]))
    with pytest.raises(FixedPointError, match="uint32"):
        FP.decode(np.zeros(3, dtype=np.int64))


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1))
def test_encoding_is_deterministic_given_the_seed(seed: int) -> None:
    x = np.linspace(-5, 5, 101)
    a = FP.encode(x, np.random.default_rng(seed))
    b = FP.encode(x, np.random.default_rng(seed))
    np.testing.assert_array_equal(a, b)
