"""Byzantine-robust aggregation rules: exact small cases, differential tests against slow
references, robustness to f huge Byzantine inputs, and the precondition errors."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydantic import ValidationError
from scipy.optimize import minimize
from scipy.stats import trim_mean

import p2pfed.robust
from p2pfed.errors import P2PFedError
from p2pfed.robust import (
    NEEDS_INDIVIDUAL_INPUTS,
    RULES,
    Aggregate,
    RobustConfig,
    RobustError,
    aggregate,
    check,
    clip_to_norm,
)
from p2pfed.robust import rules as rules_module


def _cohort(
    rule: RobustConfig, inputs: npt.ArrayLike, reference: np.ndarray | None = None
) -> Aggregate:
    """A coordinator's call: no own model, equal weights."""
    x = np.asarray(inputs, dtype=np.float64)
    return aggregate(rule, None, x, np.ones(len(x)), 0.0, reference=reference)


# --- exact small cases -------------------------------------------------------------------


def test_the_median_is_exact_per_coordinate() -> None:
    rule = RobustConfig(rule="median", f=1)
    out = _cohort(rule, [[1, 10], [2, 20], [100, -5]])
    np.testing.assert_array_equal(out.value, [2, 10])
    assert (out.rejected, out.clipped, out.tau) == (0, 0, None)
    # an even pool gives the midpoint, like np.median
    np.testing.assert_array_equal(_cohort(rule, [[1], [2], [3], [10]]).value, [2.5])


def test_the_median_uses_the_weights() -> None:
    rule = RobustConfig(rule="median", f=0)
    x = np.array([[1.0], [2.0], [3.0]])
    assert aggregate(rule, None, x, np.array([0.1, 0.1, 0.8]), 0.0).value[0] == 3.0
    assert aggregate(rule, None, x, np.array([0.5, 0.0, 0.5]), 0.0).value[0] == 2.0  # 1 | 3


def test_the_trimmed_mean_drops_f_or_a_fraction_from_each_end() -> None:
    x = [[1, -7], [2, 0], [3, 1], [4, 2], [100, 3]]
    by_f = _cohort(RobustConfig(rule="trimmed_mean", f=1), x)
    np.testing.assert_allclose(by_f.value, [3, 1])
    assert by_f.rejected == 2  # one value from each end, per coordinate
    by_trim = _cohort(RobustConfig(rule="trimmed_mean", f=0, trim=0.2), x)
    np.testing.assert_allclose(by_trim.value, by_f.value)


@settings(max_examples=40, deadline=None)
@given(
    x=arrays(
        np.float64,
        st.tuples(st.integers(5, 9), st.integers(1, 4)),
        elements=st.floats(-1e3, 1e3, allow_nan=False),
    ),
    b=st.integers(0, 2),
)
def test_equal_weights_match_numpy_and_scipy(x: np.ndarray, b: int) -> None:
    median = _cohort(RobustConfig(rule="median", f=0), x).value
    np.testing.assert_allclose(median, np.median(x, axis=0), rtol=1e-12, atol=1e-9)
    trimmed = _cohort(RobustConfig(rule="trimmed_mean", f=b), x).value
    np.testing.assert_allclose(trimmed, trim_mean(x, b / len(x), axis=0), atol=1e-9)


def test_coordinates_are_sorted_in_blocks_with_the_same_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x = np.random.default_rng(0).normal(size=(5, 37))
    whole = _cohort(RobustConfig(rule="median", f=0), x).value
    monkeypatch.setattr(rules_module, "_BLOCK", 12)  # 2 coordinates per block
    np.testing.assert_array_equal(_cohort(RobustConfig(rule="median", f=0), x).value, whole)
    np.testing.assert_array_equal(whole, np.median(x, axis=0))


