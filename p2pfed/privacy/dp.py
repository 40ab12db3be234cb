"""The differential-privacy stage of a peer's update: clip, then add Gaussian noise.

Where it sits: every local training's result is privatised before the protocol sees it,
``x' = x_start + clip(x - x_start, C) + N(0, (sigma C)^2 I)``, so whatever the protocol
does next (plain sharing, secret sharing, masking, encryption, sealing) carries only the
noisy update — the first stages of the pipeline clip -> noise -> quantise -> share / mask
/ encrypt -> seal (DESIGN.md section 4). The Gaussian mechanism (Dwork & Roth, "The
Algorithmic Foundations of Differential Privacy", 2014, section 3.5.3; Abadi et al., CCS
2016, without per-example clipping: the whole update is clipped, which protects a peer's
whole dataset, as in McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018). Accounting: :mod:`p2pfed.privacy.accountant`.

Per-example DP-SGD (``mode: dpsgd``) is the other option: Opacus (Yousefpour et al., "Opacus:
User-Friendly Differential Privacy Library in PyTorch", 2021) clips every example's
gradient to ``clip`` and adds ``N(0, (sigma clip)^2)`` to each minibatch's summed gradient
(Abadi et al., CCS 2016, Algorithm 1), so the guarantee is per *example* of the peer's data
(record-level DP), and accounting uses subsampled-Gaussian RDP with sampling rate
``batch_size / shard size`` over every SGD step (Mironov, Talwar & Zhang, "Rényi
Differential Privacy of the Sampled Gaussian Mechanism", 2019; Opacus's analysis). The
peers draw shuffled fixed-size batches, not Poisson samples: the common practice, and the
accounted epsilon is then the Poisson-sampling one (Chua et al., "How Private are DP-SGD
Implementations?", ICML 2024, show the two can differ; the report says which was used).

Threat model: what leaves a peer is differentially private with respect to its whole local
dataset, at the epsilon the run reports for it, against anyone who sees every release
(eavesdroppers, neighbours, the coordinator). The noise comes from the peer's seeded
generator: a simulation choice (reproducible runs), not secure randomness.

Pure: numpy only.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from p2pfed.fields import Real


class DPConfig(BaseModel):
    """The ``dp`` section: clip each local update (``mode: update``) or each example's
    gradient (``mode: dpsgd``, Opacus) to L2 norm ``clip`` and add Gaussian noise of standard
    deviation ``noise_multiplier * clip``; ``clip: null`` turns DP off."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    clip: Real | None = Field(None, gt=0, description="L2 bound of a local update; null: no DP")
    noise_multiplier: Real = Field(1.0, gt=0, le=1e6, description="noise std / clip")
    delta: Real = Field(1e-5, gt=0, lt=1, description="the delta epsilon is reported at")
    mode: Literal["update", "dpsgd"] = Field(
        "update", description="update: clip+noise each released update; dpsgd: Opacus DP-SGD"
    )

    @property
    def enabled(self) -> bool:
        return self.clip is not None


def privatize(
    start: np.ndarray,
    trained: np.ndarray,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, bool]:
    """``start + clip(trained - start) + noise`` as float32, and whether clipping cut."""
    update = np.asarray(trained, dtype=np.float64) - np.asarray(start, dtype=np.float64)
    norm = float(np.linalg.norm(update))
    cut = norm > clip
    if cut:
        update *= clip / norm
    update += rng.normal(0.0, noise_multiplier * clip, size=update.shape)
    return (np.asarray(start, dtype=np.float64) + update).astype(np.float32), cut
