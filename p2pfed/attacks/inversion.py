"""Gradient inversion from a single sample's gradient: the closed-form attacks.

Analytic inversion of a fully connected layer (Phong et al., "Privacy-Preserving Deep
Learning via Additively Homomorphic Encryption", IEEE TIFS 2018, section 3; also Geiping et
al., "Inverting Gradients", NeurIPS 2020, Prop. D.1): for a first layer ``z = W x + b`` and a
loss of one sample, ``dL/dW = (dL/dz) x^T`` and ``dL/db = dL/dz``, so every row ``i`` with
``dL/db_i != 0`` gives ``x = (dL/dW)_i / (dL/db)_i``. Using all rows in a least-squares sense,
``x = sum_i g_i (dL/dW)_i / sum_i g_i^2`` with ``g = dL/db``, is exact for one sample and
tolerates rows where ``g_i`` is tiny.

iDLG's label rule (Zhao, Mopuri & Bilen, "iDLG: Improved Deep Leakage from Gradients",
2020): with softmax cross-entropy, the gradient of the logits is ``p - onehot(y)``, so the
output layer's bias gradient is negative at the true class only; its weight gradient's rows
are ``(p_c - [c = y]) h`` with non-negative ``h`` after a ReLU, so the row with negative sum
names the label just as well.

Threat model: the attacker sees one sample's plain gradient (or an update that equals a
scaled one: one local SGD step on one sample), e.g. by eavesdropping a plaintext link or as
a curious coordinator. Secure aggregation, encryption or DP noise take that view away; the
attack functions are what issue 6's adversaries run on what they really observed.

Pure: numpy and torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def single_sample_gradients(model: nn.Module, x: np.ndarray, y: int) -> dict[str, np.ndarray]:
    """The cross-entropy gradient of one sample, per parameter name (float64 copies)."""
    model.zero_grad(set_to_none=True)
    xb = torch.as_tensor(np.asarray(x)[None, :], dtype=next(model.parameters()).dtype)
    loss = nn.functional.cross_entropy(model(xb), torch.tensor([y]))
    loss.backward()
    out = {}
    for name, p in model.named_parameters():
        assert p.grad is not None
        out[name] = p.grad.detach().to(torch.float64).numpy().copy()
    model.zero_grad(set_to_none=True)
    return out


def analytic_fc_inversion(
    grad_weight: np.ndarray, grad_bias: np.ndarray, *, tol: float = 0.0
) -> np.ndarray:
    """The input of a fully connected layer from its single-sample gradient
    (``grad_weight``: (out, in), ``grad_bias``: (out,)). Raises ``ValueError`` when the bias
    gradient is zero everywhere (nothing to divide by: the sample's loss gradient vanished
    at this layer)."""
    gw = np.asarray(grad_weight, dtype=np.float64)
    gb = np.asarray(grad_bias, dtype=np.float64)
    if gw.ndim != 2 or gb.shape != (gw.shape[0],):
        raise ValueError(f"expected (out, in) and (out,) gradients, got {gw.shape}, {gb.shape}")
    rows = np.abs(gb) > tol
    denom = float(np.dot(gb[rows], gb[rows]))
    if denom == 0.0:
        raise ValueError("the bias gradient is zero: this gradient does not reveal the input")
    return np.asarray(gb[rows] @ gw[rows] / denom)


def idlg_label(
    grad_out_weight: np.ndarray | None = None, grad_out_bias: np.ndarray | None = None
) -> int:
    """The label of the sample behind a single-sample gradient, from the output layer's
    bias gradient (the only negative entry) or, without a bias, its weight rows' sums."""
    if grad_out_bias is not None:
        return int(np.argmin(np.asarray(grad_out_bias)))
    if grad_out_weight is None:
        raise ValueError("give the output layer's bias or weight gradient")
    return int(np.argmin(np.asarray(grad_out_weight).sum(axis=1)))
