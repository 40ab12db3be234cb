"""Where virtual time comes from: a compute cost model and a network model.

Under virtual time nothing is measured with a stopwatch. A training run of ``s`` samples at
peer ``i`` takes ``s * seconds_per_sample * slowdown_i * jitter`` seconds, where
``slowdown_i >= 1`` makes stragglers and the optional log-normal jitter varies each run. A
frame of ``b`` bytes from ``i`` leaves when ``i``'s uplink is free, occupies it for
``8 b / bandwidth`` seconds, then spends ``latency`` seconds on the link and is lost with
probability ``loss``. Latency is ``min + extra``, ``extra`` drawn from the configured
distribution; ``min > 0`` is required because it is the lookahead that lets several hosts
advance in parallel windows and still reproduce the single-process order of events.

Links can differ: ``network.links`` overrides loss, latency and bandwidth on chosen links,
in one direction (asymmetric links) or both. ``network.partitions`` cut the network for a
time window: a frame that leaves while a partition is active and whose ends sit in
different groups is lost (and counted as ``partitioned``). A window is ``[start, end)`` in
run seconds; the groups heal at ``end``.

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
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

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


class LinkConfig(BaseModel):
    """Settings of one link that differ from the network's: ``src -> dst``, and ``dst ->
    src`` too unless ``both`` is false (an asymmetric link)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    src: StrictInt = Field(ge=0)
    dst: StrictInt = Field(ge=0)
    both: bool = Field(True, description="also the reverse direction")
    latency: LatencyConfig | None = Field(None, description="null: the network's")
    bandwidth: Real | None = Field(
        None, ge=1, description="bits/s on this link (it still queues on the sender's uplink)"
    )
    loss: Real | None = Field(None, ge=0, lt=1, description="null: the network's")

    @model_validator(mode="after")
    def _two_ends(self) -> LinkConfig:
        if self.src == self.dst:
            raise ValueError(f"a link joins two peers, not peer {self.src} to itself")
        return self


class PartitionConfig(BaseModel):
    """A cut of the network from ``start`` until ``end`` (run seconds): peers in different
    ``groups`` cannot reach each other; the peers named in no group form one more."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    start: Real = Field(ge=0)
    end: Real = Field(gt=0, description="when the partition heals")
    groups: list[list[StrictInt]] = Field(min_length=1)

    @model_validator(mode="after")
    def _window_and_groups(self) -> PartitionConfig:
        if not self.end > self.start:
            raise ValueError(f"a partition ends after it starts: [{self.start}, {self.end})")
        seen: set[int] = set()
        for g in self.groups:
            if not g:
                raise ValueError("a partition group names no peer")
            if min(g) < 0:
                raise ValueError(f"peer ids are >= 0, got {min(g)}")
            if seen & set(g):
                raise ValueError(f"peers {sorted(seen & set(g))} are in two groups")
            seen |= set(g)
        return self


class NetworkConfig(BaseModel):
    """Per-link network model."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    latency: LatencyConfig = LatencyConfig()
    bandwidth: Real | None = Field(
        1e8, ge=1, description="uplink bandwidth in bits/s; null for unlimited"
    )
    loss: Real = Field(0.0, ge=0, lt=1, description="probability that a frame is lost")
    links: list[LinkConfig] = Field(
        default_factory=list, description="links whose loss, latency or bandwidth differ"
    )
    partitions: list[PartitionConfig] = Field(
        default_factory=list, description="time windows in which groups of peers are cut off"
    )

    @model_validator(mode="after")
    def _links_once(self) -> NetworkConfig:
        seen: set[tuple[int, int]] = set()
        for link in self.links:
            pairs = {(link.src, link.dst)} | ({(link.dst, link.src)} if link.both else set())
            if seen & pairs:
                raise ValueError(f"link {sorted(seen & pairs)[0]} is set twice in network.links")
            seen |= pairs
        return self

    def check_peers(self, participants: int) -> None:
        """Every peer named must exist (``0..participants-1``, the coordinator included)."""
        named = [p for link in self.links for p in (link.src, link.dst)]
        named += [p for part in self.partitions for g in part.groups for p in g]
        bad = sorted({p for p in named if p >= participants})
        if bad:
            raise ValueError(
                f"network names peers {bad[:8]}, but the run has participants 0..{participants - 1}"
            )


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
    partitioned: bool = False  # lost because a partition cut the link


class NetworkModel:
    """Samples each frame's departure, arrival and loss; tracks every peer's uplink."""

    def __init__(self, cfg: NetworkConfig, num_peers: int, seed: np.random.SeedSequence):
        self._cfg = cfg
        self._rngs = [np.random.default_rng(s) for s in seed.spawn(num_peers)]  # per sender
        self._uplink_free = np.zeros(num_peers)
        self._links: dict[tuple[int, int], LinkConfig] = {}
        for link in cfg.links:
            self._links[(link.src, link.dst)] = link
            if link.both:
                self._links[(link.dst, link.src)] = link
        # per partition: peer -> group index (peers in no group: -1, one more group)
        self._cuts = [
            (p.start, p.end, {peer: k for k, g in enumerate(p.groups) for peer in g})
            for p in cfg.partitions
        ]

    @property
    def min_latency(self) -> float:
        """The smallest latency any link can have (the lookahead of parallel windows)."""
        mins = [link.latency.min for link in self._cfg.links if link.latency is not None]
        return min([self._cfg.latency.min, *mins])

    def cut(self, src: int, dst: int, t: float) -> bool:
        """Whether a partition separates ``src`` from ``dst`` at time ``t``."""
        for start, end, group in self._cuts:
            if start <= t < end and group.get(src, -1) != group.get(dst, -1):
                return True
        return False

    def _extra_delay(self, rng: np.random.Generator, lat: LatencyConfig) -> float:
        if lat.dist == "constant" or lat.scale == 0:
            return 0.0
        if lat.dist == "uniform":
            return float(rng.uniform(0.0, lat.scale))
        if lat.dist == "exponential":
            return float(rng.exponential(lat.scale))
        return lat.scale * float(rng.lognormal(0.0, 1.0))

    def serialise_time(self, nbytes: int, bandwidth: float | None = None) -> float:
        """Seconds a frame of ``nbytes`` occupies its sender's uplink (at ``bandwidth``, by
        default the network's)."""
        bw = self._cfg.bandwidth if bandwidth is None else bandwidth
        return 0.0 if bw is None else 8.0 * nbytes / bw

    def transmit(self, src: int, dst: int, nbytes: int, now: float) -> Transmission:
        link = self._links.get((src, dst))
        lat = link.latency if link is not None and link.latency is not None else None
        lat = lat or self._cfg.latency
        bandwidth = link.bandwidth if link is not None else None
        loss = link.loss if link is not None and link.loss is not None else self._cfg.loss
        start = max(now, float(self._uplink_free[src]))
        depart = start + self.serialise_time(nbytes, bandwidth)
        self._uplink_free[src] = depart
        rng = self._rngs[src]
        arrive = depart + lat.min + self._extra_delay(rng, lat)
        lost = loss > 0 and float(rng.random()) < loss
        if self._cuts and self.cut(src, dst, now):
            return Transmission(depart=depart, arrive=arrive, lost=True, partitioned=True)
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
