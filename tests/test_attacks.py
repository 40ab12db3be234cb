"""Closed-form gradient inversion on digits: what one plain single-sample gradient gives
away, and what a DP-noised one does not."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from torch import nn

from p2pfed.attacks import analytic_fc_inversion, idlg_label, single_sample_gradients
from p2pfed.config import ModelConfig
from p2pfed.models import build_model
from p2pfed.privacy import privatize


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def _mlp(seed: int = 0) -> nn.Module:
    return build_model(ModelConfig(kind="mlp", hidden=[64]), 64, 10, None, seed)


def test_analytic_inversion_recovers_a_single_sample_exactly(
    digits: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = digits
    model = _mlp()  # float32, as the peers train it
    errors = []
    for k in range(20):
        g = single_sample_gradients(model, x[k], int(y[k]))
        rec = analytic_fc_inversion(g["0.weight"], g["0.bias"])
        errors.append(float(np.mean((rec - x[k]) ** 2)))
    assert max(errors) < 1e-10


def test_idlg_names_the_label_of_every_sample(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = digits
    model = _mlp()
    names = [n for n, _ in model.named_parameters()]
    w_out, b_out = names[-2], names[-1]
    for k in range(20):
        g = single_sample_gradients(model, x[k], int(y[k]))
        assert idlg_label(grad_out_bias=g[b_out]) == y[k]
        assert idlg_label(grad_out_weight=g[w_out]) == y[k]


def test_dp_noise_defeats_the_analytic_inversion(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """The adversary sees the update through the DP stage (clip 1, sigma 1): its inversion
    is no better than guessing the dataset's mean image."""
    x, y = digits
    model = _mlp().double()
    mean_image = x.mean(axis=0)
    rng = np.random.default_rng(0)
    noisy_err, baseline = [], []
    for k in range(20):
        g = single_sample_gradients(model, x[k].astype(np.float64), int(y[k]))
        flat = np.concatenate([g["0.weight"].ravel(), g["0.bias"]])
        noised, _ = privatize(np.zeros_like(flat), flat, 1.0, 1.0, rng)
        gw = noised[: g["0.weight"].size].reshape(g["0.weight"].shape)
        gb = noised[g["0.weight"].size :]
        rec = analytic_fc_inversion(gw, gb)
        noisy_err.append(float(np.mean((rec - x[k]) ** 2)))
        baseline.append(float(np.mean((mean_image - x[k]) ** 2)))
    assert np.median(noisy_err) > np.median(baseline)


def test_a_vanished_gradient_is_refused() -> None:
    with pytest.raises(ValueError, match="zero"):
        analytic_fc_inversion(np.ones((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="expected"):
        analytic_fc_inversion(np.ones((3, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="bias or weight"):
        idlg_label()
