"""Summaries and pictures of topologies, for reports and ``p2pfed topology`` style commands.

``draw`` renders with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``) and
never imports pyplot, so it neither reads nor changes matplotlib's global backend and works
headless, inside Ray workers included.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import networkx as nx
import numpy as np

from p2pfed.errors import TopologyError
from p2pfed.topology.graph import Topology
from p2pfed.topology.schedule import TopologySchedule

_CIRCULAR_KINDS = frozenset({"ring", "exponential", "one_peer_exponential", "complete"})
_TORUS_SHAPE = re.compile(r"rows=(\d+), cols=(\d+)")
# Spring layouts are random; a fixed seed makes the same graph always look the same.
_LAYOUT_SEED = 0


def describe(schedule: TopologySchedule) -> dict[str, object]:
    """Size, degrees, diameter (of the step-0 graph) and per-step spectral gap of a schedule."""
    first = schedule.at(0)
    degree_min, degree_mean, degree_max = first.degree_stats()
    diameter: int | None
    try:
        diameter = first.diameter
    except TopologyError:
        diameter = None  # a snapshot connected only over a period
    return {
        "name": schedule.name,
        "n": schedule.n,
        "directed": schedule.directed,
        "static": schedule.is_static,
        "degree_min": degree_min,
        "degree_mean": degree_mean,
        "degree_max": degree_max,
        "diameter": diameter,
        "spectral_gap": schedule.spectral_gap,
        "period": schedule.period,
    }


def _format_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def format_description(desc: dict[str, object]) -> str:
    """One aligned ``key: value`` line per entry; floats with 4 decimals."""
    if not desc:
        return ""
    width = max(len(key) for key in desc) + 1
    return "\n".join(f"{key + ':':<{width}} {_format_value(value)}" for key, value in desc.items())


def _kind_of(topology: Topology) -> str:
    # Topologies built from a spec are named "<kind>(...)", snapshots "<kind>(...)@<step>".
    return topology.name.split("(", 1)[0]


def layout(topology: Topology) -> dict[int, Any]:
    """Node positions for drawing: a grid for a torus, a circle for ring-like kinds, a
    shell for a star, a seeded spring layout otherwise."""
    kind = _kind_of(topology)
    graph = topology.to_networkx()
    if kind == "torus":
        match = _TORUS_SHAPE.search(topology.name)
        if match is not None:
            cols = int(match.group(2))
            return {i: np.array([i % cols, -(i // cols)], dtype=float) for i in range(topology.n)}
    if kind in _CIRCULAR_KINDS:
        return dict(nx.circular_layout(graph))
    if kind == "star":
        return dict(nx.shell_layout(graph, nlist=[[0], list(range(1, topology.n))]))
    return dict(nx.spring_layout(graph, seed=_LAYOUT_SEED))


def _wrapped_edges(topology: Topology, pos: dict[int, Any]) -> set[tuple[int, int]]:
    """Torus edges that wrap around the grid (their ends are more than one cell apart)."""
    if _kind_of(topology) != "torus":
        return set()
    return {(i, j) for i, j in topology.edges if float(np.abs(pos[i] - pos[j]).sum()) > 1.0 + 1e-9}


def draw(topology: Topology, path: str | os.PathLike[str], *, title: str | None = None) -> None:
    """Write a PNG of the graph: circular/grid/spring layout, arrows when directed, peer ids
    as labels up to 32 peers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch

    n = topology.n
    pos = layout(topology)
    node_area = 320.0 if n <= 16 else 180.0 if n <= 32 else 60.0
    node_radius_pt = math.sqrt(node_area) / 2

    figure = Figure(figsize=(6.0, 6.0), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot(1, 1, 1)
    edge_alpha = 0.6 if len(topology.edges) <= 4 * n else 0.25

    wrapped = _wrapped_edges(topology, pos)
    edge_set = set(topology.edges)
    straight = []
    for i, j in topology.edges:
        reciprocal = topology.directed and (j, i) in edge_set
        if not topology.directed and (i, j) not in wrapped:
            straight.append((pos[i], pos[j]))
            continue
        # Bend torus wrap-around edges off the grid lines they would hide, and the two arrows
        # of a reciprocal directed pair apart so both stay visible.
        rad = 0.3 if (i, j) in wrapped else 0.15 if reciprocal else 0.0
        ax.add_patch(
            FancyArrowPatch(
                tuple(pos[i]),
                tuple(pos[j]),
                arrowstyle="-|>" if topology.directed else "-",
                mutation_scale=10,
                shrinkA=node_radius_pt,
                shrinkB=node_radius_pt,
                connectionstyle=f"arc3,rad={rad}",
                color="0.3",
                alpha=edge_alpha,
                linewidth=1.0,
            )
        )
    if straight:
        ax.add_collection(LineCollection(straight, colors="0.3", alpha=edge_alpha, linewidths=1.0))

    xy = np.array([pos[i] for i in range(n)])
    ax.scatter(xy[:, 0], xy[:, 1], s=node_area, c="tab:blue", edgecolors="white", zorder=3)
    if n <= 32:
        for i in range(n):
            x, y = float(xy[i, 0]), float(xy[i, 1])
            ax.text(x, y, str(i), ha="center", va="center", fontsize=7, color="w", zorder=4)
    heading = title if title is not None else topology.name
    ax.set_title(f"{heading}\nn = {n}, spectral gap = {topology.spectral_gap:.4f}", fontsize=10)
    ax.set_aspect("equal")
    ax.margins(0.08)
    ax.set_axis_off()
    figure.savefig(os.fspath(path), format="png")
