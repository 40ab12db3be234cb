"""Fixed-point encoding of real vectors into the ring Z_2^k (k = 32 or 64), for secret
sharing and masking.

A value ``x`` is clipped to ``[-clip, clip]``, scaled by ``2**frac_bits``, rounded to an
integer and stored in two's complement as ``uint32`` (or ``uint64``): ``-1`` is
``2**k - 1``. Ring addition is numpy's wrapping unsigned addition, so additive shares and
pairwise masks cancel exactly, and a sum of encodings decodes to the sum of the rounded
values as long as that sum stays inside ``[-2**(k-1), 2**(k-1))``.

Rounding is to nearest (error at most half a step, ``2**-(frac_bits+1)``) or, given a
generator, stochastic: ``floor(s) + Bernoulli(s - floor(s))`` (drawn as ``floor(s + U)``, ``U``
uniform on [0, 1): one pass fewer), unbiased, error below one step (Gupta et al., "Deep
learning with limited numerical precision", ICML 2015). A sum of ``n``
encodings is therefore within ``n`` steps of the sum of the clipped values.

Overflow is a configuration mistake, not a runtime event: :meth:`FixedPoint.check_capacity`
says, before any run, whether ``terms`` clipped values (each possibly scaled by a weight up
to ``max_weight``) can leave the ring's signed range, and by how many bits. Non-finite input
is refused (a NaN would encode to an arbitrary ring element and poison every sum it joins).

Pure: numpy only, no Ray, no clock; randomness only from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from p2pfed.errors import P2PFedError

RING_DTYPES: dict[int, type[np.unsignedinteger]] = {32: np.uint32, 64: np.uint64}
_SIGNED: dict[int, type[np.signedinteger]] = {32: np.int32, 64: np.int64}


class FixedPointError(P2PFedError, ValueError):
    """A fixed-point setting or input that cannot be encoded faithfully."""


@dataclass(frozen=True)
class FixedPoint:
    """Clip to ``[-clip, clip]``, keep ``frac_bits`` fractional bits, live in Z_2^ring_bits."""

    clip: float
    frac_bits: int
    ring_bits: int = 32
    #: when set, the step is ``2 * clip / levels`` instead of ``2**-frac_bits`` (Flower's
    #: ``quantization_range``; see :meth:`from_range`)
    levels: int | None = None

    @classmethod
    def from_range(
        cls, clipping_range: float, quantization_range: int, modulus_range: int = 2**32
    ) -> FixedPoint:
        """Flower's parametrisation: clip to ``±clipping_range``, ``quantization_range``
        levels across it (step ``2 c / Q``), ring ``Z_modulus_range`` (2**32 or 2**64)."""
        bits = {2**32: 32, 2**64: 64}.get(modulus_range)
        if bits is None:
            raise FixedPointError(f"modulus_range must be 2**32 or 2**64, got {modulus_range}")
        if quantization_range < 2:
            raise FixedPointError(f"quantization_range must be >= 2, got {quantization_range}")
        return cls(clipping_range, 0, bits, levels=quantization_range)

    def __post_init__(self) -> None:
        if self.ring_bits not in RING_DTYPES:
            raise FixedPointError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise FixedPointError(f"clip must be a positive finite number, got {self.clip}")
        if self.levels is not None and self.levels < 2:
            raise FixedPointError(f"levels must be at least 2, got {self.levels}")
        if not 0 <= self.frac_bits < self.ring_bits - 1:
            raise FixedPointError(
                f"frac_bits must lie in 0..{self.ring_bits - 2}, got {self.frac_bits}"
            )
        if self.max_code >= self.half:
            raise FixedPointError(
                f"clip {self.clip:g} with {self._resolution} needs "
                f"{self._bits(self.max_code)} bits, more than Z_2^{self.ring_bits} holds "
                "signed: lower clip or frac_bits, or use ring_bits 64"
            )

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return RING_DTYPES[self.ring_bits]

    @property
    def scale(self) -> float:
        if self.levels is not None:
            return self.levels / (2.0 * self.clip)
        return float(2**self.frac_bits)

    @property
    def step(self) -> float:
        """The value of one unit in the last place."""
        return 1.0 / self.scale

    @property
    def half(self) -> int:
        return 2 ** (self.ring_bits - 1)

    @property
    def max_code(self) -> int:
        """The largest magnitude one encoded value can take (stochastic rounding included)."""
        return math.ceil(self.clip * self.scale)

    def capacity(self, max_weight: float = 1.0) -> int:
        """How many encoded values (each times a weight of at most ``max_weight``) can be
        summed without leaving the ring's signed range."""
        per_term = math.ceil(self.max_code * max_weight)
        return (self.half - 1) // max(per_term, 1)

    def check_capacity(self, terms: int, max_weight: float = 1.0) -> None:
        """Raise :class:`FixedPointError` with the reason if summing ``terms`` encoded
        values, each weighted by at most ``max_weight``, could overflow the ring."""
        if terms < 1:
            raise FixedPointError(f"a sum needs at least one term, got {terms}")
        if max_weight <= 0 or not math.isfinite(max_weight):
            raise FixedPointError(f"max_weight must be positive and finite, got {max_weight}")
        if terms > self.capacity(max_weight):
            worst = terms * math.ceil(self.max_code * max_weight)
            raise FixedPointError(
                f"a sum of {terms} values clipped to ±{self.clip:g} with {self._resolution} "
                f"(weights up to {max_weight:g}) reaches {self._bits(worst)} "
                f"bits and can overflow Z_2^{self.ring_bits} (at most "
                f"{self.capacity(max_weight)} terms fit): lower the clipping or quantisation "
                "range, shrink the group, or use a 2**64 ring"
            )

    def encode(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``x`` (any shape, real) as ring elements of the same shape; stochastic rounding
        when ``rng`` is given."""
        arr = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise FixedPointError("cannot encode NaN or infinite values")
        scaled = np.clip(arr, -self.clip, self.clip)
        scaled *= self.scale
        if rng is None:
            codes = np.rint(scaled, out=scaled)
        else:
            # floor(s + U), U uniform in [0, 1): s rounded up with probability frac(s)
            scaled += rng.random(scaled.shape)
            codes = np.floor(scaled, out=scaled)
        # |codes| <= max_code < 2**(k-1): exact in int64, then two's complement in the ring
        return codes.astype(np.int64).astype(_SIGNED[self.ring_bits]).view(self.dtype)

    def decode(self, v: np.ndarray) -> np.ndarray:
        """Ring elements (a value or a sum of values) back to float64."""
        arr = np.asarray(v)
        if arr.dtype != self.dtype:
            raise FixedPointError(
                f"expected {np.dtype(self.dtype).name} ring elements, got {arr.dtype}"
            )
        return arr.view(_SIGNED[self.ring_bits]).astype(np.float64) / self.scale

    @property
    def _resolution(self) -> str:
        if self.levels is not None:
            return f"{self.levels} quantisation levels"
        return f"{self.frac_bits} fractional bits"

    @staticmethod
    def _bits(n: int) -> int:
        """Bits of a signed integer holding ±n."""
        return n.bit_length() + 1
