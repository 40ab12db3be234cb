"""Field types shared by the config sections.

YAML reads ``true`` as a boolean and Python treats ``bool`` as an ``int``, so a lax float
field would take ``lr: true`` as 1.0; a config that says ``true`` where it means a number is
a mistake to report, not to guess at. (Integer fields use pydantic's ``StrictInt``.)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


#: a float field that refuses booleans (ints and floats are fine)
Real = Annotated[float, BeforeValidator(_not_bool)]
