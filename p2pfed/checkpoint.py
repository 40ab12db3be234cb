"""Checkpoints: a run's whole live state written to disk, to resume it later or elsewhere.

What a checkpoint holds. Everything that decides how a run goes on from a point in time:
every peer's protocol state, model, optimiser (momentum buffers), data order and random
streams, the engine's heap of pending events and frames in flight, the network model's and
availability process's streams, link keys and replay counters, the adversaries' logs and the
recorder's counters — pickled as one object graph, so objects shared between peers (one
broadcast body in several frames, a parameter viewed by a flat buffer) stay shared. Tensors
go through :func:`torch.save`, which keeps views of one storage together.

What it does not hold. Objects the caller passes as ``externals`` — the run's observer (it
owns open files), the evaluator (rebuilt from the config), callables handed in through the
Python API (taps, interceptors, a wall clock) — are written as a named reference and bound
to the caller's objects again on load. Loading refuses a checkpoint whose references name
an external the loader does not supply, and one written by another checkpoint format.

Writing is atomic: the state goes to a temporary file in the same directory, is flushed to
disk, and replaces the previous checkpoint with one rename, so a process killed while
writing leaves the last complete checkpoint in place.

Threat model: a checkpoint is a pickle and holds every secret of the run (link keys, mask
seeds, Paillier private key shares, the peers' private data). Load only checkpoints you
wrote; keep run directories as private as the data. :func:`load` checks the format tag, not
authenticity.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from Crypto.PublicKey import ECC

from p2pfed.errors import CheckpointError

#: bumped when the layout of what runs put in a checkpoint changes incompatibly
FORMAT = "p2pfed-checkpoint/1"

_local = threading.local()  # the externals of the load in progress on this thread


def _external(name: str) -> Any:
    """Unpickling: the object the loader supplies for external ``name``."""
    table: Mapping[str, Any] | None = getattr(_local, "externals", None)
    if table is None or name not in table:
        raise CheckpointError(
            f"the checkpoint refers to {name!r}, which this run does not supply "
            "(a tap, interceptor or observer passed through the Python API?)"
        )
    return table[name]


class _Pickler(pickle.Pickler):
    """A pickler that writes the objects in ``externals`` as references by name (torch's
    own pickler subclasses this and adds its ``persistent_id`` for storages), and
    pycryptodome's elliptic-curve keys (which hold C pointers) as their DER encoding."""

    externals: ClassVar[dict[int, str]] = {}

    def reducer_override(self, obj: Any) -> Any:
        name = self.externals.get(id(obj))
        if name is not None:
            return _external, (name,)
        if isinstance(obj, ECC.EccKey):
            return ECC.import_key, (obj.export_key(format="DER"),)
        return NotImplemented


class _PickleModule:
    """The ``pickle_module`` handed to :func:`torch.save` / :func:`torch.load`."""

    def __init__(self, externals: Mapping[str, Any]):
        ids = {id(v): k for k, v in externals.items() if v is not None}
        self.Pickler = type("Pickler", (_Pickler,), {"externals": ids})
        self.Unpickler = pickle.Unpickler
        self.load = pickle.load
        self.dump = pickle.dump
        self.__name__ = "pickle"


def dumps(state: Any, externals: Mapping[str, Any] | None = None) -> bytes:
    """``state`` as checkpoint bytes, with ``externals`` written as references."""
    buf = io.BytesIO()
    try:
        torch.save(
            {"format": FORMAT, "state": state},
            buf,
            pickle_module=_PickleModule(externals or {}),
            pickle_protocol=4,  # protocol 2 (the default) writes bytes at 1.5x their size
        )
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"the run's state cannot be checkpointed: {exc}") from exc
    return buf.getvalue()


def loads(data: bytes, externals: Mapping[str, Any] | None = None) -> Any:
    """The state in checkpoint bytes, its references bound to ``externals``."""
    previous = getattr(_local, "externals", None)
    _local.externals = dict(externals or {})
    try:
        obj = torch.load(io.BytesIO(data), weights_only=False, map_location=None)
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"the checkpoint cannot be read: {exc}") from exc
    finally:
        _local.externals = previous
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"not a {FORMAT} checkpoint (found {found!r})")
    return obj["state"]


def write(path: str | Path, data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` atomically (see the module docstring)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint {path}: {exc.strerror}") from exc
