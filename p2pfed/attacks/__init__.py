"""Inference attacks: pure analysis functions fed with what an adversary observed (no Ray,
no clock; randomness, where any, from a generator passed in)."""

from p2pfed.attacks.inversion import (
    analytic_fc_inversion,
    idlg_label,
    single_sample_gradients,
)

__all__ = ["analytic_fc_inversion", "idlg_label", "single_sample_gradients"]