def test_krum_picks_the_honest_cluster() -> None:
    rng = np.random.default_rng(1)
    honest = rng.normal(0.0, 0.1, size=(5, 3))
    byzantine = np.array([[50.0, 50.0, 50.0], [50.1, 50.0, 49.9]])  # a colluding pair
    x = np.vstack([byzantine, honest])
    out = _cohort(RobustConfig(rule="krum", f=2), x)
    assert any(np.array_equal(out.value, h) for h in honest)
    assert out.rejected == 6
    multi = _cohort(RobustConfig(rule="multi_krum", f=2), x)  # m = n - f = 5: the honest
    np.testing.assert_allclose(multi.value, honest.mean(axis=0))
    assert multi.rejected == 2
    three = _cohort(RobustConfig(rule="multi_krum", f=2, multi_krum_m=3), x)
    assert three.rejected == 4 and np.linalg.norm(three.value) < 0.5


def test_krum_breaks_ties_by_the_lower_index() -> None:
    x = np.array([[0.0], [0.0], [0.0], [0.0], [0.0]])
    out = aggregate(RobustConfig(rule="krum", f=1), None, x, np.ones(5), 0.0)
    assert out.value[0] == 0.0 and out.rejected == 4


def test_krum_needs_2f_plus_2_below_n() -> None:
    rule = RobustConfig(rule="krum", f=2)
    with pytest.raises(RobustError, match=r"krum needs 2f \+ 2 < n .*n = 6, f = 2"):
        _cohort(rule, np.zeros((6, 2)))
    with pytest.raises(RobustError, match=r"multi_krum needs 2f \+ 2 < n .*n = 3, f = 1"):
        check(RobustConfig(rule="multi_krum", f=1), 3)
    _cohort(rule, np.zeros((7, 2)))  # 6 < 7


def _gm_objective(x: np.ndarray, w: np.ndarray, v: np.ndarray) -> float:
    return float(w @ np.linalg.norm(x - v, axis=1))


def test_weiszfeld_finds_the_centre_of_a_symmetric_configuration() -> None:
    square = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]) + np.array([3.0, -2.0])
    out = _cohort(RobustConfig(rule="geometric_median", f=1), square)
    np.testing.assert_allclose(out.value, [3.0, -2.0], atol=1e-6)


def test_weiszfeld_is_robust_to_one_far_outlier() -> None:
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1e6, 1e6]])
    out = _cohort(RobustConfig(rule="geometric_median", f=1), points)
    assert np.linalg.norm(out.value) < 1.0
    assert np.linalg.norm(points.mean(axis=0)) > 1e5


def test_weiszfeld_matches_a_slow_minimiser() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3))
    w = rng.uniform(0.5, 2.0, size=8)
    out = aggregate(RobustConfig(rule="geometric_median", f=2), None, x, w, 0.0).value
    slow = minimize(
        lambda v: _gm_objective(x, w, v),
        x.mean(axis=0),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
    ).x
    assert _gm_objective(x, w, out) <= _gm_objective(x, w, slow) + 1e-7
    np.testing.assert_allclose(out, slow, atol=1e-4)


def test_centred_clipping_with_a_huge_radius_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(3)
    own, x, w = rng.normal(size=4), rng.normal(size=(3, 4)), np.array([0.2, 0.3, 0.1])
    mean = (0.4 * own + w @ x) / 1.0
    for tau in (1e12, math.inf):
        out = aggregate(RobustConfig(rule="centered_clip", cc_tau=tau), own, x, w, 0.4)
        np.testing.assert_allclose(out.value, mean, rtol=1e-12)
        assert out.clipped == 0 and out.tau == tau


def test_centred_clipping_moves_the_centre_at_most_tau_per_iteration() -> None:
    reference = np.zeros(2)
    x = np.array([[100.0, 0.0], [0.0, 100.0], [-3.0, 0.0]])
    rule = RobustConfig(rule="centered_clip", cc_tau=1.0, cc_iterations=3)
    out = _cohort(rule, x, reference=reference)
    assert np.linalg.norm(out.value) <= 3.0 and out.clipped == 3 and out.tau == 1.0


def _gossip_row() -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(4)
    return rng.normal(size=5), rng.normal(size=(3, 5)), np.array([0.25, 0.25, 0.2]), 0.3


