"""The typed description of a topology: what a YAML topology file or section holds.

A :class:`TopologySpec` is data only; :func:`p2pfed.topology.build_schedule` turns it into
graphs. Validation happens here, field by field, so a bad file fails on load with the name of
the offending field (pydantic reports it as the error location). Fields that a kind does not
use must be left unset: a ``degree`` on a ring would be silently ignored otherwise, and a
config that says something it does not do is worse than one that fails.

Integers and ``directed`` are strict (``n: true`` or ``degree: "4"`` are errors, not 1 and 4).
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

Kind = Literal[
    "ring",
    "torus",
    "complete",
    "star",
    "random_regular",
    "erdos_renyi",
    "small_world",
    "exponential",
    "dumbbell",
    "edge_list",
    "one_peer_exponential",
    "random_regular_dynamic",
]

DYNAMIC_KINDS: frozenset[str] = frozenset({"one_peer_exponential", "random_regular_dynamic"})
STATIC_KINDS: frozenset[str] = frozenset(get_args(Kind)) - DYNAMIC_KINDS
RANDOM_KINDS: frozenset[str] = frozenset(
    {"random_regular", "erdos_renyi", "small_world", "random_regular_dynamic"}
)
_DEGREE_KINDS = ("random_regular", "random_regular_dynamic", "small_world")
_P_KINDS = ("erdos_renyi", "small_world")
# one_peer_exponential is always directed, so saying so is harmless.
_DIRECTED_KINDS = ("ring", "exponential", "edge_list", "one_peer_exponential")

SMALL_WORLD_DEFAULT_DEGREE = 4
SMALL_WORLD_DEFAULT_P = 0.1


def erdos_renyi_default_p(n: int) -> float:
    """2 ln(n) / n, twice the connectivity threshold of G(n, p), capped at 1."""
    return min(1.0, 2.0 * math.log(n) / n)


def torus_shape(n: int, rows: int | None = None, cols: int | None = None) -> tuple[int, int] | None:
    """(rows, cols) with rows * cols == n and both >= 3, or None when there is none.

    Missing sides are derived from n; with neither given, the most square factorisation
    (rows <= cols) is chosen.
    """
    if rows is not None and cols is not None:
        ok = rows * cols == n and rows >= 3 and cols >= 3
        return (rows, cols) if ok else None
    if rows is not None or cols is not None:
        side = rows if rows is not None else cols
        assert side is not None
        if side < 3 or n % side != 0 or n // side < 3:
            return None
        return (side, n // side) if rows is not None else (n // side, side)
    for r in range(math.isqrt(n), 2, -1):
        if n % r == 0 and n // r >= 3:
            return (r, n // r)
    return None


def _kind(info: ValidationInfo) -> str | None:
    kind = info.data.get("kind")
    return kind if isinstance(kind, str) else None


def _only_for(field: str, kinds: tuple[str, ...], kind: str) -> ValueError:
    return ValueError(f"{field} is only used by kind {' / '.join(kinds)}, not {kind}")


class TopologySpec(BaseModel):
    """One topology, as written in a topology file or an experiment's ``topology`` section."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Kind = "ring"
    # n: the number of peers (dumbbell: in both cliques together; edge_list: ids are 0..n-1).
    n: StrictInt = 16
    # random_regular(_dynamic): required; small_world: neighbours in the ring lattice (default 4).
    degree: StrictInt | None = Field(default=None, validate_default=True)
    # erdos_renyi: edge probability (default 2 ln n / n); small_world: rewiring probability.
    p: float | None = Field(default=None, strict=True, validate_default=True)
    rows: StrictInt | None = Field(default=None, validate_default=True)
    cols: StrictInt | None = Field(default=None, validate_default=True)
    edges: tuple[tuple[StrictInt, StrictInt], ...] | None = Field(
        default=None, validate_default=True
    )
    directed: StrictBool = Field(default=False, validate_default=True)
    # None: derived from the run seed, so a sweep over run seeds also varies the graph.
    seed: StrictInt | None = Field(default=None, validate_default=True)

    # Field validators run in declaration order and see the fields validated before them in
    # ``info.data``; checking there (instead of in one model validator) makes pydantic report
    # the offending field as the error location, which becomes the key of a ConfigError.

    @field_validator("n")
    @classmethod
    def _check_n(cls, n: int, info: ValidationInfo) -> int:
        if n < 2:
            raise ValueError(f"n ({n}) must be at least 2")
        kind = _kind(info)
        if kind == "dumbbell" and n < 4:
            raise ValueError(f"n ({n}) must be at least 4 for a dumbbell (two cliques of >= 2)")
        if kind == "torus" and torus_shape(n) is None:
            raise ValueError(
                f"n ({n}) must be rows * cols with rows, cols >= 3 for a torus (e.g. 9, 12, 16)"
            )
        return n

    @field_validator("degree")
    @classmethod
    def _check_degree(cls, degree: int | None, info: ValidationInfo) -> int | None:
        kind, n = _kind(info), info.data.get("n")
        if kind is None or n is None:
            return degree
        if kind not in _DEGREE_KINDS:
            if degree is not None:
                raise _only_for("degree", _DEGREE_KINDS, kind)
            return degree
        given = degree
        if degree is None:
            if kind != "small_world":
                raise ValueError(f"kind {kind} needs degree")
            # Check the default too: small_world on n <= 4 cannot use it.
            degree = SMALL_WORLD_DEFAULT_DEGREE
        if degree < 1:
            raise ValueError(f"degree ({degree}) must be at least 1")
        if degree >= n:
            raise ValueError(f"degree ({degree}) must be less than n ({n})")
        if kind == "small_world":
            if degree % 2:
                raise ValueError(f"degree ({degree}) must be even for a small-world graph")
            return given
        if (n * degree) % 2:
            raise ValueError("n * degree must be even for a random regular graph")
        return degree

    @field_validator("p")
    @classmethod
    def _check_p(cls, p: float | None, info: ValidationInfo) -> float | None:
        kind = _kind(info)
        if kind is None or p is None:
            return p
        if kind not in _P_KINDS:
            raise _only_for("p", _P_KINDS, kind)
        if not math.isfinite(p):
            raise ValueError(f"p ({p}) must be a finite number")
        if kind == "small_world" and not 0.0 <= p <= 1.0:
            raise ValueError(f"p ({p}) must satisfy 0 <= p <= 1")
        if kind == "erdos_renyi" and not 0.0 < p <= 1.0:
            raise ValueError(f"p ({p}) must satisfy 0 < p <= 1")
        return p

    @field_validator("rows", "cols")
    @classmethod
    def _check_side(cls, side: int | None, info: ValidationInfo) -> int | None:
        kind, n = _kind(info), info.data.get("n")
        name = info.field_name
        if kind is None or n is None or side is None:
            return side
        if kind != "torus":
            raise _only_for(str(name), ("torus",), kind)
        if side < 3:
            raise ValueError(f"{name} ({side}) must be at least 3")
        if n % side:
            raise ValueError(f"{name} ({side}) must divide n ({n})")
        rows = info.data.get("rows") if name == "cols" else side
        cols = side if name == "cols" else None
        if torus_shape(n, rows, cols) is None:
            if rows is not None and cols is not None:
                raise ValueError(f"rows * cols ({rows} * {cols}) must equal n ({n})")
            raise ValueError(f"n / {name} ({n} / {side}) must be at least 3")
        return side

    @field_validator("edges")
    @classmethod
    def _check_edges(
        cls, edges: tuple[tuple[int, int], ...] | None, info: ValidationInfo
    ) -> tuple[tuple[int, int], ...] | None:
        kind, n = _kind(info), info.data.get("n")
        if kind is None or n is None:
            return edges
        if kind != "edge_list":
            if edges is not None:
                raise ValueError("edges are only allowed with kind edge_list")
            return edges
        if not edges:
            raise ValueError("kind edge_list needs edges (a non-empty list of [i, j] pairs)")
        for i, j in edges:
            for peer in (i, j):
                if not 0 <= peer < n:
                    raise ValueError(f"peer id {peer} in edge [{i}, {j}] is outside 0..{n - 1}")
            if i == j:
                raise ValueError(f"self-loop [{i}, {j}] at peer {i}")
        return edges

    @field_validator("directed")
    @classmethod
    def _check_directed(cls, directed: bool, info: ValidationInfo) -> bool:
        kind = _kind(info)
        if directed and kind is not None and kind not in _DIRECTED_KINDS:
            raise ValueError(f"directed is only allowed with kind {' / '.join(_DIRECTED_KINDS)}")
        return directed

    @field_validator("seed")
    @classmethod
    def _check_seed(cls, seed: int | None, info: ValidationInfo) -> int | None:
        kind = _kind(info)
        if seed is None or kind is None:
            return seed
        if kind not in RANDOM_KINDS:
            raise _only_for("seed", tuple(sorted(RANDOM_KINDS)), kind)
        if seed < 0:
            raise ValueError(f"seed ({seed}) must be >= 0")
        return seed

    @model_validator(mode="after")
    def _check_edge_list_n(self) -> TopologySpec:
        # n has a default, so only the set of explicitly given fields tells whether an
        # edge list said how many peers it has; guessing n from the largest id would hide
        # an isolated peer.
        if self.kind == "edge_list" and "n" not in self.model_fields_set:
            raise ValueError("kind edge_list needs n (the number of peers)")
        return self

    @property
    def is_static(self) -> bool:
        return self.kind in STATIC_KINDS

    def resolved(self, seed: int | None = None) -> TopologySpec:
        """This spec with every default written out: the form to save next to a run.

        ``seed`` (the run seed) fills ``seed`` for random kinds when the spec leaves it unset.
        """
        update: dict[str, Any] = {}
        if self.kind == "small_world":
            update["degree"] = (
                self.degree if self.degree is not None else SMALL_WORLD_DEFAULT_DEGREE
            )
            update["p"] = self.p if self.p is not None else SMALL_WORLD_DEFAULT_P
        if self.kind == "erdos_renyi" and self.p is None:
            update["p"] = erdos_renyi_default_p(self.n)
        if self.kind == "torus":
            shape = torus_shape(self.n, self.rows, self.cols)
            assert shape is not None  # guaranteed by validation
            update["rows"], update["cols"] = shape
        if self.kind in RANDOM_KINDS and self.seed is None and seed is not None:
            update["seed"] = seed
        if not update:
            return self
        return TopologySpec.model_validate({**self.model_dump(exclude_unset=True), **update})
