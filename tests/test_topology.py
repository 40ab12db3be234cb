"""Tests for p2pfed.topology: mixing-matrix invariants, known spectra, schedules, files, errors."""

from __future__ import annotations

import ast
import math
import pickle
import re
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.sparse import csgraph

import p2pfed.topology as topology_pkg
import p2pfed.topology.schedule as schedule_mod
from p2pfed.errors import ConfigError, TopologyError
from p2pfed.topology import (
    OnePeerExponential,
    RandomRegularResampled,
    StaticSchedule,
    Topology,
    TopologySchedule,
    TopologySpec,
    build_schedule,
    build_topology,
    describe,
    draw,
    format_description,
    load_topology_spec,
    topology_spec_from_mapping,
)
from p2pfed.topology.graph import second_largest_modulus

REPO = Path(__file__).resolve().parents[1]
TOPOLOGY_FILES = sorted((REPO / "topologies").glob("*.yaml"))
PACKAGE_DIR = Path(topology_pkg.__file__).parent


# -- independent reference computations ----------------------------------------------------


def reference_gap(w: np.ndarray) -> float:
    moduli = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(1.0 - moduli[1])


def strongly_connected(w: np.ndarray) -> bool:
    """Connectivity of the graph given by W's off-diagonal support, edge j -> i per W[i, j]."""
    adjacency = np.ascontiguousarray((w > 0).T, dtype=float)
    np.fill_diagonal(adjacency, 0.0)
    count, _ = csgraph.connected_components(adjacency, directed=True, connection="strong")
    return count == 1


# -- every static kind ---------------------------------------------------------------------

STATIC_SPECS = [
    TopologySpec(kind="ring", n=16),
    TopologySpec(kind="ring", n=2),
    TopologySpec(kind="ring", n=8, directed=True),
    TopologySpec(kind="torus", n=16),
    TopologySpec(kind="torus", n=12, rows=4),
    TopologySpec(kind="complete", n=8),
    TopologySpec(kind="star", n=16),
    TopologySpec(kind="random_regular", n=16, degree=4, seed=7),
    TopologySpec(kind="random_regular", n=10, degree=3),
    TopologySpec(kind="erdos_renyi", n=32),
    TopologySpec(kind="small_world", n=32),
    TopologySpec(kind="small_world", n=20, degree=6, p=0.0),
    TopologySpec(kind="exponential", n=16),
    TopologySpec(kind="exponential", n=12, directed=True),
    TopologySpec(kind="exponential", n=2),
    TopologySpec(kind="dumbbell", n=16),
    TopologySpec(kind="dumbbell", n=9),
    TopologySpec(kind="edge_list", n=5, edges=[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2)]),
    TopologySpec(
        kind="edge_list", n=4, edges=[(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)], directed=True
    ),
]
STATIC_IDS = [build_topology(spec, seed=11).name for spec in STATIC_SPECS]


@pytest.mark.parametrize("spec", STATIC_SPECS, ids=STATIC_IDS)
def test_static_kind_mixing_invariants(spec: TopologySpec) -> None:
    topo = build_topology(spec, seed=11)
    w = topo.mixing.toarray()
    n = topo.n
    assert w.shape == (n, n)
    assert w.dtype == np.float64
    assert np.all(w >= 0)
    assert np.all(np.diag(w) > 0)  # aperiodic: consensus instead of oscillation
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    if topo.directed:
        assert topo.directed == spec.directed
    else:
        np.testing.assert_array_equal(w, w.T)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
        assert topo.is_doubly_stochastic()
    assert topo.spectral_gap == pytest.approx(reference_gap(w), abs=1e-8)
    assert 0.0 < topo.spectral_gap <= 1.0 + 1e-12
    assert strongly_connected(w)