def test_clipped_gossip_with_an_infinite_radius_is_plain_gossip() -> None:
    own, x, w, w_own = _gossip_row()
    gossip = w_own * own + w @ x
    out = aggregate(RobustConfig(rule="clipped_gossip", cg_tau=math.inf), own, x, w, w_own)
    np.testing.assert_allclose(out.value, gossip, rtol=1e-12, atol=1e-15)
    assert out.clipped == 0
    mean = aggregate(RobustConfig(rule="mean"), own, x, w, w_own)
    np.testing.assert_allclose(mean.value, gossip, rtol=1e-12, atol=1e-15)


def test_the_adaptive_radius_clips_the_byzantine_weight_of_farthest_neighbours() -> None:
    own = np.zeros(2)
    x = np.array([[1.0, 0.0], [0.0, 2.0], [30.0, 40.0]])  # distances 1, 2, 50
    w = np.full(3, 0.25)
    out = aggregate(RobustConfig(rule="clipped_gossip", f=1), own, x, w, 0.25)
    assert out.tau == 2.0 and out.clipped == 1  # the farthest, clipped to the next distance
    np.testing.assert_allclose(out.value, 0.25 * (x[0] + x[1] + np.array([1.2, 1.6])))
    # delta 0.5: the two farthest are clipped to the nearest's distance
    half = aggregate(RobustConfig(rule="clipped_gossip", cg_delta=0.5), own, x, w, 0.25)
    assert half.tau == 1.0 and half.clipped == 2
    # f = 0: nothing clipped, plain gossip
    none = aggregate(RobustConfig(rule="clipped_gossip", f=0), own, x, w, 0.25)
    assert none.clipped == 0
    np.testing.assert_allclose(none.value, 0.25 * x.sum(axis=0))


def test_balance_rejects_a_far_neighbour_and_accepts_close_ones() -> None:
    own = np.array([10.0, 0.0])
    x = np.array([[10.5, 0.0], [9.8, 0.2], [100.0, 0.0]])
    rule = RobustConfig(rule="balance")  # gamma 0.3: radius 3 at t = 0
    out = aggregate(rule, own, x, np.ones(3), 1.0)
    assert out.rejected == 1 and out.tau == pytest.approx(3.0)
    np.testing.assert_allclose(out.value, 0.5 * own + 0.5 * x[:2].mean(axis=0))
    late = aggregate(rule, own, x, np.ones(3), 1.0, step=10, total_steps=10)
    assert late.tau == pytest.approx(3.0 / math.e) and late.rejected == 1
    alone = aggregate(rule, own, x[2:], np.ones(1), 1.0)
    np.testing.assert_array_equal(alone.value, own)  # none accepted: keep x_i
    # at a coordinator the reference plays x_i and every client is a candidate
    coord = aggregate(rule, None, x, np.ones(3), 0.0, reference=own)
    np.testing.assert_allclose(coord.value, out.value)


def test_norm_clip_bounds_each_inputs_influence() -> None:
    rng = np.random.default_rng(5)
    reference = rng.normal(size=6)
    x = reference + rng.normal(0.0, 0.1, size=(4, 6))
    rule = RobustConfig(rule="norm_clip", norm_bound=0.5)
    base = aggregate(rule, None, x, np.ones(4), 0.0, reference=reference)
    for attack in (1e3, -1e6):
        bad = x.copy()
        bad[2] = attack
        out = aggregate(rule, None, bad, np.ones(4), 0.0, reference=reference)
        assert np.linalg.norm(out.value - base.value) <= 2 * 0.25 * 0.5 + 1e-12
        assert out.clipped >= 1 and out.tau == 0.5
    assert np.linalg.norm(base.value - reference) <= 0.5


def test_clip_to_norm_is_the_client_side_bound() -> None:
    v, cut = clip_to_norm(np.array([3.0, 4.0]), 1.0)
    np.testing.assert_allclose(v, [0.6, 0.8])
    assert cut
    v, cut = clip_to_norm(np.array([0.3, 0.4]), 1.0)
    assert not cut and np.allclose(v, [0.3, 0.4])
    with pytest.raises(RobustError):
        clip_to_norm(np.array([1.0]), 0.0)


# --- robustness: f inputs at +-1e6 -------------------------------------------------------

