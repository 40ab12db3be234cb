"""Datasets and their division among peers.

:func:`load_dataset` turns a :class:`DataConfig` into a :class:`Dataset` (flat float32
features, stratified train/test split); :func:`partition` deals the training samples to peers
by a :class:`PartitionConfig` scheme (IID, Dirichlet label skew, shards, quantity skew). All of
it is pure: randomness comes only from the ``numpy.random.Generator`` passed in.
"""

from p2pfed.data.config import DataConfig, PartitionConfig
from p2pfed.data.datasets import Dataset, load_dataset
from p2pfed.data.partition import (
    label_histograms,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    partition_shards,
)

__all__ = [
    "DataConfig",
    "Dataset",
    "PartitionConfig",
    "label_histograms",
    "load_dataset",
    "partition",
    "partition_dirichlet",
    "partition_iid",
    "partition_quantity_skew",
    "partition_shards",
]
