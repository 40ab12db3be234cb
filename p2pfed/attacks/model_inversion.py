"""Model inversion from confidences: MI-Face, a class's representative input from the model.

MI-Face (Fredrikson, Jha & Ristenpart, "Model Inversion Attacks that Exploit Confidence
Information and Basic Countermeasures", CCS 2015, section 5.2, Algorithm 1) runs gradient
descent on the *input* of a trained classifier ``f`` to minimise

    c(x) = 1 - f~_label(x) + AuxTerm(x)

where ``f~_label`` is the softmax confidence of the target class. From a start image ``x_0``
it takes steps ``x_i = Process(x_{i-1} - lambda * grad c(x_{i-1}))``, clamped to the input
domain (``[0, 1]`` for the bundled image sets), and stops after ``alpha`` steps, when the
cost has not improved for ``beta`` steps, or when it falls to ``gamma``; it returns the
lowest-cost ``x_i``. The paper's names map to the keyword arguments here: ``lambda`` ->
``step_size``, ``alpha`` -> ``max_iter``, ``beta`` -> ``patience``, ``gamma`` ->
``threshold``.

Choices, and why:

* Defaults ``step_size=0.1``, ``max_iter=5000``, ``patience=100`` are the paper's
  lambda, alpha and beta. Its ``gamma = 0.99`` (also IBM ART's ``MIFace`` default) cannot
  be meant literally against ``c``: the zero start already costs 0.9 for ten classes, so
  the descent would stop before its first step. Read as a confidence (stop at 0.99, i.e.
  ``c <= 0.01``) it stops after a few dozen steps, from images that an independent model
  recognises for 7-9 of 10 digits (softmax target) and 2-3 of 10 (MLP target) in our
  measurements on three splits of digits. The default here is ``threshold=1e-4`` (stop at
  confidence 0.9999): 10/10 and 5-8/10 on the same splits.
* "Not improved for ``beta`` steps" compares with the best cost so far, as the paper's
  text says. Algorithm 1's literal test ``c(x_i) >= max(c_{i-1}, ..., c_{i-beta})`` stops
  instead at the first step worse than the whole window (one overshoot) and runs on while
  the cost oscillates without getting better.
* ``Process`` (the paper denoises and sharpens for its MLP and DAE face models) is a
  parameter; the default is none, as in the paper's softmax-regression experiments.
  :func:`smoothing` gives a light 3x3 blur for small images. On 8x8 digits it hurts: a
  blur every step fights the gradient, and with weight 0.05 an independent model
  recognised 7-9 of 10 softmax-target inversions instead of 9-10.
* The start image is a parameter: zeros (the paper's ``x_0 = 0``, an attacker who knows
  nothing) by default, or e.g. the dataset's mean image when the attacker knows it.
* Iterations are batched over classes: the rows of a batch do not interact (no model here
  has batch statistics, and the model runs in eval mode), so each row follows exactly the
  single-class descent, with its own early stop.

Threat model: the attacker can query the trained model and read its confidences. A *curious
peer* holds the model's parameters (every model it received) and differentiates through it
(``gradient="autograd"``, the paper's white-box setting). A *black-box attacker* only queries
the final model; ``gradient="numeric"`` estimates the gradient by central differences of the
confidences (the paper's black-box variant), at ``2 F`` queries per step for ``F``
features. Both recover what the model learned about a class -- its average
member -- not any one training record; on digits that is a recognisable digit. The paper's
countermeasure is to round the confidences the model reveals (coarse confidences defeat the
numeric gradient); DP training weakens the per-record signal but not the class average.

Pure: numpy and torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

Stop = Literal["threshold", "patience", "max_iter"]
Gradient = Literal["autograd", "numeric"]
# AuxTerm: (k, F) inputs -> (k,) extra cost per row (the attacker's side information).
AuxTerm = Callable[[torch.Tensor], torch.Tensor]
# Process: (k, F) inputs after a gradient step -> (k, F) processed inputs.
Process = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Inversion:
    """One class's MI-Face result: the lowest-cost input seen during the descent."""

    label: int
    image: np.ndarray  # (F,) in [bounds]; the model's dtype (float32 for p2pfed models)
    cost: float  # c(image) = 1 - confidence + AuxTerm(image)
    confidence: float  # the target model's softmax probability of ``label`` at ``image``
    iterations: int  # gradient steps taken before stopping
    stopped: Stop  # which rule ended the descent


def mi_face(
    model: nn.Module,
    label: int,
    *,
    start: np.ndarray | None = None,
    num_features: int | None = None,
    step_size: float = 0.1,
    max_iter: int = 5000,
    patience: int = 100,
    threshold: float = 1e-4,
    aux: AuxTerm | None = None,
    process: Process | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    gradient: Gradient = "autograd",
    fd_step: float = 1e-3,
) -> Inversion:
    """MI-Face for one class: invert ``model`` (flat (B, F) input -> (B, C) logits) at
    ``label``. See :func:`invert_classes` for the parameters and the errors raised."""
    return invert_classes(
        model,
        [label],
        start=start,
        num_features=num_features,
        step_size=step_size,
        max_iter=max_iter,
        patience=patience,
        threshold=threshold,
        aux=aux,
        process=process,
        bounds=bounds,
        gradient=gradient,
        fd_step=fd_step,
    )[0]


