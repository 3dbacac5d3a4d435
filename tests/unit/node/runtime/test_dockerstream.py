"""Docker's multiplexed attach stream, taken apart incrementally."""

from __future__ import annotations

import struct

import pytest

from agent.errors import RuntimeOperationError
from agent.node.runtime.base import OutputChannel
from agent.node.runtime.dockerstream import DockerStreamDemux


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def test_frames_split_anywhere_come_back_whole_per_channel() -> None:
    wire = frame(1, b"hello ") + frame(1, b"world") + frame(2, b"oops") + frame(0, b"!")
    for cut in range(len(wire) + 1):
        demux = DockerStreamDemux()
        pieces = demux.feed(wire[:cut]) + demux.feed(wire[cut:])
        out = {OutputChannel.STDOUT: b"", OutputChannel.STDERR: b""}
        for channel, payload in pieces:
            out[channel] += payload
        assert out == {OutputChannel.STDOUT: b"hello world!", OutputChannel.STDERR: b"oops"}


def test_consecutive_pieces_of_one_channel_are_joined() -> None:
    demux = DockerStreamDemux()
    assert demux.feed(frame(1, b"a") + frame(1, b"b") + frame(2, b"c")) == [
        (OutputChannel.STDOUT, b"ab"),
        (OutputChannel.STDERR, b"c"),
    ]


def test_an_unknown_stream_id_is_an_error() -> None:
    with pytest.raises(RuntimeOperationError, match="unknown stream id 7"):
        DockerStreamDemux().feed(frame(7, b"x"))