@pytest.mark.parametrize("spec", STATIC_SPECS, ids=STATIC_IDS)
def test_static_kind_neighbours_match_mixing_support(spec: TopologySpec) -> None:
    topo = build_topology(spec, seed=11)
    w = topo.mixing.toarray()
    off = w.copy()
    np.fill_diagonal(off, 0.0)
    for i in range(topo.n):
        receives_from = tuple(int(j) for j in np.flatnonzero(off[i]))
        sends_to = tuple(int(j) for j in np.flatnonzero(off[:, i]))
        assert topo.in_neighbours(i) == receives_from
        assert topo.out_neighbours(i) == sends_to
        assert topo.neighbours(i) == tuple(sorted(set(receives_from) | set(sends_to)))
        if not topo.directed:
            assert topo.in_neighbours(i) == topo.out_neighbours(i) == topo.neighbours(i)
        for j in range(topo.n):
            assert topo.weight(i, j) == w[i, j]
    arcs = {(int(j), int(i)) for i, j in zip(*np.nonzero(off), strict=True)}
    expected = arcs if topo.directed else {(min(a, b), max(a, b)) for a, b in arcs}
    assert set(topo.edges) == expected
    assert list(topo.edges) == sorted(topo.edges)
    degrees = [len(topo.out_neighbours(i)) for i in range(topo.n)]
    assert topo.degree_stats() == (min(degrees), pytest.approx(np.mean(degrees)), max(degrees))
    arcs_matrix = np.ascontiguousarray((off > 0).T, dtype=float)  # [j, i] = 1 for j -> i
    hops = csgraph.shortest_path(arcs_matrix, directed=True, unweighted=True)
    assert topo.diameter == int(hops.max())
    graph = topo.to_networkx()
    assert graph.is_directed() == topo.directed
    assert graph.number_of_edges() == len(topo.edges)


def test_complete_graph_averages_in_one_step() -> None:
    topo = build_topology(TopologySpec(kind="complete", n=8))
    np.testing.assert_allclose(topo.mixing.toarray(), np.full((8, 8), 1 / 8), atol=1e-15)
    assert topo.spectral_gap == pytest.approx(1.0, abs=1e-12)


def test_ring_metropolis_hastings_gap_closed_form() -> None:
    topo = build_topology(TopologySpec(kind="ring", n=16))
    # MH weights on a ring are 1/3 everywhere: eigenvalues 1/3 + 2/3 cos(2 pi k / n).
    np.testing.assert_allclose(topo.mixing.diagonal(), 1 / 3)
    expected = 1.0 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 16))
    assert topo.spectral_gap == pytest.approx(expected, abs=1e-12)


def test_directed_ring_push_weights_gap_closed_form() -> None:
    topo = build_topology(TopologySpec(kind="ring", n=8, directed=True))
    assert topo.out_neighbours(7) == (0,)
    assert topo.weight(0, 7) == topo.weight(7, 7) == 0.5
    # W = (I + P) / 2 has eigenvalues (1 + e^{2 pi i k / n}) / 2 of modulus |cos(pi k / n)|.
    assert topo.spectral_gap == pytest.approx(1.0 - math.cos(math.pi / 8), abs=1e-12)


def test_star_metropolis_hastings_weights() -> None:
    topo = build_topology(TopologySpec(kind="star", n=16))
    assert topo.neighbours(0) == tuple(range(1, 16))
    assert topo.weight(0, 5) == topo.weight(5, 0) == 1 / 16
    assert topo.weight(5, 5) == pytest.approx(15 / 16)
    assert topo.weight(0, 0) == pytest.approx(1 / 16)


def test_generator_shapes() -> None:
    torus = build_topology(TopologySpec(kind="torus", n=12))
    assert torus.name == "torus(n=12, rows=3, cols=4)"
    assert torus.degree_stats() == (4, 4.0, 4)
    assert torus.neighbours(0) == (1, 3, 4, 8)  # row-major ids, wrapping both ways
    exp = build_topology(TopologySpec(kind="exponential", n=16))
    assert exp.neighbours(0) == (1, 2, 4, 8, 12, 14, 15)
    dexp = build_topology(TopologySpec(kind="exponential", n=16, directed=True))
    assert dexp.out_neighbours(3) == (4, 5, 7, 11)
    assert dexp.in_neighbours(3) == (1, 2, 11, 15)
    for n in (16, 9):
        bell = build_topology(TopologySpec(kind="dumbbell", n=n)).to_networkx()
        left, right = n // 2, n - n // 2
        assert bell.number_of_edges() == math.comb(left, 2) + math.comb(right, 2) + 1
        assert list(nx.bridges(bell)) == [(left - 1, left)]