ROBUST = [
    RobustConfig(rule="median", f=2),
    RobustConfig(rule="trimmed_mean", f=2),
    RobustConfig(rule="krum", f=2),
    RobustConfig(rule="multi_krum", f=2),
    RobustConfig(rule="geometric_median", f=2),
    RobustConfig(rule="centered_clip", f=2, cc_tau=1.0, cc_iterations=3),
    RobustConfig(rule="clipped_gossip", f=2),
    RobustConfig(rule="clipped_gossip", f=2, cg_tau=1.0),
    RobustConfig(rule="balance", f=2),
    RobustConfig(rule="norm_clip", f=2, norm_bound=1.0),
]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("at_peer", [True, False], ids=["peer", "coordinator"])
def test_f_huge_byzantine_inputs_leave_robust_rules_near_the_honest_mean(
    seed: int, at_peer: bool
) -> None:
    rng = np.random.default_rng(seed)
    p, honest_n, f = 6, 7, 2
    honest = 5.0 + rng.normal(0.0, 0.1, size=(honest_n, p))
    byzantine = 1e6 * rng.choice([-1.0, 1.0], size=(f, p))
    target = honest.mean(axis=0)
    if at_peer:  # the own model is honest, and the neighbours come in a random order
        own, received = honest[0], np.vstack([honest[1:], byzantine])
        received = received[rng.permutation(len(received))]
        w, w_own, reference = np.full(len(received), 1.0 / 9), 1.0 / 9, None
    else:
        own, received = None, np.vstack([honest, byzantine])[rng.permutation(honest_n + f)]
        w, w_own, reference = rng.uniform(1.0, 3.0, size=honest_n + f), 0.0, np.full(p, 5.0)
    mean = aggregate(RobustConfig(rule="mean"), own, received, w, w_own)
    assert np.linalg.norm(mean.value - target) > 1e4  # plain averaging is destroyed
    for rule in ROBUST:
        out = aggregate(rule, own, received, w, w_own, reference=reference)
        assert np.linalg.norm(out.value - target) < 1.0, rule.rule


# --- preconditions, check, config --------------------------------------------------------


def test_non_finite_inputs_are_dropped_except_by_the_mean() -> None:
    x = np.array([[1.0], [2.0], [np.nan], [3.0], [np.inf]])
    out = _cohort(RobustConfig(rule="median", f=2), x)
    assert out.value[0] == 2.0 and out.rejected == 2
    # two certainly-Byzantine inputs are gone: f = 2 - 2 = 0 for Krum's condition
    assert _cohort(RobustConfig(rule="krum", f=2), x).rejected == 4
    with pytest.raises(RobustError, match="not finite"):
        _cohort(RobustConfig(rule="mean"), x)
    # a clipping rule keeps a dropped input's weight on the centre
    cg = aggregate(
        RobustConfig(rule="clipped_gossip", cg_tau=math.inf),
        np.zeros(1),
        np.array([[4.0], [np.nan]]),
        np.array([0.25, 0.25]),
        0.5,
    )
    assert cg.value[0] == 1.0 and cg.rejected == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: aggregate(RobustConfig(), None, np.zeros(3), np.ones(3), 0.0), r"\(k, P\)"),
        (lambda: aggregate(RobustConfig(), None, np.zeros((3, 2)), np.ones(2), 0.0), "shape"),
        (
            lambda: aggregate(RobustConfig(), np.zeros(3), np.zeros((2, 2)), np.ones(2), 1.0),
            "own has shape",
        ),
        (
            lambda: aggregate(RobustConfig(), None, np.zeros((2, 2)), np.array([1.0, -1.0]), 0.0),
            "non-negative",
        ),
        (
            lambda: aggregate(RobustConfig(), None, np.zeros((2, 2)), np.zeros(2), 0.0),
            "positive sum",
        ),
        (
            lambda: aggregate(RobustConfig(), None, np.zeros((2, 2)), np.ones(2), 0.5),
            "no own model",
        ),
        (
            lambda: aggregate(
                RobustConfig(), np.full(2, np.nan), np.zeros((1, 2)), np.ones(1), 1.0
            ),
            "own model is not finite",
        ),
        (
            lambda: aggregate(
                RobustConfig(rule="norm_clip", norm_bound=1.0),
                None,
                np.zeros((2, 2)),
                np.ones(2),
                0.0,
            ),
            "give own or reference",
        ),
        (
            lambda: aggregate(
                RobustConfig(rule="balance"), np.ones(2), np.zeros((1, 2)), np.ones(1), 1.0, step=-1
            ),
            "step >= 0",
        ),
        (
            lambda: aggregate(
                RobustConfig(rule="median"), None, np.zeros((2, 2)), np.ones(2), 0.0, f=-1
            ),
            "non-negative",
        ),
    ],
)
def test_bad_calls_raise_a_clear_robust_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RobustError, match=message):
        call()


