"""Robust aggregation over bucket sums: what a Byzantine-robust rule can still see when the
coordinator only learns sums (secure aggregation).

A robust rule needs individual inputs, and secure aggregation exists to hide them. Between
the two sits *bucketing*: each round the clients are split at random into ``B`` buckets of at
least ``s`` clients, each bucket's weighted sum is computed securely (one ``secagg`` or
``secret-share`` session per bucket), and the rule runs over the ``B`` bucket means. A
Byzantine client taints the one bucket it lands in, so with ``f`` Byzantine clients at most
``f`` of the ``B`` inputs are bad, and the rule's counting condition (e.g. ``2f < B`` for the
median) is checked on ``B``. Averaging ``s`` clients before the rule also shrinks the spread
of the honest inputs, which is what lets robust rules cope with heterogeneous (non-IID)
clients (Karimireddy, He & Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets via
Bucketing", ICLR 2022, Algorithm 1: there over individual updates in the clear; here the
buckets are also the units of secure aggregation).

The price is privacy, and the module does not hide it: the coordinator learns ``B`` sums of
``s`` clients instead of one sum of all ``n``. A bucket of ``s`` is a group of ``s`` under the
secure-sum threat model (:mod:`p2pfed.crypto.secagg`): the coordinator colluding with
``s - 1`` clients of a bucket recovers the last one's update, and a bucket whose members drop
out below the session's threshold is lost for the round (the rule runs over the others).
``s`` must be at least :data:`~p2pfed.crypto.config.MIN_GROUP`; bigger buckets protect more
and leave fewer inputs to the rule. The assignment is public and derived from the run seed
and the round, so clients and coordinator agree on it without a message; a client cannot
choose its bucket, but it can predict it.

A client-side norm bound is *not* offered as a defence under secure aggregation: an honest
client can clip its own update before masking, but a Byzantine one simply does not, and
proving the bound on a masked vector needs zero-knowledge range proofs (Lycklama et al.,
"RoFL", IEEE S&P 2023), which p2pfed does not implement. ``norm_clip`` over bucket means does
work: it bounds what each bucket, hence each Byzantine client, can move the model.

Pure: numpy; the assignment's randomness comes from the seed it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from p2pfed.robust.rules import RobustError


def num_buckets(num_clients: int, size: int) -> int:
    """How many buckets ``num_clients`` clients make with at least ``size`` in each."""
    if size < 1:
        raise RobustError(f"bucket size must be at least 1, got {size}")
    if num_clients < size:
        raise RobustError(
            f"{num_clients} clients cannot fill one bucket of {size}: lower bucket_size or "
            "add clients"
        )
    return num_clients // size


def assign(clients: Sequence[int], size: int, seed: int, round_: int) -> list[tuple[int, ...]]:
    """Round ``round_``'s buckets: a permutation of ``clients`` drawn from (``seed``,
    ``round_``) cut into ``num_buckets`` parts whose sizes differ by at most one (each at
    least ``size``), every bucket sorted. The same arguments give the same buckets on every
    peer."""
    ids = np.asarray(sorted(clients), dtype=np.int64)
    b = num_buckets(len(ids), size)
    rng = np.random.default_rng([seed, round_])
    order = ids[rng.permutation(len(ids))]
    return [tuple(sorted(int(c) for c in part)) for part in np.array_split(order, b)]


def bucket_of(buckets: Sequence[tuple[int, ...]], client: int) -> int:
    """The index of the bucket holding ``client``."""
    for index, members in enumerate(buckets):
        if client in members:
            return index
    raise RobustError(f"client {client} is in no bucket")


def bucket_means(
    models: np.ndarray, weights: np.ndarray, buckets: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """In the clear: each bucket's weighted mean of ``models`` (rows indexed by position)
    and its total weight, ((B, P) float64, (B,) float64); a bucket whose weights sum to zero
    is left out. What a secure sum per bucket computes, for runs without masking."""
    x = np.asarray(models, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    means, totals = [], []
    for members in buckets:
        idx = np.asarray(members, dtype=np.int64)
        total = float(w[idx].sum())
        if total > 0:
            means.append(w[idx] @ x[idx] / total)
            totals.append(total)
    if not means:
        return np.zeros((0, x.shape[1])), np.zeros(0)
    return np.stack(means), np.asarray(totals)
