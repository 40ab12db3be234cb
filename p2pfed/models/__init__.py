"""The models peers train and their flat-vector view.

:func:`build_model` makes a logistic regression, MLP or CNN from a :class:`ModelConfig`, all
taking flat (B, F) float32 input; :func:`get_flat` / :func:`set_flat` move a model to and from
the (P,) float32 vector that protocols exchange.
"""

from p2pfed.models.config import ModelConfig
from p2pfed.models.flat import FlatParams, get_flat, model_at, num_parameters, set_flat
from p2pfed.models.nets import build_model

__all__ = [
    "FlatParams",
    "ModelConfig",
    "build_model",
    "get_flat",
    "model_at",
    "num_parameters",
    "set_flat",
]