def invert_classes(
    model: nn.Module,
    classes: Sequence[int],
    *,
    start: np.ndarray | None = None,
    num_features: int | None = None,
    step_size: float = 0.1,
    max_iter: int = 5000,
    patience: int = 100,
    threshold: float = 1e-4,
    aux: AuxTerm | None = None,
    process: Process | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    gradient: Gradient = "autograd",
    fd_step: float = 1e-3,
) -> list[Inversion]:
    """MI-Face for each class in ``classes``, one :class:`Inversion` per class, in order
    (``np.stack([r.image for r in result])`` is the (k, F) batch of images).

    ``start``: the start image, (F,) shared by every class or (k, F) one per class; zeros by
    default, of ``num_features`` features or, without it, the model's input width (its
    first ``Linear`` or ``Unflatten`` layer). ``step_size``, ``max_iter``, ``patience`` and
    ``threshold`` are the paper's lambda, alpha, beta and gamma (module docstring). ``aux``
    adds a per-row AuxTerm to the cost; ``process`` runs after every gradient step, before
    the clamp to ``bounds``. ``gradient="numeric"`` uses only the model's confidences
    (central differences of step ``fd_step``). The descent runs on the model's device and
    dtype. The model's parameters and their ``.grad`` are left untouched; it runs in eval
    mode and its train/eval flag is restored.

    Raises ``ValueError`` for a class outside ``[0, C)``, a start of the wrong shape,
    outside ``bounds`` or not finite, and impossible settings.
    """
    _check_settings(step_size, max_iter, patience, bounds, gradient, fd_step)
    labels = [_as_label(c) for c in classes]
    if not labels:
        raise ValueError("classes is empty: name at least one class to invert")
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    x0 = _start_batch(model, start, num_features, len(labels), bounds)  # (k, F)
    x = torch.as_tensor(x0, dtype=dtype, device=device)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"classes {bad} are out of range: the model has {num_classes}")
        target = torch.as_tensor(labels, dtype=torch.int64, device=device)  # (k,)
        rule = _Rule(step_size, max_iter, patience, threshold, bounds)
        return _descend(model, x, target, rule, aux, process, gradient, fd_step)
    finally:
        model.train(was_training)


def smoothing(image_shape: tuple[int, int], weight: float = 0.1) -> Process:
    """A light denoising ``Process``: ``x <- (1 - weight) x + weight * blur3x3(x)`` on each
    (H, W) image of a flat (k, H*W) batch (edges replicated, so a constant image is a fixed
    point). Raises ``ValueError`` for a weight outside ``[0, 1]`` or a bad shape."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    h, w = image_shape
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be positive, got {image_shape}")

    def process(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != h * w:
            raise ValueError(f"expected {h * w} features for {image_shape}, got {x.shape[1]}")
        img = x.reshape(-1, 1, h, w)  # (k, 1, H, W)
        padded = nn.functional.pad(img, (1, 1, 1, 1), mode="replicate")  # (k, 1, H+2, W+2)
        blurred = nn.functional.avg_pool2d(padded, kernel_size=3, stride=1)  # (k, 1, H, W)
        return (1.0 - weight) * x + weight * blurred.reshape(x.shape)

    return process


@dataclass(frozen=True)
class _Rule:
    """Algorithm 1's step and stopping rule: lambda, alpha, beta, gamma and the domain."""

    step_size: float
    max_iter: int
    patience: int
    threshold: float
    bounds: tuple[float, float]


def _descend(
    model: nn.Module,
    x: torch.Tensor,  # (k, F)
    target: torch.Tensor,  # (k,)
    rule: _Rule,
    aux: AuxTerm | None,
    process: Process | None,
    gradient: Gradient,
    fd_step: float,
) -> list[Inversion]:
    """Algorithm 1, batched: every row runs its own descent and stops on its own."""
    k, dev = x.shape[0], x.device
    lo, hi = rule.bounds
    best = x.clone()
    best_cost = torch.full((k,), math.inf, dtype=torch.float64, device=dev)
    best_conf = torch.zeros(k, dtype=torch.float64, device=dev)
    stale = torch.zeros(k, dtype=torch.int64, device=dev)
    steps = torch.zeros(k, dtype=torch.int64, device=dev)
    active = torch.ones(k, dtype=torch.bool, device=dev)
    stopped: list[Stop] = ["max_iter"] * k
    for i in range(rule.max_iter + 1):
        cost, conf, grad = _cost_and_grad(model, x, target, aux, gradient, fd_step)
        # stage 1: keep the best x_i of each still-running row
        improved = active & (cost < best_cost)
        best[improved] = x[improved]
        best_cost[improved] = cost[improved]
        best_conf[improved] = conf[improved]
        stale = torch.where(improved, 0, stale + 1)
        # stage 2: the stopping rules (gamma, then beta; alpha ends the loop)
        reached = active & (cost <= rule.threshold)
        stalled = active & ~reached & (stale >= rule.patience)
        for r in torch.nonzero(reached | stalled).flatten().tolist():
            stopped[r] = "threshold" if reached[r] else "patience"
        active &= ~(reached | stalled)
        if i == rule.max_iter or not bool(active.any()):
            break
        # stage 3: x_i = clamp(Process(x_{i-1} - lambda grad c(x_{i-1}))) for running rows
        with torch.no_grad():
            stepped = x - rule.step_size * grad
            if process is not None:
                stepped = process(stepped)
            x = torch.where(active[:, None], stepped.clamp(lo, hi), x)
        steps += active.to(torch.int64)
    images = best.detach().cpu().numpy()  # (k, F)
    return [
        Inversion(
            label=int(target[r]),
            image=images[r].copy(),
            cost=float(best_cost[r]),
            confidence=float(best_conf[r]),
            iterations=int(steps[r]),
            stopped=stopped[r],
        )
        for r in range(k)
    ]


