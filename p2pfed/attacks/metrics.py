"""How attack success is measured: reconstruction error and membership-inference curves.

Reconstructions are compared to the originals in the data's own scale (features in
``[0, 1]`` for the bundled image sets): MSE per sample and PSNR with peak 1. Membership
scores are "higher means member"; AUC and the true-positive rate at a low false-positive
rate (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022,
section III: report TPR at 0.1 % or 1 % FPR, not only AUC or accuracy).

Pure: numpy and scikit-learn.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def mse(reconstruction: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Mean squared error per sample (rows of 2-D inputs; one value for 1-D inputs)."""
    r = np.asarray(reconstruction, dtype=np.float64)
    o = np.asarray(original, dtype=np.float64)
    if r.shape != o.shape:
        raise ValueError(f"shapes differ: {r.shape} and {o.shape}")
    if r.ndim == 1:
        return np.asarray(np.mean((r - o) ** 2))
    return np.asarray(np.mean((r - o) ** 2, axis=tuple(range(1, r.ndim))))


def psnr(error: float | np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB from MSE (capped at 300 dB for exact recovery)."""
    e = np.maximum(np.asarray(error, dtype=np.float64), 1e-30)
    return np.asarray(np.minimum(10.0 * np.log10(peak**2 / e), 300.0))


def membership_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve of membership scores (higher = member)."""
    labels = _labels(scores, is_member)
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.01) -> float:
    """The largest true-positive rate over thresholds whose false-positive rate is at most
    ``fpr``."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    labels = _labels(scores, is_member)
    f, t, _ = roc_curve(labels, np.asarray(scores, dtype=np.float64))
    ok = f <= fpr + 1e-12
    return float(t[ok].max()) if ok.any() else 0.0


def _labels(scores: np.ndarray, is_member: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    m = np.asarray(is_member, dtype=bool)
    if s.shape != m.shape or s.ndim != 1:
        raise ValueError(f"expected two equal 1-D arrays, got {s.shape} and {m.shape}")
    if m.all() or not m.any():
        raise ValueError("membership metrics need both members and non-members")
    if not np.all(np.isfinite(s)):
        raise ValueError("membership scores must be finite")
    return m.astype(np.int64)


def summarize_reconstruction(
    reconstructions: np.ndarray,
    originals: np.ndarray,
    labels_guessed: np.ndarray | None = None,
    labels_true: np.ndarray | None = None,
) -> dict[str, float]:
    """The report's metrics for a batch of reconstructions: median and mean MSE, median
    PSNR, and label accuracy when labels were guessed."""
    errors = np.atleast_1d(mse(reconstructions, originals))
    out = {
        "mse_median": float(np.median(errors)),
        "mse_mean": float(np.mean(errors)),
        "psnr_median": float(np.median(psnr(errors))),
        "count": float(errors.size),
    }
    if labels_guessed is not None and labels_true is not None:
        g, t = np.asarray(labels_guessed), np.asarray(labels_true)
        out["label_accuracy"] = float(np.mean(g == t)) if t.size else math.nan
    return out
