"""Gradient inversion by optimisation: DLG, iDLG and Inverting Gradients.

Where :mod:`p2pfed.attacks.inversion` reads an input straight off a first layer's gradient,
the attacks here search for an input whose gradient looks like the one observed, so they
need no particular layer and extend to multi-step updates:

* DLG (Zhu, Liu & Han, "Deep Leakage from Gradients", NeurIPS 2019, Alg. 1): optimise a
  dummy input and a dummy soft label with L-BFGS so that the squared L2 distance between
  the dummy's gradient and the observed one vanishes.
* iDLG (Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020): read the
  label off the output layer's gradient first (:func:`~p2pfed.attacks.inversion.idlg_label`),
  then optimise the input alone, which is exact in the label and better conditioned.
* Inverting Gradients (Geiping, Bauermeister, Dröge & Moeller, "Inverting Gradients - How
  easy is it to break privacy in federated learning?", NeurIPS 2020): minimise
  ``1 - cos(dummy, observed) + tv_weight * TV(dummy)`` with Adam on the *signed* input
  gradient, a step-decay learning rate (x0.1 at 3/8, 5/8 and 7/8 of the steps) and a box
  constraint on the input. For an update made of several local SGD steps (the paper's
  federated-averaging experiments), the local steps are simulated on the dummy batch and
  the resulting parameter change is matched, not a single gradient.

Observed gradients and updates are given per parameter, as a sequence of arrays or tensors
in ``model.parameters()`` order with each parameter's shape (or a mapping from parameter
name), or as one flat vector (P,) in the project's flat layout (:mod:`p2pfed.models.flat`:
the concatenation of ``p.ravel()`` over ``model.parameters()``); :func:`split_flat` cuts
the latter into the former. An update seen on the wire is ``delta = x_after - x_before``;
when it is one plain SGD step, :func:`gradient_from_sgd_step` gives the gradient
``-delta / lr`` that DLG and iDLG match. The model passed in must hold the parameters the
gradient was taken at (``x_before``).

Threat model: an honest-but-curious neighbour, eavesdropper or coordinator that knows the
model architecture and the parameters a peer started from (it sent or saw them), and sees
that peer's plain gradient or local update, e.g. on a plaintext gossip link. It knows the
local learning rate and number of local steps (the shared training config). DP noise,
secure aggregation or encryption take that view away; the tests measure how much.

Pure: numpy and torch; the attacks work on a float64 copy of the model (the caller's model is
never changed), and every random draw comes from a ``torch.Generator`` seeded by ``seed``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from p2pfed.attacks.inversion import idlg_label

_CONVERGED = 1e-8  # relative gradient distance at which the input counts as found
_PROGRESS = 1e-3  # the least relative improvement that warrants another L-BFGS restart

GradientLike = np.ndarray | torch.Tensor
Gradients = GradientLike | Sequence[GradientLike] | Mapping[str, GradientLike]
"""A flat vector (P,); one array per parameter, in ``model.parameters()`` order; or one per
parameter name (as :func:`~p2pfed.attacks.inversion.single_sample_gradients` returns)."""


@dataclass(frozen=True)
class GradientInversion:
    """What DLG or iDLG made of one sample's gradient."""

    reconstruction: np.ndarray  # (F,) float64, the input found
    label: int  # the label used (iDLG, or given) or found (argmax of DLG's soft label)
    loss: float  # final ||g_dummy - g||^2 / ||g||^2 (relative squared L2 distance)
    iterations: int  # L-BFGS iterations run, over all tries


@dataclass(frozen=True)
class UpdateInversion:
    """What Inverting Gradients made of a local update."""

    reconstruction: np.ndarray  # (B, F) float64, one row per sample of the dummy batch
    labels: tuple[int, ...]  # (B,) the labels used (given, or iDLG's for B = 1)
    loss: float  # final 1 - cos(delta_dummy, delta) + tv_weight * TV
    iterations: int  # Adam steps run


def split_flat(model: nn.Module, flat: GradientLike) -> list[np.ndarray]:
    """A flat vector (P,) cut into float64 arrays shaped like ``model.parameters()``, in
    that order. Raises ``ValueError`` unless ``flat`` is 1-D with exactly P values."""
    arr = _as_numpy(flat)
    shapes = [tuple(p.shape) for p in model.parameters()]
    sizes = [math.prod(s) for s in shapes]
    if arr.ndim != 1 or arr.size != sum(sizes):
        raise ValueError(
            f"a flat gradient must be 1-D with one value per parameter ({sum(sizes)}), "
            f"got shape {arr.shape}"
        )
    cuts = np.cumsum(sizes)[:-1]
    return [c.reshape(s) for c, s in zip(np.split(arr, cuts), shapes, strict=True)]


