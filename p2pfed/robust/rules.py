"""Byzantine-robust aggregation rules for a peer's neighbourhood or a coordinator's cohort.

Where it sits: the step that combines models. In gossip / D-PSGD a peer combines its own
half-step model ``x_i`` with the models its in-neighbours sent, weighted by its row of the
mixing matrix (``W_ii`` for ``own``, ``W_ij`` for ``inputs``); at a FedAvg coordinator the
inputs are the clients' models (or updates) weighted by sample counts, there is no own
model, and the rules that measure distances from a centre use ``reference`` (the previous
global model; zero for updates). One call, :func:`aggregate`, serves every rule; the pool it
aggregates is ``own`` (when given, with ``own_weight``) plus ``inputs``, and weights are
normalised to sum to one. :func:`check` validates a rule for a pool of ``n`` inputs without
data, for config validation.

The rules:

* ``mean``: the weighted mean, i.e. plain gossip averaging / FedAvg (McMahan et al.,
  AISTATS 2017); no defence at all: one input moves it arbitrarily far.
* ``median``: the coordinate-wise (weighted) median; ``trimmed_mean``: per coordinate,
  drop the ``b`` largest and ``b`` smallest values (``b = floor(trim * n)``, or ``f``)
  and take the weighted mean of the rest (Yin, Chen, Ramchandran & Bartlett,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates", ICML 2018).
* ``krum`` / ``multi_krum``: score every input by the sum of squared distances to its
  ``n - f - 2`` nearest others; Krum returns the best-scored input, Multi-Krum the weighted
  mean of the ``m`` best (``m = n - f`` by default); needs ``2f + 2 < n`` (Blanchard,
  El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS 2017).
* ``geometric_median``: the weighted geometric median by the smoothed Weiszfeld algorithm,
  ``v <- sum_j b_j x_j / sum_j b_j`` with ``b_j = w_j / max(nu, ||v - x_j||)`` (Pillutla,
  Kakade & Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022: RFA),
  started at the coordinate-wise median.
* ``centered_clip``: ``v <- v + sum_j w_j clip(x_j - v, tau)``, ``L`` times from the
  centre (Karimireddy, He & Jaggi, "Learning from History for Byzantine Robust
  Optimization", ICML 2021).
* ``clipped_gossip``: self-centred clipping, ``x_i <- x_i + sum_j W_ij clip(x_j - x_i,
  tau_i)`` (He, Karimireddy & Jaggi, "Byzantine-Robust Decentralized Learning via
  ClippedGossip", arXiv:2202.01545, 2022). ``tau_i`` is fixed (``cg_tau``) or adaptive:
  the neighbours are sorted by distance and ``tau_i`` is the distance of the farthest one
  left unclipped once the farthest ones, of total weight at least ``delta_i``, are clipped
  (the paper's rule: the clipped weight matches the Byzantine weight ``delta_i`` around
  ``i``); ``delta_i`` is ``cg_delta`` or, by default, the weight of the ``f`` heaviest
  neighbours (the worst case of ``f`` Byzantine ones).
* ``balance``: neighbour ``j`` is accepted iff ``||x_i - x_j|| <= gamma exp(-kappa t/T)
  ||x_i||`` and ``x_i <- alpha x_i + (1 - alpha) mean(accepted)``, or ``x_i`` alone when
  none is accepted (Fang, Zhang, Hairi, Khanduri, Liu, Lu, Liu & Gong, "Byzantine-Robust
  Decentralized Federated Learning", ACM CCS 2024, arXiv:2406.10416: BALANCE). It needs
  models, not updates: the radius is relative to ``||x_i||``.
* ``norm_clip``: each input's difference from the centre is clipped to L2 norm
  ``norm_bound``, then weighted mean (Sun, Kairouz, Suresh & McMahan, "Can You Really
  Backdoor Federated Learning?", 2019). Same formula as ``clipped_gossip`` with a fixed
  radius; the centre is meant to be the model the round started from.

The centre of ``centered_clip``, ``clipped_gossip``, ``balance`` and ``norm_clip`` is
``reference`` when given, else ``own``; when the centre is ``own`` it is not a candidate of
its own (BALANCE does not "accept" itself). An input with weight 0 takes no part. An input
with a non-finite value is certainly Byzantine: it is dropped and counted in ``rejected``,
``f`` shrinks by one for it, and the clipping rules keep its weight on the centre (a zero
difference, like a neighbour skipped at a timeout); ``mean`` has no defence and raises.

Threat model: up to ``f`` of the inputs a rule sees are Byzantine: arbitrary vectors chosen
with full knowledge of the honest ones, the rule and its parameters (Blanchard et al.,
2017). The aggregating peer's own model and the reference are trusted. ``check`` enforces
the counting conditions (``2f < n`` for the median and the geometric median, ``2b < n`` for
the trimmed mean, ``2f + 2 < n`` for Krum); the clipping rules bound what each input can do
(its weight times the radius) instead of counting, and BALANCE bounds it by its acceptance
radius. None of them stops a small, well-placed perturbation inside those bounds (e.g.
Baruch, Baruch & Goldberg, "A Little Is Enough", NeurIPS 2019): they limit damage, they do
not detect every attack.

Privacy protections that hide individual inputs: every rule but ``mean`` needs to see each
input (:data:`NEEDS_INDIVIDUAL_INPUTS`), so under secure aggregation or homomorphic
encryption the aggregator can only compute ``mean`` of what was masked. What still works
there is a rule over sums, each revealed sum being one input: a FedAvg coordinator's secure
sums over random buckets of clients (:mod:`p2pfed.robust.buckets`, the bucketing of
Karimireddy, He & Jaggi, ICLR 2022), at the price of revealing one sum per bucket. A norm
bound each client applies to its own update before masking (:func:`clip_to_norm`,
:data:`CLIENT_SIDE_RULES`) binds honest clients only: a Byzantine client skips it, and only a
verifiable bound, e.g. zero-knowledge norm proofs (Lycklama et al., "RoFL", IEEE S&P 2023),
would catch it; p2pfed does not offer it as a defence.

Pure: numpy (and pydantic for the config); no Ray, no clock, no randomness — every rule is
deterministic (ties go to the lower index).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    model_validator,
)

from p2pfed.errors import P2PFedError
from p2pfed.fields import Real

Rule = Literal[
    "mean",
    "median",
    "trimmed_mean",
    "krum",
    "multi_krum",
    "geometric_median",
    "centered_clip",
    "clipped_gossip",
    "balance",
    "norm_clip",
]
#: every rule's name, in the order of :data:`Rule`
RULES: tuple[str, ...] = get_args(Rule)
#: whether a rule must see each input on its own (False only for ``mean``, which works
#: on a secure-aggregation or homomorphic sum)
NEEDS_INDIVIDUAL_INPUTS: Mapping[str, bool] = MappingProxyType(
    {rule: rule != "mean" for rule in RULES}
)
#: rules a client can apply to its own update before masking it (see the module docstring)
CLIENT_SIDE_RULES: frozenset[str] = frozenset({"norm_clip"})
#: rules that measure inputs from a centre: ``reference``, else ``own``
CENTRED_RULES: frozenset[str] = frozenset(
    {"centered_clip", "clipped_gossip", "balance", "norm_clip"}
)


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


#: a clipping radius: like :data:`p2pfed.fields.Real`, but ``.inf`` (no clipping) is allowed
Radius = Annotated[float, AllowInfNan(True), BeforeValidator(_not_bool)]

# relative slack when a cumulative weight is compared with a target (half, delta)
_WEIGHT_TOL = 1e-12
# values per block when sorting coordinates, to bound the memory of (n, P) index arrays
_BLOCK = 1 << 22


class RobustError(P2PFedError, ValueError):
    """A robust rule cannot run on what it was given: a pool too small for ``f`` (e.g.
    Krum without ``2f + 2 < n``), mismatched shapes, negative or all-zero weights, a
    non-finite own model or reference, a missing centre. The message names the rule."""


class RobustConfig(BaseModel):
    """The robust rule a peer (or coordinator) aggregates with, and its parameters. Each
    parameter is named after the rule it belongs to; the others ignore it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    rule: Rule = Field("mean", description="the aggregation rule (see p2pfed.robust.rules)")
    f: StrictInt = Field(
        1, ge=0, le=100_000, description="assumed number of Byzantine inputs in a pool"
    )
    trim: Real | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="trimmed_mean: fraction trimmed from each end per coordinate "
        "(floor(trim * n) values); null: f values",
    )
    multi_krum_m: StrictInt | None = Field(
        None, ge=1, description="multi_krum: inputs averaged (capped at n - f); null: n - f"
    )
    gm_iterations: StrictInt = Field(
        100, ge=1, le=100_000, description="geometric_median: most Weiszfeld iterations"
    )
    gm_nu: Real = Field(
        1e-6, gt=0, description="geometric_median: smoothing, the smallest distance used"
    )
    gm_tol: Real = Field(
        1e-7,
        gt=0,
        description="geometric_median: stop once a step moves less than tol * max(1, |v|)",
    )
    cc_tau: Radius | None = Field(
        None,
        gt=0,
        description="centered_clip: clipping radius (required for centered_clip; .inf: none)",
    )
    cc_iterations: StrictInt = Field(
        1, ge=1, le=10_000, description="centered_clip: clipping iterations L"
    )
    cg_tau: Radius | None = Field(
        None,
        gt=0,
        description="clipped_gossip: fixed clipping radius; null: the adaptive rule; .inf: "
        "plain gossip",
    )
    cg_delta: Real | None = Field(
        None,
        ge=0,
        lt=1,
        description="clipped_gossip (adaptive): assumed Byzantine weight around a peer; "
        "null: the weight of its f heaviest neighbours",
    )
    balance_gamma: Real = Field(
        0.3, gt=0, description="balance: acceptance radius, relative to ||x_i||"
    )
    balance_kappa: Real = Field(
        1.0, ge=0, description="balance: decay of the radius, exp(-kappa step/total_steps)"
    )
    balance_alpha: Real = Field(0.5, ge=0, le=1, description="balance: weight kept on x_i")
    norm_bound: Real | None = Field(
        None,
        gt=0,
        description="norm_clip: L2 bound M of each input's distance from the centre "
        "(required for norm_clip)",
    )
    bucket_size: StrictInt | None = Field(
        None,
        ge=1,
        le=100_000,
        description="fedavg: the coordinator averages random buckets of at least this many "
        "clients (fresh each round) and applies the rule over the bucket means; under "
        "secagg / secret-share each bucket is one secure sum (p2pfed.robust.buckets); "
        "null: every client is an input",
    )

    @model_validator(mode="after")
    def _complete(self) -> RobustConfig:
        if self.rule == "centered_clip" and self.cc_tau is None:
            raise ValueError("rule centered_clip needs cc_tau, its clipping radius")
        if self.rule == "norm_clip" and self.norm_bound is None:
            raise ValueError("rule norm_clip needs norm_bound, the L2 bound M")
        return self


