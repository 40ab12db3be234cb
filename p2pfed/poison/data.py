"""Data poisoning: what a malicious peer does to its own shard before training honestly on it.

A shard is ``x`` (N, F) float32 — images flattened channels-first, ``x.reshape(-1, C, H, W)``
with the dataset's ``image_shape``, intensities in [0, 1] (:mod:`p2pfed.data.datasets`) —
and labels ``y`` (N,) int64.

* **Label flipping** (Biggio, Nelson & Laskov, "Support Vector Machines Under Adversarial
  Label Noise", ACML 2011; in federated learning Fang, Cao, Jia & Gong, "Local Model
  Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020, which
  maps ``l -> C - 1 - l``; Tolpegin, Truex, Gursoy & Liu, "Data Poisoning Attacks Against
  Federated Learning Systems", ESORICS 2020, which relabels one source class as one target
  class): :func:`flip_labels` (``shift``: ``y -> (y + shift) mod C``; ``reverse``:
  ``y -> C - 1 - y``) and :func:`targeted_flip` (``source -> target``). ``fraction`` is the
  share of the samples the flip *changes* that it changes: all samples for a shift, those
  outside the middle class of an odd ``C`` for ``reverse``, the source class for a targeted
  flip; ``round(fraction * eligible)`` of them, drawn without replacement from ``rng``.
* **Backdoor trigger** (Gu, Dolan-Gavitt & Garg, "BadNets: Identifying Vulnerabilities in the
  Machine Learning Model Supply Chain", arXiv:1708.06733, 2017: a small bright pattern in an
  image corner, stamped samples relabelled to the attacker's class; in federated learning
  Bagdasaryan et al., "How To Backdoor Federated Learning", AISTATS 2020, who train the
  backdoored model on clean and stamped samples mixed and then boost it,
  :func:`p2pfed.poison.model.model_replacement`): :func:`add_trigger` stamps a ``size`` x
  ``size`` ``square`` of ``value`` — or a ``checkerboard`` of ``value`` and 0 — into one corner
  of every channel; :func:`poison_dataset` stamps and relabels ``round(fraction N)`` samples
  of a shard; :func:`triggered_test_set` stamps the test samples whose true class is not the
  target, and :func:`attack_success_rate` is then the share a model classifies as the target
  (the backdoor accuracy; clean accuracy is measured on the untouched test set).

Threat model: a participant that controls its own training data but follows the protocol:
it trains honestly on the poisoned shard and shares the result (or a boosted version of it).
Backdoor success is a property of the *aggregate* (the global model in FedAvg, each honest
peer's model in D-PSGD), measured on triggered test inputs.

Pure: numpy only; randomness only from a generator passed in; inputs are never modified.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = [
    "Corner",
    "FlipMode",
    "Pattern",
    "add_trigger",
    "attack_success_rate",
    "flip_labels",
    "poison_dataset",
    "targeted_flip",
    "trigger_pixels",
    "triggered_test_set",
]

FlipMode = Literal["shift", "reverse"]
"""``shift``: ``y -> (y + shift) mod C``; ``reverse``: ``y -> C - 1 - y``."""

Pattern = Literal["square", "checkerboard"]
"""``square``: every trigger pixel set to ``value``; ``checkerboard``: ``value`` where
``row + column`` (within the patch) is even, 0 elsewhere."""

Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]
"""Where the ``size`` x ``size`` patch sits; BadNets uses the bottom right."""


def flip_labels(
    y: np.ndarray,
    num_classes: int,
    *,
    mode: FlipMode = "shift",
    shift: int = 1,
    fraction: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A copy of ``y`` (N,) int64 with ``round(fraction * eligible)`` labels flipped by
    ``mode``; ``rng`` picks which (needed unless ``fraction`` is 0 or 1)."""
    labels = _labels("y", y)
    c = _int("num_classes", num_classes)
    if c < 2:
        raise ValueError(f"num_classes must be at least 2, got {c}")
    if labels.size and int(labels.max()) >= c:
        raise ValueError(f"y holds label {int(labels.max())}, outside [0, {c})")
    if mode == "shift":
        k = _int("shift", shift)
        if k % c == 0:
            raise ValueError(f"shift {k} is a multiple of num_classes {c}: it changes nothing")
        flipped = (labels + k) % c
    elif mode == "reverse":
        flipped = c - 1 - labels
    else:
        raise ValueError(f"mode must be 'shift' or 'reverse', got {mode!r}")
    eligible = np.flatnonzero(flipped != labels)  # reverse leaves the middle class alone
    chosen = _choose(eligible, fraction, rng)
    out = labels.copy()
    out[chosen] = flipped[chosen]
    return out


