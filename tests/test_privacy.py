"""Differential privacy: the clip-and-noise stage and the RDP accountant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from p2pfed import run
from p2pfed.errors import ConfigError
from p2pfed.privacy import (
    closed_form_epsilon,
    gaussian_epsilon,
    privatize,
    sampled_gaussian_epsilon,
)
from tests.conftest import small_config

CASES = [(1.0, 10, 1e-5), (1.0, 100, 1e-5), (0.5, 40, 1e-6), (4.0, 1000, 1e-5), (2.0, 1, 1e-3)]


@pytest.mark.parametrize(("sigma", "releases", "delta"), CASES)
def test_the_accountant_matches_the_closed_form_conversion(
    sigma: float, releases: int, delta: float
) -> None:
    numeric = gaussian_epsilon(sigma, releases, delta, "classic")
    assert numeric == pytest.approx(closed_form_epsilon(sigma, releases, delta), rel=0.01)
    # the improved conversion is never worse
    assert gaussian_epsilon(sigma, releases, delta) <= numeric


def _exact_delta(eps: float, sigma: float) -> float:
    """The Gaussian mechanism's exact delta at epsilon (Balle & Wang, ICML 2018, Thm. 8),
    sensitivity 1, noise sigma."""
    a = 1 / (2 * sigma)
    return float(norm.cdf(a - eps * sigma) - math.exp(eps) * norm.cdf(-a - eps * sigma))


@pytest.mark.parametrize(("sigma", "releases", "delta"), CASES)
def test_the_reported_epsilon_is_a_valid_and_reasonably_tight_bound(
    sigma: float, releases: int, delta: float
) -> None:
    """T Gaussian releases at noise sigma are exactly one at sigma / sqrt(T): the exact
    delta at the reported epsilon must not exceed delta (valid), and the exact epsilon for
    delta is not far below it (tight)."""
    eps = gaussian_epsilon(sigma, releases, delta)
    single = sigma / math.sqrt(releases)
    assert _exact_delta(eps, single) <= delta * (1 + 1e-9)
    assert _exact_delta(0.7 * eps, single) > delta  # the bound is within ~30% of exact


def test_epsilon_grows_with_releases_and_falls_with_noise() -> None:
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    eps = [gaussian_epsilon(1.0, t, 1e-5) for t in (1, 10, 100)]
    assert eps == sorted(eps) and eps[0] < eps[-1]
    assert gaussian_epsilon(2.0, 10, 1e-5) < gaussian_epsilon(1.0, 10, 1e-5)
    for bad in ((0.0, 10, 1e-5), (1.0, -1, 1e-5), (1.0, 10, 0.0), (1.0, 10, 1.0)):
        with pytest.raises(ValueError):
            gaussian_epsilon(*bad)


def test_privatize_clips_the_update_and_adds_noise_of_the_stated_scale() -> None:
    rng = np.random.default_rng(0)
    start = rng.normal(size=50_000).astype(np.float32)
    trained = start + 3.0 * rng.normal(size=start.size).astype(np.float32)  # norm ~ 670
    out, cut = privatize(start, trained, 2.0, 1e-9, np.random.default_rng(1))
    assert cut
    assert np.linalg.norm(out.astype(np.float64) - start) == pytest.approx(2.0, rel=1e-3)
    # direction kept
    cos = np.dot(out - start, trained - start) / (
        np.linalg.norm(out - start) * np.linalg.norm(trained - start)
    )
    assert cos > 0.999
    small = start + 1e-4 * np.ones_like(start)  # norm ~ 0.022: not cut
    out, cut = privatize(start, small, 2.0, 0.5, np.random.default_rng(2))
    assert not cut
    noise = out.astype(np.float64) - small
    assert noise.std() == pytest.approx(0.5 * 2.0, rel=0.02)  # sigma * C
    again, _ = privatize(start, small, 2.0, 0.5, np.random.default_rng(2))
    np.testing.assert_array_equal(out, again)  # the peer's seeded generator decides


def test_a_dp_run_reports_each_peers_epsilon(tmp_path: Path) -> None:
    base = small_config(topology={"kind": "ring", "n": 5}, protocol={"kind": "fedavg", "rounds": 3})
    plain = run(base, out=tmp_path / "plain").summary
    assert plain["privacy"] == {"dp": False}
    dp = run({**base, "dp": {"clip": 1.0, "noise_multiplier": 1.5}}, out=tmp_path / "dp")
    p = dp.summary["privacy"]
    assert p["dp"] and p["releases"] == [3] * 5  # one training per FedAvg round
    expected = round(gaussian_epsilon(1.5, 3, 1e-5), 4)
    assert p["epsilon"] == [expected] * 5 and p["epsilon_max"] == expected
    # the noise reaches the models: the global model differs from the plain run's
    assert dp.summary["final"]["mean_test_loss"] != plain["final"]["mean_test_loss"]


def test_dp_settings_are_validated(tmp_path: Path) -> None:
    for bad in ({"clip": 0.0}, {"clip": 1.0, "noise_multiplier": 0}, {"clip": 1.0, "eps": 1}):
        with pytest.raises(ConfigError):
            run({**small_config(), "dp": bad}, out=tmp_path / "bad")


def test_the_subsampled_accountant_reduces_to_the_composed_gaussian_without_sampling() -> None:
    """Opacus's subsampled-Gaussian RDP at sampling rate 1 is the plain Gaussian: the two
    accountants agree within 1 % (Opacus converts on a grid of orders), and subsampling
    lowers epsilon a lot (privacy amplification)."""
    for sigma, steps, delta in CASES[:4]:
        full = sampled_gaussian_epsilon(sigma, 1.0, steps, delta)
        assert full == pytest.approx(gaussian_epsilon(sigma, steps, delta), rel=0.01)
        assert sampled_gaussian_epsilon(sigma, 0.01, steps, delta) < 0.2 * full
    assert sampled_gaussian_epsilon(1.0, 0.5, 0, 1e-5) == 0.0
    for bad in ((1.0, 0.0, 10, 1e-5), (1.0, 1.5, 10, 1e-5), (0.0, 0.5, 10, 1e-5)):
        with pytest.raises(ValueError):
            sampled_gaussian_epsilon(*bad)


def test_opacus_dp_sgd_clips_each_example_and_reports_per_example_epsilon(
    tmp_path: Path,
) -> None:
    base = small_config(
        topology={"kind": "ring", "n": 4},
        protocol={"kind": "dpsgd", "rounds": 3},
        model={"kind": "mlp", "hidden": [16]},
        training={"lr": 0.1, "batch_size": 16, "local_steps": 2},
    )
    dp = {"clip": 1.0, "noise_multiplier": 1.0, "mode": "dpsgd"}
    first = run({**base, "dp": dp}, out=tmp_path / "a").summary
    p = first["privacy"]
    assert p["mode"] == "dpsgd" and p["steps"] == [6] * 4  # 3 trainings of 2 steps
    assert all(0 < e < gaussian_epsilon(1.0, 6, 1e-5) for e in p["epsilon"])  # amplified
    assert "Opacus" in p["accountant"]
    again = run({**base, "dp": dp}, out=tmp_path / "b").summary
    assert again["final"] == first["final"]  # the noise comes from the peers' seeded streams
    plain = run(base, out=tmp_path / "plain").summary
    assert plain["final"]["mean_test_loss"] != first["final"]["mean_test_loss"]


def test_dp_sgd_bounds_every_examples_influence_on_a_step() -> None:
    """One DP-SGD step with no noise: however large one example's gradient, the step moves
    the parameters by at most lr * clip (the mean of clipped per-example gradients)."""
    import torch

    from p2pfed.config import ModelConfig
    from p2pfed.models import build_model
    from p2pfed.privacy import DPConfig
    from p2pfed.training import LocalTrainer, TrainingConfig

    x = np.zeros((4, 8), np.float32)
    x[0] = 50.0  # one example with a large gradient
    cfg = TrainingConfig(lr=0.5, batch_size=4, local_steps=1)
    model = build_model(ModelConfig(kind="logreg"), 8, 2, None, 0)
    start = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    wrong = 1 - int(model(torch.as_tensor(x[:1])).argmax())  # a label it gets badly wrong
    y = np.array([wrong, 0, 1, 0])
    dp = DPConfig(clip=1.0, noise_multiplier=1e-6, mode="dpsgd")
    out = LocalTrainer(model, x, y, cfg, np.random.default_rng(0), dp=dp).train(start).params
    assert np.linalg.norm(out - start) <= 0.5 * 1.0 + 1e-4
    plain = build_model(ModelConfig(kind="logreg"), 8, 2, None, 0)
    free = LocalTrainer(plain, x, y, cfg, np.random.default_rng(0)).train(start).params
    assert np.linalg.norm(free - start) > 10  # without clipping that example dominates