@dataclass(frozen=True)
class Aggregate:
    """What a rule made of a pool: the aggregated model (or update); how many inputs it
    left out (Krum's unselected, BALANCE's refused, the values trimmed per coordinate —
    ``2b`` — and non-finite inputs); how many it clipped; and the clipping radius it used
    (BALANCE: its acceptance radius; None for the rules without one)."""

    value: np.ndarray  # (P,) float64
    rejected: int
    clipped: int
    tau: float | None = None


def check(rule: RobustConfig, n: int, *, f: int | None = None) -> None:
    """Raise :class:`RobustError` unless ``rule`` can aggregate a pool of ``n`` inputs (own
    model included) with ``f`` Byzantine ones (default ``rule.f``); no data needed."""
    f = rule.f if f is None else f
    name = rule.rule
    if n < 1:
        raise RobustError(f"{name} needs at least one input, got n = {n}")
    if f < 0:
        raise RobustError(f"{name}: f must be non-negative, got {f}")
    if name in ("median", "geometric_median") and not 2 * f < n:
        raise RobustError(
            f"{name} needs the Byzantine inputs to be a minority, 2f < n: n = {n}, f = {f}"
        )
    if name == "trimmed_mean":
        b = _trim_count(rule, n, f)
        if not 2 * b < n:
            raise RobustError(
                f"trimmed_mean trims {b} values from each end, needs 2b < n: n = {n}, "
                f"f = {f}, trim = {rule.trim}"
            )
    if name in ("krum", "multi_krum") and not 2 * f + 2 < n:
        raise RobustError(
            f"{name} needs 2f + 2 < n (Blanchard et al., NeurIPS 2017): n = {n}, f = {f}"
        )


