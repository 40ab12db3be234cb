"""Typed, frozen settings for the model every peer trains."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

PositiveInt = Annotated[StrictInt, Field(ge=1)]


class ModelConfig(BaseModel):
    """Which network to build.

    * ``logreg``: one linear layer (multinomial logistic regression).
    * ``mlp``: Linear/ReLU layers of widths ``hidden``, then a linear head.
    * ``cnn``: one 3x3 conv + ReLU block per entry of ``channels``, 2x2 max-pooling while the
      image stays at least 2x2, then a linear head. Needs image data.

    Sequences are tuples so the frozen config stays hashable; YAML lists are accepted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["logreg", "mlp", "cnn"] = "mlp"
    hidden: tuple[PositiveInt, ...] = Field(
        (64,), min_length=1, description="mlp: hidden layer widths"
    )
    channels: tuple[PositiveInt, ...] = Field(
        (16, 32), min_length=1, max_length=4, description="cnn: channels of each conv block"
    )
