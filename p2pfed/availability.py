"""When each peer is up: a seeded churn process or a trace of up intervals.

Peers of a real decentralised network come and go. Here a peer is *up* (it trains, sends,
receives, its timers fire) or *down* (nothing reaches it: frames sent to it are lost, its
timers and a training in flight are discarded; its state is kept). Each departure is a
``leave`` (the peer says goodbye: its neighbours are told, and told again when it is back)
or a ``crash`` (silent: neighbours find out through their timeouts). A peer comes back
either with the state it had (``rejoin: state``) or from scratch (``rejoin: scratch``: the
protocol's initial state with the run's initial model); either way the runtime hands its
protocol ``Started`` again and the protocol takes it from there.

Two sources:

* ``churn``: every churning peer alternates up and down spells with exponential lengths,
  ``mean_down`` for down spells and ``mean_down (1 - p) / p`` for up spells, so that in the
  long run a share ``p = down_fraction`` of the peers is down at any time (an alternating
  renewal process; Stutzbach & Rejaie, "Understanding Churn in Peer-to-Peer Networks", IMC
  2006, measure heavier-tailed sessions — exponential spells are the memoryless baseline).
  From ``start`` on, each peer begins in the stationary state: down with probability ``p``
  for an exponential remainder. Each peer's spells come from its own stream of the run seed,
  so they do not depend on which host asks, or in which order.
* ``trace``: a CSV file ``peer,start,end[,how]`` of the intervals a peer is up (run seconds,
  ``end`` may be ``inf``); a peer the file does not name is always up, one it names is down
  outside its intervals; ``how`` (``leave`` or ``crash``, default ``crash``) is how the
  interval ends.

Pure: numpy and pydantic; no Ray, no clock.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from p2pfed.fields import Real

How = Literal["leave", "crash"]


class ChurnConfig(BaseModel):
    """A seeded churn process (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    down_fraction: Real = Field(
        0.2, gt=0, lt=1, description="long-run share of the churning peers down at any time"
    )
    mean_down: Real = Field(1.0, gt=0, description="mean length of a down spell (seconds)")
    crash: Real = Field(
        0.5, ge=0, le=1, description="share of departures that are silent crashes (else leaves)"
    )
    start: Real = Field(0.0, ge=0, description="no churn before this time (seconds)")
    peers: list[StrictInt] | None = Field(
        None, description="the peers that churn; null: every peer but a coordinator"
    )

    @property
    def mean_up(self) -> float:
        p = self.down_fraction
        return self.mean_down * (1 - p) / p


class AvailabilityConfig(BaseModel):
    """Which peers are up when (module docstring); ``kind: always`` keeps everyone up."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["always", "churn", "trace"] = "always"
    churn: ChurnConfig = ChurnConfig()
    trace: str | None = Field(None, description="CSV of up intervals: peer,start,end[,how]")
    rejoin: Literal["state", "scratch"] = Field(
        "state", description="a returning peer keeps its state, or starts from the initial model"
    )

    @model_validator(mode="after")
    def _trace_given(self) -> AvailabilityConfig:
        if self.kind == "trace" and not self.trace:
            raise ValueError("availability kind trace needs trace: the CSV file of up intervals")
        if self.kind != "trace" and self.trace:
            raise ValueError(f"availability.trace is read with kind trace, not {self.kind}")
        return self


@dataclass(frozen=True)
class Spell:
    """One down spell of a peer: down from ``down`` until ``up`` (``inf``: for good)."""

    peer: int
    down: float
    up: float
    how: How


class Availability:
    """The down spells of every peer, generated lazily and deterministically (plain data:
    it pickles, so it travels to Ray hosts and into checkpoints)."""

    def __init__(
        self,
        cfg: AvailabilityConfig,
        num_peers: int,
        seed: np.random.SeedSequence,
        *,
        trace: Sequence[Spell] | None = None,
    ):
        self.cfg = cfg
        self.num_peers = num_peers
        self._spells: dict[int, list[Spell]] = {}
        self._rngs: dict[int, np.random.Generator] = {}  # churn: each peer's stream
        self._t: dict[int, float] = {}  # churn: when the peer's next up spell begins
        self._traced: dict[int, list[Spell]] = {}  # trace: every spell, known up front
        if cfg.kind == "churn":
            peers = cfg.churn.peers if cfg.churn.peers is not None else range(num_peers)
            children = seed.spawn(num_peers)
            for p in sorted(set(peers)):
                if not 0 <= p < num_peers:
                    raise ValueError(
                        f"availability.churn.peers names {p}: peers are 0..{num_peers - 1}"
                    )
                rng = np.random.default_rng(children[p])
                self._rngs[p] = rng
                self._t[p] = cfg.churn.start
                self._spells[p] = []
                if rng.random() < cfg.churn.down_fraction:
                    # stationary start: down from ``start`` for a memoryless remainder
                    up = cfg.churn.start + float(rng.exponential(cfg.churn.mean_down))
                    self._spells[p].append(Spell(p, cfg.churn.start, up, self._how(rng)))
                    self._t[p] = up
        elif cfg.kind == "trace":
            for spell in trace or ():
                self._traced.setdefault(spell.peer, []).append(spell)
            for spells in self._traced.values():
                spells.sort(key=lambda sp: sp.down)

    @property
    def churning(self) -> list[int]:
        """The peers that may go down."""
        return sorted(set(self._rngs) | set(self._traced))

    def spell(self, peer: int, k: int) -> Spell | None:
        """Peer ``peer``'s ``k``-th down spell (0-based), or None when it has no more."""
        if peer in self._traced:
            spells = self._traced[peer]
            return spells[k] if k < len(spells) else None
        rng = self._rngs.get(peer)
        if rng is None:
            return None
        spells = self._spells[peer]
        churn = self.cfg.churn
        while len(spells) <= k:
            down = self._t[peer] + float(rng.exponential(churn.mean_up))
            up = down + float(rng.exponential(churn.mean_down))
            spells.append(Spell(peer, down, up, self._how(rng)))
            self._t[peer] = up
        return spells[k]

    def _how(self, rng: np.random.Generator) -> How:
        return "crash" if rng.random() < self.cfg.churn.crash else "leave"

    def spells(self, until: float) -> list[Spell]:
        """Every down spell that starts before ``until``, by peer then time."""
        out = []
        for p in self.churning:
            k = 0
            while (s := self.spell(p, k)) is not None and s.down < until:
                out.append(s)
                k += 1
        return out

    def down_fraction(self, until: float) -> float:
        """The share of peer-time in ``[0, until)`` spent down, over all peers."""
        if until <= 0 or self.num_peers == 0:
            return 0.0
        down = sum(min(s.up, until) - s.down for s in self.spells(until))
        return down / (until * self.num_peers)


def read_trace(path: str | Path) -> list[Spell]:
    """The down spells a CSV of up intervals (``peer,start,end[,how]``) implies: before the
    first interval, between intervals, and after the last one (if it ends)."""
    ups: dict[int, list[tuple[float, float, How]]] = {}
    with Path(path).open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"peer", "start", "end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must name peer,start,end (and optionally how)")
        for line, row in enumerate(reader, start=2):
            try:
                peer, start, end = int(row["peer"]), float(row["start"]), float(row["end"])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}:{line}: peer must be an integer, start and end numbers"
                ) from None
            how = (row.get("how") or "crash").strip()
            if how not in ("leave", "crash"):
                raise ValueError(f"{path}:{line}: how must be leave or crash, got {how!r}")
            if peer < 0 or not (0 <= start < end) or math.isnan(end):
                raise ValueError(f"{path}:{line}: need peer >= 0 and 0 <= start < end")
            ups.setdefault(peer, []).append((start, end, how))  # type: ignore[arg-type]
    spells: list[Spell] = []
    for peer, intervals in sorted(ups.items()):
        intervals.sort()
        t, how_before = 0.0, "crash"
        for start, end, how in intervals:
            if start < t:
                raise ValueError(f"{path}: peer {peer} has overlapping up intervals")
            if start > t:
                spells.append(Spell(peer, t, start, how_before))  # type: ignore[arg-type]
            t, how_before = end, how
        if math.isfinite(t):
            spells.append(Spell(peer, t, math.inf, how_before))  # type: ignore[arg-type]
    return spells
