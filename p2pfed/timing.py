"""Where virtual time comes from: a compute cost model and a network model.

Under virtual time nothing is measured with a stopwatch. A training run of ``s`` samples at
peer ``i`` takes ``s * seconds_per_sample * slowdown_i * jitter`` seconds, where
``slowdown_i >= 1`` makes stragglers and the optional log-normal jitter varies each run. A
frame of ``b`` bytes from ``i`` leaves when ``i``'s uplink is free, occupies it for
``8 b / bandwidth`` seconds, then spends ``latency`` seconds on the link and is lost with
probability ``loss``. Latency is ``min + extra``, ``extra`` drawn from the configured
distribution; ``min > 0`` is required because it is the lookahead that lets several hosts
advance in parallel windows and still reproduce the single-process order of events.

Simplifications, stated so they are not mistaken for measurements: links are independent
(no shared bottleneck), the downlink is unlimited, and lost frames are not retransmitted —
protocols see loss and must cope (timeouts, push-sum mass loss).

All draws come from a seed handed in, split into one generator per peer (its compute
jitter) and one per sender (its links' delays and losses). A peer's draws therefore depend
only on its own sequence of actions, not on how its events interleave with other peers' —
which is what lets several hosts, each drawing for its own peers, reproduce a
single-process run bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from p2pfed.fields import Real


class StragglerConfig(BaseModel):
    """A random share of peers whose training is slower by a constant factor."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    fraction: Real = Field(0.0, ge=0, le=1, description="share of peers that are slow")
    slowdown: Real = Field(4.0, ge=1, le=1e6, description="compute-time multiplier of a straggler")


class TimeConfig(BaseModel):
    """Virtual-time compute model. Upper bounds on times (an hour per sample or per link)
    keep every derived time finite; they are far beyond any sensible setting."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    mode: Literal["virtual", "wall"] = Field(
        "virtual",
        description="virtual: a reproducible discrete-event simulation; wall: every peer "
        "runs on its own clock and messages land when they land (runtime.kind ray)",
    )
    seconds_per_sample: Real = Field(1e-3, gt=0, le=3600)
    stragglers: StragglerConfig = StragglerConfig()
    slowdown: dict[int, Real] = Field(
        default_factory=dict, description="explicit per-peer slowdown factors (peer id -> >= 1)"
    )
    compute_jitter: Real = Field(
        0.0, ge=0, le=3, description="sigma of a log-normal factor on every training duration"
    )
    limit: Real | None = Field(
        None, gt=0, description="stop the run at this virtual time (seconds)"
    )

    @field_validator("slowdown")
    @classmethod
    def _slowdowns_at_least_one(cls, v: dict[int, float]) -> dict[int, float]:
        for peer, factor in v.items():
            if peer < 0:
                raise ValueError(f"peer id {peer} must be >= 0")
            if not factor >= 1:
                raise ValueError(f"slowdown of peer {peer} must be >= 1, got {factor}")
        return v


class LatencyConfig(BaseModel):
    """One-way link latency: a positive minimum plus a random extra delay."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    min: Real = Field(0.01, gt=0, le=3600, description="minimum one-way latency in seconds (> 0)")
    dist: Literal["constant", "uniform", "exponential", "lognormal"] = "constant"
    scale: Real = Field(
        0.0,
        ge=0,
        le=3600,
        description="spread of the extra delay: U(0, scale), Exp(mean=scale), "
        "or scale * LogNormal(0, 1)",
    )


class NetworkConfig(BaseModel):
    """Per-link network model."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    latency: LatencyConfig = LatencyConfig()
    bandwidth: Real | None = Field(
        1e8, ge=1, description="uplink bandwidth in bits/s; null for unlimited"
    )
    loss: Real = Field(0.0, ge=0, lt=1, description="probability that a frame is lost")


class CostModel:
    """Virtual seconds a peer spends training."""

    def __init__(self, cfg: TimeConfig, num_peers: int, seed: np.random.SeedSequence):
        for peer in cfg.slowdown:
            if peer >= num_peers:
                raise ValueError(f"time.slowdown names peer {peer}, but there are {num_peers}")
        choice_seed, peers_seed = seed.spawn(2)
        slow = np.ones(num_peers)
        n_stragglers = round(cfg.stragglers.fraction * num_peers)
        if n_stragglers:
            rng = np.random.default_rng(choice_seed)
            chosen = rng.choice(num_peers, size=n_stragglers, replace=False)
            slow[chosen] = cfg.stragglers.slowdown
        for peer, factor in cfg.slowdown.items():
            slow[peer] = factor
        self.slowdown = slow
        self._cfg = cfg
        self._rngs = [np.random.default_rng(s) for s in peers_seed.spawn(num_peers)]

    def train_time(self, peer: int, samples: int) -> float:
        t = samples * self._cfg.seconds_per_sample * float(self.slowdown[peer])
        if self._cfg.compute_jitter > 0:
            t *= float(self._rngs[peer].lognormal(0.0, self._cfg.compute_jitter))
        return t

    def expected_train_time(self, peer: int, samples: int) -> float:
        jitter = float(np.exp(self._cfg.compute_jitter**2 / 2))  # mean of the log-normal
        return samples * self._cfg.seconds_per_sample * float(self.slowdown[peer]) * jitter


@dataclass(frozen=True)
class Transmission:
    """What the network model decided for one frame."""

    depart: float  # when the last bit leaves the sender's uplink
    arrive: float  # when the frame reaches the receiver
    lost: bool


class NetworkModel:
    """Samples each frame's departure, arrival and loss; tracks every peer's uplink."""

    def __init__(self, cfg: NetworkConfig, num_peers: int, seed: np.random.SeedSequence):
        self._cfg = cfg
        self._rngs = [np.random.default_rng(s) for s in seed.spawn(num_peers)]  # per sender
        self._uplink_free = np.zeros(num_peers)

    @property
    def min_latency(self) -> float:
        return self._cfg.latency.min

    def _extra_delay(self, rng: np.random.Generator) -> float:
        lat = self._cfg.latency
        if lat.dist == "constant" or lat.scale == 0:
            return 0.0
        if lat.dist == "uniform":
            return float(rng.uniform(0.0, lat.scale))
        if lat.dist == "exponential":
            return float(rng.exponential(lat.scale))
        return lat.scale * float(rng.lognormal(0.0, 1.0))

    def serialise_time(self, nbytes: int) -> float:
        """Seconds a frame of ``nbytes`` occupies its sender's uplink."""
        return 0.0 if self._cfg.bandwidth is None else 8.0 * nbytes / self._cfg.bandwidth

    def transmit(self, src: int, nbytes: int, now: float) -> Transmission:
        start = max(now, float(self._uplink_free[src]))
        depart = start + self.serialise_time(nbytes)
        self._uplink_free[src] = depart
        rng = self._rngs[src]
        arrive = depart + self._cfg.latency.min + self._extra_delay(rng)
        lost = self._cfg.loss > 0 and float(rng.random()) < self._cfg.loss
        return Transmission(depart=depart, arrive=arrive, lost=lost)

    def expected_delay(self, nbytes: int) -> float:
        lat = self._cfg.latency
        extra = {
            "constant": 0.0,
            "uniform": lat.scale / 2,
            "exponential": lat.scale,
            "lognormal": lat.scale * float(np.exp(0.5)),
        }[lat.dist]
        return self.serialise_time(nbytes) + lat.min + extra