def test_names() -> None:
    assert build_topology(TopologySpec(kind="ring", n=16)).name == "ring(n=16)"
    spec = TopologySpec(kind="random_regular", n=16, degree=4)
    assert build_topology(spec).name == "random_regular(n=16, degree=4)"
    assert build_topology(TopologySpec(kind="ring", n=8, directed=True)).name == (
        "ring(n=8, directed)"
    )


# -- randomness: seeded and reproducible -----------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        TopologySpec(kind="random_regular", n=20, degree=3),
        TopologySpec(kind="erdos_renyi", n=20),
        TopologySpec(kind="small_world", n=20, p=0.5),
    ],
    ids=lambda s: s.kind,
)
def test_random_kinds_follow_the_seed(spec: TopologySpec) -> None:
    assert build_topology(spec, seed=3) == build_topology(spec, seed=3)
    assert build_topology(spec, seed=3).edges != build_topology(spec, seed=4).edges
    pinned = spec.model_copy(update={"seed": 3})
    assert build_topology(pinned, seed=99) == build_topology(spec, seed=3)
    # The resolved spec (what a run saves) rebuilds the same graph whatever the run seed.
    assert build_topology(spec.resolved(3), seed=12345) == build_topology(spec, seed=3)


def test_erdos_renyi_with_tiny_p_is_forced_connected() -> None:
    spec = TopologySpec(kind="erdos_renyi", n=40, p=0.01, seed=1)
    topo = build_topology(spec)
    assert strongly_connected(topo.mixing.toarray())
    assert len(topo.edges) >= topo.n - 1
    assert topo == build_topology(spec)


def test_resolved_fills_defaults() -> None:
    er = TopologySpec(kind="erdos_renyi", n=32).resolved(5)
    assert er.p == pytest.approx(2 * math.log(32) / 32)
    assert er.seed == 5
    assert TopologySpec(kind="torus", n=18).resolved() == TopologySpec(
        kind="torus", n=18, rows=3, cols=6
    )
    sw = TopologySpec(kind="small_world", n=10).resolved(1)
    assert (sw.degree, sw.p, sw.seed) == (4, 0.1, 1)
    assert TopologySpec(kind="ring").resolved(5).seed is None


# -- Topology construction errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "edges", "directed", "match"),
    [
        (4, [(0, 1), (1, 2), (2, 3), (3, 3)], False, r"self-loop at peer 3"),
        (16, [(0, 1), (1, 17)], False, r"unknown peer id 17 \(n = 16\)"),
        (4, [(0, -1)], False, r"unknown peer id -1"),
        (4, [(0, 1), (2, 3)], False, r"disconnected: 2 connected components"),
        (5, [(0, 1), (1, 2)], False, r"3 connected components"),
        (3, [(0, 1), (1, 2)], True, r"not strongly connected: 3 strongly connected"),
        (1, [], False, r"at least 2 peers"),
        (3, [(0, 1, 2)], False, r"pair of peer ids"),
    ],
)
def test_topology_rejects_bad_graphs(
    n: int, edges: list[tuple[int, int]], directed: bool, match: str
) -> None:
    with pytest.raises(TopologyError, match=match):
        Topology(n, edges, directed=directed)


def test_topology_merges_duplicates_and_is_read_only() -> None:
    topo = Topology(3, [(0, 1), (1, 0), (1, 2), (1, 2)])
    assert topo.edges == ((0, 1), (1, 2))
    assert topo == Topology(3, [(1, 2), (0, 1)])
    assert hash(topo) == hash(Topology(3, [(1, 2), (0, 1)]))
    with pytest.raises(ValueError):
        topo.mixing.data[0] = 5.0
    with pytest.raises(AttributeError):
        topo.n = 4  # type: ignore[misc]
    with pytest.raises(TopologyError, match="unknown peer id 3"):
        topo.weight(0, 3)
    with pytest.raises(TopologyError, match="unknown peer id"):
        topo.out_neighbours(-1)


