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


class HeConfig(BaseModel):
    """Homomorphic encryption (``aggregation: he``): which scheme, who holds the key, and
    how values are quantised. Clients encrypt their model's distance from the initial model
    (see :mod:`p2pfed.protocol.he`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    scheme: Literal["paillier", "ckks", "auto"] = Field(
        "auto",
        description="paillier: packed Paillier, exact integer sums; ckks: TenSEAL CKKS, "
        "approximate, thousands of values per ciphertext (group key only); auto: paillier "
        "up to auto_paillier_max parameters, ckks above (the resolved config says which)",
    )
    auto_paillier_max: StrictInt = Field(
        50_000, ge=1, description="auto: the largest model (parameters) given to paillier"
    )
    key_mode: Literal["group", "threshold"] = Field(
        "group",
        description="group: every client holds the secret key, the coordinator only the "
        "public key; threshold: the key is split among the clients and any `threshold` of "
        "them decrypt together (paillier only)",
    )
    threshold: StrictInt | None = Field(
        None, ge=2, description="threshold: key shares needed to decrypt; null: all clients"
    )
    key_bits: StrictInt = Field(2048, ge=1024, description="paillier modulus size")
    value_bits: StrictInt = Field(
        16, ge=2, le=30, description="paillier: signed bits per quantised value"
    )
    clip: Real = Field(
        2.0,
        gt=0,
        description="paillier: each coordinate of a model's distance from the initial model "
        "is clipped to [-clip, clip] (step clip / (2^(value_bits-1) - 1))",
    )
    poly_modulus_degree: StrictInt = Field(8192, description="ckks: ring degree (slots x 2)")
    scale_bits: StrictInt = Field(40, ge=20, le=60, description="ckks: log2 of the scale")

    @model_validator(mode="after")
    def _consistent(self) -> HeConfig:
        if self.key_bits % 2:
            raise ValueError(f"key_bits must be even, got {self.key_bits}")
        if self.key_mode == "group" and self.threshold is not None:
            raise ValueError("threshold is used by key_mode: threshold only")
        if self.scheme == "ckks" and self.key_mode == "threshold":
            raise ValueError(
                "ckks runs with key_mode: group only (TenSEAL has no threshold decryption)"
            )
        if self.poly_modulus_degree not in (8192, 16384, 32768):
            # the coefficient chain (60, 40, 40, 60) needs at least 8192 for 128-bit security
            raise ValueError(
                f"poly_modulus_degree must be 8192, 16384 or 32768, got {self.poly_modulus_degree}"
            )
        return self


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
    aggregation: Literal["plain", "secret-share", "secagg", "he"] = Field(
        "plain",
        description="secret-share: additive shares across each neighbourhood (dpsgd) or all "
        "clients (fedavg); secagg: Bonawitz et al. masking with SecAgg+ sparse graphs and "
        "Shamir dropout recovery, per neighbourhood (dpsgd) or through the coordinator "
        "(fedavg); he: homomorphic encryption, the coordinator sums ciphertexts (he-fedavg)",
    )
    he: HeConfig = HeConfig()
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
    charge_compute: StrictBool = Field(
        True,
        description="virtual time: the crypto of secure and homomorphic aggregation takes its "
        "reference time (p2pfed.protocol.secure.SECURE_COSTS, p2pfed.protocol.he."
        "PAILLIER_COSTS / CKKS_COSTS, measured on a 2-core machine) before its message leaves; "
        "false: it is free and only bytes cost time. Wall time always pays the real cost",
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
        if self.aggregation in ("plain", "he") and self.phase_timeout is not None:
            raise ValueError("phase_timeout is used by secret-share and secagg only")
        if self.aggregation != "he" and self.he != HeConfig():
            raise ValueError("the he section is used by aggregation: he only")
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
        """Masked or shared sums (secret-share, secagg); HE is :attr:`homomorphic`."""
        return self.aggregation in ("secret-share", "secagg")

    @property
    def homomorphic(self) -> bool:
        return self.aggregation == "he"
