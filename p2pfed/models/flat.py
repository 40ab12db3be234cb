"""A model as one flat parameter vector (P,): the unit peers exchange.

Built on torch's own ``parameters_to_vector`` / ``vector_to_parameters`` so the ordering is
torch's (``model.parameters()`` order) and cannot drift from a hand-written copy. Vectors on
the numpy side are float32 and never alias the model's memory.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from p2pfed.errors import ModelError


def num_parameters(model: torch.nn.Module) -> int:
    """P, the number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


def get_flat(model: torch.nn.Module) -> np.ndarray:
    """A float32 copy (P,) of every parameter, in ``model.parameters()`` order."""
    with torch.no_grad():
        vec = parameters_to_vector(model.parameters())  # (P,)
        return np.array(vec.detach().cpu().numpy(), dtype=np.float32, copy=True)


def set_flat(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector (P,) into the model's parameters, in place.

    The Parameter objects stay the same (an optimiser holding them keeps working); their
    values are replaced by a copy of ``flat``, moved to the model's device and dtype.
    Raises :class:`ModelError` unless ``flat`` is a 1-D floating array of size P.
    """
    arr = np.asarray(flat)
    expected = num_parameters(model)
    if arr.ndim != 1 or arr.size != expected:
        raise ModelError(
            f"flat parameter vector has shape {arr.shape} ({arr.size} values); the model "
            f"has {expected} parameters"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise ModelError(f"flat parameter vector must be floating point, got {arr.dtype}")
    first = next(model.parameters())
    # torch.tensor copies, so the model never aliases the caller's array.
    vec = torch.tensor(arr, dtype=first.dtype, device=first.device)  # (P,)
    with torch.no_grad():
        vector_to_parameters(vec, model.parameters())


def model_at(template: torch.nn.Module, flat: np.ndarray) -> torch.nn.Module:
    """A CPU float32 copy of ``template`` holding the parameters ``flat``, in eval mode (for
    analysing a model someone shared; ``template`` is left as it was)."""
    model = copy.deepcopy(template).cpu().float()
    set_flat(model, np.asarray(flat, dtype=np.float32))
    return model.eval()


class FlatParams:
    """Fast flat access to one model's parameters, for code that loads and reads them every
    round (a trainer, an evaluator).

    When every parameter is float32 on one device (all of p2pfed's models), the parameters
    are re-pointed into one contiguous buffer (P,) — each ``Parameter`` keeps its identity, so
    an optimiser holding them keeps working — and loading or reading a vector is one copy.
    Measured on the digits MLP (4810 parameters, CPU, one minibatch of 11 samples): a local
    training call went from 0.43 to 0.36 ms with this and the trainer's cheaper loss sum,
    against 0.37 ms for a bare torch loop doing the same step. Other models fall back to one
    copy per parameter. Build it *after* moving the model to its device (``to`` gives
    the parameters new storage)."""

    def __init__(self, model: torch.nn.Module):
        self.params = list(model.parameters())
        self.sizes = [p.numel() for p in self.params]
        self.size = sum(self.sizes)
        devices = {p.device for p in self.params}
        self.buffer: torch.Tensor | None = None
        self._host: np.ndarray | None = None  # the buffer as numpy, on CPU
        if self.params and len(devices) == 1 and all(p.dtype == torch.float32 for p in self.params):
            self.buffer = torch.empty(self.size, dtype=torch.float32, device=devices.pop())
            with torch.no_grad():
                offset = 0
                for p, n in zip(self.params, self.sizes, strict=True):
                    view = self.buffer[offset : offset + n].view_as(p)
                    view.copy_(p)
                    p.data = view  # same Parameter, storage now inside the buffer
                    offset += n
            if self.buffer.device.type == "cpu":
                self._host = self.buffer.numpy()

    def __getstate__(self) -> dict[str, object]:
        # the numpy view of the buffer would pickle as a copy of its own: a checkpoint keeps
        # the buffer (torch.save keeps the parameters' views of it) and re-derives the view
        return {**self.__dict__, "_host": None}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if self.buffer is not None and self.buffer.device.type == "cpu":
            self._host = self.buffer.numpy()

    def set(self, flat: np.ndarray) -> None:
        """Copy ``flat`` (P,) into the parameters (same checks as :func:`set_flat`)."""
        arr = np.asarray(flat)
        if arr.ndim != 1 or arr.size != self.size:
            raise ModelError(
                f"flat parameter vector has shape {arr.shape} ({arr.size} values); the model "
                f"has {self.size} parameters"
            )
        if arr.dtype.kind != "f":
            raise ModelError(f"flat parameter vector must be floating point, got {arr.dtype}")
        if self._host is not None:
            np.copyto(self._host, arr, casting="same_kind")  # the caller's array is not kept
            return
        # a private copy: the caller's array may be read-only (a decoded frame) or reused
        src = torch.from_numpy(np.array(arr, dtype=np.float32))
        if self.buffer is not None:
            self.buffer.copy_(src)  # one transfer to the device
            return
        with torch.no_grad():
            for p, chunk in zip(self.params, src.split(self.sizes), strict=True):
                p.copy_(chunk.view_as(p))

    def get(self) -> np.ndarray:
        """A fresh float32 copy (P,) of the parameters."""
        if self._host is not None:
            return self._host.copy()
        with torch.no_grad():
            if self.buffer is not None:
                return self.buffer.cpu().numpy()  # cpu() copied it off the device
            vec = torch.cat([p.detach().reshape(-1) for p in self.params])
            return vec.cpu().numpy().astype(np.float32, copy=False)