@pytest.mark.parametrize(
    "schedule",
    [
        StaticSchedule(build_topology(TopologySpec(kind="torus", n=9))),
        OnePeerExponential(8),
        RandomRegularResampled(12, 3, seed=4),
    ],
    ids=lambda s: s.name,
)
def test_schedules_survive_pickling(schedule: TopologySchedule) -> None:
    # Ray ships schedules to PeerHost actors by pickling them.
    gap = schedule.at(3).spectral_gap  # cached before pickling
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy.at(3) == schedule.at(3)
    assert copy.at(3).spectral_gap == gap
    with pytest.raises(ValueError):
        copy.at(3).mixing.data[0] = 2.0


def test_directed_neighbourhoods() -> None:
    topo = Topology(3, [(0, 1), (1, 2), (2, 0), (0, 2)], directed=True)
    assert topo.out_neighbours(0) == (1, 2)
    assert topo.in_neighbours(0) == (2,)
    assert topo.neighbours(0) == (1, 2)
    assert topo.weight(1, 0) == topo.weight(2, 0) == topo.weight(0, 0) == pytest.approx(1 / 3)
    assert not topo.is_doubly_stochastic()


def test_from_mixing() -> None:
    w = np.array([[0.5, 0.0, 0.5], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    topo = Topology.from_mixing(w, name="tri")
    assert topo.directed
    assert topo.edges == ((0, 1), (1, 2), (2, 0))
    np.testing.assert_array_equal(topo.mixing.toarray(), w)
    assert topo.is_doubly_stochastic()
    sym = Topology.from_mixing(np.full((3, 3), 1 / 3))
    assert not sym.directed
    assert sym.edges == ((0, 1), (0, 2), (1, 2))
    assert Topology.from_mixing(np.full((3, 3), 1 / 3), directed=True).edges == (
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 1),
    )
    with pytest.raises(TopologyError, match="negative"):
        Topology.from_mixing(np.array([[1.5, -0.5], [-0.5, 1.5]]))
    with pytest.raises(TopologyError, match="stochastic"):
        Topology.from_mixing(np.array([[0.9, 0.3], [0.3, 0.9]]))
    with pytest.raises(TopologyError, match="disconnected: 3 connected components"):
        Topology.from_mixing(np.eye(3))
    cut = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(TopologyError, match="not strongly connected"):
        Topology.from_mixing(cut)


def test_sparse_spectral_path_matches_dense() -> None:
    for spec in (
        TopologySpec(kind="random_regular", n=200, degree=4, seed=1),
        TopologySpec(kind="exponential", n=200, directed=True),
    ):
        topo = build_topology(spec)
        dense = second_largest_modulus(topo.mixing)
        sparse = second_largest_modulus(topo.mixing, dense_max_n=0)
        assert sparse == pytest.approx(dense, abs=1e-8)


# -- properties over random graphs ----------------------------------------------------------


@st.composite
def connected_graphs(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    """A random labelled tree on n peers plus random extra edges: always connected."""
    n = draw(st.integers(min_value=2, max_value=30))
    labels = draw(st.permutations(range(n)))
    edges = [(labels[i], labels[draw(st.integers(0, i - 1))]) for i in range(1, n)]
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=2 * n))
    edges += [(i, j) for i, j in extra if i != j]
    return n, edges


