"""From observed frames to the local updates an adversary can attack.

Gradient inversion needs a peer's *local update* ``Δ_j`` (its training's change of the
model) and, for the optimisation attacks, the model it started from. What an observer can
isolate depends on the protocol and on what it saw:

* D-PSGD (``ModelShare``), observer of every link of ``j`` (an eavesdropper on them): the
  model ``j`` trained from in round ``r`` is ``x_j(r) = Σ_k W_jk(r−1) h_k(r−1)`` over the
  half-step models ``j`` received and its own, a missing neighbour's weight on ``j`` (the
  protocol's rule), recomputed bit for bit as the peer computes it; the update is
  ``Δ_j(r) = h_j(r) − x_j(r)``. Round 0 starts from the common initial model, which every
  participant knows. ``view = "isolated"``.
* FedAvg / FedAsync / FedBuff: the coordinator's ``GlobalModel`` of round ``r`` (or version
  ``v``) and the client's ``ClientUpdate`` / ``AsyncUpdate`` for it give
  ``Δ_k = x_k − x_global``; ``ClientDelta`` is the update itself. ``view = "client"``.
* The coordinator's consecutive global models give the *aggregate* update of a round,
  ``x(r+1) − x(r)`` (all a coordinator holds under secure aggregation or HE).
  ``view = "aggregate"``.
* A secure sum's messages (``SsShare`` shares, ``SaMasked`` masked inputs) are decoded
  from the ring as if they were the plaintext input — the best an observer of one share or
  one masked vector can do, and indistinguishable from uniform noise — and differenced with
  the last model it knows. ``view = "share"`` / ``"masked"``.
* Anything else that carries a ``params`` vector (push-sum, async gossip): the difference
  of the sender's consecutive models. ``view = "consecutive"``.

Ciphertext (sealed frames, HE messages) yields no update: the adversary's best guess is
then its prior (the dataset-mean image in the reports).

The D-PSGD isolation assumes the peer mixed exactly the models the observer saw arrive for
the round. That holds when every share arrives in time; with frame loss, a round timeout or
an on-path attacker, a share the wire carried may have been skipped (its weight stayed with
the peer), and the isolated update then carries ``W_jk (h_k − h_j)`` for each such
neighbour.

Pure: numpy only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from p2pfed.adversary.observe import Seen
from p2pfed.crypto.fixedpoint import FixedPoint
from p2pfed.protocol.dpsgd import ModelShare
from p2pfed.protocol.fed import AsyncUpdate, ClientDelta, ClientUpdate, GlobalModel
from p2pfed.protocol.he import (
    HeAggregate,
    HeNeighbourSum,
    HePartial,
    HePartials,
    HeShare,
    HeUpdate,
)
from p2pfed.protocol.secure import SaMasked, SsShare
from p2pfed.topology import TopologySchedule

#: messages whose payload is encrypted: the observer reads their envelope, not their content
CIPHERTEXT: tuple[type, ...] = (
    HeAggregate,
    HeUpdate,
    HePartial,
    HePartials,
    HeShare,
    HeNeighbourSum,
)


def is_ciphertext(seen: Seen) -> bool:
    """Whether an observed frame's content was opaque to the adversary."""
    return seen.message is None or isinstance(seen.message, CIPHERTEXT)


@dataclass(frozen=True)
class ObservedUpdate:
    """A local (or aggregate) update an adversary isolated: whose, which round, the model it
    started from (``None``: unknown), the update ``Δ`` (float64) and how it was obtained."""

    peer: int  # the peer whose update it is; the coordinator's id for an aggregate
    round: int
    start: np.ndarray | None
    update: np.ndarray
    view: str  # isolated | client | aggregate | share | masked | consecutive


def dpsgd_updates(
    seen: Sequence[Seen], peer: int, schedule: TopologySchedule, params0: np.ndarray
) -> list[ObservedUpdate]:
    """``peer``'s local updates from the D-PSGD models on its links (module docstring)."""
    sent: dict[int, np.ndarray] = {}
    received: dict[int, dict[int, np.ndarray]] = {}
    for s in seen:
        m = s.message
        if not isinstance(m, ModelShare):
            continue
        if s.src == peer:
            sent.setdefault(m.round, m.params)
        elif s.dst == peer:
            received.setdefault(m.round, {})[s.src] = m.params
    out = []
    for r in sorted(sent):
        if r == 0:
            start = np.asarray(params0, dtype=np.float32)
        elif r - 1 in sent:
            start = _mix(peer, schedule, r - 1, sent[r - 1], received.get(r - 1, {}))
        else:
            continue
        update = sent[r].astype(np.float64) - start.astype(np.float64)
        out.append(ObservedUpdate(peer, r, start, update, "isolated"))
    return out


