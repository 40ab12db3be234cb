"""Frames: decode(encode(m)) == m, byte accounting, and typed rejection of bad frames."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from p2pfed.errors import FrameError
from p2pfed.protocol import Codec, GossipReply, GossipRequest, ModelShare, PushSumShare

CODEC = Codec([ModelShare, GossipRequest, GossipReply, PushSumShare])

arrays = hnp.arrays(
    dtype=np.float32,
    shape=hnp.array_shapes(min_dims=1, max_dims=1, max_side=300),
    elements=st.floats(-1e6, 1e6, width=32, allow_nan=False),
)


@given(arrays, st.integers(0, 2**31), st.integers(0, 999), st.integers(0, 999))
def test_model_share_round_trip(params: np.ndarray, rnd: int, src: int, dst: int) -> None:
    frame, size = CODEC.encode(src, dst, ModelShare(round=rnd, params=params))
    decoded = CODEC.decode(frame)
    assert (decoded.src, decoded.dst) == (src, dst)
    assert isinstance(decoded.message, ModelShare)
    assert decoded.message.round == rnd
    assert decoded.message.params.dtype == np.float32
    np.testing.assert_array_equal(decoded.message.params, params)
    assert size.payload == params.nbytes
    assert size.total == len(frame)
    assert 0 < size.metadata < 100


@given(arrays, st.integers(0, 2**31), st.integers(0, 2**20), st.integers(0, 2**20))
def test_frame_is_envelope_then_body(params: np.ndarray, rnd: int, src: int, dst: int) -> None:
    """The split the engine relies on to pack a broadcast once: envelope + body is the
    frame, and the frame is the plain msgpack map of the documented layout."""
    message = ModelShare(round=rnd, params=params)
    frame, size = CODEC.encode(src, dst, message)
    body, payload = CODEC.encode_body(message)
    assert CODEC.envelope(src, dst, "ModelShare") + body == frame
    assert payload == size.payload == params.nbytes
    whole = {
        "v": 1,
        "src": src,
        "dst": dst,
        "type": "ModelShare",
        "body": {"round": rnd, "params": {"dt": "<f4", "sh": [len(params)], "b": params.tobytes()}},
    }
    assert msgpack.packb(whole, use_bin_type=True) == frame


def test_envelope_refuses_unknown_type() -> None:
    with pytest.raises(FrameError, match="not known"):
        CODEC.envelope(0, 1, "Nope")


@given(arrays, st.floats(0, 1, allow_nan=False))
def test_push_sum_share_round_trip(x: np.ndarray, w: float) -> None:
    frame, _ = CODEC.encode(0, 1, PushSumShare(round=3, x=x, w=w))
    msg = CODEC.decode(frame).message
    assert isinstance(msg, PushSumShare)
    assert msg.w == w
    np.testing.assert_array_equal(msg.x, x)


def test_big_endian_arrays_arrive_little_endian() -> None:
    params = np.arange(5, dtype=">f4")
    frame, _ = CODEC.encode(0, 1, ModelShare(round=0, params=params))
    msg = CODEC.decode(frame).message
    assert isinstance(msg, ModelShare)
    np.testing.assert_array_equal(msg.params, np.arange(5, dtype=np.float32))


def _raw(**changes: object) -> bytes:
    frame, _ = CODEC.encode(0, 1, ModelShare(round=1, params=np.ones(4, np.float32)))
    obj = msgpack.unpackb(frame, raw=False)
    for key, value in changes.items():
        if key.startswith("body."):
            obj["body"][key[5:]] = value
        else:
            obj[key] = value
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"\xc1garbage", "malformed"),
        (msgpack.packb([1, 2, 3]), "envelope"),
        (_raw(v=99), "version"),
        (_raw(type="EvilMessage"), "unknown message type"),
        (_raw(**{"body.extra": 1}), "fields"),
        (_raw(**{"body.params": {"dt": "|O", "sh": [4], "b": b"x" * 32}}), "dtype"),
        (_raw(**{"body.params": {"dt": "<f4", "sh": [5], "b": b"\0" * 16}}), "do not fit"),
        (_raw(**{"body.params": {"dt": "<f4", "sh": [-4], "b": b"\0" * 16}}), "shape"),
        (_raw(src="zero"), "integers"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        CODEC.decode(frame)


def test_truncated_frame_is_rejected() -> None:
    frame, _ = CODEC.encode(0, 1, ModelShare(round=1, params=np.ones(64, np.float32)))
    with pytest.raises(FrameError):
        CODEC.decode(frame[:-10])


def test_codec_refuses_unknown_message_type_on_encode() -> None:
    narrow = Codec([ModelShare])
    with pytest.raises(FrameError, match="not known"):
        narrow.encode(0, 1, PushSumShare(round=0, x=np.zeros(2, np.float32), w=1.0))


def test_object_arrays_cannot_be_sent() -> None:
    with pytest.raises(FrameError, match="cannot be sent"):
        CODEC.encode(0, 1, ModelShare(round=0, params=np.array([object()], dtype=object)))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"body.round": "0"}, "round of ModelShare is not a int"),
        ({"body.round": True}, "round of ModelShare is not a int"),
        ({"body.params": 7}, "params of ModelShare is not a ndarray"),
        ({"src": True}, "peer ids"),
        ({"dst": -1}, "peer ids"),
    ],
)
def test_field_types_are_checked(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        CODEC.decode(_raw(**changes))


def test_vector_size_is_enforced_when_known() -> None:
    sized = Codec([ModelShare], vector_size=4)
    frame, _ = sized.encode(0, 1, ModelShare(round=0, params=np.ones(4, np.float32)))
    assert sized.decode(frame).message.params.shape == (4,)  # type: ignore[attr-defined]
    bad, _ = sized.encode(0, 1, ModelShare(round=0, params=np.ones(5, np.float32)))
    with pytest.raises(FrameError, match=r"shape \(5,\), expected \(4,\)"):
        sized.decode(bad)


def test_push_sum_weight_may_be_an_int_on_the_wire() -> None:
    frame, _ = CODEC.encode(0, 1, PushSumShare(round=0, x=np.zeros(2, np.float32), w=1))
    msg = CODEC.decode(frame).message
    assert isinstance(msg, PushSumShare) and isinstance(msg.w, float)