@settings(max_examples=80, deadline=None)
@given(graph=connected_graphs(), seed=st.integers(0, 2**32 - 1))
def test_metropolis_hastings_property(graph: tuple[int, list[tuple[int, int]]], seed: int) -> None:
    n, edges = graph
    topo = Topology(n, edges)
    w = topo.mixing.toarray()
    assert np.all(w >= 0)
    np.testing.assert_array_equal(w, w.T)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert topo.is_doubly_stochastic()
    gap = topo.spectral_gap
    assert 0.0 < gap <= 1.0 + 1e-12
    x = np.random.default_rng(seed).standard_normal(n)
    mean = x.mean()
    deviation = np.linalg.norm(x - mean)
    for step in range(1, 31):
        x = w @ x
        assert x.mean() == pytest.approx(mean, abs=1e-9)
        # For symmetric W the contraction on the mean-free subspace is exactly the SLEM.
        bound = (1.0 - gap) ** step * deviation
        assert np.linalg.norm(x - mean) <= bound * (1 + 1e-9) + 1e-12


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(2, 25),
    data=st.data(),
)
def test_push_weights_conserve_mass(n: int, data: st.DataObject) -> None:
    order = data.draw(st.permutations(range(n)))
    cycle = [(order[k], order[(k + 1) % n]) for k in range(n)]
    extra = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1))))
    topo = Topology(n, cycle + [(i, j) for i, j in extra if i != j], directed=True)
    w = topo.mixing.toarray()
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    x = np.arange(1.0, n + 1.0)
    for _ in range(10):
        x = w @ x
    assert x.sum() == pytest.approx(n * (n + 1) / 2, rel=1e-12)
    assert 0.0 < topo.spectral_gap <= 1.0 + 1e-12


# -- schedules ------------------------------------------------------------------------------


def test_static_schedule() -> None:
    topo = build_topology(TopologySpec(kind="torus", n=9))
    schedule = StaticSchedule(topo)
    assert isinstance(schedule, TopologySchedule)
    assert schedule.at(0) is topo and schedule.at(1000) is topo
    assert schedule.is_static and schedule.period == 1
    assert schedule.spectral_gap == topo.spectral_gap
    assert (schedule.n, schedule.name, schedule.directed) == (9, topo.name, False)
    with pytest.raises(TopologyError, match="step"):
        schedule.at(-1)


def test_one_peer_exponential_power_of_two_averages_exactly() -> None:
    schedule = build_schedule(TopologySpec(kind="one_peer_exponential", n=16))
    assert isinstance(schedule, OnePeerExponential)
    assert isinstance(schedule, TopologySchedule)
    assert schedule.period == 4 and schedule.directed and not schedule.is_static
    product = np.eye(16)
    for k in range(4):
        snapshot = schedule.at(k)
        assert snapshot.directed
        assert snapshot.is_doubly_stochastic()
        for i in range(16):
            assert snapshot.out_neighbours(i) == ((i + 2**k) % 16,)
            assert snapshot.weight(i, i) == 0.5
            assert snapshot.weight(i, (i - 2**k) % 16) == 0.5
        assert schedule.at(k + 4) is snapshot
        product = snapshot.mixing.toarray() @ product
    np.testing.assert_allclose(product, np.full((16, 16), 1 / 16), atol=1e-15)
    assert schedule.spectral_gap == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(TopologyError):
        schedule.at(-1)
    # Hop 2 splits even and odd peers: one snapshot alone never reaches consensus.
    assert schedule.at(1).spectral_gap == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(TopologyError, match="not connected"):
        _ = schedule.at(1).diameter
    assert describe(schedule)["diameter"] == 15  # of the step-0 graph, a directed ring


def test_one_peer_exponential_other_sizes() -> None:
    schedule = OnePeerExponential(12)
    assert schedule.period == 4
    product = np.eye(12)
    for k in range(4):
        w = schedule.at(k).mixing.toarray()
        np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-15)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)
        product = w @ product
    slem = np.sort(np.abs(np.linalg.eigvals(product)))[-2]
    assert 0.0 < schedule.spectral_gap < 1.0
    assert schedule.spectral_gap == pytest.approx(1.0 - slem**0.25, abs=1e-10)
    for n in (3, 20, 100, 128):
        other = OnePeerExponential(n)
        tau = other.period
        assert tau == math.ceil(math.log2(n))
        product = np.eye(n)
        for k in range(tau):
            product = other.at(k).mixing.toarray() @ product
        slem = np.sort(np.abs(np.linalg.eigvals(product)))[-2]
        expected = 1.0 if slem < 1e-12 else 1.0 - slem ** (1 / tau)
        assert other.spectral_gap == pytest.approx(expected, abs=1e-9)
    two = OnePeerExponential(2)
    assert two.period == 1 and two.at(0).directed and two.at(0).edges == ((0, 1), (1, 0))
    with pytest.raises(TopologyError):
        OnePeerExponential(1)