def test_robust_errors_are_p2pfed_and_value_errors() -> None:
    assert issubclass(RobustError, P2PFedError) and issubclass(RobustError, ValueError)


def test_check_validates_a_rule_for_a_pool_size_without_data() -> None:
    check(RobustConfig(rule="krum", f=1), 5)
    with pytest.raises(RobustError, match=r"n = 4, f = 1"):
        check(RobustConfig(rule="krum", f=1), 4)
    check(RobustConfig(rule="krum", f=1), 4, f=0)  # a per-pool f overrides the config's
    with pytest.raises(RobustError, match="minority"):
        check(RobustConfig(rule="median", f=2), 4)
    with pytest.raises(RobustError, match="2b < n"):
        check(RobustConfig(rule="trimmed_mean", f=1), 2)
    check(RobustConfig(rule="trimmed_mean", f=5, trim=0.45), 2)  # a fraction always fits
    with pytest.raises(RobustError, match="at least one input"):
        check(RobustConfig(), 0)
    for rule in ("mean", "centered_clip", "clipped_gossip", "balance", "norm_clip"):
        check(RobustConfig(rule=rule, f=5, cc_tau=1.0, norm_bound=1.0), 2)


def test_the_config_is_strict_and_complete() -> None:
    with pytest.raises(ValidationError, match="cc_tau"):
        RobustConfig(rule="centered_clip")
    with pytest.raises(ValidationError, match="norm_bound"):
        RobustConfig(rule="norm_clip")
    with pytest.raises(ValidationError, match="extra"):
        RobustConfig(rule="krum", tau=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        RobustConfig(rule="trimmed_mean", trim=0.5)
    with pytest.raises(ValidationError):
        RobustConfig(f=True)
    with pytest.raises(ValidationError):
        RobustConfig(balance_gamma=math.inf)
    assert RobustConfig(rule="clipped_gossip", cg_tau=math.inf).cg_tau == math.inf
    with pytest.raises(ValidationError):
        RobustConfig(rule="clipped_gossip", cg_tau=math.nan)


def test_only_the_mean_works_on_sums() -> None:
    assert set(NEEDS_INDIVIDUAL_INPUTS) == set(RULES)
    assert [r for r in RULES if not NEEDS_INDIVIDUAL_INPUTS[r]] == ["mean"]
    assert sorted(p2pfed.robust.CLIENT_SIDE_RULES) == ["norm_clip"]


def test_the_public_api_is_complete() -> None:
    public = {n for n in dir(p2pfed.robust) if not n.startswith("_")} - {"rules", "buckets"}
    assert set(p2pfed.robust.__all__) == public


def test_aggregation_is_deterministic_and_leaves_its_inputs_alone() -> None:
    rng = np.random.default_rng(6)
    own, x, w = rng.normal(size=3), rng.normal(size=(6, 3)), rng.uniform(size=6)
    before = x.copy(), own.copy()
    for name in RULES:
        rule = RobustConfig(rule=name, f=1, cc_tau=0.5, norm_bound=0.5)
        a = aggregate(rule, own, x, w, 0.2)
        b = aggregate(rule, own, x, w, 0.2)
        np.testing.assert_array_equal(a.value, b.value)
        assert a.value.dtype == np.float64 and a.value.shape == (3,)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(own, before[1])
