"""The exec channel codec: framing round trips, incremental decoding, and bad frames."""

from __future__ import annotations

import struct

import pytest

from agent.errors import ProtocolViolation
from agent.proto.execframe import (
    MAX_PAYLOAD_BYTES,
    Channel,
    Frame,
    FrameDecoder,
    Resize,
    decode_resize,
    encode,
    encode_resize,
)


def test_frames_round_trip_split_at_every_byte() -> None:
    wire = encode(Channel.STDOUT, b"out") + encode(Channel.STDERR, b"") + encode_resize(120, 40)
    decoder = FrameDecoder()
    frames = []
    for byte in wire:
        frames += decoder.feed(bytes([byte]))
    assert frames == [
        Frame(Channel.STDOUT, b"out"),
        Frame(Channel.STDERR, b""),
        Frame(Channel.RESIZE, struct.pack(">HH", 120, 40)),
    ]
    assert decode_resize(frames[2].payload) == Resize(120, 40)
    assert decoder.pending_bytes == 0


def test_partial_frame_is_held_back() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode(Channel.STDIN, b"abcdef")[:7]) == []
    assert decoder.pending_bytes == 7


def test_unknown_or_unexpected_channel_is_refused() -> None:
    with pytest.raises(ProtocolViolation, match="unexpected channel 9"):
        FrameDecoder().feed(bytes([9, 0, 0, 0, 0]))
    client_side = FrameDecoder(frozenset({Channel.STDIN, Channel.RESIZE}))
    with pytest.raises(ProtocolViolation, match="unexpected channel 1"):
        client_side.feed(encode(Channel.STDOUT, b"x"))


def test_oversized_frames_are_refused_both_ways() -> None:
    with pytest.raises(ProtocolViolation, match="bytes >"):
        FrameDecoder().feed(struct.pack(">BI", Channel.STDIN, MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="payload of"):
        encode(Channel.STDIN, b"x" * (MAX_PAYLOAD_BYTES + 1))


def test_bad_resize_payload() -> None:
    with pytest.raises(ProtocolViolation, match="resize frame: 3 bytes"):
        decode_resize(b"abc")