def test_random_regular_dynamic() -> None:
    spec = TopologySpec(kind="random_regular_dynamic", n=16, degree=4)
    schedule = build_schedule(spec, seed=5)
    again = build_schedule(spec, seed=5)
    assert isinstance(schedule, RandomRegularResampled)
    assert schedule.period is None and not schedule.is_static and not schedule.directed
    assert schedule.at(0).edges != schedule.at(1).edges
    assert schedule.at(3) == again.at(3)
    assert schedule.at(3).edges == again.at(3).edges
    assert build_schedule(spec, seed=6).at(3).edges != schedule.at(3).edges
    assert schedule.at(2) is schedule.at(2)
    for step in range(6):
        topo = schedule.at(step)
        assert topo.degree_stats() == (4, 4.0, 4)
        assert strongly_connected(topo.mixing.toarray())
        assert topo.is_doubly_stochastic()
    gaps = [RandomRegularResampled(16, 4, 5).at(k).spectral_gap for k in range(8)]
    assert schedule.spectral_gap == pytest.approx(float(np.mean(gaps)), abs=1e-12)
    pinned = spec.model_copy(update={"seed": 9})
    assert build_schedule(pinned, seed=1).at(0) == RandomRegularResampled(16, 4, 9).at(0)
    with pytest.raises(TopologyError, match="regular"):
        RandomRegularResampled(15, 3, 0)


def test_resampled_schedule_builds_each_step_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Asynchronous peers ask for steps far apart and out of order; a bounded cache rebuilt
    # the same graphs again and again (1953 builds for 20 distinct steps in one review run).
    builds: list[int] = []
    real = schedule_mod.random_regular_graph

    def counting(n: int, degree: int, seed: list[int]) -> nx.Graph:
        builds.append(seed[1])
        return real(n, degree, seed)

    monkeypatch.setattr(schedule_mod, "random_regular_graph", counting)
    schedule = RandomRegularResampled(12, 3, seed=7)
    steps = list(range(20))
    order = [step for rep in range(5) for step in np.random.default_rng(rep).permutation(steps)]
    graphs = {step: schedule.at(step) for step in order}
    assert sorted(builds) == steps  # each step built exactly once, whatever the order
    for step in order:  # and later asks return the kept graph
        assert schedule.at(step) is graphs[step]
    assert len(builds) == len(steps)
    fresh = RandomRegularResampled(12, 3, seed=7)  # deterministic: order does not matter
    assert all(fresh.at(step) == graphs[step] for step in reversed(steps))
    copy = pickle.loads(pickle.dumps(schedule))
    assert all(copy.at(step) == graphs[step] for step in steps)


def test_build_topology_rejects_dynamic_kinds() -> None:
    with pytest.raises(TopologyError, match="build_schedule"):
        build_topology(TopologySpec(kind="one_peer_exponential", n=8))
    with pytest.raises(TopologyError, match="seed"):
        build_topology(TopologySpec(kind="ring"), seed=-1)


