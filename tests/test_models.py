"""p2pfed.models: shapes, flat-vector round trips, seeded initialisation, trainability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import p2pfed.models as models_pkg
from p2pfed.data import DataConfig, load_dataset
from p2pfed.errors import ModelError
from p2pfed.models import (
    FlatParams,
    ModelConfig,
    build_model,
    get_flat,
    num_parameters,
    set_flat,
)

KINDS = ["logreg", "mlp", "cnn"]
SHAPES = [(64, (1, 8, 8)), (784, (1, 28, 28))]  # digits, mnist


def _batch(features: int, batch: int = 5, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, features, generator=gen)  # (B, F)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("features", "image_shape"), SHAPES)
def test_forward_gives_logits_per_sample(
    kind: str, features: int, image_shape: tuple[int, int, int]
) -> None:
    model = build_model(ModelConfig(kind=kind), features, 10, image_shape, seed=0)
    out = model(_batch(features, batch=7))
    assert out.shape == (7, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # All state lives in parameters, so the flat vector is the whole model.
    assert list(model.buffers()) == []
    assert num_parameters(model) == sum(p.numel() for p in model.state_dict().values())


def test_architectures_follow_the_config() -> None:
    logreg = build_model(ModelConfig(kind="logreg"), 64, 10, None, seed=0)
    assert num_parameters(logreg) == 64 * 10 + 10
    mlp = build_model(ModelConfig(kind="mlp", hidden=[32, 16]), 64, 10, None, seed=0)
    assert num_parameters(mlp) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    cnn = build_model(ModelConfig(kind="cnn", channels=(4,)), 64, 10, (1, 8, 8), seed=0)
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 and convs[0].out_channels == 4
    # 8x8 pooled once to 4x4, flattened into the head.
    assert num_parameters(cnn) == (1 * 4 * 9 + 4) + (4 * 4 * 4 * 10 + 10)


def test_cnn_stops_pooling_on_tiny_images() -> None:
    cnn = build_model(ModelConfig(kind="cnn", channels=(2, 2, 2, 2)), 64, 3, (1, 8, 8), seed=0)
    pools = [m for m in cnn.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 2  # 8 -> 4 -> 2, then no further halving
    assert cnn(_batch(64)).shape == (5, 3)


def test_cnn_on_tabular_data_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="cnn needs image data"):
        build_model(ModelConfig(kind="cnn"), 32, 10, None, seed=0)
    with pytest.raises(ModelError, match="784"):
        build_model(ModelConfig(kind="cnn"), 784, 10, (1, 8, 8), seed=0)


def test_flat_round_trip_is_exact_and_changes_outputs() -> None:
    model = build_model(ModelConfig(kind="cnn"), 64, 10, (1, 8, 8), seed=1)
    x = _batch(64)
    flat = get_flat(model)
    assert flat.dtype == np.float32 and flat.shape == (num_parameters(model),)
    before = model(x).detach().clone()

    other = get_flat(build_model(ModelConfig(kind="cnn"), 64, 10, (1, 8, 8), seed=2))
    set_flat(model, other)
    assert np.array_equal(get_flat(model), other)
    assert not torch.allclose(model(x), before)

    set_flat(model, flat.astype(np.float64))  # float64 accepted, restored exactly
    assert np.array_equal(get_flat(model), flat)
    assert torch.equal(model(x), before)


def test_flat_vectors_never_alias_the_model() -> None:
    model = build_model(ModelConfig(kind="logreg"), 8, 3, None, seed=0)
    flat = get_flat(model)
    flat[:] = 0.0
    assert not np.array_equal(get_flat(model), flat)  # get_flat returned a copy
    source = np.ones(num_parameters(model), dtype=np.float32)
    set_flat(model, source)
    source[:] = 5.0
    assert np.array_equal(get_flat(model), np.ones_like(source))  # set_flat copied


def test_set_flat_keeps_parameter_objects_for_optimisers() -> None:
    model = build_model(ModelConfig(kind="mlp"), 8, 3, None, seed=0)
    params = list(model.parameters())
    set_flat(model, np.zeros(num_parameters(model), dtype=np.float32))
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(float(p.detach().abs().sum()) == 0.0 for p in params)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(3, dtype=np.float32),
        np.zeros(10 * 3 + 3 + 1, dtype=np.float32),
        np.zeros((1, 10 * 3 + 3), dtype=np.float32),
        np.zeros(10 * 3 + 3, dtype=np.int64),
    ],
)
def test_set_flat_rejects_wrong_vectors(bad: np.ndarray) -> None:
    model = build_model(ModelConfig(kind="logreg"), 10, 3, None, seed=0)
    assert num_parameters(model) == 33
    with pytest.raises(ModelError, match=r"33|floating"):
        set_flat(model, bad)


def test_size_error_names_both_sizes() -> None:
    model = build_model(ModelConfig(kind="logreg"), 10, 3, None, seed=0)
    with pytest.raises(ModelError, match=r"\b7\b.*\b33\b"):
        set_flat(model, np.zeros(7, dtype=np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_initialisation_is_seeded(kind: str) -> None:
    cfg = ModelConfig(kind=kind)
    a = get_flat(build_model(cfg, 64, 10, (1, 8, 8), seed=11))
    b = get_flat(build_model(cfg, 64, 10, (1, 8, 8), seed=11))
    c = get_flat(build_model(cfg, 64, 10, (1, 8, 8), seed=12))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_build_model_leaves_torch_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    for kind in KINDS:
        build_model(ModelConfig(kind=kind), 64, 10, (1, 8, 8), seed=99)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(torch.rand(4), expected)


def test_mlp_training_on_digits_reduces_loss() -> None:
    ds = load_dataset(DataConfig(dataset="digits"), 1, np.random.default_rng(0))
    model = build_model(ModelConfig(kind="mlp"), ds.num_features, ds.num_classes, None, seed=0)
    x = torch.from_numpy(ds.x_train)  # (N, 64)
    y = torch.from_numpy(ds.y_train)  # (N,)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    accuracy = float(
        (model(torch.from_numpy(ds.x_test)).argmax(1) == torch.from_numpy(ds.y_test)).float().mean()
    )
    assert accuracy > 0.6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "resnet"},
        {"hidden": [0]},
        {"hidden": []},
        {"channels": (16, -1)},
        {"channels": (1, 2, 3, 4, 5)},
        {"dropout": 0.5},
    ],
)
def test_model_config_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelConfig(**kwargs)


def test_model_config_is_frozen_and_hashable() -> None:
    cfg = ModelConfig(hidden=[32, 16])
    assert cfg.hidden == (32, 16)
    assert hash(cfg) == hash(ModelConfig(hidden=(32, 16)))
    with pytest.raises(ValidationError):
        cfg.kind = "cnn"  # type: ignore[misc]


def test_public_api_is_complete() -> None:
    for name in models_pkg.__all__:
        assert hasattr(models_pkg, name), name


@pytest.mark.parametrize("kind", ["logreg", "mlp", "cnn"])
def test_flat_params_agrees_with_get_and_set_flat(kind: str) -> None:
    model = build_model(ModelConfig(kind=kind), 64, 10, (1, 8, 8), seed=1)  # type: ignore[arg-type]
    fast = FlatParams(model)
    assert np.array_equal(fast.get(), get_flat(model))
    other = get_flat(build_model(ModelConfig(kind=kind), 64, 10, (1, 8, 8), seed=2))  # type: ignore[arg-type]
    readonly = other.copy()
    readonly.flags.writeable = False  # a decoded frame is read-only
    fast.set(readonly)
    assert np.array_equal(get_flat(model), other)
    got = fast.get()
    got[:] = 0.0  # a copy, not a view of the weights
    assert np.array_equal(fast.get(), other)
    for bad in (np.zeros(3, np.float32), np.zeros(fast.size, np.int64)):
        with pytest.raises(ModelError, match=rf"{fast.size}|floating"):
            fast.set(bad)
