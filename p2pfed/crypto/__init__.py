"""Cryptographic building blocks (pure: no Ray, no clock, randomness passed in)."""

from p2pfed.crypto.channel import Identity, KeyAdvert, Opener, Sealer, SealError, link_key
from p2pfed.crypto.fixedpoint import FixedPoint, FixedPointError

__all__ = [
    "FixedPoint",
    "FixedPointError",
    "Identity",
    "KeyAdvert",
    "Opener",
    "SealError",
    "Sealer",
    "link_key",
]
