"""The frame codec: splitting at any byte, limits before allocation, envelope checks."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfs.errors import ErrorCode
from ringfs.wire import (
    REQUEST,
    FrameDecoder,
    Limits,
    WireError,
    encode_error,
    encode_frame,
    encode_request,
    encode_response,
    parse_request,
)

msg = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=64)
    | st.text(max_size=32),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@given(st.lists(msg, min_size=1, max_size=8), st.data())
def test_frames_survive_any_split(objs: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(o) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder(1 << 20)
    out: list[object] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out.extend(dec.feed(stream[prev:c]))
        assert dec.buffered == c - sum(len(encode_frame(o)) for o in out)
        prev = c
    assert out == objs
    assert dec.buffered == 0


@given(st.lists(st.sampled_from([0, 5, 70_000, 300_000]), min_size=1, max_size=5),
       st.data())
def test_large_frames_survive_any_split(sizes: list[int], data: st.DataObject) -> None:
    objs = [[i, bytes([i]) * n, "tail"] for i, n in enumerate(sizes)]
    stream = b"".join(encode_frame(o, bulk=True) for o in objs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    dec = FrameDecoder(1 << 20)
    out: list[object] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        piece = stream[prev:c]
        out.extend(dec.feed(bytearray(piece) if c % 2 else piece))
        assert dec.buffered == c - sum(len(encode_frame(o)) for o in out)
        prev = c
    assert out == objs
    assert dec.buffered == 0


def test_a_large_frame_decoded_from_the_buffer_leaves_it_resizable() -> None:
    # A large body held back in the decoder's own buffer is decoded from a view; the
    # buffer must still shrink afterwards, with a partial frame behind the big one.
    big = encode_frame([0, b"\x00" * 70_000, "tail"], bulk=True)
    small = encode_frame([1])
    dec = FrameDecoder(1 << 20)
    assert dec.feed(big[:1]) == []
    assert dec.feed(big[1:] + small[:2]) == [[0, b"\x00" * 70_000, "tail"]]
    assert dec.buffered == 2
    assert dec.feed(small[2:]) == [[1]]
    assert dec.buffered == 0


def test_a_large_garbage_frame_is_fatal_once_whole() -> None:
    stream = struct.pack(">I", 80_000) + b"\xc1" * 80_000 + encode_frame([1])
    dec = FrameDecoder(100_000)
    assert dec.feed(stream[:30_000]) == [] and dec.buffered == 30_000
    assert dec.feed(stream[30_000:60_000]) == [] and dec.buffered == 60_000
    assert dec.feed(stream[60_000:]) == []
    assert dec.error is not None and dec.error.fatal and dec.buffered == 0
    assert dec.feed(encode_frame([2])) == []


@given(st.lists(msg, min_size=1, max_size=4))
def test_bulk_frames_are_the_same_bytes(objs: list[object]) -> None:
    for o in objs:
        assert encode_frame(o, bulk=True) == encode_frame(o)


def test_oversized_length_rejected_before_body_arrives() -> None:
    dec = FrameDecoder(1024)
    assert dec.feed(struct.pack(">I", 1025)) == []
    assert dec.error is not None
    assert dec.error.code == ErrorCode.FRAME_TOO_LARGE and dec.error.fatal
    assert dec.buffered == 0
    assert dec.feed(encode_frame(1)) == []  # nothing after the error is read


def test_huge_claim_buffers_only_what_arrived() -> None:
    dec = FrameDecoder(8 * 1024 * 1024)
    assert dec.feed(struct.pack(">I", 8 * 1024 * 1024) + b"\x00" * 10) == []
    assert dec.buffered == 14


def test_zero_length_and_garbage_are_fatal() -> None:
    with pytest.raises(WireError) as ei:
        FrameDecoder(100).feed_or_raise(b"\x00\x00\x00\x00")
    assert ei.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(WireError) as ei:
        FrameDecoder(100).feed_or_raise(b"\x00\x00\x00\x01\xc1")  # never valid msgpack
    assert ei.value.code == ErrorCode.BAD_FRAME and ei.value.fatal


def test_frames_before_a_broken_one_are_still_delivered() -> None:
    dec = FrameDecoder(100)
    good = encode_frame([0, 1, 0, {}])
    assert dec.feed(good + b"\x00\x00\x00\x01\xc1" + good) == [[0, 1, 0, {}]]
    assert dec.error is not None and dec.error.code == ErrorCode.BAD_FRAME


def test_declared_container_larger_than_frame_is_refused() -> None:
    body = b"\xdd\xff\xff\xff\xff"  # array32 claiming 4 billion elements
    with pytest.raises(WireError):
        FrameDecoder(100).feed_or_raise(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize(
    ("obj", "fatal"),
    [
        ({}, True),
        ([1, 2, 3, {}], True),
        ([REQUEST, -1, 2, {}], True),
        ([REQUEST, "id", 2, {}], True),
        ([False, 7, 2, {}], True),
        ([0.0, 7, 2, {}], True),
        ([REQUEST, 7, "op", {}], False),
        ([REQUEST, 7, 2, []], False),
    ],
)
def test_bad_envelopes(obj: object, fatal: bool) -> None:
    with pytest.raises(WireError) as ei:
        parse_request(obj)
    assert ei.value.fatal is fatal


def test_round_trip_of_the_three_kinds() -> None:
    dec = FrameDecoder(1 << 20)
    frames = encode_request(1, 2, {"key": b"k"}) + encode_response(1, {"x": 1}) + encode_error(
        None, ErrorCode.BAD_FRAME, "m"
    )
    req, resp, err = dec.feed(frames)
    assert parse_request(req) == (1, 2, {"key": b"k"})
    assert resp == [1, 1, {"x": 1}]
    assert err == [2, None, {"code": 1, "name": "BAD_FRAME", "message": "m"}]
    first_len = struct.unpack(">I", frames[:4])[0]
    assert msgpack.unpackb(frames[4 : 4 + first_len]) == [0, 1, 2, {"key": b"k"}]


def test_limits_validation() -> None:
    with pytest.raises(ValueError):
        Limits(max_frame_bytes=10)
    with pytest.raises(ValueError):
        Limits(max_value_bytes=Limits().max_frame_bytes)
    for bad in (-1, 0, 15):
        with pytest.raises(ValueError):
            Limits(max_context_bytes=bad)
