"""Cryptographic building blocks (pure: no Ray, no clock, randomness passed in)."""

from p2pfed.crypto.fixedpoint import FixedPoint, FixedPointError

__all__ = ["FixedPoint", "FixedPointError"]