# -- spec validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "random_regular", "n": 16, "degree": 16}, r"degree \(16\) must be less than n"),
        ({"kind": "random_regular", "n": 15, "degree": 3}, r"n \* degree must be even"),
        ({"kind": "random_regular", "n": 16}, r"kind random_regular needs degree"),
        ({"kind": "random_regular_dynamic", "n": 16, "degree": 0}, r"degree \(0\) must be at"),
        ({"kind": "ring", "edges": [(0, 1)]}, r"edges are only allowed with kind edge_list"),
        ({"kind": "ring", "colour": "red"}, r"[Ee]xtra inputs"),
        ({"kind": "ring", "n": 1}, r"n \(1\) must be at least 2"),
        ({"kind": "dumbbell", "n": 3}, r"at least 4"),
        ({"kind": "torus", "n": 10}, r"rows \* cols"),
        ({"kind": "torus", "n": 16, "rows": 5}, r"rows \(5\) must divide n"),
        ({"kind": "torus", "n": 16, "rows": 4, "cols": 3}, r"cols \(3\) must divide n"),
        ({"kind": "torus", "n": 18, "rows": 3, "cols": 3}, r"must divide|must equal"),
        ({"kind": "erdos_renyi", "p": 0.0}, r"0 < p <= 1"),
        ({"kind": "small_world", "p": 1.5}, r"0 <= p <= 1"),
        ({"kind": "small_world", "n": 4}, r"degree \(4\) must be less than n \(4\)"),
        ({"kind": "small_world", "n": 10, "degree": 3}, r"even"),
        ({"kind": "complete", "directed": True}, r"directed is only allowed"),
        ({"kind": "ring", "degree": 2}, r"degree is only used"),
        ({"kind": "complete", "p": 0.5}, r"p is only used"),
        ({"kind": "ring", "seed": 3}, r"seed is only used"),
        ({"kind": "random_regular", "degree": 4, "seed": -1}, r"seed \(-1\)"),
        ({"kind": "edge_list", "edges": [(0, 1)]}, r"needs n"),
        ({"kind": "edge_list", "n": 3}, r"needs edges"),
        ({"kind": "edge_list", "n": 3, "edges": [(0, 3)]}, r"outside 0..2"),
        ({"kind": "edge_list", "n": 3, "edges": [(1, 1)]}, r"self-loop"),
        ({"kind": "ring", "n": True}, r"integer"),
        ({"kind": "hypercube"}, r"Input should be"),
    ],
)
def test_spec_validation(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        TopologySpec.model_validate(fields)


def test_spec_is_frozen_and_hashable() -> None:
    spec = TopologySpec(kind="edge_list", n=3, edges=[(0, 1), (1, 2)])
    assert spec.edges == ((0, 1), (1, 2))
    assert hash(spec) == hash(TopologySpec(kind="edge_list", n=3, edges=[[0, 1], [1, 2]]))
    with pytest.raises(ValidationError):
        spec.n = 4  # type: ignore[misc]
    assert TopologySpec().kind == "ring" and TopologySpec().n == 16
    assert TopologySpec(kind="small_world", p=0.0).p == 0.0
    assert TopologySpec(kind="one_peer_exponential", directed=True).directed


# -- files ----------------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_topology_spec(path)
    assert str(path) in str(info.value)
    assert info.value.source == str(path)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("kind: ring\nn: 8\ncolour: red\n")
    with pytest.raises(ConfigError) as info:
        load_topology_spec(path)
    assert str(path) in str(info.value)
    assert "colour" in str(info.value)
    assert info.value.key == "colour"
    assert "unknown key" in str(info.value)


@pytest.mark.parametrize(
    ("text", "key", "match"),
    [
        ("kind: random_regular\nn: 16\ndegree: 16\n", "degree", r"^[^V]*degree \(16\) must be"),
        ("kind: torus\nn: 16\nrows: 5\n", "rows", r"rows \(5\)"),
        ("kind: edge_list\nn: 3\nedges: [[0, 1], [1, x]]\n", "edges.1.1", r"integer"),
        ("kind: [ring\n", None, r"not valid YAML at line \d+"),
        ("- ring\n- 16\n", None, r"expected a mapping .* got list"),
        ("", None, r"got nothing"),
        ("kind: ring\nkind: star\n", None, r"duplicate key 'kind'"),
        ("kind: edge_list\nedges: [[0, 1]]\n", None, r"needs n"),
    ],
)
def test_bad_files_are_config_errors(
    tmp_path: Path, text: str, key: str | None, match: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_topology_spec(path)
    assert info.value.key == key
    assert info.value.source == str(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "Value error" not in message
    assert re.search(match, message.removeprefix(f"{path}: ")), message


def test_spec_from_mapping_keeps_raw_key() -> None:
    spec = topology_spec_from_mapping({"kind": "torus", "n": 9})
    assert spec == TopologySpec(kind="torus", n=9)
    with pytest.raises(ConfigError) as info:
        topology_spec_from_mapping({"kind": "torus", "n": 16, "rows": 5}, source="exp.yaml")
    assert info.value.key == "rows"
    assert str(info.value).startswith("exp.yaml: rows: ")
    with pytest.raises(ConfigError, match="expected a mapping"):
        topology_spec_from_mapping([1, 2], source=None)  # type: ignore[arg-type]


def test_topology_files_exist() -> None:
    names = {path.name for path in TOPOLOGY_FILES}
    assert len(names) >= 10
    assert {"ring16.yaml", "one_peer_exponential16.yaml", "edge_list6.yaml"} <= names


@pytest.mark.parametrize("path", TOPOLOGY_FILES, ids=lambda p: p.name)
def test_topology_file_loads_builds_and_describes(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("#")
    spec = load_topology_spec(path)
    schedule = build_schedule(spec, seed=0)
    assert schedule.n == spec.n
    desc = describe(schedule)
    assert set(desc) == {
        "name",
        "n",
        "directed",
        "static",
        "degree_min",
        "degree_mean",
        "degree_max",
        "diameter",
        "spectral_gap",
        "period",
    }
    assert desc["n"] == spec.n
    assert desc["static"] == spec.is_static
    assert desc["directed"] == (spec.directed or spec.kind == "one_peer_exponential")
    gap = desc["spectral_gap"]
    assert isinstance(gap, float) and 0.0 < gap <= 1.0 + 1e-12
    d_min, d_mean, d_max = desc["degree_min"], desc["degree_mean"], desc["degree_max"]
    assert isinstance(d_min, int) and isinstance(d_mean, float) and isinstance(d_max, int)
    assert 1 <= d_min <= d_mean <= d_max < spec.n
    diameter = desc["diameter"]
    assert isinstance(diameter, int) and 1 <= diameter < spec.n
    text = format_description(desc)
    lines = text.splitlines()
    assert len(lines) == len(desc)
    value_columns = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines}
    assert len(value_columns) == 1  # aligned
    assert f"{gap:.4f}" in text


def test_format_description() -> None:
    text = format_description({"name": "x", "spectral_gap": 0.123456, "period": None, "ok": True})
    assert text.splitlines() == [
        "name:         x",
        "spectral_gap: 0.1235",
        "period:       -",
        "ok:           yes",
    ]


@pytest.mark.parametrize(
    "topo",
    [
        build_topology(TopologySpec(kind="torus", n=16)),
        build_topology(TopologySpec(kind="exponential", n=8, directed=True)),
        OnePeerExponential(8).at(1),
        build_topology(TopologySpec(kind="erdos_renyi", n=64)),
    ],
    ids=lambda t: t.name,
)
def test_draw_writes_png(tmp_path: Path, topo: Topology) -> None:
    path = tmp_path / "graph.png"
    draw(topo, path, title="test")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000


# -- purity and API -------------------------------------------------------------------------


def test_topology_package_is_pure() -> None:
    forbidden = {"ray", "time", "datetime", "random"}
    sources = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        text = source.read_text()
        assert "import ray" not in text and "import time" not in text
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & forbidden, f"{source.name} imports {roots & forbidden}"
        # Legacy global-state numpy RNG calls: every draw must take an explicit generator.
        assert not re.search(r"np\.random\.(seed|rand|randn|randint|choice|shuffle)\(", text)


def test_public_api() -> None:
    assert sorted(topology_pkg.__all__) == sorted(
        [
            "OnePeerExponential",
            "RandomRegularResampled",
            "StaticSchedule",
            "Topology",
            "TopologySchedule",
            "TopologySpec",
            "build_schedule",
            "build_topology",
            "describe",
            "draw",
            "format_description",
            "load_topology_spec",
            "topology_spec_from_mapping",
        ]
    )
    for name in topology_pkg.__all__:
        assert getattr(topology_pkg, name) is not None
