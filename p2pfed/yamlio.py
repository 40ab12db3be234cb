"""Reading YAML the strict way: safe types only, duplicate keys are errors, and every
problem is one line naming the file and the line.

Plain ``yaml.safe_load`` keeps the last of two equal keys, which silently hides a typo'd
experiment; PyYAML's own error text spans several lines with a source excerpt.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from p2pfed.errors import ConfigError


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; :class:`ConfigError` (one line) when it is not valid."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "cannot parse"
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read and parse the YAML file at ``path``; :class:`ConfigError` when missing, unreadable
    or invalid."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError(f"cannot read file: {reason}", source=source) from None
    return parse_yaml(text, source)
