"""Dealing training samples to peers: IID, label skew, pathological shards, quantity skew.

Every function is pure numpy: it takes the training labels and a generator, and returns one
int64 index array per peer. The arrays are disjoint and together cover every training sample
exactly once, so no sample is lost or duplicated whatever the skew. Impossible requests
(more peers than samples, more classes per peer than classes) raise
:class:`~p2pfed.errors.DataError` instead of handing a peer an empty shard.

Schemes:

* :func:`partition_iid` — a uniform shuffle cut into near-equal parts (the baseline).
* :func:`partition_dirichlet` — label-distribution skew: for each class, the share of every
  peer is drawn from Dir(alpha). Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data
  Distribution for Federated Visual Classification", 2019.
* :func:`partition_shards` — every peer holds exactly k classes. The pathological non-IID
  split of McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017, in the exact-k form ("#C=k") of Li et al., "Federated
  Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022.
* :func:`partition_quantity_skew` — IID labels, dataset sizes drawn from Dir(beta)
  (Li et al., ICDE 2022).
"""

from __future__ import annotations

import numpy as np

from p2pfed.data.config import PartitionConfig
from p2pfed.errors import DataError

MAX_DIRICHLET_DRAWS = 1000


def partition(
    labels: np.ndarray, num_peers: int, cfg: PartitionConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split the training set by ``cfg.scheme``; each peer gets >= ``cfg.min_samples`` samples."""
    labels = _check_labels(labels, num_peers, cfg.min_samples)
    if cfg.scheme == "iid":
        parts = partition_iid(labels, num_peers, rng)
    elif cfg.scheme == "dirichlet":
        parts = partition_dirichlet(labels, num_peers, cfg.alpha, rng, cfg.min_samples)
    elif cfg.scheme == "shards":
        parts = partition_shards(labels, num_peers, cfg.classes_per_peer, rng)
    elif cfg.scheme == "quantity_skew":
        parts = partition_quantity_skew(labels, num_peers, cfg.beta, rng, cfg.min_samples)
    else:
        raise DataError(f"unknown partition scheme {cfg.scheme!r}")
    smallest = min(len(p) for p in parts)
    if smallest < cfg.min_samples:
        # Only shards can get here: its sizes follow the class sizes, not min_samples.
        raise DataError(
            f"{cfg.scheme} partition left a peer with {smallest} training samples, fewer "
            f"than min_samples={cfg.min_samples}; use fewer peers or a smaller min_samples"
        )
    return parts


def partition_iid(labels: np.ndarray, num_peers: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all samples and cut them into ``num_peers`` parts whose sizes differ by <= 1."""
    labels = _check_labels(labels, num_peers, 1)
    order = rng.permutation(len(labels))  # (N,)
    return [part.astype(np.int64) for part in np.array_split(order, num_peers)]


def partition_dirichlet(
    labels: np.ndarray,
    num_peers: int,
    alpha: float,
    rng: np.random.Generator,
    min_samples: int = 8,
) -> list[np.ndarray]:
    """Label skew after Hsu, Qi & Brown (2019).

    For every class c, draw q_c ~ Dir(alpha * 1_K) over the K peers and deal the class's
    shuffled samples out in those proportions. alpha -> infinity approaches IID; alpha -> 0
    gives each class to few peers. The whole partition is redrawn (up to
    ``MAX_DIRICHLET_DRAWS`` times) until every peer holds at least ``min_samples`` samples;
    redrawing, rather than patching small peers up, keeps the drawn proportions honest.
    """
    if not alpha > 0:
        raise DataError(f"dirichlet partition: alpha must be > 0, got {alpha}")
    labels = _check_labels(labels, num_peers, min_samples)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    concentration = np.full(num_peers, float(alpha))  # (K,)
    smallest = 0
    for _ in range(MAX_DIRICHLET_DRAWS):
        chunks: list[list[np.ndarray]] = [[] for _ in range(num_peers)]
        for idx in by_class:
            shuffled = rng.permutation(idx)
            shares = rng.dirichlet(concentration)  # (K,)
            cuts = _cuts(shares, len(shuffled))  # (K - 1,)
            for peer, piece in enumerate(np.split(shuffled, cuts)):
                chunks[peer].append(piece)
        parts = [np.concatenate(c).astype(np.int64) for c in chunks]
        smallest = min(len(p) for p in parts)
        if smallest >= min_samples:
            return parts
    raise DataError(
        f"dirichlet partition: after {MAX_DIRICHLET_DRAWS} draws with alpha={alpha}, some peer "
        f"still held fewer than min_samples={min_samples} samples (last smallest: {smallest}) "
        f"of {len(labels)} across {num_peers} peers; use a larger alpha, fewer peers or a "
        "smaller min_samples"
    )


def partition_shards(
    labels: np.ndarray, num_peers: int, classes_per_peer: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Pathological label skew: each peer holds exactly ``classes_per_peer`` distinct classes.

    McMahan et al. (2017) sort by label and give each client two of 2n equal shards; that
    leaves some clients with one class. Following Li et al. (2022, "#C=k"), classes are
    assigned directly instead: with the classes in a shuffled order o, peer i gets
    o[(i*k + j) mod C] for j < k. Consecutive positions mod C are distinct (k <= C), and
    positions 0 .. n*k-1 cover every class once n*k >= C. Each class's shuffled samples are
    then split evenly among the peers holding it.

    Every sample must belong to some peer, so n*k < C (some class held by nobody) is an error,
    as is a class with fewer samples than peers holding it.
    """
    labels = _check_labels(labels, num_peers, 1)
    classes = np.unique(labels)
    num_classes = len(classes)
    k = classes_per_peer
    if k < 1:
        raise DataError(f"shards partition: classes_per_peer must be >= 1, got {k}")
    if k > num_classes:
        raise DataError(
            f"shards partition: classes_per_peer={k} exceeds the {num_classes} classes present"
        )
    if num_peers * k < num_classes:
        raise DataError(
            f"shards partition: {num_peers} peers x classes_per_peer={k} cannot hold all "
            f"{num_classes} classes, so some samples would belong to no peer; raise "
            "classes_per_peer or the number of peers"
        )
    order = rng.permutation(classes)  # (C,)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for peer in range(num_peers):
        for j in range(k):
            holders[int(order[(peer * k + j) % num_classes])].append(peer)

    chunks: list[list[np.ndarray]] = [[] for _ in range(num_peers)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        peers = holders[int(c)]
        if len(idx) < len(peers):
            raise DataError(
                f"shards partition: class {int(c)} has {len(idx)} samples but {len(peers)} "
                "peers must hold it; use fewer peers or a smaller classes_per_peer"
            )
        for peer, piece in zip(peers, np.array_split(idx, len(peers)), strict=True):
            chunks[peer].append(piece)
    return [np.concatenate(c).astype(np.int64) for c in chunks]


def partition_quantity_skew(
    labels: np.ndarray,
    num_peers: int,
    beta: float,
    rng: np.random.Generator,
    min_samples: int = 8,
) -> list[np.ndarray]:
    """Quantity skew after Li et al. (2022): peer sizes ~ Dir(beta), labels IID.

    Each peer first gets ``min_samples``; the remaining samples are shared in proportions
    q ~ Dir(beta * 1_K), rounded by largest remainder so the sizes sum exactly to N. Reserving
    the minimum up front guarantees it without redrawing (and without biasing q).
    """
    if not beta > 0:
        raise DataError(f"quantity_skew partition: beta must be > 0, got {beta}")
    labels = _check_labels(labels, num_peers, min_samples)
    n = len(labels)
    spare = n - num_peers * min_samples
    shares = rng.dirichlet(np.full(num_peers, float(beta)))  # (K,)
    exact = shares * spare  # (K,)
    extra = np.floor(exact).astype(np.int64)  # (K,)
    leftover = spare - int(extra.sum())
    # Stable sort so ties resolve by peer index, independent of platform.
    extra[np.argsort(-(exact - extra), kind="stable")[:leftover]] += 1
    sizes = min_samples + extra  # (K,)
    order = rng.permutation(n)  # (N,)
    return [part.astype(np.int64) for part in np.split(order, np.cumsum(sizes)[:-1])]


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-peer label counts, shape (num_peers, num_classes) int64; row i sums to len(parts[i])."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}"
        )
    hist = np.zeros((len(parts), num_classes), dtype=np.int64)  # (K, C)
    for peer, idx in enumerate(parts):
        hist[peer] = np.bincount(labels[idx], minlength=num_classes)
    return hist


def _cuts(shares: np.ndarray, n: int) -> np.ndarray:
    """Split points (K - 1,) that deal n items in proportions ``shares`` (K,)."""
    return (np.cumsum(shares)[:-1] * n).astype(np.int64)


def _check_labels(labels: np.ndarray, num_peers: int, min_samples: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    if num_peers < 1:
        raise DataError(f"num_peers must be >= 1, got {num_peers}")
    if len(labels) < num_peers * min_samples:
        raise DataError(
            f"{len(labels)} training samples cannot give {num_peers} peers at least "
            f"{min_samples} each (needs {num_peers * min_samples}); use fewer peers, more data "
            "or a smaller min_samples"
        )
    return labels
