"""Reading topology specs from YAML files and plain mappings.

Every failure becomes a :class:`~p2pfed.errors.ConfigError` naming the file (``source``) and
the offending field (``key``, pydantic's error location joined with dots, relative to the
topology mapping: a caller embedding it in a larger config adds its own prefix). Duplicate
keys in a YAML mapping are errors too (see :mod:`p2pfed.yamlio`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from p2pfed.errors import ConfigError
from p2pfed.topology.spec import TopologySpec
from p2pfed.yamlio import read_yaml

_VALUE_ERROR_PREFIX = "Value error, "


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """The parsed YAML document at ``path``; ConfigError when missing, unreadable or invalid."""
    return read_yaml(path)


def topology_spec_from_mapping(data: Mapping[str, Any], source: str | None = None) -> TopologySpec:
    """Validate a mapping of TopologySpec fields; ConfigError(key=<field path>) when invalid."""
    if not isinstance(data, Mapping):
        got = "nothing" if data is None else type(data).__name__
        raise ConfigError(f"expected a mapping of topology fields, got {got}", source=source)
    try:
        return TopologySpec.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or None
        message = str(error["msg"]).removeprefix(_VALUE_ERROR_PREFIX)
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(TopologySpec.model_fields)
            message = f"unknown key (allowed: {allowed})"
        raise ConfigError(message, source=source, key=key) from None


def load_topology_spec(path: str | os.PathLike[str]) -> TopologySpec:
    """Read a topology file: a YAML mapping with exactly TopologySpec's keys."""
    return topology_spec_from_mapping(load_yaml(path), source=str(path))
