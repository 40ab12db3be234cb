"""Poisoning: what a malicious participant does to the data it trains on or the model it
shares (pure: numpy and scipy, no Ray, no clock; randomness only from a generator passed in).

* model poisoning — the crafted model a Byzantine peer shares instead of its honest one:
  :mod:`~p2pfed.poison.model` (sign flipping, Gaussian, model replacement, ALIE, IPM, the
  dissensus attack on gossip);
* data poisoning — a peer's shard before honest training on it: :mod:`~p2pfed.poison.data`
  (label flipping, BadNets-style backdoor triggers, the triggered test set that measures a
  backdoor).
"""

from p2pfed.poison.data import (
    Corner,
    FlipMode,
    Pattern,
    add_trigger,
    attack_success_rate,
    flip_labels,
    poison_dataset,
    targeted_flip,
    trigger_pixels,
    triggered_test_set,
)
from p2pfed.poison.model import (
    alie,
    alie_z,
    dissensus,
    gaussian_noise,
    ipm,
    model_replacement,
    replacement_scale,
    sign_flip,
)

__all__ = [
    "Corner",
    "FlipMode",
    "Pattern",
    "add_trigger",
    "alie",
    "alie_z",
    "attack_success_rate",
    "dissensus",
    "flip_labels",
    "gaussian_noise",
    "ipm",
    "model_replacement",
    "poison_dataset",
    "replacement_scale",
    "sign_flip",
    "targeted_flip",
    "trigger_pixels",
    "triggered_test_set",
]
