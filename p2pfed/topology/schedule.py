"""Topologies over time: which graph (and mixing matrix) is used at each round.

Protocols ask ``schedule.at(step)`` for the graph of round/epoch ``step``; the answer is a
pure function of the schedule's parameters and ``step``, so every peer (on any host) agrees
on it without talking.

* :class:`StaticSchedule` — the same graph every step.
* :class:`OnePeerExponential` — each peer talks to one peer per step, at hop 2^(k mod tau),
  tau = ceil(log2 n). Every W_k = (I + P_k) / 2 is doubly stochastic although the graph is
  directed, and for n a power of two the product over one period is exactly (1/n) 11^T:
  exact averaging in log2(n) steps at one message per peer per step (Ying et al.,
  "Exponential Graph is Provably Efficient for Decentralized Deep Training", NeurIPS 2021;
  Assran et al., "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019). A
  single snapshot is not connected (hop 2 splits even and odd peers); only the union over a
  period is, so snapshots are built with ``require_connected=False``.
* :class:`RandomRegularResampled` — a fresh connected random d-regular graph each step,
  seeded from (seed, step).

``spectral_gap`` of a schedule is a per-step rate, comparable with a static graph's gap.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import scipy.sparse as sp

from p2pfed.errors import TopologyError
from p2pfed.topology.generators import build_topology, check_seed, random_regular_graph
from p2pfed.topology.graph import Topology
from p2pfed.topology.spec import TopologySpec

# Moduli below this are rounding noise of an exact zero (the one-peer product for n = 2^k);
# left in, their tau-th root would turn a gap of 1 into 1 - 1e-4.
_ZERO_MODULUS = 1e-12
# Steps over which the gap of a resampled random graph is averaged.
GAP_SAMPLE_STEPS = 8


def _check_step(step: int) -> int:
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise TopologyError(f"step must be a non-negative integer, got {step!r}")
    return int(step)


@runtime_checkable
class TopologySchedule(Protocol):
    """How the graph changes over time. ``at(step)`` is deterministic for given parameters."""

    @property
    def n(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def directed(self) -> bool: ...

    @property
    def is_static(self) -> bool: ...

    @property
    def period(self) -> int | None:
        """The smallest p with at(k + p) == at(k) for every k; None when there is none."""
        ...

    @property
    def spectral_gap(self) -> float:
        """The per-step consensus rate 1 - SLEM (averaged or over a period for dynamic ones)."""
        ...

    def at(self, step: int) -> Topology: ...


class StaticSchedule:
    """The same topology at every step."""

    def __init__(self, topology: Topology) -> None:
        if not isinstance(topology, Topology):
            raise TopologyError(f"StaticSchedule needs a Topology, got {type(topology).__name__}")
        self._topology = topology

    @property
    def n(self) -> int:
        return self._topology.n

    @property
    def name(self) -> str:
        return self._topology.name

    @property
    def directed(self) -> bool:
        return self._topology.directed

    @property
    def is_static(self) -> bool:
        return True

    @property
    def period(self) -> int | None:
        return 1

    @property
    def spectral_gap(self) -> float:
        return self._topology.spectral_gap

    def at(self, step: int) -> Topology:
        _check_step(step)
        return self._topology

    def __repr__(self) -> str:
        return f"StaticSchedule({self._topology!r})"


def _one_peer_mixing(n: int, hop: int) -> Any:
    """W = (I + P) / 2 with P[(i + hop) mod n, i] = 1: x_i <- (x_i + x_{i - hop}) / 2."""
    idx = np.arange(n)
    rows = np.concatenate([idx, (idx + hop) % n])
    cols = np.concatenate([idx, idx])
    return sp.csr_matrix((np.full(2 * n, 0.5), (rows, cols)), shape=(n, n))


def _one_peer_product_slem(n: int, period: int) -> float:
    """SLEM of W_{tau-1} ... W_0 for the one-peer exponential graph, in closed form.

    Every W_k = (I + P_k) / 2 is circulant, so all of them share the Fourier eigenbasis: at
    frequency j, W_k has eigenvalue (1 + e^{-2 pi i j 2^k / n}) / 2, of modulus
    |cos(pi j 2^k / n)|, and the product's modulus is the product of those. O(n tau) and exact;
    ARPACK on the (non-normal) product was measured 0.2% off at n = 1000.
    """
    j = np.arange(1, n, dtype=np.int64)
    moduli = np.ones(n - 1)
    for k in range(period):
        # Reduce j 2^k mod n in integers first: the angle stays exact for any n.
        moduli *= np.abs(np.cos(np.pi * ((j << k) % n) / n))
    return float(moduli.max())


class OnePeerExponential:
    """Directed one-peer exponential graph: at step k, peer i sends to (i + 2^(k mod tau)) mod n."""

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise TopologyError(f"a one-peer exponential graph needs n >= 2, got {n!r}")
        self._n = n
        self._period = (n - 1).bit_length()  # ceil(log2 n) without floating point
        self._name = f"one_peer_exponential(n={n})"
        self._snapshots = tuple(
            Topology.from_mixing(
                _one_peer_mixing(n, 1 << k),
                name=f"{self._name}@{k}",
                directed=True,
                require_connected=False,
            )
            for k in range(self._period)
        )
        self._gap: float | None = None

    @property
    def n(self) -> int:
        return self._n

    @property
    def name(self) -> str:
        return self._name

    @property
    def directed(self) -> bool:
        return True

    @property
    def is_static(self) -> bool:
        return False

    @property
    def period(self) -> int | None:
        return self._period

    @property
    def spectral_gap(self) -> float:
        """1 - SLEM(W_{tau-1} ... W_0)^(1/tau): the per-step rate over a whole period."""
        if self._gap is None:
            slem = _one_peer_product_slem(self._n, self._period)
            slem = 0.0 if slem < _ZERO_MODULUS else min(slem, 1.0)
            self._gap = 1.0 - slem ** (1.0 / self._period)
        return self._gap

    def at(self, step: int) -> Topology:
        return self._snapshots[_check_step(step) % self._period]

    def __repr__(self) -> str:
        return f"OnePeerExponential(n={self._n})"


class RandomRegularResampled:
    """A fresh connected random ``degree``-regular graph every step, drawn from
    ``SeedSequence([seed, step])``; every step's graph is built once and kept."""

    def __init__(self, n: int, degree: int, seed: int) -> None:
        check_seed(seed)
        if not 1 <= degree < n or (n * degree) % 2:
            raise TopologyError(
                f"no {degree}-regular graph on {n} peers (need 1 <= degree < n, n * degree even)"
            )
        self._n = n
        self._degree = degree
        self._seed = seed
        self._name = f"random_regular_dynamic(n={n}, degree={degree})"
        # Per instance, not module level: peers of one host share it, runs never do. Unbounded
        # on purpose: asynchronous peers drift many steps apart, and a bounded LRU then
        # rebuilds the same graphs over and over; the protocol bounds the number of steps.
        self._cache: dict[int, Topology] = {}
        self._gap: float | None = None

    @property
    def n(self) -> int:
        return self._n

    @property
    def degree(self) -> int:
        return self._degree

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def name(self) -> str:
        return self._name

    @property
    def directed(self) -> bool:
        return False

    @property
    def is_static(self) -> bool:
        return False

    @property
    def period(self) -> int | None:
        return None

    @property
    def spectral_gap(self) -> float:
        """The mean gap of the graphs of steps 0..7."""
        if self._gap is None:
            gaps = [self.at(step).spectral_gap for step in range(GAP_SAMPLE_STEPS)]
            self._gap = float(np.mean(gaps))
        return self._gap

    def at(self, step: int) -> Topology:
        step = _check_step(step)
        topology = self._cache.get(step)
        if topology is None:
            topology = self._cache[step] = self._build(step)
        return topology

    def _build(self, step: int) -> Topology:
        graph = random_regular_graph(self._n, self._degree, [self._seed, step])
        return Topology(self._n, graph.edges(), name=f"{self._name}@{step}")

    def __repr__(self) -> str:
        return f"RandomRegularResampled(n={self._n}, degree={self._degree}, seed={self._seed})"


def build_schedule(spec: TopologySpec, seed: int = 0) -> TopologySchedule:
    """The schedule a spec describes; static kinds become a :class:`StaticSchedule`.
    ``seed`` (the run seed) is used when ``spec.seed`` is None."""
    if spec.kind == "one_peer_exponential":
        return OnePeerExponential(spec.n)
    if spec.kind == "random_regular_dynamic":
        resolved = spec.resolved(check_seed(seed))
        assert resolved.degree is not None and resolved.seed is not None
        return RandomRegularResampled(resolved.n, resolved.degree, resolved.seed)
    return StaticSchedule(build_topology(spec, seed))
