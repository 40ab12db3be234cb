"""The curious peer's active membership attack (Nasr, Shokri & Houmansadr, "Comprehensive
Privacy Analysis of Deep Learning", IEEE S&P 2019, section V-B, the active attacker in
federated learning).

At local round ``round`` the curious peer ``p`` shares, instead of its honest half-step
model, that model after gradient *ascent* on a set of candidate samples. A neighbour that
holds a candidate in its training data mixes the pushed model in and trains on its data,
which pulls that candidate's raised loss down sharply; a candidate nobody holds is pulled
down only by generalisation. ``p`` then scores each candidate by how far its loss fell from
the pushed model to the neighbours' next models (:func:`~p2pfed.attacks.membership.
active_membership_scores`).

The candidates are chosen from the run's seed, the same way wherever they are needed (on
the peer's host to push, in the driver to score): half from the training data of ``p``'s
first out-neighbour at that round (members), half from held-out data with the same labels
(non-members) — the attacker's membership question is about that neighbour.

Threat model: a participant that deviates from the protocol at one round by sharing a
crafted model; it costs the run that round's contribution of ``p`` (and some accuracy).

Pure: numpy and torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from p2pfed.adversary.config import ActiveConfig
from p2pfed.attacks.membership import gradient_ascent
from p2pfed.data.datasets import Dataset
from p2pfed.topology import TopologySchedule


@dataclass(frozen=True)
class Candidates:
    """The active attack's targets: samples, labels, membership, and whose data they test."""

    x: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    neighbour: int


def active_candidates(
    cfg: ActiveConfig,
    peer: int,
    schedule: TopologySchedule,
    dataset: Dataset,
    shards: Sequence[np.ndarray],
    seed: np.random.SeedSequence,
) -> Candidates:
    """The candidates (see the module docstring); ``seed`` is the adversary's own stream."""
    out = schedule.at(cfg.round).out_neighbours(peer)
    if not out:
        raise ValueError(f"peer {peer} has no out-neighbour at round {cfg.round} to attack")
    k = out[0]
    rng = np.random.default_rng(seed)
    half = min(cfg.candidates // 2, len(shards[k]), len(dataset.x_test))
    members = rng.choice(np.asarray(shards[k]), size=half, replace=False)
    others = matched_nonmembers(dataset.y_train[members], dataset.y_test, rng)
    return Candidates(
        x=np.concatenate([dataset.x_train[members], dataset.x_test[others]]),
        y=np.concatenate([dataset.y_train[members], dataset.y_test[others]]),
        is_member=np.concatenate([np.ones(half, bool), np.zeros(half, bool)]),
        neighbour=int(k),
    )


def matched_nonmembers(
    member_labels: np.ndarray, pool_labels: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices into a held-out pool of one non-member per member, of the member's label where
    the pool has one left (any label otherwise). Without the match, members drawn from one
    peer's shard and non-members drawn from the whole test set differ in their label mix,
    and a model that merely favours some classes separates them: a membership signal that
    is not one."""
    pool_labels = np.asarray(pool_labels)
    if len(member_labels) > len(pool_labels):
        raise ValueError("more members than held-out samples to match them with")
    free = np.ones(len(pool_labels), bool)
    out = np.empty(len(member_labels), dtype=np.int64)
    for i, label in enumerate(np.asarray(member_labels)):
        same = np.flatnonzero(free & (pool_labels == label))
        choice = same if len(same) else np.flatnonzero(free)
        out[i] = choice[rng.integers(len(choice))]
        free[out[i]] = False
    return out


def active_seed(stream: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """The seed adversary ``index`` draws its candidates from, derived from the run's
    adversary ``stream`` without advancing it (so the peer's host and the driver agree)."""
    return np.random.SeedSequence(stream.entropy, spawn_key=(*stream.spawn_key, 1_000 + index))


class ActiveRelease:
    """The curious peer's release hook (``LocalTrainer.release``): its ``round``-th training
    result is replaced by gradient ascent on the candidates; the others pass unchanged."""

    def __init__(self, cfg: ActiveConfig, model: nn.Module, candidates: Candidates):
        self.cfg = cfg
        self.model = model
        self.candidates = candidates

    def __call__(self, index: int, params: np.ndarray) -> np.ndarray:
        if index != self.cfg.round:
            return params
        c = self.candidates
        return gradient_ascent(
            self.model, c.x, c.y, lr=self.cfg.lr, steps=self.cfg.steps, params=params
        )