def aggregate(
    rule: RobustConfig,
    own: np.ndarray | None,
    inputs: np.ndarray,
    weights: np.ndarray,
    own_weight: float,
    *,
    f: int | None = None,
    reference: np.ndarray | None = None,
    step: int = 0,
    total_steps: int = 1,
) -> Aggregate:
    """Aggregate ``own`` (P,) with weight ``own_weight`` and ``inputs`` (k, P) with
    ``weights`` (k,) by ``rule``.

    ``own`` is None at a coordinator (then ``own_weight`` must be 0). ``reference`` (P,) is
    the centre of the centred rules (default ``own``). ``f`` overrides ``rule.f`` for this
    pool. ``step`` / ``total_steps`` are BALANCE's ``t / T``. Weights need not sum to one.
    """
    name = rule.rule
    if f is not None and f < 0:
        raise RobustError(f"{name}: f must be non-negative, got {f}")
    x, w, is_own, total, nonfinite = _pool(name, own, inputs, weights, own_weight)
    f_eff = max((rule.f if f is None else f) - nonfinite, 0)
    p = x.shape[1]
    centre = _centre(name, own, reference, p)
    if name in CENTRED_RULES:
        assert centre is not None
        # the centre is no candidate of its own
        candidate = ~is_own if reference is None else np.ones(len(w), dtype=bool)
        if len(w) == 0:  # nothing left to mix in
            return Aggregate(centre.copy(), nonfinite, 0)
        if name == "balance":
            if step < 0 or total_steps < 1:
                raise RobustError(
                    f"balance needs step >= 0 and total_steps >= 1, got {step}, {total_steps}"
                )
            return _balance(rule, x, w / w.sum(), centre, candidate, nonfinite, step, total_steps)
        # clipping rules keep a dropped input's weight on the centre: divide by the total
        wc = w / total
        if name == "centered_clip":
            assert rule.cc_tau is not None
            return _centered_clip(x, wc, centre, rule.cc_tau, rule.cc_iterations, nonfinite)
        if name == "clipped_gossip":
            return _clipped_gossip(rule, x, wc, centre, candidate, f_eff, nonfinite)
        assert rule.norm_bound is not None
        value, clipped = _clip_around(x, wc, centre, rule.norm_bound)
        return Aggregate(value, nonfinite, clipped, float(rule.norm_bound))
    if len(w) == 0:
        raise RobustError(f"{name}: no finite input with positive weight to aggregate")
    check(rule, len(w), f=f_eff)
    w = w / w.sum()
    if name == "mean":
        return Aggregate(w @ x, 0, 0)
    if name == "median":
        return Aggregate(_by_blocks(_weighted_median, x, w), nonfinite, 0)
    if name == "trimmed_mean":
        b = _trim_count(rule, len(w), f_eff)
        value = _by_blocks(lambda xs, ws: _trimmed_mean(xs, ws, b), x, w)
        return Aggregate(value, nonfinite + 2 * b, 0)
    if name in ("krum", "multi_krum"):
        return _krum(rule, x, w, f_eff, nonfinite)
    return Aggregate(_weiszfeld(x, w, rule.gm_iterations, rule.gm_nu, rule.gm_tol), nonfinite, 0)


