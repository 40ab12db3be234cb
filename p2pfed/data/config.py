"""Typed, frozen settings for loading a dataset and splitting it across peers.

Both models reject unknown keys and impossible values at construction, so a bad experiment
file fails before any data is touched. :func:`p2pfed.data.load_dataset` and
:func:`p2pfed.data.partition` read them.

Like :class:`~p2pfed.topology.TopologySpec`, a key that the chosen dataset or scheme does not
use must be left unset: ``alpha`` next to ``scheme: iid`` would be silently ignored otherwise.
The check runs in field validators, which pydantic skips for defaults, so it fires exactly for
the keys a config gives, and the error location names the key. Serialising drops the unused
keys, so a dumped (resolved) config loads again.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from p2pfed.fields import Real

# make_classification places each class's clusters on the vertices of a hypercube in the
# informative subspace, so it needs classes * clusters <= 2 ** informative.
SYNTHETIC_CLUSTERS_PER_CLASS = 2

# Keys that only some modes read, and the modes that read them. Keys not listed are read by
# every mode (min_samples: the dispatcher enforces it for every scheme).
_DATASET_FIELDS: dict[str, tuple[str, ...]] = {
    "path": ("npz",),
    "samples_per_peer": ("synthetic",),
    "features": ("synthetic",),
    "classes": ("synthetic",),
    "informative": ("synthetic",),
    "class_sep": ("synthetic",),
}
_SCHEME_FIELDS: dict[str, tuple[str, ...]] = {
    "alpha": ("dirichlet",),
    "classes_per_peer": ("shards",),
    "beta": ("quantity_skew",),
}


def _check_used(
    value: Any, info: ValidationInfo, mode_key: str, users: dict[str, tuple[str, ...]]
) -> Any:
    """Reject a given field that the mode (validated earlier, in ``info.data``) does not read."""
    mode, field = info.data.get(mode_key), str(info.field_name)
    # None is how the optional keys (path, informative) say "unset", as in TopologySpec; mode
    # is absent when it failed validation itself, and that error is reported instead.
    if value is not None and mode is not None and mode not in users[field]:
        raise ValueError(
            f"{field} is only used by {mode_key} {' / '.join(users[field])}, not {mode}"
        )
    return value


def _drop_unused(data: Any, mode: str, users: dict[str, tuple[str, ...]]) -> Any:
    if isinstance(data, dict):
        for field, modes in users.items():
            if mode not in modes:
                data.pop(field, None)
    return data


class DataConfig(BaseModel):
    """Which dataset to load and how much of it to hold out for testing.

    ``samples_per_peer`` .. ``class_sep`` may only be given with ``dataset="synthetic"``;
    ``path`` only with ``dataset="npz"`` (a ``.npz`` archive holding ``x`` (N, ...) and integer
    labels ``y`` (N,)).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset: Literal["digits", "mnist", "synthetic", "npz"] = "digits"
    test_fraction: Real = Field(
        0.2, gt=0.0, lt=1.0, allow_inf_nan=False, description="share of samples held out"
    )
    path: str | None = Field(None, description="the .npz file; required for dataset npz")
    samples_per_peer: StrictInt = Field(
        200, ge=1, description="synthetic: training samples per peer (size scales with peers)"
    )
    features: StrictInt = Field(32, ge=2, description="synthetic: feature count")
    classes: StrictInt = Field(10, ge=2, description="synthetic: class count")
    informative: StrictInt | None = Field(
        None, ge=1, description="synthetic: informative features; default features // 2"
    )
    class_sep: Real = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="synthetic: hypercube size"
    )

    # Runs only for given values (no validate_default), so defaults never trip it.
    @field_validator(*_DATASET_FIELDS)
    @classmethod
    def _check_used_by_dataset(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_used(value, info, "dataset", _DATASET_FIELDS)

    @model_validator(mode="after")
    def _check_consistency(self) -> DataConfig:
        if self.dataset == "npz" and not self.path:
            raise ValueError("path: required when dataset is 'npz' (a .npz file with x and y)")
        if self.informative is not None and self.informative > self.features:
            raise ValueError(f"informative: {self.informative} exceeds features={self.features}")
        if self.dataset == "synthetic":
            needed = self.classes * SYNTHETIC_CLUSTERS_PER_CLASS
            if needed > 2**self.n_informative:
                raise ValueError(
                    f"informative: {self.n_informative} informative features cannot separate "
                    f"{self.classes} classes x {SYNTHETIC_CLUSTERS_PER_CLASS} clusters "
                    f"(needs 2**informative >= {needed}); raise features or informative"
                )
        return self

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _drop_unused(handler(self), self.dataset, _DATASET_FIELDS)

    @property
    def n_informative(self) -> int:
        """``informative`` with its default resolved: ``min(features, max(2, features // 2))``."""
        if self.informative is not None:
            return self.informative
        return min(self.features, max(2, self.features // 2))


class PartitionConfig(BaseModel):
    """How training samples are dealt to peers (the non-IID scheme).

    * ``iid``: uniform shuffle, equal sizes.
    * ``dirichlet``: label skew, per-class proportions ~ Dir(``alpha``) (Hsu, Qi & Brown 2019).
      Smaller ``alpha`` means more skew.
    * ``shards``: each peer holds exactly ``classes_per_peer`` classes (McMahan et al. 2017;
      the "#C=k" label-quantity skew of Li et al. 2022).
    * ``quantity_skew``: IID labels, dataset sizes ~ Dir(``beta``) (Li et al. 2022).

    ``alpha``, ``classes_per_peer`` and ``beta`` may only be given with the scheme that reads
    them. Every scheme gives each peer at least ``min_samples`` training samples or raises
    :class:`~p2pfed.errors.DataError`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: Literal["iid", "dirichlet", "shards", "quantity_skew"] = "dirichlet"
    alpha: Real = Field(
        0.5, gt=0.0, allow_inf_nan=False, description="dirichlet: label concentration"
    )
    classes_per_peer: StrictInt = Field(2, ge=1, description="shards: distinct classes per peer")
    beta: Real = Field(
        1.0, gt=0.0, allow_inf_nan=False, description="quantity_skew: size concentration"
    )
    min_samples: StrictInt = Field(8, ge=1, description="fewest training samples any peer may hold")

    @field_validator(*_SCHEME_FIELDS)
    @classmethod
    def _check_used_by_scheme(cls, value: Any, info: ValidationInfo) -> Any:
        return _check_used(value, info, "scheme", _SCHEME_FIELDS)

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> Any:
        return _drop_unused(handler(self), self.scheme, _SCHEME_FIELDS)
