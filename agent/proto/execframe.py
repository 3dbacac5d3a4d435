"""The exec channel codec (sans-IO): framed messages inside one HTTP/2 stream's body.

A frame is one channel byte, a 4-byte big-endian payload length, then the payload:

* client → node: ``STDIN`` (bytes for the process), ``RESIZE`` (``cols`` and ``rows`` as two
  big-endian uint16);
* node → client: ``STDOUT`` and ``STDERR`` (merged into ``STDOUT`` with a TTY).

Stdin EOF is not a frame: it is the end of the request stream (HTTP/2 half-close), so it can
never be confused with data. The exit status travels in the response trailers. Payloads are
capped (``MAX_PAYLOAD_BYTES``) so a peer cannot make the decoder buffer without bound.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from agent.errors import ProtocolViolation

MAX_PAYLOAD_BYTES = 1 << 20
_HEADER = struct.Struct(">BI")
_RESIZE = struct.Struct(">HH")


class Channel(IntEnum):
    STDIN = 0
    STDOUT = 1
    STDERR = 2
    RESIZE = 3


@dataclass(frozen=True, slots=True)
class Frame:
    channel: Channel
    payload: bytes


@dataclass(frozen=True, slots=True)
class Resize:
    cols: int
    rows: int


def encode(channel: Channel, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"exec frame payload of {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    return _HEADER.pack(channel, len(payload)) + payload


def encode_resize(cols: int, rows: int) -> bytes:
    return encode(Channel.RESIZE, _RESIZE.pack(cols, rows))


def decode_resize(payload: bytes) -> Resize:
    if len(payload) != _RESIZE.size:
        raise ProtocolViolation(f"resize frame: {len(payload)} bytes, expected {_RESIZE.size}")
    cols, rows = _RESIZE.unpack(payload)
    return Resize(cols, rows)


class FrameDecoder:
    """Incremental: ``feed`` bytes as they arrive, get whole frames back."""

    def __init__(self, allowed: frozenset[Channel] = frozenset(Channel)) -> None:
        self._buffer = bytearray()
        self._allowed = allowed

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= _HEADER.size:
            channel, length = _HEADER.unpack_from(self._buffer)
            if channel not in Channel.__members__.values() or Channel(channel) not in self._allowed:
                raise ProtocolViolation(f"exec frame on unexpected channel {channel}")
            if length > MAX_PAYLOAD_BYTES:
                raise ProtocolViolation(f"exec frame of {length} bytes > {MAX_PAYLOAD_BYTES}")
            end = _HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append(Frame(Channel(channel), bytes(self._buffer[_HEADER.size : end])))
            del self._buffer[:end]
        return frames
