"""The trainer's SGD step (issue 8, item 4): torch's functional ``sgd`` on ``autograd.grad``'s
gradients gives exactly what ``optimizer.step()`` after ``backward`` gives, and keeps the
momentum buffers where the optimiser (and ``forget``, and checkpoints) look for them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from p2pfed.models import build_model
from p2pfed.models.config import ModelConfig
from p2pfed.training import Evaluator, LocalTrainer, TrainingConfig


def _trained(functional: bool, cfg: dict[str, Any]) -> tuple[np.ndarray, LocalTrainer]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 32)).astype(np.float32)
    y = rng.integers(0, 10, 120)
    model = build_model(ModelConfig(kind="mlp", hidden=[16]), 32, 10, None, 0)
    trainer = LocalTrainer(model, x, y, TrainingConfig(**cfg), np.random.default_rng(1))
    assert trainer._functional  # plain SGD takes the functional path by default
    trainer._functional = functional
    params = trainer.flat.get()
    for _ in range(4):
        params = trainer.train(params).params
    return params, trainer


@pytest.mark.parametrize(
    "cfg",
    [
        {"lr": 0.1, "batch_size": 32, "momentum": 0.9},
        {"lr": 0.05, "batch_size": 16, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
        {"lr": 0.1, "batch_size": 32, "momentum": 0.0},
    ],
)
def test_the_functional_step_is_the_optimiser_step_bit_for_bit(cfg: dict[str, Any]) -> None:
    fast, trainer = _trained(True, cfg)
    slow, reference = _trained(False, cfg)
    assert np.array_equal(fast, slow)
    bufs = [trainer.optimizer.state[p].get("momentum_buffer") for p in trainer.flat.params]
    ref = [reference.optimizer.state[p].get("momentum_buffer") for p in reference.flat.params]
    for a, b in zip(bufs, ref, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    if cfg["momentum"]:
        assert all(b is not None for b in bufs)
        trainer.forget()
        assert not trainer.optimizer.state


def test_the_evaluator_scores_as_torch_cross_entropy_and_argmax_would() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    y = rng.integers(0, 10, 500)
    model = build_model(ModelConfig(kind="mlp", hidden=[16]), 32, 10, None, 0)
    evaluator = Evaluator(model, x, y)
    for scale in (0.1, 1.0, 30.0):  # large logits: logsumexp must stay stable
        params = (scale * rng.standard_normal(evaluator.flat.size)).astype(np.float32)
        got = evaluator.evaluate(params)
        evaluator.flat.set(params)
        with torch.no_grad():
            logits = model(torch.as_tensor(x))
            labels = torch.as_tensor(y)
            loss = float(torch.nn.functional.cross_entropy(logits, labels))
            acc = float((logits.argmax(dim=1) == labels).float().mean())
        assert got.accuracy == acc
        assert got.loss == pytest.approx(loss, rel=1e-5)
