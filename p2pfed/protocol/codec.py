"""Messages on the wire: msgpack frames with tensors as raw bytes plus dtype and shape.

A frame is one msgpack map::

    {"v": 1, "src": 3, "dst": 4, "type": "ModelShare",
     "body": {"round": 7, "params": {"dt": "<f4", "sh": [4810], "b": <19240 raw bytes>}}}

Arrays travel as their little-endian bytes so a receiver reads them with ``numpy.frombuffer``
(no copy, read-only). The codec knows only the message types it was built with, so a frame
naming any other type, carrying extra or missing fields, a dtype outside a small allow-list
(never ``object``) or a byte count that disagrees with its shape is a :class:`FrameError`,
never a silently wrong message.

Byte accounting splits every frame into *payload* (the raw array bytes: what a model
update costs) and *metadata* (everything else: header, field names, scalars).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from p2pfed.errors import FrameError
from p2pfed.protocol.core import Message

FRAME_VERSION = 1

# Only plain numeric dtypes may cross the wire; object arrays would let a frame run code.
_ALLOWED_DTYPES = frozenset(
    np.dtype(t).str for t in ("<f4", "<f8", "<i8", "<i4", "<u4", "<u8", "|u1", "|i1")
)


@dataclass(frozen=True)
class Frame:
    """A decoded frame: the envelope and the message it carried."""

    src: int
    dst: int
    message: Message


@dataclass(frozen=True)
class FrameSize:
    """Bytes of one frame on the wire, split into payload (array data), metadata (the rest of
    the encoded frame) and crypto (what sealing the frame added: header, type name, tag)."""

    payload: int
    metadata: int
    crypto: int = 0

    @property
    def total(self) -> int:
        return self.payload + self.metadata + self.crypto


class Codec:
    """Encodes and decodes the messages of a fixed set of types."""

    def __init__(self, message_types: Iterable[type[Message]], *, vector_size: int | None = None):
        """``vector_size``, when given, is the length every array field must have (the model's
        parameter count): a frame carrying anything else is rejected at decoding."""
        self._types: dict[str, type[Message]] = {}
        self._fields: dict[str, dict[str, type]] = {}
        self._names: dict[type[Message], tuple[str, ...]] = {}  # field names, in order
        self.vector_size = vector_size
        for cls in message_types:
            if not (dataclasses.is_dataclass(cls) and issubclass(cls, Message)):
                raise TypeError(f"{cls!r} is not a Message dataclass")
            hints = typing.get_type_hints(cls)
            fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
            for name, tp in fields.items():
                if tp not in _CHECKS:
                    raise TypeError(f"{cls.__name__}.{name}: cannot send a field of type {tp}")
            self._types[cls.__name__] = cls
            self._fields[cls.__name__] = fields
            self._names[cls] = tuple(fields)

    @property
    def message_types(self) -> tuple[type[Message], ...]:
        return tuple(self._types.values())

    def encode(self, src: int, dst: int, message: Message) -> tuple[bytes, FrameSize]:
        """Encode ``message`` from ``src`` to ``dst``; returns the frame and its byte split."""
        body, payload = self.encode_body(message)
        frame = self.envelope(src, dst, type(message).__name__) + body
        return frame, FrameSize(payload=payload, metadata=len(frame) - payload)

    def encode_body(self, message: Message) -> tuple[bytes, int]:
        """The message's part of a frame (its packed body) and the array bytes in it.

        A frame is ``envelope(src, dst, type) + body`` byte for byte, so a message sent to
        many peers is packed once and its body shared (a broadcast's tensor crosses to a Ray
        host once per batch, see :func:`p2pfed.runtime.ray_runtime.pack_frames`)."""
        name = type(message).__name__
        if self._types.get(name) is not type(message):
            raise FrameError(f"message type {name} is not known to this codec")
        payload = 0
        body: dict[str, Any] = {}
        for field_name in self._names[type(message)]:
            value = getattr(message, field_name)
            if isinstance(value, np.ndarray):
                arr = np.ascontiguousarray(value)
                if arr.dtype.byteorder == ">":
                    arr = arr.astype(arr.dtype.newbyteorder("<"))
                if arr.dtype.str not in _ALLOWED_DTYPES:
                    raise FrameError(f"dtype {arr.dtype} of field {field_name} cannot be sent")
                payload += arr.nbytes
                body[field_name] = {
                    "dt": arr.dtype.str,
                    "sh": list(arr.shape),
                    "b": arr.tobytes(),
                }
            else:
                body[field_name] = value
        return msgpack.packb(body, use_bin_type=True), payload

    def envelope(self, src: int, dst: int, name: str) -> bytes:
        """The bytes that precede a message body of type ``name`` from ``src`` to ``dst``:
        the frame's map with ``body`` as its last key (the body's bytes follow)."""
        if name not in self._types:
            raise FrameError(f"message type {name} is not known to this codec")
        head = msgpack.packb(
            {"v": FRAME_VERSION, "src": src, "dst": dst, "type": name, "body": None},
            use_bin_type=True,
        )
        return head[:-1]  # drop the packed None (one byte, 0xc0): the body goes there

    def decode(self, frame: bytes) -> Frame:
        """Decode a frame; any malformation raises :class:`FrameError`."""
        try:
            obj = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except (ValueError, msgpack.exceptions.ExtraData, TypeError) as exc:
            raise FrameError(f"malformed frame: {type(exc).__name__}") from None
        if not isinstance(obj, dict) or set(obj) != {"v", "src", "dst", "type", "body"}:
            raise FrameError("malformed frame: bad envelope")
        if obj["v"] != FRAME_VERSION:
            raise FrameError(f"unsupported frame version {obj['v']!r}")
        name, body = obj["type"], obj["body"]
        cls = self._types.get(name) if isinstance(name, str) else None
        if cls is None:
            raise FrameError(f"unknown message type {name!r}")
        fields = self._fields[name]
        if not isinstance(body, dict) or set(body) != set(fields):
            raise FrameError(f"fields of {name} do not match its definition")
        if not all(_is_int(obj[k]) and obj[k] >= 0 for k in ("src", "dst")):
            raise FrameError("malformed frame: peer ids must be integers")
        values = {}
        for key, raw in body.items():
            value = _decode_value(key, raw)
            if not _CHECKS[fields[key]](value):
                raise FrameError(f"field {key} of {name} is not a {fields[key].__name__}")
            size = self.vector_size
            if (
                isinstance(value, np.ndarray)
                and size is not None
                and value.shape != (size,)
                and key not in cls.free_shape
            ):
                raise FrameError(
                    f"field {key} of {name} has shape {value.shape}, expected ({size},)"
                )
            values[key] = float(value) if fields[key] is float else value
        try:
            message = cls(**values)
        except (TypeError, ValueError) as exc:
            raise FrameError(f"invalid {name}: {exc}") from None
        return Frame(src=obj["src"], dst=obj["dst"], message=message)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Field types a message may declare, and how a decoded value is checked against each.
_CHECKS: dict[object, Callable[[Any], bool]] = {
    int: _is_int,
    float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    str: lambda v: isinstance(v, str),
    bytes: lambda v: isinstance(v, bytes),
    bool: lambda v: isinstance(v, bool),
    np.ndarray: lambda v: isinstance(v, np.ndarray),
}


def _decode_value(key: str, value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) != {"dt", "sh", "b"}:
            raise FrameError(f"field {key}: malformed array")
        dt, shape, raw = value["dt"], value["sh"], value["b"]
        if dt not in _ALLOWED_DTYPES or not isinstance(raw, bytes):
            raise FrameError(f"field {key}: dtype {dt!r} not allowed")
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise FrameError(f"field {key}: bad shape")
        dtype = np.dtype(dt)
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise FrameError(f"field {key}: {len(raw)} bytes do not fit shape {shape}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    return value