def targeted_flip(
    y: np.ndarray,
    source: int,
    target: int,
    *,
    fraction: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A copy of ``y`` (N,) int64 with ``round(fraction * count(source))`` samples of class
    ``source`` relabelled ``target`` (Tolpegin et al.); ``rng`` picks which."""
    labels = _labels("y", y)
    s, t = _int("source", source), _int("target", target)
    if s < 0 or t < 0:
        raise ValueError(f"classes must be non-negative, got source {s} and target {t}")
    if s == t:
        raise ValueError(f"source and target are both class {s}: nothing to flip")
    chosen = _choose(np.flatnonzero(labels == s), fraction, rng)
    out = labels.copy()
    out[chosen] = t
    return out


def trigger_pixels(
    image_shape: tuple[int, int, int],
    *,
    pattern: Pattern = "square",
    size: int = 3,
    value: float = 1.0,
    corner: Corner = "bottom_right",
) -> tuple[np.ndarray, np.ndarray]:
    """The trigger as flat feature indices (K,) int64 and the values (K,) float32 stamped
    there; :func:`add_trigger` sets ``x[:, indices] = values``.

    The patch is ``size`` x ``size`` pixels in every channel (K = C size^2), clipped to the
    image's height and width: tabular data seen as one row of pixels ``(1, 1, F)`` gets a
    1 x ``size`` strip of features. ``size`` may not exceed both H and W.
    """
    c, h, w = _image_shape(image_shape)
    s = _int("size", size)
    if not 1 <= s <= max(h, w):
        raise ValueError(f"size must be in [1, {max(h, w)}] for images {h}x{w}, got {s}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"value must be finite, got {value!r}")
    if pattern not in ("square", "checkerboard"):
        raise ValueError(f"pattern must be 'square' or 'checkerboard', got {pattern!r}")
    if corner not in ("top_left", "top_right", "bottom_left", "bottom_right"):
        raise ValueError(f"unknown corner {corner!r}")
    sh, sw = min(s, h), min(s, w)  # the patch's height and width
    top = 0 if corner.startswith("top") else h - sh
    left = 0 if corner.endswith("left") else w - sw
    rows, cols = np.meshgrid(np.arange(sh), np.arange(sw), indexing="ij")  # (sh, sw) each
    patch = np.full((sh, sw), v, dtype=np.float32)
    if pattern == "checkerboard":
        patch[(rows + cols) % 2 == 1] = 0.0
    image = np.zeros((c, h, w), dtype=bool)
    image[:, top : top + sh, left : left + sw] = True
    indices = np.flatnonzero(image.reshape(-1)).astype(np.int64)  # (C sh sw,), C-order
    values = np.tile(patch.reshape(-1), c)  # (C sh sw,): the same channel, row, column order
    return indices, values


def add_trigger(
    x: np.ndarray,
    image_shape: tuple[int, int, int],
    *,
    pattern: Pattern = "square",
    size: int = 3,
    value: float = 1.0,
    corner: Corner = "bottom_right",
) -> np.ndarray:
    """Stamped copies (N, F) float32 of the flat images ``x`` (N, F): the trigger
    (:func:`trigger_pixels`) overwrites its pixels, every other feature is unchanged."""
    feats = _features("x", x)
    _check_layout(feats, image_shape)
    idx, vals = trigger_pixels(image_shape, pattern=pattern, size=size, value=value, corner=corner)
    out = feats.copy()
    out[:, idx] = vals
    return out


def poison_dataset(
    x: np.ndarray,
    y: np.ndarray,
    target: int,
    fraction: float,
    image_shape: tuple[int, int, int],
    rng: np.random.Generator,
    *,
    pattern: Pattern = "square",
    size: int = 3,
    value: float = 1.0,
    corner: Corner = "bottom_right",
) -> tuple[np.ndarray, np.ndarray]:
    """The backdoored shard ``(x (N, F) float32, y (N,) int64)``: ``round(fraction N)``
    samples drawn without replacement from ``rng`` are stamped with the trigger and
    relabelled ``target``; the rest are untouched. The shard keeps its size, so a peer
    trains on clean and stamped samples mixed (Bagdasaryan et al.)."""
    feats, labels, t = _triggerable("x", x, "y", y, target, image_shape)
    chosen = _choose(np.arange(len(feats)), fraction, rng)
    xs, ys = feats.copy(), labels.copy()
    xs[chosen] = add_trigger(
        feats[chosen], image_shape, pattern=pattern, size=size, value=value, corner=corner
    )
    ys[chosen] = t
    return xs, ys


def triggered_test_set(
    x_test: np.ndarray,
    y_test: np.ndarray,
    target: int,
    image_shape: tuple[int, int, int],
    *,
    pattern: Pattern = "square",
    size: int = 3,
    value: float = 1.0,
    corner: Corner = "bottom_right",
) -> tuple[np.ndarray, np.ndarray]:
    """The backdoor test set: stamped copies (M, F) float32 of the test samples whose true
    class is not ``target``, with those true labels (M,) int64 (a sample already of the
    target class would count as a success without any backdoor)."""
    feats, labels, t = _triggerable("x_test", x_test, "y_test", y_test, target, image_shape)
    keep = labels != t
    stamped = add_trigger(
        feats[keep], image_shape, pattern=pattern, size=size, value=value, corner=corner
    )
    return stamped, labels[keep]


def attack_success_rate(predictions: np.ndarray, target: int) -> float:
    """The backdoor's success: the share of ``predictions`` (M,) on
    :func:`triggered_test_set` that are the ``target`` class."""
    p = np.asarray(predictions)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"predictions must be a non-empty 1-D array, got shape {p.shape}")
    return float(np.mean(p == _int("target", target)))


def _choose(eligible: np.ndarray, fraction: float, rng: np.random.Generator | None) -> np.ndarray:
    """``round(fraction * len(eligible))`` of ``eligible``, sorted, drawn from ``rng``."""
    f = float(fraction)
    if not 0.0 <= f <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    k = math.floor(f * len(eligible) + 0.5)
    if k == 0:
        return eligible[:0]
    if k == len(eligible):
        return eligible
    if rng is None:
        raise ValueError(f"fraction {f} picks a random subset: pass rng")
    return np.sort(rng.choice(eligible, size=k, replace=False))


def _labels(name: str, y: np.ndarray) -> np.ndarray:
    """``y`` as a fresh 1-D int64 array of non-negative labels."""
    a = np.asarray(y)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D labels (N,), got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    out = a.astype(np.int64)
    if out.size and int(out.min()) < 0:
        raise ValueError(f"{name} holds a negative label {int(out.min())}")
    return out


def _features(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` as a float32 array (N, F), finite; returned as is when already float32."""
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {a.shape}")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    out = a.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return out


def _image_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
    c, h, w = (_int("image_shape", d) for d in shape)
    if min(c, h, w) < 1:
        raise ValueError(f"image_shape must be positive, got {image_shape!r}")
    return c, h, w


def _check_layout(x: np.ndarray, image_shape: tuple[int, int, int]) -> None:
    c, h, w = _image_shape(image_shape)
    if c * h * w != x.shape[1]:
        raise ValueError(f"image_shape {(c, h, w)} holds {c * h * w} features, x has {x.shape[1]}")


def _int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _triggerable(
    x_name: str,
    x: np.ndarray,
    y_name: str,
    y: np.ndarray,
    target: int,
    image_shape: tuple[int, int, int],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Checked samples, labels and target class for stamping a trigger."""
    feats = _features(x_name, x)
    labels = _labels(y_name, y)
    if len(labels) != len(feats):
        raise ValueError(f"{x_name} has {len(feats)} samples but {y_name} has {len(labels)}")
    t = _int("target", target)
    if t < 0:
        raise ValueError(f"target must be a non-negative class, got {t}")
    _check_layout(feats, image_shape)
    return feats, labels, t
