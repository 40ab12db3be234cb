"""Communication graphs for decentralised learning: who talks to whom, with which weights.

A :class:`TopologySpec` (from a YAML file or an experiment config) describes a graph;
:func:`build_topology` turns a static one into a :class:`Topology` (edges + mixing matrix W,
``x_i <- sum_j W[i, j] x_j``) and :func:`build_schedule` turns any spec into a
:class:`TopologySchedule` that gives the graph of each round. Pure: no Ray, no wall clock,
every random graph drawn from an explicit seed.
"""

from p2pfed.topology.generators import build_topology
from p2pfed.topology.graph import Topology
from p2pfed.topology.io import load_topology_spec, topology_spec_from_mapping
from p2pfed.topology.schedule import (
    OnePeerExponential,
    RandomRegularResampled,
    StaticSchedule,
    TopologySchedule,
    build_schedule,
)
from p2pfed.topology.show import describe, draw, format_description
from p2pfed.topology.spec import TopologySpec

__all__ = [
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
