"""Static topologies from a :class:`TopologySpec`.

Random kinds draw every graph from an explicit seed: ``spec.seed`` when set, the run seed
otherwise. A generator that may produce a disconnected graph is retried with seeds spawned
from ``numpy.random.SeedSequence(seed)`` (a bounded number of times), so a given seed always
gives the same graph.

The exponential graph links i with i ± 2^k (mod n) for k = 0..floor(log2(n - 1)): degree
O(log n) and a spectral gap that shrinks only like 1/log n (Ying et al., "Exponential Graph
is Provably Efficient for Decentralized Deep Training", NeurIPS 2021; Assran et al.,
"Stochastic Gradient Push for Distributed Deep Learning", ICML 2019, use its directed form).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import networkx as nx
import numpy as np

from p2pfed.errors import TopologyError
from p2pfed.topology.graph import Topology
from p2pfed.topology.spec import DYNAMIC_KINDS, TopologySpec

RESAMPLE_TRIES = 100

Edges = list[tuple[int, int]]


def seed_stream(entropy: int | list[int], tries: int = RESAMPLE_TRIES) -> Iterator[int]:
    """``tries`` independent 32-bit seeds for networkx, spawned from one SeedSequence."""
    for child in np.random.SeedSequence(entropy).spawn(tries):
        yield int(child.generate_state(1)[0])


def spec_name(spec: TopologySpec) -> str:
    """e.g. ``ring(n=16)``, ``random_regular(n=16, degree=4)``; spec must be resolved."""
    parts = [f"n={spec.n}"]
    if spec.degree is not None:
        parts.append(f"degree={spec.degree}")
    if spec.p is not None:
        parts.append(f"p={spec.p:.4g}")
    if spec.rows is not None and spec.cols is not None:
        parts.append(f"rows={spec.rows}, cols={spec.cols}")
    if spec.directed and spec.kind != "one_peer_exponential":
        parts.append("directed")
    return f"{spec.kind}({', '.join(parts)})"


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TopologyError(f"seed must be a non-negative integer, got {seed!r}")
    return seed


def _first_connected(
    draw: Callable[[int], nx.Graph], entropy: int | list[int], what: str
) -> nx.Graph:
    for seed in seed_stream(entropy):
        graph = draw(seed)
        if nx.is_connected(graph):
            return graph
    raise TopologyError(f"no connected {what} in {RESAMPLE_TRIES} draws; use a larger degree or p")


def random_regular_graph(n: int, degree: int, entropy: int | list[int]) -> nx.Graph:
    """A connected random ``degree``-regular graph (networkx pairing model, resampled)."""
    if not 1 <= degree < n or (n * degree) % 2:
        raise TopologyError(
            f"no {degree}-regular graph on {n} peers (need 1 <= degree < n, n * degree even)"
        )
    return _first_connected(
        lambda s: nx.random_regular_graph(degree, n, seed=s),
        entropy,
        f"{degree}-regular graph on {n} peers",
    )


def _erdos_renyi(n: int, p: float, seed: int) -> nx.Graph:
    seeds = seed_stream(seed)
    graph = nx.null_graph()
    for s in seeds:
        # fast_gnp samples the same G(n, p) as gnp_random_graph in O(n + m) instead of
        # O(n^2); a small p may use all 100 retries (n = 1000: 0.12 s instead of 2.5 s).
        graph = nx.fast_gnp_random_graph(n, p, seed=s)
        if nx.is_connected(graph):
            return graph
    # Below the connectivity threshold (p ~ ln n / n) retrying is hopeless: join the
    # components into a chain instead, one edge between each consecutive pair (ordered by
    # smallest peer id), its endpoints drawn from a generator seeded from the same seed.
    # The result is connected with as few extra edges as possible, but it is no longer
    # exactly G(n, p).
    rng = np.random.default_rng(np.random.SeedSequence([seed, RESAMPLE_TRIES]))
    components = sorted((sorted(c) for c in nx.connected_components(graph)), key=lambda c: c[0])
    for left, right in itertools.pairwise(components):
        graph.add_edge(int(rng.choice(left)), int(rng.choice(right)))
    return graph


def _exponential(n: int) -> Edges:
    # Undirected, i + 2^k and i - 2^k coincide for 2^k = n / 2; Topology merges the pair.
    hops = [1 << k for k in range((n - 1).bit_length())]
    return [(i, (i + hop) % n) for i in range(n) for hop in hops]


def _dumbbell(n: int) -> Edges:
    left = n // 2
    if n % 2 == 0:
        return list(nx.barbell_graph(left, 0).edges())
    # barbell_graph only makes equal bells; for odd n the right clique gets the extra peer.
    edges: Edges = [(i, j) for i in range(left) for j in range(i + 1, left)]
    edges += [(i, j) for i in range(left, n) for j in range(i + 1, n)]
    edges.append((left - 1, left))
    return edges


def _torus(rows: int, cols: int) -> Edges:
    grid = nx.grid_2d_graph(rows, cols, periodic=True)
    return [(r1 * cols + c1, r2 * cols + c2) for (r1, c1), (r2, c2) in grid.edges()]


def build_topology(spec: TopologySpec, seed: int = 0) -> Topology:
    """The static topology a spec describes. ``seed`` (the run seed) is used when
    ``spec.seed`` is None. Dynamic kinds need :func:`p2pfed.topology.build_schedule`."""
    if spec.kind in DYNAMIC_KINDS:
        raise TopologyError(
            f"kind {spec.kind} changes every step: build it with build_schedule, not build_topology"
        )
    spec = spec.resolved(check_seed(seed))
    n, kind = spec.n, spec.kind
    name = spec_name(spec)
    edges: Edges
    if kind == "ring":
        edges = [(i, (i + 1) % n) for i in range(n)]
    elif kind == "torus":
        assert spec.rows is not None and spec.cols is not None
        edges = _torus(spec.rows, spec.cols)
    elif kind == "complete":
        edges = list(nx.complete_graph(n).edges())
    elif kind == "star":
        edges = list(nx.star_graph(n - 1).edges())
    elif kind == "random_regular":
        assert spec.degree is not None and spec.seed is not None
        edges = list(random_regular_graph(n, spec.degree, spec.seed).edges())
    elif kind == "erdos_renyi":
        assert spec.p is not None and spec.seed is not None
        edges = list(_erdos_renyi(n, spec.p, spec.seed).edges())
    elif kind == "small_world":
        assert spec.degree is not None and spec.p is not None and spec.seed is not None
        try:
            graph = nx.connected_watts_strogatz_graph(
                n, spec.degree, spec.p, tries=RESAMPLE_TRIES, seed=next(seed_stream(spec.seed))
            )
        except nx.NetworkXError as exc:
            raise TopologyError(f"{name}: {exc}") from None
        edges = list(graph.edges())
    elif kind == "exponential":
        edges = _exponential(n)
    elif kind == "dumbbell":
        edges = _dumbbell(n)
    elif kind == "edge_list":
        assert spec.edges is not None
        edges = list(spec.edges)
    else:  # pragma: no cover - the Literal type makes this unreachable
        raise TopologyError(f"unknown topology kind {kind!r}")
    return Topology(n, edges, directed=spec.directed, name=name)