def gradient_from_sgd_step(update: GradientLike, lr: float) -> np.ndarray:
    """The gradient behind one plain SGD step: ``-update / lr`` as float64, where
    ``update = x_after - x_before`` (any shape; typically the flat vector (P,))."""
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"the learning rate must be a positive number, got {lr}")
    return -_as_numpy(update) / lr


def dlg(
    model: nn.Module,
    target_grads: Gradients,
    *,
    num_features: int,
    num_classes: int,
    label: int | None = None,
    steps: int = 300,
    seed: int = 0,
    restarts: int = 8,
    box: tuple[float, float] | None = None,
) -> GradientInversion:
    """Deep Leakage from Gradients on one sample's cross-entropy gradient.

    ``target_grads`` is the observed gradient at the model's current parameters, flat (P,)
    or per parameter (see the module docstring). The dummy input (1, F) starts uniform in
    [0, 1) and, unless ``label`` is given, a dummy soft label (1, C) starts standard normal
    (both drawn from ``seed``). L-BFGS (strong-Wolfe line search) minimises the relative
    squared distance of the gradients for at most ``steps`` iterations a try; a try that
    stalls short of a match (on a ReLU network the distance jumps where a hidden unit
    switches, which traps the line search) is repeated from a fresh draw, up to
    ``restarts`` tries, and the best try is returned. The search is unconstrained;
    ``box = (lo, hi)`` clips the returned reconstruction (with a noisy gradient that keeps
    it in the data's range).
    """
    _check_search(num_features, num_classes, steps, restarts, box)
    if label is not None and not 0 <= label < num_classes:
        raise ValueError(f"label must be in [0, {num_classes}), got {label}")
    net = _float64_copy(model, num_features, num_classes)
    target = _target(net, target_grads)
    return _search(net, target, num_features, num_classes, label, steps, seed, restarts, box)


def idlg(
    model: nn.Module,
    target_grads: Gradients,
    *,
    num_features: int,
    steps: int = 300,
    seed: int = 0,
    restarts: int = 8,
    box: tuple[float, float] | None = None,
) -> GradientInversion:
    """iDLG: the label from the output layer's gradient (the last parameter: a bias (C,),
    or a weight (C, H) when the last layer has no bias), then :func:`dlg`'s search for the
    input alone, with that label fixed."""
    num_classes = _output_size(model)
    _check_search(num_features, num_classes, steps, restarts, box)
    net = _float64_copy(model, num_features, num_classes)
    target = _target(net, target_grads)
    out = target[-1].numpy()
    if out.ndim == 1:
        label = idlg_label(grad_out_bias=out)
    else:
        label = idlg_label(grad_out_weight=out.reshape(out.shape[0], -1))
    return _search(net, target, num_features, num_classes, label, steps, seed, restarts, box)


