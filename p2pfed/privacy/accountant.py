"""Rényi-DP accounting of repeated Gaussian releases without subsampling.

A peer that releases its clipped update (L2 norm at most ``C``) plus ``N(0, (sigma C)^2 I)``
noise ``T`` times is, per release, ``(alpha, alpha / (2 sigma^2))``-RDP at every order
``alpha > 1``, and RDP composes by adding (Mironov, "Rényi Differential Privacy", CSF 2017,
Prop. 1 and Cor. 3): after ``T`` releases ``rdp(alpha) = T alpha / (2 sigma^2)``. Releases
at different noise levels add their terms. No subsampling amplification is claimed: a
peer's whole local dataset goes into every update, so the neighbouring relation is the
peer's whole dataset (user-level DP: adding or removing one peer's data moves its update by
at most ``C`` after clipping).

RDP converts to ``(epsilon, delta)``-DP at any order; the accountant takes the best order.
Two conversions:

* ``classic`` (Mironov, Prop. 3): ``epsilon = rdp(alpha) + log(1/delta) / (alpha - 1)``.
  For the Gaussian it has the closed-form optimum ``alpha* = 1 + sigma sqrt(2 log(1/delta)
  / T)``, ``epsilon* = T / (2 sigma^2) + sqrt(2 T log(1/delta)) / sigma``
  (:func:`closed_form_epsilon`).
* ``improved`` (Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy",
  NeurIPS 2020, Prop. 12; also Balle et al. AISTATS 2020): ``epsilon = rdp(alpha) +
  log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)``, never larger; the
  default.

The optimum is found by a bounded scalar minimisation over ``alpha`` (the Gaussian's RDP is
known at every real order), not on a grid.
"""

from __future__ import annotations

import math
from typing import Literal

from scipy.optimize import minimize_scalar

Conversion = Literal["classic", "improved"]
_MAX_ORDER = 1e7


def _check(noise_multiplier: float, releases: int, delta: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier}")
    if releases < 0:
        raise ValueError(f"releases must be >= 0, got {releases}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def rdp_to_dp(
    rdp_slope: float, delta: float, conversion: Conversion = "improved"
) -> tuple[float, float]:
    """``(epsilon, alpha)`` for a mechanism with ``rdp(alpha) = rdp_slope * alpha`` (the
    composed Gaussian), at the best order ``alpha``."""
    if rdp_slope <= 0:
        return 0.0, math.inf
    log_delta = math.log(delta)

    def eps(alpha: float) -> float:
        if conversion == "classic":
            return rdp_slope * alpha - log_delta / (alpha - 1)
        return (
            rdp_slope * alpha + math.log1p(-1 / alpha) - (log_delta + math.log(alpha)) / (alpha - 1)
        )

    # the classic optimum is a good bracket for both: start the search around it
    best = 1 + math.sqrt(-log_delta / rdp_slope)
    res = minimize_scalar(
        eps,
        bounds=(1 + 1e-9, min(_MAX_ORDER, 100 * best + 10)),
        method="bounded",
        options={"xatol": 1e-10 * best},
    )
    return max(float(res.fun), 0.0), float(res.x)


def gaussian_epsilon(
    noise_multiplier: float, releases: int, delta: float, conversion: Conversion = "improved"
) -> float:
    """Epsilon after ``releases`` Gaussian releases of noise multiplier ``sigma``."""
    _check(noise_multiplier, releases, delta)
    return rdp_to_dp(releases / (2 * noise_multiplier**2), delta, conversion)[0]


def closed_form_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The classic conversion's optimum for the composed Gaussian, in closed form."""
    _check(noise_multiplier, releases, delta)
    t, s = releases, noise_multiplier
    return t / (2 * s**2) + math.sqrt(2 * t * math.log(1 / delta)) / s


#: RDP orders for the subsampled Gaussian (Opacus's default grid)
_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def sampled_gaussian_epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """Epsilon of DP-SGD: ``steps`` Poisson-subsampled Gaussian steps at ``sample_rate``
    (Mironov, Talwar & Zhang 2019, via Opacus's RDP analysis; orders on Opacus's grid).
    A ``sample_rate`` of 1 is the plain composed Gaussian."""
    _check(noise_multiplier, steps, delta)
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
    if steps == 0:
        return 0.0
    from opacus.accountants.analysis import rdp as opacus_rdp

    rdp = opacus_rdp.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=_ORDERS
    )
    eps, _ = opacus_rdp.get_privacy_spent(orders=_ORDERS, rdp=rdp, delta=delta)
    return float(eps)
