"""A communication graph and its mixing matrix.

Convention: one gossip step is ``x_i <- sum_j W[i, j] x_j``, so row i of W holds what peer i
receives and column j what peer j sends.

Undirected graphs get Metropolis–Hastings weights (Xiao & Boyd, "Fast linear iterations for
distributed averaging", Systems & Control Letters 2004)::

    W_ij = 1 / (1 + max(d_i, d_j))  on every edge,   W_ii = 1 - sum_{j != i} W_ij

W is symmetric and doubly stochastic, needs only the neighbours' degrees, and has a positive
diagonal, so averaging converges on every connected graph (no periodicity).

Directed graphs get push weights: a sender j splits its value into d_out(j) + 1 equal shares,
keeps one and pushes one along each out-edge, so ``W[i, j] = W[j, j] = 1 / (d_out(j) + 1)``.
W is column stochastic: push-sum (Kempe et al. 2003; Assran et al., "Stochastic Gradient Push
for Distributed Deep Learning", ICML 2019) conserves mass with it, plain averaging does not.
Explicit weights (e.g. the doubly stochastic one-peer exponential graph) come in through
:meth:`Topology.from_mixing`.

The spectral gap 1 - SLEM(W) (second-largest eigenvalue modulus) sets the consensus rate:
the distance to the average shrinks roughly by a factor SLEM per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse import linalg as splinalg

from p2pfed.errors import TopologyError

STOCHASTIC_TOL = 1e-9
# Above this many peers a dense eigendecomposition (O(n^3) time, O(n^2) memory) stops being
# cheap, and ARPACK on the sparse matrix takes over.
DENSE_EIG_MAX_N = 2000
# ARPACK that does not converge falls back to dense while that still fits in memory (~800 MB).
DENSE_FALLBACK_MAX_N = 10_000
_DIAMETER_BLOCK = 256


def _check_n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TopologyError(f"n must be an integer, got {n!r}")
    if n < 2:
        raise TopologyError(f"a topology needs at least 2 peers (n = {n})")
    return int(n)


def _normalise_edges(
    n: int, edges: Iterable[tuple[int, int]], directed: bool
) -> tuple[tuple[int, int], ...]:
    seen: set[tuple[int, int]] = set()
    for edge in edges:
        try:
            i, j = edge
        except (TypeError, ValueError):
            raise TopologyError(f"an edge must be a pair of peer ids, got {edge!r}") from None
        for peer in (i, j):
            if isinstance(peer, bool) or not isinstance(peer, int | np.integer):
                raise TopologyError(f"peer ids must be integers, got {peer!r} in edge {edge!r}")
            if not 0 <= peer < n:
                raise TopologyError(f"unknown peer id {peer} (n = {n})")
        i, j = int(i), int(j)
        if i == j:
            raise TopologyError(f"self-loop at peer {i}")
        seen.add((i, j) if directed or i < j else (j, i))
    return tuple(sorted(seen))


def _adjacency(n: int, edges: tuple[tuple[int, int], ...]) -> Any:
    """Sparse 0/1 matrix with A[src, dst] = 1 for every edge (one direction only)."""
    if not edges:
        return sp.csr_matrix((n, n), dtype=np.float64)
    arr = np.asarray(edges, dtype=np.int64)
    data = np.ones(len(arr), dtype=np.float64)
    return sp.csr_matrix((data, (arr[:, 0], arr[:, 1])), shape=(n, n))


def _components(n: int, edges: tuple[tuple[int, int], ...], directed: bool) -> int:
    adjacency = _adjacency(n, edges)
    count, _ = csgraph.connected_components(
        adjacency, directed=directed, connection="strong" if directed else "weak"
    )
    return int(count)


def metropolis_hastings(n: int, edges: tuple[tuple[int, int], ...]) -> Any:
    """Symmetric, doubly stochastic MH weights for an undirected edge list (i < j)."""
    arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    degree = np.bincount(arr.ravel(), minlength=n)
    w = 1.0 / (1.0 + np.maximum(degree[arr[:, 0]], degree[arr[:, 1]]))
    rows = np.concatenate([arr[:, 0], arr[:, 1]])
    cols = np.concatenate([arr[:, 1], arr[:, 0]])
    off = np.concatenate([w, w])
    diagonal = 1.0 - np.bincount(rows, weights=off, minlength=n)
    idx = np.arange(n)
    return _csr(
        np.concatenate([off, diagonal]),
        np.concatenate([rows, idx]),
        np.concatenate([cols, idx]),
        n,
    )


def push_weights(n: int, edges: tuple[tuple[int, int], ...]) -> Any:
    """Column-stochastic push weights for a directed edge list (src, dst)."""
    arr = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    share = 1.0 / (1.0 + np.bincount(arr[:, 0], minlength=n))
    idx = np.arange(n)
    return _csr(
        np.concatenate([share[arr[:, 0]], share]),
        np.concatenate([arr[:, 1], idx]),
        np.concatenate([arr[:, 0], idx]),
        n,
    )


def _csr(data: np.ndarray, rows: np.ndarray, cols: np.ndarray, n: int) -> Any:
    matrix = sp.csr_matrix((data.astype(np.float64), (rows, cols)), shape=(n, n))
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _freeze(matrix: Any) -> Any:
    # A Topology is shared by every peer of a run; a protocol that scaled W in place would
    # silently change everybody's weights, so the arrays are made read-only instead.
    for array in (matrix.data, matrix.indices, matrix.indptr):
        array.flags.writeable = False
    return matrix


def _is_symmetric(matrix: Any, tol: float = 1e-12) -> bool:
    diff = abs(matrix - matrix.T)
    return bool(diff.nnz == 0 or diff.max() <= tol)


def _arpack_start(n: int) -> np.ndarray:
    # ARPACK otherwise draws its start vector from its own global RNG; a fixed seeded
    # vector keeps the result (and this module) deterministic.
    return np.random.default_rng(np.random.SeedSequence([2004, n])).standard_normal(n)


def second_largest_modulus(
    matrix: Any, *, symmetric: bool | None = None, dense_max_n: int = DENSE_EIG_MAX_N
) -> float:
    """SLEM: the second-largest modulus among the eigenvalues of a stochastic matrix.

    Dense up to ``dense_max_n`` peers. Above it, a symmetric (hence doubly stochastic) W is
    deflated to W - (1/n) 11^T, whose largest modulus is the SLEM, and handed to ARPACK as a
    LinearOperator (never formed densely); a non-symmetric W asks ARPACK for its two
    largest-modulus eigenvalues.
    """
    n = matrix.shape[0]
    if symmetric is None:
        symmetric = _is_symmetric(matrix)
    if n <= dense_max_n:
        return _dense_slem(matrix, symmetric)
    csr = sp.csr_matrix(matrix, dtype=np.float64)
    try:
        if symmetric:

            def deflated(x: np.ndarray) -> np.ndarray:
                x = np.asarray(x, dtype=np.float64).reshape(n, -1)
                return np.asarray(csr @ x - x.mean(axis=0, keepdims=True))

            operator = splinalg.LinearOperator(
                (n, n), matvec=deflated, matmat=deflated, dtype=np.float64
            )
            values = splinalg.eigsh(
                operator, k=1, which="LM", v0=_arpack_start(n), return_eigenvectors=False
            )
            return float(np.abs(values).max())
        values = splinalg.eigs(csr, k=2, which="LM", v0=_arpack_start(n), return_eigenvectors=False)
        moduli = np.sort(np.abs(values))[::-1]
        return float(moduli[1])
    except splinalg.ArpackNoConvergence:
        if n > DENSE_FALLBACK_MAX_N:
            raise TopologyError(
                f"ARPACK did not converge on the spectral gap of a {n}-peer graph"
            ) from None
        return _dense_slem(csr, symmetric)


def _dense_slem(matrix: Any, symmetric: bool) -> float:
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64)
    values = np.linalg.eigvalsh(dense) if symmetric else np.linalg.eigvals(dense)
    moduli = np.sort(np.abs(values))[::-1]
    return float(min(1.0, moduli[1]))


class Topology:
    """An immutable graph on peers 0..n-1 with its mixing matrix.

    ``edges`` are (i, j) pairs; directed edges point from sender i to receiver j. Duplicates
    are merged. Raises :class:`~p2pfed.errors.TopologyError` for fewer than two peers,
    self-loops, unknown peer ids, or a graph that is not (strongly) connected.
    """

    __slots__ = (
        "_diameter",
        "_directed",
        "_edges",
        "_gap",
        "_in",
        "_mixing",
        "_n",
        "_name",
        "_out",
        "_row_cache",
    )

    def __init__(
        self,
        n: int,
        edges: Iterable[tuple[int, int]],
        *,
        directed: bool = False,
        name: str = "custom",
    ) -> None:
        n = _check_n(n)
        normalised = _normalise_edges(n, edges, directed)
        mixing = push_weights(n, normalised) if directed else metropolis_hastings(n, normalised)
        self._setup(n, normalised, directed, name, mixing, require_connected=True)

    @classmethod
    def from_mixing(
        cls,
        mixing: Any,
        *,
        name: str = "custom",
        directed: bool | None = None,
        require_connected: bool = True,
    ) -> Topology:
        """A topology whose weights are given: ``mixing`` is a dense or scipy sparse n x n matrix.

        Every positive off-diagonal ``W[i, j]`` is an edge j -> i. ``directed`` defaults to
        "W is not symmetric"; pass True to keep a symmetric snapshot of a directed schedule
        directed. W must be nonnegative, finite, and row or column stochastic; it is kept as
        given. ``require_connected=False`` admits snapshots of a time-varying schedule that
        are connected only over a period (their spectral gap is 0).
        """
        matrix = sp.csr_matrix(mixing, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise TopologyError(f"a mixing matrix must be square, got shape {matrix.shape}")
        n = _check_n(matrix.shape[0])
        matrix = _csr(*_coo_parts(matrix), n)
        if not np.all(np.isfinite(matrix.data)):
            raise TopologyError("the mixing matrix has non-finite entries")
        if np.any(matrix.data < 0):
            raise TopologyError("the mixing matrix has negative entries")
        row_ok = np.allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=STOCHASTIC_TOL)
        col_ok = np.allclose(np.asarray(matrix.sum(axis=0)).ravel(), 1.0, atol=STOCHASTIC_TOL)
        if not (row_ok or col_ok):
            raise TopologyError("the mixing matrix is neither row nor column stochastic")
        if directed is None:
            directed = not _is_symmetric(matrix)
        coo = matrix.tocoo()
        off = coo.row != coo.col
        # W[i, j] > 0 means i receives from j, i.e. the edge j -> i.
        pairs = zip(coo.col[off].tolist(), coo.row[off].tolist(), strict=True)
        if directed:
            edges = tuple(sorted(set(pairs)))
        else:
            if not _is_symmetric(matrix):
                raise TopologyError("directed=False needs a symmetric mixing matrix")
            edges = tuple(sorted({(min(a, b), max(a, b)) for a, b in pairs}))
        topology = cls.__new__(cls)
        topology._setup(n, edges, directed, name, matrix, require_connected=require_connected)
        return topology

    def _setup(
        self,
        n: int,
        edges: tuple[tuple[int, int], ...],
        directed: bool,
        name: str,
        mixing: Any,
        *,
        require_connected: bool,
    ) -> None:
        if require_connected:
            components = _components(n, edges, directed)
            if components > 1:
                what = "not strongly connected" if directed else "disconnected"
                kind = "strongly connected components" if directed else "connected components"
                raise TopologyError(f"{name}: graph is {what}: {components} {kind}")
        out: list[list[int]] = [[] for _ in range(n)]
        into: list[list[int]] = [[] for _ in range(n)]
        for i, j in edges:
            out[i].append(j)
            into[j].append(i)
            if not directed:
                out[j].append(i)
                into[i].append(j)
        self._n = n
        self._edges = edges
        self._directed = bool(directed)
        self._name = name
        self._mixing = _freeze(mixing)
        self._out = tuple(tuple(sorted(peers)) for peers in out)
        self._in = tuple(tuple(sorted(peers)) for peers in into)
        self._gap: float | None = None
        self._diameter: int | None = None
        self._row_cache: dict[int, dict[int, float]] = {}  # weight() rows, built on demand

    def __getstate__(self) -> dict[str, Any]:
        state = {slot: getattr(self, slot) for slot in self.__slots__}
        state["_row_cache"] = {}  # a cache: not worth shipping
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Ray ships topologies to actors by pickling; numpy does not keep the read-only flag.
        for slot, value in state.items():
            object.__setattr__(self, slot, value)
        _freeze(self._mixing)

    # -- identity -----------------------------------------------------------------------

    @property
    def n(self) -> int:
        return self._n

    @property
    def directed(self) -> bool:
        return self._directed

    @property
    def name(self) -> str:
        return self._name

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Sorted (i, j) pairs; i < j when undirected, sender -> receiver when directed."""
        return self._edges

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topology):
            return NotImplemented
        return (
            self._n == other._n
            and self._directed == other._directed
            and self._name == other._name
            and self._edges == other._edges
            and (self._mixing != other._mixing).nnz == 0
        )

    def __hash__(self) -> int:
        return hash((self._n, self._directed, self._name, self._edges))

    def __repr__(self) -> str:
        kind = "directed" if self._directed else "undirected"
        return f"Topology({self._name}, n={self._n}, {len(self._edges)} {kind} edges)"

    # -- neighbourhoods -----------------------------------------------------------------

    def _peer(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer) or not 0 <= i < self._n:
            raise TopologyError(f"unknown peer id {i} (n = {self._n})")
        return int(i)

    def out_neighbours(self, i: int) -> tuple[int, ...]:
        """The peers i sends to."""
        return self._out[self._peer(i)]

    def in_neighbours(self, i: int) -> tuple[int, ...]:
        """The peers i receives from."""
        return self._in[self._peer(i)]

    def neighbours(self, i: int) -> tuple[int, ...]:
        """Every peer i talks to, in either direction."""
        i = self._peer(i)
        if not self._directed:
            return self._out[i]
        return tuple(sorted(set(self._out[i]) | set(self._in[i])))

    # -- weights ------------------------------------------------------------------------

    @property
    def mixing(self) -> Any:
        """W as a read-only scipy.sparse.csr_matrix (n x n, float64); x_i <- sum_j W[i, j] x_j."""
        return self._mixing

    def weight(self, i: int, j: int) -> float:
        """W[i, j]: the share of j's value that i takes in one step."""
        row = self._row_cache.get(i)
        if row is None:
            i = self._peer(i)
            start, stop = self._mixing.indptr[i], self._mixing.indptr[i + 1]
            columns = self._mixing.indices[start:stop].tolist()
            row = dict(zip(columns, self._mixing.data[start:stop].tolist(), strict=True))
            self._row_cache[i] = row  # protocols ask for the same rows every round
        return row.get(self._peer(j), 0.0)

    def is_doubly_stochastic(self, tol: float = STOCHASTIC_TOL) -> bool:
        rows = np.asarray(self._mixing.sum(axis=1)).ravel()
        cols = np.asarray(self._mixing.sum(axis=0)).ravel()
        return bool(
            np.all(self._mixing.data >= -tol)
            and np.allclose(rows, 1.0, atol=tol, rtol=0.0)
            and np.allclose(cols, 1.0, atol=tol, rtol=0.0)
        )

    @property
    def spectral_gap(self) -> float:
        """1 - SLEM(W); 1 for exact averaging in one step, 0 when consensus is never reached."""
        if self._gap is None:
            symmetric = not self._directed or _is_symmetric(self._mixing)
            self._gap = 1.0 - second_largest_modulus(self._mixing, symmetric=symmetric)
        return self._gap

    # -- graph metrics ------------------------------------------------------------------

    def degree_stats(self) -> tuple[int, float, int]:
        """(min, mean, max) out-degree (the degree, when undirected)."""
        degrees = np.fromiter((len(peers) for peers in self._out), dtype=np.int64, count=self._n)
        return int(degrees.min()), float(degrees.mean()), int(degrees.max())

    @property
    def diameter(self) -> int:
        """The longest shortest path in hops (following edge directions when directed).

        scipy's C breadth-first searches, a block of sources at a time (memory O(block * n)),
        instead of ``networkx.diameter``: 1.7 s instead of 6.5 s on a 4096-peer 4-regular graph.
        """
        if self._diameter is None:
            adjacency = _adjacency(self._n, self._edges)
            longest = 0.0
            for start in range(0, self._n, _DIAMETER_BLOCK):
                hops = csgraph.shortest_path(
                    adjacency,
                    directed=self._directed,
                    unweighted=True,
                    indices=np.arange(start, min(self._n, start + _DIAMETER_BLOCK)),
                )
                longest = max(longest, float(hops.max()))
            if not math.isfinite(longest):
                raise TopologyError(
                    f"{self._name}: graph is not connected: its diameter is infinite"
                )
            self._diameter = int(longest)
        return self._diameter

    def to_networkx(self) -> nx.Graph | nx.DiGraph:
        """A fresh networkx graph; edge attribute ``weight`` is the receiver's W entry."""
        graph: nx.Graph = nx.DiGraph() if self._directed else nx.Graph()
        graph.add_nodes_from(range(self._n))
        graph.add_weighted_edges_from((i, j, self.weight(j, i)) for i, j in self._edges)
        return graph


def _coo_parts(matrix: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    coo = matrix.tocoo()
    return coo.data, coo.row, coo.col
