"""The networks peers train: logistic regression, an MLP and a small CNN.

Every model takes a flat float32 batch (B, F) and returns logits (B, num_classes), so data,
training and aggregation never care which one is in use. No model has buffers (no
BatchNorm): all state lives in parameters, so the flat parameter vector of
:func:`p2pfed.models.get_flat` is the whole model, which is what gossip, secure aggregation
and the attacks exchange and inspect.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from p2pfed.errors import ModelError
from p2pfed.models.config import ModelConfig


def build_model(
    cfg: ModelConfig,
    num_features: int,
    num_classes: int,
    image_shape: tuple[int, int, int] | None,
    seed: int,
) -> nn.Module:
    """Build ``cfg.kind`` with weights initialised deterministically from ``seed``.

    The same seed gives the same initial parameters. torch's global RNG is forked, seeded
    and restored, so building a model never changes random draws elsewhere in the process.

    Raises :class:`ModelError` for impossible sizes or a CNN on data without an image shape.
    """
    if num_features < 1:
        raise ModelError(f"num_features must be >= 1, got {num_features}")
    if num_classes < 2:
        raise ModelError(f"num_classes must be >= 2, got {num_classes}")
    if cfg.kind == "cnn":
        _check_image_shape(num_features, image_shape)
    # torch's layer initialisers read the global generator; forking confines the seeding.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if cfg.kind == "logreg":
            return nn.Sequential(nn.Linear(num_features, num_classes, dtype=torch.float32))
        if cfg.kind == "mlp":
            return _mlp(num_features, cfg.hidden, num_classes)
        if cfg.kind == "cnn":
            assert image_shape is not None  # checked above
            return _cnn(image_shape, cfg.channels, num_classes)
    raise ModelError(f"unknown model kind {cfg.kind!r}")


def _check_image_shape(num_features: int, image_shape: tuple[int, int, int] | None) -> None:
    if image_shape is None:
        raise ModelError(
            "model.kind cnn needs image data; the dataset is tabular (no image_shape). "
            "Use kind mlp or logreg"
        )
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ModelError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape}")
    if math.prod(image_shape) != num_features:
        raise ModelError(
            f"model.kind cnn: image_shape {image_shape} holds {math.prod(image_shape)} values "
            f"but the data has {num_features} features"
        )


def _mlp(num_features: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = num_features
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=torch.float32), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes, dtype=torch.float32))
    return nn.Sequential(*layers)


def _cnn(
    image_shape: tuple[int, int, int], channels: tuple[int, ...], num_classes: int
) -> nn.Sequential:
    c, h, w = image_shape
    # (B, F) -> (B, C, H, W); Unflatten has no state, so the model stays parameters-only.
    layers: list[nn.Module] = [nn.Unflatten(1, image_shape)]
    for out in channels:
        layers += [nn.Conv2d(c, out, kernel_size=3, padding=1, dtype=torch.float32), nn.ReLU()]
        c = out
        # Pool only while the result keeps >= 2 pixels a side: an 8x8 digit survives two
        # blocks at 2x2 instead of collapsing to a single pixel.
        if min(h, w) // 2 >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
    # Flatten rather than global-average-pool: on inputs this small the positions carry
    # much of the signal, and the head stays small (e.g. 32 * 7 * 7 for MNIST).
    layers += [nn.Flatten(), nn.Linear(c * h * w, num_classes, dtype=torch.float32)]
    return nn.Sequential(*layers)
