"""Poisoning (p2pfed.poison): the crafted models against their papers' formulas and naive
loops, the data attacks against what they promise to touch, and their input checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import norm

import p2pfed.poison as poison
from p2pfed.poison import data, model
from tests.test_purity import FORBIDDEN, PKG, _global_rng_uses, _imports

RNG_SEED = 20240607


def _rng(seed: int = RNG_SEED) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- public API -----------------------------------------------------------------------------


def test_public_api_is_complete() -> None:
    assert sorted(poison.__all__) == sorted({*model.__all__, *data.__all__})
    for name in poison.__all__:
        assert getattr(poison, name) is getattr(model if name in model.__all__ else data, name)
    public = {
        n
        for mod in (model, data)
        for n, v in vars(mod).items()
        if not n.startswith("_") and callable(v) and getattr(v, "__module__", "") == mod.__name__
    }
    assert public <= set(poison.__all__)


@pytest.mark.parametrize("name", ["__init__.py", "model.py", "data.py"])
def test_poison_modules_are_pure(name: str) -> None:
    path = PKG / "poison" / name
    assert not (_imports(path) & (FORBIDDEN | {"torch", "ray"}))
    assert _global_rng_uses(path.read_text(), str(path)) == []


# --- model poisoning ------------------------------------------------------------------------


def test_sign_flip_reverses_and_scales_the_update() -> None:
    ref = np.array([1.0, -2.0, 0.5])
    honest = np.array([2.0, -1.0, 0.5])  # update (1, 1, 0)
    out = model.sign_flip(honest, ref, scale=3.0)
    assert out.dtype == np.float32 and out.shape == (3,)
    np.testing.assert_allclose(out, [-2.0, -5.0, 0.5])
    np.testing.assert_allclose(model.sign_flip(honest, ref), [0.0, -3.0, 0.5])


def test_model_replacement_makes_the_fedavg_mean_the_backdoored_model() -> None:
    n, lr = 10, 0.5
    ref = _rng().normal(size=20)
    backdoored = ref + _rng(1).normal(size=20)
    gamma = model.replacement_scale(n, lr)
    assert gamma == pytest.approx(n / lr)
    sent = model.model_replacement(backdoored, ref, scale=gamma)
    np.testing.assert_allclose(sent, ref + gamma * (backdoored - ref), rtol=1e-5, atol=1e-5)
    # FedAvg (p2pfed.protocol.fed): x' = (1 - lr) x + lr mean; the others send the reference
    models = np.stack([sent.astype(np.float64)] + [ref] * (n - 1))
    new = (1 - lr) * ref + lr * models.mean(axis=0)
    np.testing.assert_allclose(new, backdoored, atol=1e-4)


def test_replacement_scale_rejects_bad_input() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_clients"):
            model.replacement_scale(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="server_lr"):
        model.replacement_scale(5, 0.0)


def test_gaussian_noise_is_centred_seeded_and_has_its_sigma() -> None:
    center = np.linspace(-1.0, 1.0, 20_000)
    a = model.gaussian_noise(center, sigma=0.5, rng=_rng())
    b = model.gaussian_noise(center, sigma=0.5, rng=_rng())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, model.gaussian_noise(center, sigma=0.5, rng=_rng(2)))
    noise = a - center
    assert abs(noise.mean()) < 0.02
    assert noise.std() == pytest.approx(0.5, rel=0.03)


def test_alie_z_follows_the_papers_formula() -> None:
    # n = 50, f = 12: s = floor(50 / 2 + 1) - 12 = 14, z = Phi^{-1}((50 - 14) / 50)
    z = model.alie_z(50, 12)
    assert z == pytest.approx(norm.ppf(36 / 50))
    assert z == pytest.approx(0.5828, abs=1e-4)
    for n, f in [(10, 1), (10, 5), (51, 25), (7, 3), (2, 1)]:
        s = math.floor(n / 2 + 1) - f
        assert model.alie_z(n, f) == pytest.approx(norm.ppf((n - s) / n))
    # more colluders may hide further from the mean
    zs = [model.alie_z(50, f) for f in range(1, 26)]
    assert (np.diff(zs) > 0).all()


@pytest.mark.parametrize("n,f", [(1, 0), (10, 0), (10, 6), (50, 26), (10, -1)])
def test_alie_z_rejects_impossible_counts(n: int, f: int) -> None:
    with pytest.raises(ValueError):
        model.alie_z(n, f)


def test_alie_matches_a_per_coordinate_loop() -> None:
    view = _rng().normal(size=(7, 5)) * np.array([1.0, 2.0, 0.1, 5.0, 0.0])
    z = 1.3
    expected = np.empty(5)
    for j in range(5):
        col = view[:, j]
        mean = sum(col) / len(col)
        std = math.sqrt(sum((c - mean) ** 2 for c in col) / (len(col) - 1))
        expected[j] = mean - z * std
    np.testing.assert_allclose(model.alie(view, z=z), expected, rtol=1e-6, atol=1e-6)
    derived = model.alie(view, num_clients=50, num_byzantine=12)
    mean, std = view.mean(axis=0), view.std(axis=0, ddof=1)
    np.testing.assert_allclose(derived, mean - model.alie_z(50, 12) * std, rtol=1e-6, atol=1e-6)
    pop = model.alie(view, z=z, ddof=0)
    np.testing.assert_allclose(pop, mean - z * view.std(axis=0), rtol=1e-6, atol=1e-6)


def test_alie_on_models_and_on_updates_agree() -> None:
    ref = _rng(3).normal(size=6)
    updates = _rng(4).normal(size=(5, 6))
    from_models = model.alie(ref + updates, z=0.7)
    from_updates = model.alie(updates, z=0.7)
    np.testing.assert_allclose(from_models, ref + from_updates, rtol=1e-5, atol=1e-5)


def test_alie_rejects_bad_input() -> None:
    view = np.ones((3, 4))
    with pytest.raises(ValueError, match="needs z"):
        model.alie(view)
    with pytest.raises(ValueError, match="not both"):
        model.alie(view, z=1.0, num_clients=10, num_byzantine=2)
    with pytest.raises(ValueError, match="more than ddof"):
        model.alie(view[:1], z=1.0)
    with pytest.raises(ValueError, match="2-D"):
        model.alie(np.ones(4), z=1.0)
    with pytest.raises(ValueError, match="NaN"):
        model.alie(np.array([[1.0, np.nan], [0.0, 0.0]]), z=1.0)
    with pytest.raises(ValueError, match="z must be finite"):
        model.alie(view, z=math.inf)


@pytest.mark.parametrize("epsilon", [0.1, 10.0])
def test_ipm_opposes_the_honest_mean_update(epsilon: float) -> None:
    ref = _rng().normal(size=30)
    view = ref + 0.3 + _rng(5).normal(scale=0.1, size=(4, 30))
    out = model.ipm(view, ref, epsilon=epsilon).astype(np.float64)
    mean_update = view.mean(axis=0) - ref
    np.testing.assert_allclose(out - ref, -epsilon * mean_update, rtol=1e-5, atol=1e-5)
    assert float((out - ref) @ mean_update) < 0


def test_dissensus_matches_its_formula() -> None:
    xi = np.array([0.0, 1.0])
    xs = np.array([[1.0, 1.0], [0.0, 3.0]])
    w = np.array([0.25, 0.25])
    out = model.dissensus(xi, xs, w, 0.5, epsilon=2.0)
    # sum_j W_ij (x_j - x_i) = 0.25 (1, 0) + 0.25 (0, 2) = (0.25, 0.5)
    np.testing.assert_allclose(out, xi - 2.0 * np.array([0.25, 0.5]) / 0.5)


@pytest.mark.parametrize("epsilon", [1.5, 3.0])
def test_dissensus_pushes_the_target_away_from_its_honest_neighbours(epsilon: float) -> None:
    rng = _rng(6)
    xi = rng.normal(size=8)
    honest = xi + 1.0 + rng.normal(scale=0.2, size=(3, 8))
    w_self, w_honest, w_byz = 0.2, np.array([0.2, 0.2, 0.2]), [0.1, 0.1]  # row sums to 1
    sent = model.dissensus(xi, honest, w_honest, sum(w_byz), epsilon=epsilon)
    mixed = w_self * xi + w_honest @ honest + sum(w * sent.astype(np.float64) for w in w_byz)
    target = honest.mean(axis=0)
    assert np.linalg.norm(mixed - target) > np.linalg.norm(xi - target)
    # the closed form: x_i' = x_i + (1 - epsilon) sum_j W_ij (x_j - x_i)
    np.testing.assert_allclose(
        mixed, xi + (1 - epsilon) * (w_honest @ (honest - xi)), rtol=1e-5, atol=1e-5
    )
    # without the attack (Byzantine weight on honest peers) the target moves closer
    honest_mix = (w_self + sum(w_byz)) * xi + w_honest @ honest
    assert np.linalg.norm(honest_mix - target) < np.linalg.norm(xi - target)


def test_dissensus_rejects_bad_input() -> None:
    xi, xs, w = np.zeros(3), np.ones((2, 3)), np.array([0.3, 0.3])
    with pytest.raises(ValueError, match="honest_weights must have shape"):
        model.dissensus(xi, xs, np.array([0.3]), 0.4, epsilon=2.0)
    with pytest.raises(ValueError, match="non-negative"):
        model.dissensus(xi, xs, np.array([0.3, -0.1]), 0.4, epsilon=2.0)
    with pytest.raises(ValueError, match="byzantine_weight"):
        model.dissensus(xi, xs, w, 0.0, epsilon=2.0)
    with pytest.raises(ValueError, match="expected 3"):
        model.dissensus(xi, np.ones((2, 4)), w, 0.4, epsilon=2.0)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        model.dissensus(xi, np.ones((0, 3)), np.array([]), 0.4, epsilon=2.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: model.sign_flip(np.ones(3), np.ones(4)),
        lambda: model.sign_flip(np.ones(3), np.ones(3), scale=-1.0),
        lambda: model.sign_flip(np.array([1.0, np.inf]), np.ones(2)),
        lambda: model.sign_flip(np.ones((2, 2)), np.ones((2, 2))),
        lambda: model.sign_flip(np.array([]), np.array([])),
        lambda: model.gaussian_noise(np.ones(3), sigma=0.0, rng=_rng()),
        lambda: model.model_replacement(np.ones(3), np.ones(2), scale=2.0),
        lambda: model.model_replacement(np.ones(3), np.zeros(3), scale=math.nan),
        lambda: model.model_replacement(np.full(3, 1e30), np.zeros(3), scale=1e20),
        lambda: model.ipm(np.ones((2, 3)), np.ones(4)),
        lambda: model.ipm(np.ones((2, 3)), np.ones(3), epsilon=0.0),
    ],
)
def test_model_attacks_reject_bad_input(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_model_attacks_leave_their_inputs_alone() -> None:
    ref, honest, view = np.zeros(4), np.ones(4), np.arange(12.0).reshape(3, 4)
    copies = [a.copy() for a in (ref, honest, view)]
    model.sign_flip(honest, ref)
    model.model_replacement(honest, ref, scale=5.0)
    model.alie(view, z=1.0)
    model.ipm(view, ref)
    model.dissensus(ref, view, np.full(3, 0.2), 0.4, epsilon=2.0)
    for a, c in zip((ref, honest, view), copies, strict=True):
        np.testing.assert_array_equal(a, c)


# --- label flipping -------------------------------------------------------------------------


def test_flip_labels_shift_and_reverse_on_everything() -> None:
    y = np.array([0, 1, 2, 3, 3, 0], dtype=np.int64)
    np.testing.assert_array_equal(data.flip_labels(y, 4), [1, 2, 3, 0, 0, 1])
    np.testing.assert_array_equal(data.flip_labels(y, 4, shift=3), [3, 0, 1, 2, 2, 3])
    np.testing.assert_array_equal(data.flip_labels(y, 4, mode="reverse"), [3, 2, 1, 0, 0, 3])
    # an odd C leaves its middle class alone under reverse
    np.testing.assert_array_equal(
        data.flip_labels(np.arange(5), 5, mode="reverse"), [4, 3, 2, 1, 0]
    )


@pytest.mark.parametrize("mode", ["shift", "reverse"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.55, 1.0])
def test_flip_labels_changes_exactly_the_fraction(mode: data.FlipMode, fraction: float) -> None:
    y = _rng().integers(0, 10, size=200)
    out = data.flip_labels(y, 10, mode=mode, fraction=fraction, rng=_rng(1))
    assert out.shape == y.shape and out.dtype == np.int64
    changed = out != y
    assert changed.sum() == round(fraction * 200)
    flipped = (y + 1) % 10 if mode == "shift" else 9 - y
    np.testing.assert_array_equal(out[changed], flipped[changed])
    again = data.flip_labels(y, 10, mode=mode, fraction=fraction, rng=_rng(1))
    np.testing.assert_array_equal(out, again)


def test_reverse_fraction_counts_only_labels_it_can_change() -> None:
    y = np.array([0, 1, 1, 1, 1, 2, 2, 2])  # C = 3: class 1 maps to itself
    out = data.flip_labels(y, 3, mode="reverse", fraction=0.5, rng=_rng())
    assert (out != y).sum() == 2 and np.array_equal(out[1:5], y[1:5])


def test_targeted_flip_moves_only_the_source_class() -> None:
    y = _rng().integers(0, 5, size=300)
    out = data.targeted_flip(y, source=2, target=4, fraction=0.5, rng=_rng(2))
    changed = out != y
    assert changed.sum() == round(0.5 * (y == 2).sum())
    assert (y[changed] == 2).all() and (out[changed] == 4).all()
    np.testing.assert_array_equal(data.targeted_flip(y, 2, 4), np.where(y == 2, 4, y))


@pytest.mark.parametrize(
    "call",
    [
        lambda: data.flip_labels(np.array([0, 1]), 1),
        lambda: data.flip_labels(np.array([0, 5]), 4),
        lambda: data.flip_labels(np.array([0, 1]), 4, shift=8),
        lambda: data.flip_labels(np.array([0, 1]), 4, mode="swap"),  # type: ignore[arg-type]
        lambda: data.flip_labels(np.array([0, 1, 2, 3]), 4, fraction=0.5),  # no rng
        lambda: data.flip_labels(np.array([0, 1]), 4, fraction=1.5),
        lambda: data.flip_labels(np.array([0.0, 1.0]), 4),
        lambda: data.flip_labels(np.array([[0, 1]]), 4),
        lambda: data.flip_labels(np.array([-1, 1]), 4),
        lambda: data.targeted_flip(np.array([0, 1]), 1, 1),
        lambda: data.targeted_flip(np.array([0, 1]), -1, 1),
    ],
)
def test_label_flips_reject_bad_input(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_label_flips_leave_their_input_alone() -> None:
    y = np.array([0, 1, 2, 3])
    data.flip_labels(y, 4)
    data.targeted_flip(y, 1, 2)
    np.testing.assert_array_equal(y, [0, 1, 2, 3])


# --- backdoor triggers ----------------------------------------------------------------------

SHAPE = (2, 5, 6)  # (C, H, W)


def _images(n: int, seed: int = RNG_SEED) -> np.ndarray:
    return _rng(seed).uniform(0.0, 0.5, size=(n, math.prod(SHAPE))).astype(np.float32)


@pytest.mark.parametrize(
    "corner,rows,cols",
    [
        ("bottom_right", slice(3, 5), slice(4, 6)),
        ("top_left", slice(0, 2), slice(0, 2)),
        ("top_right", slice(0, 2), slice(4, 6)),
        ("bottom_left", slice(3, 5), slice(0, 2)),
    ],
)
def test_add_trigger_stamps_only_the_corner_patch(
    corner: data.Corner, rows: slice, cols: slice
) -> None:
    x = _images(4)
    out = data.add_trigger(x, SHAPE, size=2, value=0.9, corner=corner)
    assert out.shape == x.shape and out.dtype == np.float32
    img, before = out.reshape(-1, *SHAPE), x.reshape(-1, *SHAPE)
    mask = np.zeros(SHAPE, dtype=bool)
    mask[:, rows, cols] = True
    assert (img[:, mask] == np.float32(0.9)).all()
    np.testing.assert_array_equal(img[:, ~mask], before[:, ~mask])
    assert not np.shares_memory(out, x)


def test_checkerboard_alternates_value_and_zero() -> None:
    out = data.add_trigger(_images(1), SHAPE, pattern="checkerboard", size=3)
    patch = out.reshape(SHAPE)[:, 2:5, 3:6]
    expected = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=np.float32)
    for ch in range(SHAPE[0]):
        np.testing.assert_array_equal(patch[ch], expected)


def test_trigger_pixels_index_the_flat_layout() -> None:
    idx, vals = data.trigger_pixels(SHAPE, size=2, value=1.0)
    assert idx.dtype == np.int64 and vals.dtype == np.float32 and len(idx) == 2 * 2 * 2
    expected = [c * 30 + r * 6 + w for c in range(2) for r in (3, 4) for w in (4, 5)]
    np.testing.assert_array_equal(idx, expected)


def test_trigger_on_tabular_rows_is_a_strip() -> None:
    x = np.zeros((3, 10), dtype=np.float32)
    out = data.add_trigger(x, (1, 1, 10), size=3)
    np.testing.assert_array_equal(out[:, :7], 0.0)
    np.testing.assert_array_equal(out[:, 7:], 1.0)


def test_poison_dataset_stamps_and_relabels_the_fraction() -> None:
    x = _images(50)
    y = _rng(1).integers(0, 10, size=50)
    xs, ys = data.poison_dataset(x, y, 7, 0.2, SHAPE, _rng(2))
    assert xs.shape == x.shape and ys.shape == y.shape
    assert xs.dtype == np.float32 and ys.dtype == np.int64
    stamped = (xs != x).any(axis=1)  # images in [0, 0.5) always change under value 1
    assert stamped.sum() == 10
    np.testing.assert_array_equal(ys[stamped], 7)
    np.testing.assert_array_equal(ys[~stamped], y[~stamped])
    np.testing.assert_array_equal(xs[~stamped], x[~stamped])
    np.testing.assert_array_equal(xs[stamped], data.add_trigger(x[stamped], SHAPE))
    xs2, ys2 = data.poison_dataset(x, y, 7, 0.2, SHAPE, _rng(2))
    np.testing.assert_array_equal(xs, xs2)
    np.testing.assert_array_equal(ys, ys2)


def test_triggered_test_set_excludes_the_target_class() -> None:
    x = _images(40)
    y = np.arange(40) % 4
    xt, yt = data.triggered_test_set(x, y, 2, SHAPE)
    assert len(xt) == len(yt) == 30
    assert (yt != 2).all()
    np.testing.assert_array_equal(yt, y[y != 2])
    np.testing.assert_array_equal(xt, data.add_trigger(x[y != 2], SHAPE))
    assert data.attack_success_rate(np.array([2, 2, 0, 1]), 2) == 0.5


@pytest.mark.parametrize(
    "call",
    [
        lambda: data.add_trigger(_images(2), (2, 5, 5)),  # 50 features, x has 60
        lambda: data.add_trigger(_images(2), (2, 5)),  # type: ignore[arg-type]
        lambda: data.add_trigger(_images(2), SHAPE, size=0),
        lambda: data.add_trigger(_images(2), SHAPE, size=7),
        lambda: data.add_trigger(_images(2), SHAPE, value=math.nan),
        lambda: data.add_trigger(_images(2), SHAPE, pattern="cross"),  # type: ignore[arg-type]
        lambda: data.add_trigger(_images(2), SHAPE, corner="middle"),  # type: ignore[arg-type]
        lambda: data.add_trigger(_images(2)[0], SHAPE),
        lambda: data.add_trigger(np.full((1, 60), np.inf), SHAPE),
        lambda: data.poison_dataset(_images(3), np.zeros(2, dtype=np.int64), 1, 0.5, SHAPE, _rng()),
        lambda: data.poison_dataset(
            _images(3), np.zeros(3, dtype=np.int64), -1, 0.5, SHAPE, _rng()
        ),
        lambda: data.poison_dataset(
            _images(3), np.zeros(3, dtype=np.int64), 1, -0.1, SHAPE, _rng()
        ),
        lambda: data.triggered_test_set(_images(3), np.zeros(4, dtype=np.int64), 1, SHAPE),
        lambda: data.attack_success_rate(np.array([]), 1),
    ],
)
def test_triggers_reject_bad_input(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_data_attacks_leave_their_inputs_alone() -> None:
    x, y = _images(10), np.arange(10) % 3
    xc, yc = x.copy(), y.copy()
    data.add_trigger(x, SHAPE)
    data.poison_dataset(x, y, 1, 0.5, SHAPE, _rng())
    data.triggered_test_set(x, y, 1, SHAPE)
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(y, yc)