def inverting_gradients(
    model: nn.Module,
    update: Gradients,
    *,
    lr_local: float,
    local_steps: int,
    num_features: int,
    num_classes: int,
    labels: Sequence[int] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    tv_weight: float = 0.0,
    steps: int = 1000,
    lr: float = 0.1,
    seed: int = 0,
    box: tuple[float, float] = (0.0, 1.0),
) -> UpdateInversion:
    """Inverting Gradients on a local update ``delta = x_after - x_before`` (flat (P,) or per
    parameter), made by ``local_steps`` plain SGD steps with rate ``lr_local`` on a batch of
    B samples (each step on the whole batch, mean cross-entropy), starting from the model's
    current parameters.

    ``labels`` (B,) are the batch's labels; without them the batch is one sample whose label
    iDLG reads off the output bias (it moves up at the true class only). The dummy batch
    (B, F) starts uniform in ``box``; each of ``steps`` Adam steps (rate ``lr``) follows the
    sign of the input's gradient and is clipped back into ``box``. The objective is
    ``1 - cos(delta_dummy, delta)`` over all parameters at once, plus ``tv_weight`` times the
    mean anisotropic total variation of the images when ``image_shape`` (C, H, W) is given.
    A single observed gradient ``g`` is the update ``-g`` with ``local_steps = 1`` (the
    cosine ignores the scale).
    """
    _check_sizes(num_features, num_classes, steps)
    for name, value in (("lr_local", lr_local), ("lr", lr)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
    if local_steps < 1:
        raise ValueError(f"local_steps must be >= 1, got {local_steps}")
    _check_box(box)
    if not (math.isfinite(tv_weight) and tv_weight >= 0):
        raise ValueError(f"tv_weight must be a number >= 0, got {tv_weight}")
    if image_shape is not None and math.prod(image_shape) != num_features:
        raise ValueError(
            f"image_shape {image_shape} holds {math.prod(image_shape)} values, "
            f"not num_features={num_features}"
        )
    if tv_weight > 0 and image_shape is None:
        raise ValueError("total variation needs image_shape (C, H, W)")
    net = _float64_copy(model, num_features, num_classes)
    target = _target(net, update)
    observed = torch.cat([t.reshape(-1) for t in target])  # (P,)
    if not bool(observed.any()):
        raise ValueError("the update is zero: there is nothing to invert")
    if labels is None:
        # One sample: every local step moves the output bias by -lr * (p - onehot(y)), which
        # is positive at the true class only.
        if target[-1].ndim != 1:
            raise ValueError("without labels the last parameter must be the output bias (C,)")
        found: tuple[int, ...] = (idlg_label(grad_out_bias=-target[-1].numpy()),)
    else:
        found = tuple(int(v) for v in labels)
        if not found or not all(0 <= v < num_classes for v in found):
            raise ValueError(f"labels must be a non-empty sequence in [0, {num_classes})")
    y = torch.tensor(found)  # (B,)

    def objective(x: torch.Tensor) -> torch.Tensor:
        dummy = _simulated_update(net, x, y, lr_local, local_steps)  # (P,)
        cost = 1.0 - nn.functional.cosine_similarity(dummy, observed, dim=0)
        if tv_weight > 0 and image_shape is not None:
            cost = cost + tv_weight * _total_variation(x.view(-1, *image_shape))
        return cost

    lo, hi = box
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(len(found), num_features, generator=gen, dtype=torch.float64)  # (B, F)
    x = (lo + (hi - lo) * x).requires_grad_()
    opt = torch.optim.Adam([x], lr=lr)
    milestones = [steps * 3 // 8, steps * 5 // 8, steps * 7 // 8]
    schedule = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(objective(x), [x])
        x.grad = grad.sign_()  # signed gradients: every pixel moves at the same rate
        opt.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(lo, hi)
    final = float(objective(x).detach())
    return UpdateInversion(x.detach().numpy().copy(), found, final, steps)


def _simulated_update(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, local_steps: int
) -> torch.Tensor:
    """The flat update (P,) that ``local_steps`` SGD steps on the batch ``x`` (B, F), ``y``
    (B,) make from ``net``'s parameters, differentiable in ``x``."""
    names = [n for n, _ in net.named_parameters()]
    start: list[torch.Tensor] = list(net.parameters())
    moved = [torch.zeros_like(p) for p in start]
    theta = start
    for _ in range(local_steps):
        out = functional_call(net, dict(zip(names, theta, strict=True)), (x,))  # (B, C)
        loss = nn.functional.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        # the sum of steps, not theta - start: no cancellation between large parameters
        moved = [m - lr * g for m, g in zip(moved, grads, strict=True)]
        theta = [p + m for p, m in zip(start, moved, strict=True)]
    return torch.cat([m.reshape(-1) for m in moved])


def _check_sizes(num_features: int, num_classes: int, steps: int) -> None:
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def _check_search(
    num_features: int,
    num_classes: int,
    steps: int,
    restarts: int,
    box: tuple[float, float] | None,
) -> None:
    _check_sizes(num_features, num_classes, steps)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if box is not None:
        _check_box(box)


def _check_box(box: tuple[float, float]) -> None:
    lo, hi = box
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"box must be (lo, hi) with finite lo < hi, got {box}")


def _output_size(model: nn.Module) -> int:
    """C, the size of the last parameter's first axis (the output layer's bias or weight)."""
    params = list(model.parameters())
    if not params or params[-1].ndim == 0:
        raise ValueError("the model's last parameter must be its output layer's bias or weight")
    return int(params[-1].shape[0])


def _search(
    net: nn.Module,
    target: list[torch.Tensor],
    num_features: int,
    num_classes: int,
    label: int | None,
    steps: int,
    seed: int,
    restarts: int,
    box: tuple[float, float] | None,
) -> GradientInversion:
    """DLG's L-BFGS search, with up to ``restarts`` tries; the try with the least distance."""
    gen = torch.Generator().manual_seed(seed)
    best: GradientInversion | None = None
    iterations = 0
    for _ in range(restarts):
        x = torch.rand(1, num_features, generator=gen, dtype=torch.float64)  # (1, F)
        x.requires_grad_()
        if label is None:
            s = torch.randn(1, num_classes, generator=gen, dtype=torch.float64)  # (1, C)
            s.requires_grad_()
            loss, n = _lbfgs(net, target, [x, s], partial(torch.softmax, s, -1), steps)
            found = int(s.detach().argmax())
        else:
            onehot = nn.functional.one_hot(torch.tensor([label]), num_classes).to(torch.float64)
            loss, n = _lbfgs(net, target, [x], onehot.detach, steps)
            found = label
        iterations += n
        if best is None or loss < best.loss:
            best = GradientInversion(_boxed(x.detach()[0], box), found, loss, 0)
        if loss < _CONVERGED:
            break
    assert best is not None  # restarts >= 1
    return replace(best, iterations=iterations)


def _as_numpy(a: GradientLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return np.array(a.detach().cpu().numpy(), dtype=np.float64)
    return np.array(a, dtype=np.float64)


def _float64_copy(model: nn.Module, num_features: int, num_classes: int) -> nn.Module:
    """A float64 copy of ``model`` that has been checked to map (B, F) to (B, C)."""
    net = copy.deepcopy(model).to(torch.float64)
    for p in net.parameters():
        p.requires_grad_(True)
    try:
        with torch.no_grad():
            out = net(torch.zeros(1, num_features, dtype=torch.float64))
    except RuntimeError as exc:
        raise ValueError(f"the model does not take inputs of {num_features} features") from exc
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(
            f"the model maps (1, {num_features}) to {tuple(out.shape)}, not (1, {num_classes})"
        )
    return net


def _target(net: nn.Module, grads: Gradients) -> list[torch.Tensor]:
    """The observed gradient as float64 tensors shaped like ``net``'s parameters."""
    named = dict(net.named_parameters())
    shapes = [tuple(p.shape) for p in named.values()]
    if isinstance(grads, np.ndarray | torch.Tensor):
        parts = split_flat(net, grads)
    else:
        if isinstance(grads, Mapping):
            if set(grads) != set(named):
                raise ValueError(
                    f"gradients are named {sorted(grads)}, the model's parameters {sorted(named)}"
                )
            grads = [grads[name] for name in named]
        parts = [_as_numpy(g) for g in grads]
        if len(parts) != len(shapes):
            raise ValueError(
                f"expected one gradient per parameter ({len(shapes)}), got {len(parts)}; "
                "give them in model.parameters() order, or one flat vector"
            )
        for i, (g, s) in enumerate(zip(parts, shapes, strict=True)):
            if g.shape != s:
                raise ValueError(f"gradient {i} has shape {g.shape}, the parameter {s}")
    if not all(np.all(np.isfinite(g)) for g in parts):
        raise ValueError("the gradient holds NaN or infinite values")
    return [torch.from_numpy(g) for g in parts]


def _gradient_distance(
    net: nn.Module, target: list[torch.Tensor], x: torch.Tensor, soft: torch.Tensor
) -> torch.Tensor:
    """||g(x, soft) - target||^2 / ||target||^2 with the graph kept for a second derivative."""
    params = list(net.parameters())
    out = net(x)  # (1, C)
    loss = torch.sum(-soft * out.log_softmax(-1), dim=-1).mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    num = sum(((g - t) ** 2).sum() for g, t in zip(grads, target, strict=True))
    den = sum(float((t**2).sum()) for t in target)
    return torch.as_tensor(num) / max(den, 1e-300)


def _lbfgs(
    net: nn.Module,
    target: list[torch.Tensor],
    variables: list[torch.Tensor],
    soft: Callable[[], torch.Tensor],
    steps: int,
) -> tuple[float, int]:
    """L-BFGS on the gradient distance for at most ``steps`` iterations in all; returns the
    final distance and the iterations run."""

    def distance() -> float:
        return float(_gradient_distance(net, target, variables[0], soft()).detach())

    done, last = 0, distance()
    while done < steps:
        opt = torch.optim.LBFGS(
            variables,
            lr=1.0,
            max_iter=steps - done,
            history_size=100,
            tolerance_grad=1e-14,
            tolerance_change=1e-16,
            line_search_fn="strong_wolfe",
        )

        def closure(opt: torch.optim.LBFGS = opt) -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            cost = _gradient_distance(net, target, variables[0], soft())
            # only the variables' gradients: the model's parameters stay without .grad
            for v, g in zip(variables, torch.autograd.grad(cost, variables), strict=True):
                v.grad = g
            return cost.detach()

        opt.step(closure)
        done += max(int(opt.state[variables[0]].get("n_iter", 0)), 1)
        now = distance()
        # L-BFGS stops early where a ReLU kink breaks its line search; a fresh history
        # from the same point sometimes gets past it. Stop once that no longer helps.
        stalled = now > last * (1.0 - _PROGRESS)
        last = now
        if now < _CONVERGED or stalled:
            break
    return last, done


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, (B, C, H, W) -> ()."""
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().mean()
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().mean()
    return dh + dw


def _boxed(x: torch.Tensor, box: tuple[float, float] | None) -> np.ndarray:
    out = x.numpy().copy()
    if box is not None:
        np.clip(out, box[0], box[1], out=out)
    return out