def clip_to_norm(vector: np.ndarray, bound: float) -> tuple[np.ndarray, bool]:
    """``vector`` scaled down to L2 norm ``bound`` if longer (float64), and whether it was:
    the norm bound a client applies to its own update before masking it."""
    if not bound > 0:
        raise RobustError(f"norm_clip: the bound must be positive, got {bound}")
    v = np.asarray(vector, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise RobustError("norm_clip: the vector to clip is not finite")
    norm = float(np.linalg.norm(v))
    if norm > bound:
        return v * (bound / norm), True
    return v.copy(), False


# --- the pool: validation and dropping ---------------------------------------------------


def _pool(
    name: str,
    own: np.ndarray | None,
    inputs: np.ndarray,
    weights: np.ndarray,
    own_weight: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """The members with positive weight and finite values: models (n, P), weights (n,),
    which one is ``own`` (n,) bool, the total weight before non-finite inputs were dropped,
    and how many were."""
    given = np.asarray(inputs)
    w = np.asarray(weights, dtype=np.float64)
    if given.ndim != 2 or given.shape[1] == 0:
        raise RobustError(f"{name}: inputs must be a (k, P) array, P >= 1, got {given.shape}")
    k, p = given.shape
    if w.shape != (k,):
        raise RobustError(f"{name}: weights must have shape ({k},), got {w.shape}")
    if not (math.isfinite(own_weight) and own_weight >= 0):
        raise RobustError(f"{name}: own_weight must be finite and >= 0, got {own_weight}")
    if own is None:
        if own_weight != 0:
            raise RobustError(f"{name}: own_weight is {own_weight} but there is no own model")
        x = np.asarray(given, dtype=np.float64)  # no copy: the rules never write into x
    else:
        o = np.asarray(own)
        if o.shape != (p,):
            raise RobustError(f"{name}: own has shape {o.shape}, inputs have P = {p}")
        x = np.empty((k + 1, p), dtype=np.float64)  # (n, P): own first, converted once
        x[0] = o
        x[1:] = given
        if not np.all(np.isfinite(x[0])):
            raise RobustError(f"{name}: the own model is not finite")
        w = np.concatenate([[own_weight], w])
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise RobustError(f"{name}: weights must be finite and non-negative")
    total = float(w.sum())
    if not total > 0:
        raise RobustError(f"{name}: the weights sum to {total}, need a positive sum")
    is_own = np.zeros(len(w), dtype=bool)
    if own is not None:
        is_own[0] = True
    finite = np.isfinite(x).all(axis=1)
    nonfinite = int(np.sum(~finite & (w > 0)))
    if nonfinite and name == "mean":
        raise RobustError(
            f"mean: {nonfinite} input(s) are not finite and plain averaging has no defence"
        )
    keep = finite & (w > 0)
    if keep.all():
        return x, w, is_own, total, 0
    return x[keep], w[keep], is_own[keep], total, nonfinite


def _centre(
    name: str, own: np.ndarray | None, reference: np.ndarray | None, p: int
) -> np.ndarray | None:
    if name not in CENTRED_RULES:
        return None
    if reference is None:
        if own is None:
            raise RobustError(f"{name} measures inputs from a centre: give own or reference")
        return np.asarray(own, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if r.shape != (p,):
        raise RobustError(f"{name}: reference has shape {r.shape}, inputs have P = {p}")
    if not np.all(np.isfinite(r)):
        raise RobustError(f"{name}: the reference is not finite")
    return r


# --- coordinate-wise rules ---------------------------------------------------------------


def _by_blocks(
    rule: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """``rule`` over blocks of coordinates, so its (n, block) index arrays stay small."""
    n, p = x.shape
    step = max(1, _BLOCK // max(n, 1))
    return np.concatenate([rule(x[:, s : s + step], w) for s in range(0, p, step)])


def _sorted(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x, axis=0, kind="stable")  # (n, B)
    return np.take_along_axis(x, order, axis=0), w[order]


def _weighted_median(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per coordinate, the value where the cumulative weight reaches half; the midpoint of
    two values when it lands exactly on half (so equal weights give ``np.median``)."""
    xs, ws = _sorted(x, w)  # (n, B)
    cum = np.cumsum(ws, axis=0)
    half = 0.5 * cum[-1]  # (B,)
    tol = _WEIGHT_TOL * cum[-1]
    lo = np.argmax(cum >= half - tol, axis=0)  # (B,) first index reaching half
    cols = np.arange(x.shape[1])
    value = xs[lo, cols]
    tie = np.abs(cum[lo, cols] - half) <= tol
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    return np.asarray(np.where(tie, 0.5 * (value + xs[hi, cols]), value))


def _trimmed_mean(x: np.ndarray, w: np.ndarray, b: int) -> np.ndarray:
    xs, ws = _sorted(x, w)
    n = x.shape[0]
    xs, ws = xs[b : n - b], ws[b : n - b]
    return np.asarray((xs * ws).sum(axis=0) / ws.sum(axis=0))


def _trim_count(rule: RobustConfig, n: int, f: int) -> int:
    if rule.trim is None:
        return f
    return math.floor(rule.trim * n + 1e-9)  # 0.1 * 30 is 3, not 2.9999...


# --- Krum, Multi-Krum, geometric median --------------------------------------------------


def _krum(rule: RobustConfig, x: np.ndarray, w: np.ndarray, f: int, dropped: int) -> Aggregate:
    n = x.shape[0]
    # pairwise squared distances through the Gram matrix, after centring on the
    # coordinate-wise median so huge Byzantine values do not swamp the honest distances
    y = x - np.median(x, axis=0)
    gram = y @ y.T  # (n, n)
    sq = np.diag(gram)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    np.fill_diagonal(d2, np.inf)
    scores = np.sort(d2, axis=1)[:, : n - f - 2].sum(axis=1)  # (n,)
    m = 1 if rule.rule == "krum" else min(rule.multi_krum_m or n - f, n - f)
    chosen = np.argsort(scores, kind="stable")[:m]
    if m == 1:
        return Aggregate(x[chosen[0]].copy(), dropped + n - 1, 0)
    wc = w[chosen] / w[chosen].sum()
    return Aggregate(wc @ x[chosen], dropped + n - m, 0)


def _weiszfeld(x: np.ndarray, w: np.ndarray, iterations: int, nu: float, tol: float) -> np.ndarray:
    """Smoothed Weiszfeld (Pillutla et al., 2022, Algorithm 2) from the coordinate-wise
    median: any start reaches the same minimiser, a robust one in fewer steps."""
    v = _by_blocks(_weighted_median, x, w)
    for _ in range(iterations):
        dist = np.linalg.norm(x - v, axis=1)  # (n,)
        beta = w / np.maximum(dist, nu)
        moved = beta @ x / beta.sum()
        step = float(np.linalg.norm(moved - v))
        v = moved
        if step <= tol * max(1.0, float(np.linalg.norm(v))):
            break
    return np.asarray(v)


# --- rules around a centre ---------------------------------------------------------------


def _clip_scales(norms: np.ndarray, tau: float) -> np.ndarray:
    scale = np.ones_like(norms)
    over = norms > tau
    scale[over] = tau / norms[over]
    return scale


def _clip_around(
    x: np.ndarray, w: np.ndarray, centre: np.ndarray, tau: float
) -> tuple[np.ndarray, int]:
    """``centre + sum_j w_j clip(x_j - centre, tau)`` and how many were clipped."""
    diff = x - centre  # (n, P)
    norms = np.linalg.norm(diff, axis=1)
    scale = _clip_scales(norms, tau)
    return centre + (w * scale) @ diff, int(np.sum(norms > tau))


def _centered_clip(
    x: np.ndarray, w: np.ndarray, centre: np.ndarray, tau: float, iterations: int, dropped: int
) -> Aggregate:
    v = centre
    clipped = 0
    for _ in range(iterations):
        v, clipped = _clip_around(x, w, v, tau)
    return Aggregate(np.asarray(v), dropped, clipped, float(tau))


def _clipped_gossip(
    rule: RobustConfig,
    x: np.ndarray,
    w: np.ndarray,
    centre: np.ndarray,
    candidate: np.ndarray,
    f: int,
    dropped: int,
) -> Aggregate:
    if rule.cg_tau is not None:
        tau = float(rule.cg_tau)
    else:
        norms = np.linalg.norm(x - centre, axis=1)
        wn = w[candidate]
        if rule.cg_delta is not None:
            delta = float(rule.cg_delta)
        else:  # the worst case: the f heaviest neighbours are the Byzantine ones
            delta = float(np.sort(wn)[::-1][:f].sum())
        tau = _adaptive_tau(norms[candidate], wn, delta)
    value, clipped = _clip_around(x, w, centre, tau)
    return Aggregate(value, dropped, clipped, tau)


def _adaptive_tau(norms: np.ndarray, w: np.ndarray, delta: float) -> float:
    """He et al.'s radius: clip the farthest neighbours until their weight reaches
    ``delta``; the radius is the distance of the farthest neighbour left unclipped (0 when
    every neighbour is clipped; the largest distance when ``delta`` is 0)."""
    if len(norms) == 0:
        return 0.0
    order = np.argsort(-norms, kind="stable")  # farthest first
    d, cum = norms[order], np.cumsum(w[order])
    if delta <= 0:
        return float(d[0])
    reached = np.nonzero(cum >= delta - _WEIGHT_TOL)[0]
    k = int(reached[0]) + 1 if len(reached) else len(d)  # neighbours clipped
    return float(d[k]) if k < len(d) else 0.0


def _balance(
    rule: RobustConfig,
    x: np.ndarray,
    w: np.ndarray,
    centre: np.ndarray,
    candidate: np.ndarray,
    dropped: int,
    step: int,
    total_steps: int,
) -> Aggregate:
    radius = (
        rule.balance_gamma
        * math.exp(-rule.balance_kappa * step / total_steps)
        * float(np.linalg.norm(centre))
    )
    dist = np.linalg.norm(x - centre, axis=1)
    accepted = candidate & (dist <= radius)
    refused = int(np.sum(candidate)) - int(np.sum(accepted))
    if not accepted.any():
        return Aggregate(centre.copy(), dropped + refused, 0, radius)
    mean = w[accepted] @ x[accepted] / w[accepted].sum()
    alpha = rule.balance_alpha
    return Aggregate(alpha * centre + (1.0 - alpha) * mean, dropped + refused, 0, radius)
