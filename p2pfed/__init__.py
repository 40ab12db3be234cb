"""p2pfed: asynchronous, privacy-preserving peer-to-peer federated learning.

The public API::

    import p2pfed
    result = p2pfed.run("experiment.yaml", overrides=["protocol.rounds=20"])
    print(result.mean_accuracy, result.run_dir)

Heavy imports (torch, the engine) happen on first use, so ``p2pfed --help`` stays quick.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pfed.errors import (
    ConfigError,
    DataError,
    FrameError,
    ModelError,
    P2PFedError,
    ProtocolError,
    RuntimeFailure,
    TopologyError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from p2pfed.config import ExperimentConfig, load_config
    from p2pfed.experiment import Result, run

_LAZY = {
    "run": "p2pfed.experiment",
    "Result": "p2pfed.experiment",
    "ExperimentConfig": "p2pfed.config",
    "load_config": "p2pfed.config",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'p2pfed' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DataError",
    "ExperimentConfig",
    "FrameError",
    "ModelError",
    "P2PFedError",
    "ProtocolError",
    "Result",
    "RuntimeFailure",
    "TopologyError",
    "__version__",
    "load_config",
    "run",
]
