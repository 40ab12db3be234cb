"""The ``security`` section of an experiment: how links are sealed and how updates are
aggregated so that nobody sees an individual one.

Names follow Flower's secure-aggregation workflow where they mean the same thing
(``num_shares``, ``reconstruction_threshold``, ``clipping_range``, ``quantization_range``,
``modulus_range``, ``max_weight``): a value is clipped to ``[-clipping_range,
clipping_range]`` and quantised with step ``2 * clipping_range / quantization_range`` into
the ring ``Z_modulus_range``. Checks that need the topology (group sizes, ring capacity)
run when the experiment is built, before any peer starts (:func:`p2pfed.secure.validate`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from p2pfed.fields import Real

#: the smallest group whose sum may be revealed: a sum of two reveals the other to either
MIN_GROUP = 3


class SecurityConfig(BaseModel):
    """Link sealing and secure aggregation."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    channel: Literal["plain", "aead"] = Field(
        "plain",
        description="aead: every frame is sealed with AES-128-GCM under per-link keys from "
        "signed X25519 adverts (see p2pfed.crypto.channel); plain: frames travel as they are",
    )
    rotate_every: Real | None = Field(
        None,
        ge=1e-3,  # epochs are 32-bit: a millisecond lasts 49 days of run time
        description="aead: seconds (virtual, or wall) per link-key epoch; keys of older "
        "epochs are forgotten one epoch later; null: one epoch for the whole run",
    )
    aggregation: Literal["plain", "secret-share", "secagg"] = Field(
        "plain",
        description="secret-share: additive shares across each neighbourhood (dpsgd) or all "
        "clients (fedavg); secagg: Bonawitz et al. masking with SecAgg+ sparse graphs and "
        "Shamir dropout recovery, per neighbourhood (dpsgd) or through the coordinator (fedavg)",
    )
    clipping_range: Real = Field(
        8.0, gt=0, description="values are clipped to [-clipping_range, clipping_range]"
    )
    quantization_range: StrictInt = Field(
        2**22, ge=2, description="quantisation levels across the clipping range"
    )
    modulus_range: StrictInt = Field(
        2**32, description="the ring the quantised values live in: 2**32 or 2**64"
    )
    stochastic_rounding: StrictBool = Field(
        True, description="unbiased stochastic rounding (else round to nearest)"
    )
    max_weight: Real = Field(
        1000.0,
        gt=0,
        description="fedavg: sample-count weights are divided by this before masking (a "
        "client with more samples is clipped to it), so weighted values stay in range",
    )
    phase_timeout: Real | None = Field(
        None,
        gt=0,
        description="seconds each later phase of a secure session waits for answers (a round "
        "trip; unanswered requests are sent once more, then the silent clients are dropouts); "
        "the first phase waits protocol.timeout, which covers training; null: from the "
        "network model (virtual time) or 10 s (wall time)",
    )
    num_shares: StrictInt | None = Field(
        None,
        ge=MIN_GROUP,
        description="secagg: group members (the client included) that hold shares of a "
        "client's secrets and mask with it (SecAgg+); null: the whole group (SecAgg)",
    )
    reconstruction_threshold: StrictInt | None = Field(
        None,
        ge=2,
        description="secagg: shares needed to reconstruct a secret, more than half of "
        "num_shares; null: ceil(2/3 of num_shares)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        if self.channel == "plain" and self.rotate_every is not None:
            raise ValueError("rotate_every rotates link keys: it needs channel: aead")
        if self.modulus_range not in (2**32, 2**64):
            raise ValueError(f"modulus_range must be 2**32 or 2**64, got {self.modulus_range}")
        secagg_only = ("num_shares", "reconstruction_threshold")
        if self.aggregation == "plain" and self.phase_timeout is not None:
            raise ValueError("phase_timeout is used by secure aggregation only")
        if self.aggregation != "secagg":
            for key in secagg_only:
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is used by aggregation: secagg only")
        t, m = self.reconstruction_threshold, self.num_shares
        if t is not None and m is not None and not m // 2 < t <= m:
            raise ValueError(
                f"reconstruction_threshold {t} must lie in {m // 2 + 1}..{m}: more than half "
                "of num_shares (fewer would let two disjoint sets reconstruct both secrets of "
                "one client), and no more than there are shares"
            )
        return self

    @property
    def ring_bits(self) -> int:
        return 64 if self.modulus_range == 2**64 else 32

    @property
    def secure_aggregation(self) -> bool:
        return self.aggregation != "plain"
