"""Byzantine-robust aggregation: the rules a peer combines its neighbourhood with (gossip,
D-PSGD) or a coordinator its cohort with (FedAvg), in one call (pure: numpy, no Ray, no
clock, deterministic). See :mod:`p2pfed.robust.rules` for the rules, their papers and the
threat model."""

from p2pfed.robust.rules import (
    CENTRED_RULES,
    CLIENT_SIDE_RULES,
    NEEDS_INDIVIDUAL_INPUTS,
    RULES,
    Aggregate,
    RobustConfig,
    RobustError,
    Rule,
    aggregate,
    check,
    clip_to_norm,
)

__all__ = [
    "CENTRED_RULES",
    "CLIENT_SIDE_RULES",
    "NEEDS_INDIVIDUAL_INPUTS",
    "RULES",
    "Aggregate",
    "RobustConfig",
    "RobustError",
    "Rule",
    "aggregate",
    "check",
    "clip_to_norm",
]
