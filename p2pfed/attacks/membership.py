"""Membership inference: was this sample in someone's training set?

Three attacks, from the cheapest to the strongest:

* **Loss threshold** (Yeom, Giacomelli, Fredrikson & Jha, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", CSF 2018): a model fits its training samples
  better than unseen ones, so ``-loss`` is a membership score. One model, no shadows; it
  cannot tell a hard member from an easy non-member.
* **LiRA**, the likelihood-ratio attack (Carlini, Chien, Nasr, Song, Terzis & Tramèr,
  "Membership Inference Attacks From First Principles", S&P 2022, Algorithm 1): train
  shadow models on random halves of an attacker population, so each candidate is IN about
  half of them; fit Gaussians to each candidate's logit-scaled confidence
  ``phi = log(p_y / (1 - p_y))`` in the IN and OUT shadows; score the target model's
  ``phi`` by the likelihood ratio (online) or by how far it sits above the OUT Gaussian
  alone (offline, a one-sided test: the shadows never need the candidates, so they can be
  trained once before the candidates are known). With few shadows one global variance
  (their "fixed variance" variant) is steadier than per-example ones. ``phi`` is taken
  from the logits as ``logit_y - logsumexp(other logits)``, which equals
  ``log(p_y / (1 - p_y))`` without ever forming ``1 - p_y`` (the logit scaling is what
  makes the confidence roughly Gaussian across shadows).
* **Active gradient ascent** of a curious participant (Nasr, Shokri & Houmansadr,
  "Comprehensive Privacy Analysis of Deep Learning", S&P 2019, the active attack against
  federated learning): the adversary pushes the parameters *up* the loss of its target
  samples before sharing them. A participant that holds a target pulls that sample's loss
  back down sharply in its next local training; a non-member's loss only falls through
  generalisation. The adversary scores each target by how far its loss fell in the model
  it receives back.

Intended use of the active attack in a peer-to-peer run: the curious peer trains honestly
to ``honest`` (P,), records the targets' ``per_sample_losses`` there (``start``), shares
``pushed = gradient_ascent(model, x_targets, y_targets, lr=..., steps=..., params=honest)``
instead, and records the targets' losses in ``pushed``; when a neighbour's next model
arrives it computes the targets' losses in it and calls
``active_membership_scores(pushed_losses, received_losses, start_losses=start)`` (several
neighbours: one row of received losses each; a member's owner shows the sharpest drop).
Mixing with other neighbours' models dilutes the pushed ascent, so it works best against a
neighbour that adopts or averages in a large share of the pushed model.

Threat model: the membership of individual samples, against whoever observes a model. The
passive attacks (loss threshold, LiRA) need only a released model: an eavesdropper on a
plaintext link, a neighbour; LiRA's attacker also needs a population drawn like the
victims' data and must train its shadows the way the victims train, which
:func:`train_shadow_models` leaves to the caller's ``train_fn``. The active attack needs a
curious peer that deviates from the protocol in what it shares. The DP stage
(:mod:`p2pfed.privacy.dp`) bounds every attack here; secure aggregation hides individual
updates, not the models peers hold afterwards.

Scores are "higher means member"; measure them with
:func:`p2pfed.attacks.metrics.membership_auc` and :func:`p2pfed.attacks.metrics.tpr_at_fpr`
(at 1 % or 0.1 % FPR, as Carlini et al. ask).

Pure: numpy, scipy and torch; randomness only from a generator or seed passed in; models
are evaluated in eval mode without gradients and never modified (flat parameter vectors are
applied with ``torch.func.functional_call``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy.stats import norm
from torch import nn
from torch.func import functional_call

from p2pfed.models import ModelConfig, build_model, get_flat

Trained = nn.Module | np.ndarray
"""What a training function gives back: a trained model, or a flat parameter vector (P,) in
``model.parameters()`` order (the project's layout, :func:`p2pfed.models.get_flat`)."""

TrainFn = Callable[[np.ndarray, int], Trained]
"""``train_fn(indices, seed)``: train a fresh model on the population rows ``indices`` with
every random choice (initialisation, batch order) drawn from ``seed``."""

# The smallest standard deviation a Gaussian fit may have: identical confidences in every
# shadow would otherwise make the likelihoods infinite.
MIN_STD = 1e-6


# --- per-sample statistics of one model -----------------------------------------------------------


def per_sample_losses(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Cross-entropy of every sample (N,), float64, in eval mode without gradients.

    With ``params`` (a flat vector (P,)) the model is evaluated at those parameters; the
    model itself is left as it was. Raises ``ValueError`` for mismatched or empty inputs, a
    label outside the model's classes or a parameter vector of the wrong size."""
    logits, yt = _logits(model, x, y, params, batch_size)  # (N, C), (N,)
    return _as_numpy(torch.logsumexp(logits, dim=1) - logits.gather(1, yt[:, None])[:, 0])


def logit_confidences(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """LiRA's logit-scaled confidence ``phi = log(p_y / (1 - p_y))`` of every sample (N,),
    float64, computed stably as ``logit_y - logsumexp(other logits)``. Same arguments and
    errors as :func:`per_sample_losses`."""
    logits, yt = _logits(model, x, y, params, batch_size)  # (N, C), (N,)
    true = logits.gather(1, yt[:, None])[:, 0]  # (N,)
    others = logits.scatter(1, yt[:, None], float("-inf"))  # (N, C), true class masked out
    return _as_numpy(true - torch.logsumexp(others, dim=1))


def loss_threshold_scores(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    params: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Yeom et al.'s membership score ``-loss`` (N,): higher means member. Thresholding it
    at minus the mean training loss is their attack; AUC and TPR at low FPR need only the
    scores."""
    return -per_sample_losses(model, x, y, params=params, batch_size=batch_size)


# --- LiRA: shadow models --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShadowModels:
    """Shadow models trained on random halves of an attacker population of N samples."""

    keep: np.ndarray  # (S, N) bool: keep[s, i] = population sample i trained shadow s
    trained: tuple[Trained, ...]  # S models or flat parameter vectors
    seeds: tuple[int, ...]  # S: the seed each shadow was trained with

    @property
    def num_shadow(self) -> int:
        return len(self.trained)


def shadow_keep(num_samples: int, num_shadow: int, rng: np.random.Generator) -> np.ndarray:
    """Which population sample trains which shadow (S, N) bool: every sample is IN exactly
    ``num_shadow // 2`` shadows, chosen at random per sample (as in Carlini et al.'s code),
    so each shadow trains on about half the population."""
    if num_samples < 1:
        raise ValueError(f"the attacker population needs at least one sample, got {num_samples}")
    if num_shadow < 2:
        raise ValueError(f"LiRA needs at least 2 shadow models, got {num_shadow}")
    # one random permutation of the shadows per sample; its first half are the IN shadows
    order = rng.random((num_shadow, num_samples)).argsort(axis=0)  # (S, N)
    return np.asarray(order < num_shadow // 2)


def train_shadow_models(
    train_fn: TrainFn, num_samples: int, num_shadow: int, rng: np.random.Generator
) -> ShadowModels:
    """Draw :func:`shadow_keep` and train each shadow with ``train_fn(indices, seed)`` on
    its IN rows of the population (seeds drawn from ``rng``). ``train_fn`` should train the
    way the victims train (same model, optimiser, epochs, DP stage): LiRA is only as good as
    its shadows' resemblance to the target."""
    keep = shadow_keep(num_samples, num_shadow, rng)
    if not keep.any(axis=1).all():
        raise ValueError("a shadow model drew no training samples: use a larger population")
    seeds = tuple(int(s) for s in rng.integers(0, 2**31 - 1, size=num_shadow))
    trained = tuple(train_fn(np.flatnonzero(keep[s]), seeds[s]) for s in range(num_shadow))
    return ShadowModels(keep=keep, trained=trained, seeds=seeds)


def shadow_confidences(
    shadows: ShadowModels | Sequence[Trained],
    x: np.ndarray,
    y: np.ndarray,
    *,
    model: nn.Module | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """:func:`logit_confidences` of the candidates ``x, y`` in every shadow (S, N). Shadows
    given as flat vectors are evaluated on ``model`` (required then)."""
    trained = shadows.trained if isinstance(shadows, ShadowModels) else tuple(shadows)
    if not trained:
        raise ValueError("no shadow models given")
    rows = []
    for t in trained:
        if isinstance(t, nn.Module):
            rows.append(logit_confidences(t, x, y, batch_size=batch_size))
        elif model is None:
            raise ValueError("shadows given as parameter vectors need the model to load them")
        else:
            rows.append(logit_confidences(model, x, y, params=t, batch_size=batch_size))
    return np.stack(rows)


def sgd_train_fn(
    model_cfg: ModelConfig,
    x: np.ndarray,
    y: np.ndarray,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    batch_size: int | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    image_shape: tuple[int, int, int] | None = None,
) -> Callable[[np.ndarray, int], np.ndarray]:
    """A plain trainer for shadow (and target) models on the population ``x, y``:
    :func:`p2pfed.models.build_model` initialised from the seed, then ``epochs`` passes of
    SGD with cross-entropy, full-batch when ``batch_size`` is None, else minibatches in an
    order drawn from ``numpy.random.default_rng(seed)``. It returns flat parameters (P,).

    For experiments, train shadows the way the target peers train instead (e.g. a
    :class:`p2pfed.training.LocalTrainer` per shadow, DP stage included)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (full batch), got {batch_size}")
    xs = np.asarray(x)
    ys = np.asarray(y)
    _check_xy(xs, ys)
    x_all = torch.as_tensor(xs.reshape(len(xs), -1), dtype=torch.float32)  # (N, F)
    y_all = torch.as_tensor(ys, dtype=torch.int64)  # (N,)
    _check_labels(y_all, num_classes)

    def train(indices: np.ndarray, seed: int) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError("train_fn needs a non-empty 1-D array of population indices")
        xb_all, yb_all = x_all[idx], y_all[idx]  # (n, F), (n,)
        model = build_model(model_cfg, x_all.shape[1], num_classes, image_shape, seed)
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        order_rng = np.random.default_rng(seed)
        model.train()
        for _ in range(epochs):
            if batch_size is None:
                batches = [(xb_all, yb_all)]
            else:
                perm = torch.as_tensor(order_rng.permutation(len(idx)))
                batches = [
                    (xb_all[perm[i : i + batch_size]], yb_all[perm[i : i + batch_size]])
                    for i in range(0, len(idx), batch_size)
                ]
            for xb, yb in batches:  # (B, F), (B,)
                opt.zero_grad(set_to_none=True)
                torch.autograd.backward(nn.functional.cross_entropy(model(xb), yb))
                opt.step()
        return get_flat(model)

    return train


# --- LiRA: scores ---------------------------------------------------------------------------------


def lira_online_scores(
    target_conf: np.ndarray,
    shadow_conf: np.ndarray,
    keep: np.ndarray,
    *,
    fixed_variance: bool = False,
) -> np.ndarray:
    """Online LiRA (Algorithm 1): ``log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)``
    per candidate (N,), higher means member.

    ``target_conf`` (N,) is the target model's :func:`logit_confidences` of the candidates,
    ``shadow_conf`` (S, N) theirs in the shadows and ``keep`` (S, N) which shadow trained on
    which candidate. Every candidate needs at least 2 IN and 2 OUT shadows. With
    ``fixed_variance`` both Gaussians use one pooled within-candidate standard deviation
    each (IN and OUT), as the paper advises for small shadow counts (below about 64)."""
    phi, conf, k = _check_lira(target_conf, shadow_conf, keep)
    mu_in, sd_in = _gaussian_fit(conf, k, fixed_variance, "IN")
    mu_out, sd_out = _gaussian_fit(conf, ~k, fixed_variance, "OUT")
    return np.asarray(norm.logpdf(phi, mu_in, sd_in) - norm.logpdf(phi, mu_out, sd_out))


def lira_offline_scores(
    target_conf: np.ndarray,
    shadow_conf: np.ndarray,
    keep: np.ndarray | None = None,
    *,
    fixed_variance: bool = False,
) -> np.ndarray:
    """Offline LiRA: the one-sided test against the OUT Gaussian alone,
    ``-log Pr[Z > phi]`` with ``Z ~ N(mu_out, s_out)`` per candidate (N,), higher means
    member (the paper's ``1 - Pr[Z > phi]``, in logs so that far tails still rank).

    Only the shadows that did not train on a candidate are used: ``keep`` (S, N) says which
    did; ``None`` means no shadow saw any candidate (shadows trained before the candidates
    were known). Every candidate needs at least 2 OUT shadows."""
    conf_arr = np.asarray(shadow_conf)
    k = np.zeros(conf_arr.shape, dtype=bool) if keep is None else keep
    phi, conf, k = _check_lira(target_conf, conf_arr, k)
    mu_out, sd_out = _gaussian_fit(conf, ~k, fixed_variance, "OUT")
    return np.asarray(-norm.logsf(phi, mu_out, sd_out))


def _check_lira(
    target_conf: np.ndarray, shadow_conf: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phi = np.asarray(target_conf, dtype=np.float64)
    conf = np.asarray(shadow_conf, dtype=np.float64)
    k = np.asarray(keep)
    if phi.ndim != 1 or conf.ndim != 2 or conf.shape[1] != phi.shape[0]:
        raise ValueError(
            f"expected target confidences (N,) and shadow confidences (S, N), got "
            f"{phi.shape} and {conf.shape}"
        )
    if k.shape != conf.shape:
        raise ValueError(
            f"keep must have the shadow confidences' shape {conf.shape}, got {k.shape}"
        )
    if k.dtype != np.bool_:
        raise ValueError(f"keep must be a boolean mask, got dtype {k.dtype}")
    if not (np.all(np.isfinite(phi)) and np.all(np.isfinite(conf))):
        raise ValueError("confidences must be finite")
    return phi, conf, k


def _gaussian_fit(
    conf: np.ndarray, mask: np.ndarray, fixed_variance: bool, side: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-candidate mean (N,) and standard deviation (N,) of ``conf[mask]`` (S, N), the
    latter unbiased per candidate or pooled over all candidates."""
    counts = mask.sum(axis=0)  # (N,)
    if counts.min() < 2:
        worst = int(np.argmin(counts))
        raise ValueError(
            f"every candidate needs at least 2 {side} shadow models; candidate {worst} has "
            f"{int(counts[worst])} (train more shadows)"
        )
    mean = np.where(mask, conf, 0.0).sum(axis=0) / counts  # (N,)
    sq = np.where(mask, (conf - mean) ** 2, 0.0).sum(axis=0)  # (N,)
    if fixed_variance:
        sd = np.full(mean.shape, np.sqrt(sq.sum() / (counts - 1).sum()))
    else:
        sd = np.sqrt(sq / (counts - 1))
    return mean, np.maximum(sd, MIN_STD)


# --- the active attack of a curious peer ----------------------------------------------------------


def gradient_ascent(
    model: nn.Module,
    x_targets: np.ndarray,
    y_targets: np.ndarray,
    *,
    lr: float,
    steps: int,
    params: np.ndarray | None = None,
) -> np.ndarray:
    """Nasr et al.'s active step: ``steps`` steps of ``theta += lr * grad mean CE(targets)``
    from ``params`` (or the model's own parameters), returned as a flat float32 vector (P,).

    What a curious peer shares instead of its honest parameters; evaluated in eval mode, the
    model itself is not modified. Raises ``ValueError`` for a non-positive ``lr``, fewer
    than one step or bad targets."""
    if not lr > 0:
        raise ValueError(f"lr must be positive (the step goes up the loss), got {lr}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    xt, yt = _tensors(model, x_targets, y_targets)
    theta = _start(model, params)  # (P,)
    names, shapes = _layout(model)
    was_training = model.training
    model.eval()
    try:
        for _ in range(steps):
            theta.requires_grad_(True)
            logits = functional_call(model, _unflatten(theta, names, shapes), (xt,))  # (N, C)
            _check_labels(yt, logits.shape[1])
            loss = nn.functional.cross_entropy(logits, yt)
            (grad,) = torch.autograd.grad(loss, theta)
            theta = (theta + lr * grad).detach()
    finally:
        model.train(was_training)
    return np.asarray(theta.cpu().numpy(), dtype=np.float32)


def active_membership_scores(
    pushed_losses: np.ndarray,
    received_losses: np.ndarray,
    *,
    start_losses: np.ndarray | None = None,
    reduce: Literal["max", "mean"] = "max",
) -> np.ndarray:
    """Membership scores of the targets (N,) from the active attack: how far each target's
    loss fell from the model the adversary pushed (``pushed_losses`` (N,)) to the model(s)
    it received afterwards (``received_losses`` (N,) or (R, N), one row per received model).
    Higher means member.

    With ``start_losses`` (N,), the targets' losses in the parameters the ascent started
    from, the raise ``pushed - start`` is taken off the drop, leaving ``start - received``:
    how far below its pre-attack loss a target ended up. The raise differs a lot between
    targets (a mean-loss ascent mostly lifts the already misclassified ones) and honest
    training undoes it for members and non-members alike, so the raw drop mostly measures
    the raise. On digits (tests/test_membership.py, 960 targets) the raw drop reached an AUC
    of 0.52, the drop net of the raise 0.65, against 0.60 for the same peer training from
    the unattacked model.

    Over several received models the largest score counts (``reduce="max"``: one of them
    belongs to the member's owner) or their mean."""
    pushed = np.asarray(pushed_losses, dtype=np.float64)
    received = np.asarray(received_losses, dtype=np.float64)
    if pushed.ndim != 1 or received.ndim not in (1, 2) or received.shape[-1] != pushed.shape[0]:
        raise ValueError(
            f"expected pushed losses (N,) and received losses (N,) or (R, N), got "
            f"{pushed.shape} and {received.shape}"
        )
    if received.size == 0:
        raise ValueError("no received losses given")
    start = pushed if start_losses is None else np.asarray(start_losses, dtype=np.float64)
    if start.shape != pushed.shape:
        raise ValueError(
            f"start losses must match the pushed losses' shape {pushed.shape}, got {start.shape}"
        )
    if not all(np.all(np.isfinite(a)) for a in (pushed, received, start)):
        raise ValueError("losses must be finite")
    # drop - raise = (pushed - received) - (pushed - start); without start the raise is 0
    scores = start - np.atleast_2d(received)  # (R, N)
    if reduce == "max":
        return np.asarray(scores.max(axis=0))
    if reduce == "mean":
        return np.asarray(scores.mean(axis=0))
    raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")


# --- helpers --------------------------------------------------------------------------------------


def _check_xy(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, F...), got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must be labels (N,) for x of shape {x.shape}, got {y.shape}")
    if len(x) == 0:
        raise ValueError("no samples given")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
        raise ValueError("x must be finite numbers")


def _first_param(model: nn.Module) -> torch.Tensor:
    try:
        return next(model.parameters())
    except StopIteration:
        raise ValueError("the model has no parameters") from None


def _tensors(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = np.asarray(x), np.asarray(y)
    _check_xy(xs, ys)
    p = _first_param(model)
    xt = torch.as_tensor(xs, dtype=p.dtype, device=p.device)  # (N, F)
    yt = torch.as_tensor(ys, dtype=torch.int64, device=p.device)  # (N,)
    return xt, yt


def _check_labels(y: torch.Tensor, num_classes: int) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got values in [{lo}, {hi}]")


def _layout(model: nn.Module) -> tuple[list[str], list[torch.Size]]:
    named = list(model.named_parameters())
    return [n for n, _ in named], [p.shape for _, p in named]


def _start(model: nn.Module, params: np.ndarray | None) -> torch.Tensor:
    """The flat parameters (P,) to start from, as a fresh tensor on the model's device."""
    p = _first_param(model)
    if params is None:
        return torch.cat([q.detach().reshape(-1) for q in model.parameters()])  # a new tensor
    arr = np.asarray(params)
    size = sum(q.numel() for q in model.parameters())
    if arr.ndim != 1 or arr.size != size:
        raise ValueError(
            f"flat parameter vector has shape {arr.shape}; the model has {size} parameters"
        )
    if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
        raise ValueError("flat parameters must be finite floating-point numbers")
    return torch.tensor(arr, dtype=p.dtype, device=p.device)


def _unflatten(
    theta: torch.Tensor, names: list[str], shapes: list[torch.Size]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in zip(names, shapes, strict=True):
        n = shape.numel()
        out[name] = theta[offset : offset + n].view(shape)
        offset += n
    return out


@torch.no_grad()
def _logits(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    params: np.ndarray | None,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) as float64 and labels (N,), batched, in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xt, yt = _tensors(model, x, y)
    weights = None
    if params is not None:
        names, shapes = _layout(model)
        weights = _unflatten(_start(model, params), names, shapes)
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(xt), batch_size):
            xb = xt[start : start + batch_size]  # (B, F)
            out = model(xb) if weights is None else functional_call(model, weights, (xb,))
            chunks.append(out.to(torch.float64))
    finally:
        model.train(was_training)
    logits = torch.cat(chunks)  # (N, C)
    if logits.ndim != 2:
        raise ValueError(f"the model must return logits (N, C), got shape {tuple(logits.shape)}")
    _check_labels(yt, logits.shape[1])
    return logits, yt


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.cpu().numpy(), dtype=np.float64)