def _cost_and_grad(
    model: nn.Module,
    x: torch.Tensor,  # (k, F)
    target: torch.Tensor,  # (k,)
    aux: AuxTerm | None,
    gradient: Gradient,
    fd_step: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """c(x) (k,) float64, the confidence f~_label(x) (k,) float64, and grad c(x) (k, F)."""

    def cost_of(xs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf = torch.softmax(model(xs), dim=1).gather(1, labels[:, None])[:, 0]  # (n,)
        c = 1.0 - conf
        if aux is not None:
            c = c + aux(xs)
        return c, conf

    if gradient == "autograd":
        xg = x.detach().requires_grad_(True)
        c, conf = cost_of(xg, target)
        # grad of the sum is every row's own gradient: rows do not interact
        (grad,) = torch.autograd.grad(c.sum(), xg)
        return c.detach().double(), conf.detach().double(), grad.detach()
    with torch.no_grad():
        c, conf = cost_of(x, target)
        k, f = x.shape
        eye = fd_step * torch.eye(f, dtype=x.dtype, device=x.device)  # (F, F)
        # (k, 2F, F): every row nudged up and down along each feature
        probes = torch.cat([x[:, None, :] + eye, x[:, None, :] - eye], dim=1)
        pc, _ = cost_of(probes.reshape(k * 2 * f, f), target.repeat_interleave(2 * f))
        pc = pc.reshape(k, 2, f).double()
        grad = ((pc[:, 0] - pc[:, 1]) / (2.0 * fd_step)).to(x.dtype)  # (k, F)
    return c.double(), conf.double(), grad


def _as_label(c: object) -> int:
    if isinstance(c, bool) or not isinstance(c, int | np.integer):
        raise ValueError(f"classes must be integers, got {c!r}")
    return int(c)


def _check_settings(
    step_size: float,
    max_iter: int,
    patience: int,
    bounds: tuple[float, float],
    gradient: str,
    fd_step: float,
) -> None:
    if not (math.isfinite(step_size) and step_size > 0.0):
        raise ValueError(f"step_size must be positive, got {step_size}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with low < high, got {bounds}")
    if gradient not in ("autograd", "numeric"):
        raise ValueError(f"gradient must be 'autograd' or 'numeric', got {gradient!r}")
    if not (math.isfinite(fd_step) and fd_step > 0.0):
        raise ValueError(f"fd_step must be positive, got {fd_step}")


def _start_batch(
    model: nn.Module,
    start: np.ndarray | None,
    num_features: int | None,
    k: int,
    bounds: tuple[float, float],
) -> np.ndarray:
    """The (k, F) start images: ``start`` repeated for every class, or zeros."""
    expected = _input_width(model)
    if start is None:
        f = num_features if num_features is not None else expected
        if f is None:
            raise ValueError("cannot tell the model's input width: pass start or num_features")
        s = np.zeros((k, f))
    else:
        s = np.asarray(start, dtype=np.float64)
        if s.ndim == 1:
            s = np.repeat(s[None, :], k, axis=0)
        if s.ndim != 2 or s.shape[0] != k:
            raise ValueError(f"start must be (F,) or ({k}, F) for {k} classes, got {s.shape}")
    f = s.shape[1]
    if f < 1:
        raise ValueError("the start image has no features")
    if num_features is not None and f != num_features:
        raise ValueError(f"start has {f} features, num_features is {num_features}")
    if expected is not None and f != expected:
        raise ValueError(f"{f} start features but the model takes {expected}")
    if not np.all(np.isfinite(s)):
        raise ValueError("start must be finite")
    lo, hi = bounds
    if s.min() < lo or s.max() > hi:
        raise ValueError(f"start must lie in bounds {bounds}")
    return s


def _input_width(model: nn.Module) -> int | None:
    """The flat input width of the model's first ``Linear`` or ``Unflatten`` layer, if any."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
        if isinstance(m, nn.Unflatten):
            return math.prod(int(d) for d in m.unflattened_size)
        if isinstance(m, nn.Conv2d | nn.Conv1d):
            break  # a conv before any Unflatten: the width is not written in the layers
    return None
