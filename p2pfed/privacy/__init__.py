"""Differential privacy: the clip-and-noise stage of a peer's update, and its accountant
(pure: numpy and scipy, no Ray, no clock; noise from the peer's seeded generator)."""

from p2pfed.privacy.accountant import (
    closed_form_epsilon,
    gaussian_epsilon,
    rdp_to_dp,
    sampled_gaussian_epsilon,
)
from p2pfed.privacy.dp import DPConfig, privatize

__all__ = [
    "DPConfig",
    "closed_form_epsilon",
    "gaussian_epsilon",
    "privatize",
    "rdp_to_dp",
    "sampled_gaussian_epsilon",
]