def _mix(
    peer: int,
    schedule: TopologySchedule,
    r: int,
    half: np.ndarray,
    received: dict[int, np.ndarray],
) -> np.ndarray:
    """The peer's mixing step, in the protocol's own arithmetic (float64, then float32)."""
    topo = schedule.at(r)
    expected = topo.in_neighbours(peer)
    missing = [j for j in expected if j not in received]
    self_weight = topo.weight(peer, peer) + sum(topo.weight(peer, j) for j in missing)
    mixed = self_weight * half.astype(np.float64)
    for j in expected:
        if j in received:
            mixed += topo.weight(peer, j) * received[j]
    return mixed.astype(np.float32)


def client_updates(seen: Sequence[Seen], coordinator: int) -> list[ObservedUpdate]:
    """Clients' updates against the global models the coordinator sent them."""
    globals_ = _global_models(seen, coordinator)
    out = []
    for s in seen:
        m = s.message
        if s.dst != coordinator:
            continue
        if isinstance(m, ClientUpdate) and m.round in globals_:
            start = globals_[m.round]
            out.append(ObservedUpdate(s.src, m.round, start, _diff(m.params, start), "client"))
        elif isinstance(m, AsyncUpdate) and m.version in globals_:
            start = globals_[m.version]
            out.append(ObservedUpdate(s.src, m.version, start, _diff(m.params, start), "client"))
        elif isinstance(m, ClientDelta):
            delta = m.delta.astype(np.float64)
            out.append(ObservedUpdate(s.src, m.version, globals_.get(m.version), delta, "client"))
    return out


def aggregate_updates(seen: Sequence[Seen], coordinator: int) -> list[ObservedUpdate]:
    """The coordinator's aggregate update of each round: consecutive global models."""
    globals_ = _global_models(seen, coordinator)
    rounds = sorted(globals_)
    return [
        ObservedUpdate(coordinator, a, globals_[a], _diff(globals_[b], globals_[a]), "aggregate")
        for a, b in itertools.pairwise(rounds)
        if b == a + 1
    ]


def secure_updates(
    seen: Sequence[Seen],
    peer: int,
    fixed: FixedPoint,
    params0: np.ndarray,
    num_params: int,
    coordinator: int | None = None,
) -> list[ObservedUpdate]:
    """What an observer of ``peer``'s secure-sum messages can make of them: each share or
    masked input decoded as if it were the plaintext, minus the last model known (the
    global model under FedAvg, the initial model or the previous decoded input otherwise)."""
    globals_ = _global_models(seen, coordinator) if coordinator is not None else {}
    out: list[ObservedUpdate] = []
    last: dict[int, np.ndarray] = {}
    for s in seen:
        m = s.message
        if s.src != peer or not isinstance(m, SsShare | SaMasked):
            continue
        ring = m.z if isinstance(m, SsShare) else m.y
        try:
            values = fixed.decode(ring)[:num_params]
        except ValueError:
            continue
        if values.shape != (num_params,):
            continue
        start = globals_.get(m.round, last.get(m.agg, np.asarray(params0, dtype=np.float64)))
        view = "share" if isinstance(m, SsShare) else "masked"
        out.append(ObservedUpdate(peer, m.round, None, values - start, view))
        last[m.agg] = values
    return out


def consecutive_updates(seen: Sequence[Seen], peer: int) -> list[ObservedUpdate]:
    """Differences of the consecutive ``params`` vectors ``peer`` sent (any message kind
    with such a field): the update plus whatever mixing happened in between."""
    models: list[np.ndarray] = []
    for s in seen:
        params = getattr(s.message, "params", None)
        if s.src != peer or not isinstance(params, np.ndarray):
            continue
        if not models or not np.array_equal(models[-1], params):
            models.append(params)
    return [
        ObservedUpdate(peer, k, a, _diff(b, a), "consecutive")
        for k, (a, b) in enumerate(itertools.pairwise(models))
    ]


def _global_models(seen: Sequence[Seen], coordinator: int | None) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    for s in seen:
        m = s.message
        if s.src == coordinator and isinstance(m, GlobalModel):
            out.setdefault(m.round, m.params)
    return out


def _diff(after: np.ndarray, before: np.ndarray) -> np.ndarray:
    return np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)


def last_models(seen: Sequence[Seen], observer: int) -> dict[int, np.ndarray]:
    """The latest ``params`` vector ``observer`` received from each sender."""
    out: dict[int, np.ndarray] = {}
    for s in seen:
        params = getattr(s.message, "params", None)
        if s.dst == observer and isinstance(params, np.ndarray):
            out[s.src] = params
    return out
