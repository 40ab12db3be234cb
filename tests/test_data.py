"""p2pfed.data: dataset loading, partition schemes and their invariants."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import p2pfed.data as data_pkg
from p2pfed.data import (
    DataConfig,
    Dataset,
    PartitionConfig,
    label_histograms,
    load_dataset,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    partition_shards,
)
from p2pfed.errors import DataError

PROPS = settings(max_examples=60, deadline=None)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
    joined = np.concatenate(parts)
    assert len(joined) == n  # nothing duplicated ...
    assert np.array_equal(np.sort(joined), np.arange(n))  # ... and nothing lost


@st.composite
def labelled(draw: st.DrawFn, min_per_class: int = 1, max_per_class: int = 60) -> np.ndarray:
    """Shuffled integer labels with 2..10 classes of arbitrary sizes."""
    counts = draw(st.lists(st.integers(min_per_class, max_per_class), min_size=2, max_size=10))
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return np.random.default_rng(draw(st.integers(0, 2**16))).permutation(labels)


def _entropy_per_peer(hist: np.ndarray) -> np.ndarray:
    p = hist / hist.sum(axis=1, keepdims=True)  # (K, C)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)  # (K,)


# --- loading ---------------------------------------------------------------------------


def _check_dataset(ds: Dataset) -> None:
    assert ds.x_train.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train.ndim == 2 and ds.x_test.shape[1] == ds.num_features
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    # Stratified: every class in both halves.
    assert set(np.unique(ds.y_train)) == set(range(ds.num_classes))
    assert set(np.unique(ds.y_test)) == set(range(ds.num_classes))


def test_digits_loads_normalised_with_image_shape() -> None:
    ds = load_dataset(DataConfig(dataset="digits"), 4, _rng())
    _check_dataset(ds)
    assert ds.name == "digits" and ds.num_features == 64 and ds.num_classes == 10
    assert ds.image_shape == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert len(ds.y_test) == pytest.approx(0.2 * 1797, abs=1)
    both = np.concatenate([ds.x_train, ds.x_test])
    assert both.min() == 0.0 and both.max() == 1.0


def test_mnist_loads_normalised_with_image_shape() -> None:
    ds = load_dataset(DataConfig(dataset="mnist", test_fraction=0.1), 4, _rng())
    _check_dataset(ds)
    assert ds.num_features == 784 and ds.image_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_test) == 5000
    assert len(ds.y_test) == 500
    both = np.concatenate([ds.x_train, ds.x_test])
    assert both.min() == 0.0 and both.max() == 1.0


def test_synthetic_is_standardised_tabular_and_scales_with_peers() -> None:
    cfg = DataConfig(dataset="synthetic", samples_per_peer=50, features=12, classes=3)
    small = load_dataset(cfg, 4, _rng())
    large = load_dataset(cfg, 8, _rng())
    _check_dataset(small)
    assert small.image_shape is None and small.num_features == 12 and small.num_classes == 3
    assert len(small.y_train) == 200 and len(large.y_train) == 400
    assert len(large.y_train) + len(large.y_test) == 2 * (len(small.y_train) + len(small.y_test))
    np.testing.assert_allclose(small.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(small.x_train.std(axis=0), 1.0, atol=1e-4)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_loading_is_seeded_by_the_generator(name: str) -> None:
    cfg = DataConfig(dataset=name)
    a = load_dataset(cfg, 3, _rng(7))
    b = load_dataset(cfg, 3, _rng(7))
    c = load_dataset(cfg, 3, _rng(8))
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)


def test_loading_and_partitioning_leave_global_rngs_alone() -> None:
    before = pickle.dumps(np.random.get_state())
    ds = load_dataset(DataConfig(dataset="synthetic", samples_per_peer=20), 5, _rng())
    for scheme in ("iid", "dirichlet", "shards", "quantity_skew"):
        partition(ds.y_train, 5, PartitionConfig(scheme=scheme, min_samples=2), _rng())
    assert pickle.dumps(np.random.get_state()) == before


def test_npz_images_load_as_flat_float32(tmp_path: Path) -> None:
    gen = _rng(3)
    x = gen.integers(0, 256, size=(40, 5, 6)).astype(np.uint8)  # (N, H, W)
    y = np.tile(np.arange(4), 10)
    path = tmp_path / "mine.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(DataConfig(dataset="npz", path=str(path), test_fraction=0.25), 2, _rng())
    _check_dataset(ds)
    assert ds.image_shape == (1, 5, 6) and ds.num_features == 30 and ds.num_classes == 4
    assert len(ds.y_test) == 10
    # Values pass through unscaled; the rows are the file's rows.
    rows = {r.tobytes() for r in x.reshape(40, -1).astype(np.float32)}
    assert {r.tobytes() for r in ds.x_train} <= rows


def test_npz_channels_first_and_tabular_shapes(tmp_path: Path) -> None:
    y = np.tile(np.arange(2), 10)
    np.savez(tmp_path / "chw.npz", x=np.zeros((20, 3, 4, 4), np.float32), y=y)
    np.savez(tmp_path / "tab.npz", x=np.ones((20, 7)), y=y)
    chw = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "chw.npz")), 2, _rng())
    tab = load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "tab.npz")), 2, _rng())
    assert chw.image_shape == (3, 4, 4) and chw.num_features == 48
    assert tab.image_shape is None and tab.num_features == 7


def test_npz_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.npz"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_dataset(DataConfig(dataset="npz", path=str(missing)), 2, _rng())


def test_npz_malformed_files_raise_data_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"definitely not a zip archive")
    with pytest.raises(DataError, match=r"junk\.npz"):
        load_dataset(DataConfig(dataset="npz", path=str(junk)), 2, _rng())
    no_y = tmp_path / "no_y.npz"
    np.savez(no_y, x=np.zeros((10, 3)))
    with pytest.raises(DataError, match="missing"):
        load_dataset(DataConfig(dataset="npz", path=str(no_y)), 2, _rng())
    float_y = tmp_path / "float_y.npz"
    np.savez(float_y, x=np.zeros((10, 3)), y=np.linspace(0, 1, 10))
    with pytest.raises(DataError, match="integer"):
        load_dataset(DataConfig(dataset="npz", path=str(float_y)), 2, _rng())


def test_fewer_training_samples_than_peers_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.zeros((20, 2)), y=np.tile(np.arange(2), 10))
    with pytest.raises(DataError, match="peers"):
        load_dataset(DataConfig(dataset="npz", path=str(path)), 17, _rng())


def test_synthetic_too_small_to_stratify_is_a_data_error() -> None:
    cfg = DataConfig(dataset="synthetic", samples_per_peer=2, classes=10)
    with pytest.raises(DataError, match="stratified"):
        load_dataset(cfg, 2, _rng())


# --- configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"test_fraction": 1.0},
        {"test_fraction": 0.0},
        {"dataset": "cifar"},
        {"colour": True},
        {"dataset": "npz"},  # path missing
        {"dataset": "digits", "path": "x.npz"},  # path where unused
        {"dataset": "synthetic", "features": 4, "informative": 5},
        {"dataset": "synthetic", "features": 2, "classes": 5},  # 2 informative dims too few
        {"dataset": "synthetic", "class_sep": 0.0},
    ],
)
def test_data_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        DataConfig(**kwargs)


def test_data_config_default_informative() -> None:
    assert DataConfig(dataset="synthetic", features=32).n_informative == 16
    assert DataConfig(dataset="synthetic", features=3, classes=2).n_informative == 2
    assert DataConfig(dataset="synthetic", features=8, informative=8).n_informative == 8


SYNTHETIC_KEYS = {
    "samples_per_peer": 50,
    "features": 12,
    "classes": 3,
    "informative": 6,
    "class_sep": 2.0,
}


@pytest.mark.parametrize(("key", "value"), SYNTHETIC_KEYS.items())
def test_synthetic_keys_are_accepted_with_synthetic(key: str, value: object) -> None:
    cfg = DataConfig.model_validate({"dataset": "synthetic", key: value})
    assert getattr(cfg, key) == value


@pytest.mark.parametrize("dataset", ["digits", "mnist", "npz"])
@pytest.mark.parametrize(("key", "value"), SYNTHETIC_KEYS.items())
def test_synthetic_keys_are_rejected_elsewhere(dataset: str, key: str, value: object) -> None:
    fields: dict[str, object] = {"dataset": dataset, key: value}
    if dataset == "npz":
        fields["path"] = "x.npz"
    with pytest.raises(ValidationError) as exc:
        DataConfig.model_validate(fields)
    (err,) = exc.value.errors()
    assert err["loc"] == (key,)
    assert f"{key} is only used by dataset synthetic, not {dataset}" in err["msg"]


def test_path_is_accepted_with_npz_only() -> None:
    assert DataConfig(dataset="npz", path="x.npz").path == "x.npz"
    with pytest.raises(ValidationError) as exc:
        DataConfig(dataset="synthetic", path="x.npz")
    (err,) = exc.value.errors()
    assert err["loc"] == ("path",) and "only used by dataset npz" in err["msg"]


@pytest.mark.parametrize("dataset", ["digits", "mnist", "synthetic"])
def test_data_defaults_and_none_are_not_unused_keys(dataset: str) -> None:
    # Defaults are never "given", and None is how the optional keys say unset.
    DataConfig(dataset=dataset)
    DataConfig(dataset=dataset, test_fraction=0.3)
    DataConfig.model_validate({"dataset": dataset, "path": None})
    if dataset != "synthetic":
        DataConfig.model_validate({"dataset": dataset, "informative": None})


SCHEME_KEYS = {
    "alpha": ("dirichlet", 0.3),
    "classes_per_peer": ("shards", 3),
    "beta": ("quantity_skew", 0.4),
}
SCHEMES = ["iid", "dirichlet", "shards", "quantity_skew"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("key", SCHEME_KEYS)
def test_scheme_keys_only_with_their_scheme(scheme: str, key: str) -> None:
    user, value = SCHEME_KEYS[key]
    fields = {"scheme": scheme, key: value}
    if scheme == user:
        assert getattr(PartitionConfig.model_validate(fields), key) == value
        return
    with pytest.raises(ValidationError) as exc:
        PartitionConfig.model_validate(fields)
    (err,) = exc.value.errors()
    assert err["loc"] == (key,)
    assert f"{key} is only used by scheme {user}, not {scheme}" in err["msg"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_min_samples_and_defaults_are_fine_with_every_scheme(scheme: str) -> None:
    # partition() enforces min_samples for every scheme, so every scheme uses it.
    assert PartitionConfig(scheme=scheme, min_samples=3).min_samples == 3
    assert PartitionConfig(scheme=scheme).alpha == 0.5  # a default is not a given key


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_dumped_configs_drop_unused_keys_and_load_again(scheme: str, dataset: str) -> None:
    part = PartitionConfig(scheme=scheme)
    dumped = part.model_dump(mode="json")
    assert {k for k, (user, _) in SCHEME_KEYS.items() if user == scheme} <= set(dumped)
    assert not {k for k, (user, _) in SCHEME_KEYS.items() if user != scheme} & set(dumped)
    assert PartitionConfig.model_validate(dumped) == part
    data = DataConfig(dataset=dataset)
    dumped = data.model_dump(mode="json")
    assert (set(SYNTHETIC_KEYS) <= set(dumped)) == (dataset == "synthetic")
    assert DataConfig.model_validate(dumped) == data


@pytest.mark.parametrize(
    "kwargs",
    [
        {"alpha": 0.0},
        {"alpha": -1.0},
        {"scheme": "quantity_skew", "beta": 0.0},
        {"scheme": "shards", "classes_per_peer": 0},
        {"min_samples": 0},
        {"scheme": "pathological"},
        {"alpah": 1.0},
    ],
)
def test_partition_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PartitionConfig(**kwargs)


def test_configs_are_frozen() -> None:
    cfg = PartitionConfig()
    with pytest.raises(ValidationError):
        cfg.alpha = 3.0  # type: ignore[misc]


# --- partition properties ------------------------------------------------------------------


@PROPS
@given(labels=labelled(), num_peers=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_iid_covers_exactly_with_balanced_sizes(
    labels: np.ndarray, num_peers: int, seed: int
) -> None:
    if len(labels) < num_peers:
        with pytest.raises(DataError):
            partition_iid(labels, num_peers, _rng(seed))
        return
    parts = partition_iid(labels, num_peers, _rng(seed))
    assert len(parts) == num_peers
    _assert_exact_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@st.composite
def dirichlet_case(draw: st.DrawFn) -> tuple[np.ndarray, int, float, int]:
    num_peers = draw(st.integers(1, 8))
    min_samples = draw(st.integers(1, 5))
    # Generous data per peer keeps every drawn case satisfiable within the redraw budget.
    labels = draw(labelled(min_per_class=15 * num_peers, max_per_class=25 * num_peers))
    alpha = draw(st.floats(0.5, 100.0))
    return labels, num_peers, alpha, min_samples


@PROPS
@given(case=dirichlet_case(), seed=st.integers(0, 2**32 - 1))
def test_dirichlet_covers_exactly_and_respects_min_samples(
    case: tuple[np.ndarray, int, float, int], seed: int
) -> None:
    labels, num_peers, alpha, min_samples = case
    parts = partition_dirichlet(labels, num_peers, alpha, _rng(seed), min_samples)
    assert len(parts) == num_peers
    _assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= min_samples


@st.composite
def shards_case(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    num_classes = draw(st.integers(2, 10))
    k = draw(st.integers(1, num_classes))
    num_peers = draw(st.integers(-(-num_classes // k), 12))  # n * k >= C
    # Each class may be held by up to ceil(n*k/C) <= n peers; give it enough samples for all.
    counts = draw(
        st.lists(st.integers(num_peers, 3 * num_peers), min_size=num_classes, max_size=num_classes)
    )
    labels = np.repeat(np.arange(num_classes), counts).astype(np.int64)
    labels = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(labels)
    return labels, num_peers, k


@PROPS
@given(case=shards_case(), seed=st.integers(0, 2**32 - 1))
def test_shards_give_exactly_k_classes_and_cover_every_class(
    case: tuple[np.ndarray, int, int], seed: int
) -> None:
    labels, num_peers, k = case
    parts = partition_shards(labels, num_peers, k, _rng(seed))
    assert len(parts) == num_peers
    _assert_exact_cover(parts, len(labels))
    for p in parts:
        assert len(np.unique(labels[p])) == k
    held = set().union(*(set(labels[p].tolist()) for p in parts))
    assert held == set(np.unique(labels).tolist())


@st.composite
def quantity_case(draw: st.DrawFn) -> tuple[np.ndarray, int, float, int]:
    num_peers = draw(st.integers(1, 12))
    min_samples = draw(st.integers(1, 8))
    labels = draw(labelled(min_per_class=1, max_per_class=80))
    if len(labels) < num_peers * min_samples:
        num_peers = max(1, len(labels) // min_samples)
        if len(labels) < min_samples:
            min_samples = len(labels)
    beta = draw(st.floats(0.05, 100.0))
    return labels, num_peers, beta, min_samples


@PROPS
@given(case=quantity_case(), seed=st.integers(0, 2**32 - 1))
def test_quantity_skew_covers_exactly_and_respects_min_samples(
    case: tuple[np.ndarray, int, float, int], seed: int
) -> None:
    labels, num_peers, beta, min_samples = case
    parts = partition_quantity_skew(labels, num_peers, beta, _rng(seed), min_samples)
    assert len(parts) == num_peers
    _assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= min_samples


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_partition_is_deterministic_for_a_seed(scheme: str) -> None:
    labels = load_dataset(DataConfig(), 10, _rng()).y_train
    cfg = PartitionConfig(scheme=scheme)
    a = partition(labels, 10, cfg, _rng(5))
    b = partition(labels, 10, cfg, _rng(5))
    c = partition(labels, 10, cfg, _rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    _assert_exact_cover(a, len(labels))
    assert min(len(p) for p in a) >= cfg.min_samples


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_alpha_is_more_label_skewed_than_large_alpha(seed: int) -> None:
    labels = load_dataset(DataConfig(), 10, _rng()).y_train
    skewed = partition_dirichlet(labels, 10, 0.1, _rng(seed))
    even = partition_dirichlet(labels, 10, 100.0, _rng(seed))
    h_skewed = _entropy_per_peer(label_histograms(labels, skewed, 10)).mean()
    h_even = _entropy_per_peer(label_histograms(labels, even, 10)).mean()
    assert h_even > 0.95 * np.log(10)  # near uniform over the 10 classes
    assert h_skewed < h_even - 0.5


def test_small_beta_skews_sizes_more_than_large_beta() -> None:
    labels = np.repeat(np.arange(5), 200)
    skewed = [len(p) for p in partition_quantity_skew(labels, 10, 0.1, _rng(0))]
    even = [len(p) for p in partition_quantity_skew(labels, 10, 1000.0, _rng(0))]
    assert np.std(skewed) > 5 * np.std(even)


def test_label_histograms_rows_sum_to_part_sizes() -> None:
    labels = load_dataset(DataConfig(), 6, _rng()).y_train
    parts = partition(labels, 6, PartitionConfig(alpha=0.3), _rng(1))
    hist = label_histograms(labels, parts, 10)
    assert hist.shape == (6, 10) and hist.dtype == np.int64
    assert np.array_equal(hist.sum(axis=1), [len(p) for p in parts])
    assert np.array_equal(hist.sum(axis=0), np.bincount(labels, minlength=10))
    assert np.array_equal(hist[2], np.bincount(labels[parts[2]], minlength=10))


def test_shards_histograms_show_k_classes_each() -> None:
    labels = load_dataset(DataConfig(), 10, _rng()).y_train
    parts = partition(labels, 10, PartitionConfig(scheme="shards", classes_per_peer=3), _rng(2))
    hist = label_histograms(labels, parts, 10)
    assert ((hist > 0).sum(axis=1) == 3).all()
    assert (hist.sum(axis=0) > 0).all()


# --- impossible partitions -----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity_skew"])
def test_too_many_peers_is_a_data_error(scheme: str) -> None:
    labels = np.repeat(np.arange(4), 10)  # 40 samples
    cfg = PartitionConfig(scheme=scheme, min_samples=8)
    with pytest.raises(DataError, match="peers"):
        partition(labels, 6, cfg, _rng())  # 6 * 8 > 40
    with pytest.raises(DataError, match="num_peers"):
        partition(labels, 0, cfg, _rng())


def test_more_classes_per_peer_than_classes_is_a_data_error() -> None:
    labels = np.repeat(np.arange(3), 20)
    with pytest.raises(DataError, match="classes_per_peer"):
        partition_shards(labels, 2, 4, _rng())


def test_shards_that_cannot_hold_every_class_are_a_data_error() -> None:
    labels = np.repeat(np.arange(10), 20)
    with pytest.raises(DataError, match="cannot hold all 10 classes"):
        partition_shards(labels, 3, 2, _rng())


def test_unsatisfiable_dirichlet_names_the_constraint() -> None:
    labels = np.repeat(np.arange(10), 20)  # 200 samples, 20 peers need 8 each = 160
    with pytest.raises(DataError, match=r"min_samples=8.*larger alpha"):
        partition_dirichlet(labels, 20, 0.01, _rng(), min_samples=8)


def test_shards_below_min_samples_is_a_data_error() -> None:
    labels = np.repeat(np.arange(2), [100, 6])  # class 1 split over 3 peers: 2 each
    with pytest.raises(DataError, match="min_samples"):
        partition(
            labels, 6, PartitionConfig(scheme="shards", classes_per_peer=1, min_samples=5), _rng()
        )


# --- package hygiene -------------------------------------------------------------------------


def test_public_api_is_complete() -> None:
    for name in data_pkg.__all__:
        assert hasattr(data_pkg, name), name


@pytest.mark.parametrize("package", ["data", "models"])
def test_pure_packages_import_no_ray_time_or_global_rng(package: str) -> None:
    root = Path(__file__).resolve().parents[1] / "p2pfed" / package
    sources = sorted(root.glob("*.py"))
    assert sources
    banned = re.compile(
        r"^\s*(import|from)\s+(ray|time|datetime)\b"
        r"|np\.random\.(seed|rand|randn|randint|shuffle|permutation|choice|normal|uniform)\("
        r"|torch\.(rand|randn|randint|randperm)\(",
        re.MULTILINE,
    )
    for src in sources:
        text = src.read_text()
        assert not banned.search(text), f"{src.name}: {banned.search(text)}"
