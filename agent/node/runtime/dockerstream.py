"""Docker's multiplexed attach stream (pure; a private helper of the Docker adapter): 8-byte
headers ``[stream, 0, 0, 0, size(4, BE)]`` in front of each stdout (1) or stderr (2) payload,
used by exec and attach without a TTY."""

from __future__ import annotations

import struct

from agent.errors import RuntimeOperationError
from agent.node.runtime.base import OutputChannel

_HEADER = struct.Struct(">BxxxI")
_STDIN = 0  # what Docker puts in the header of a stdout frame on some versions


class DockerStreamDemux:
    """Incremental: ``feed`` raw bytes, get ``(channel, payload)`` pieces back as they arrive
    (a frame's payload may come in several pieces; no frame is buffered whole; consecutive
    pieces of one channel within a feed are joined)."""

    def __init__(self) -> None:
        self._header = b""
        self._stream = OutputChannel.STDOUT
        self._left = 0

    def feed(self, data: bytes) -> list[tuple[OutputChannel, bytes]]:
        out: list[tuple[OutputChannel, bytes]] = []
        view = memoryview(data)
        while view:
            if self._left:
                piece = bytes(view[: self._left])
                self._left -= len(piece)
                view = view[len(piece) :]
                if out and out[-1][0] == self._stream:
                    out[-1] = (self._stream, out[-1][1] + piece)
                else:
                    out.append((self._stream, piece))
                continue
            need = _HEADER.size - len(self._header)
            self._header += bytes(view[:need])
            view = view[need:]
            if len(self._header) < _HEADER.size:
                break
            stream, size = _HEADER.unpack(self._header)
            self._header = b""
            if stream not in (_STDIN, OutputChannel.STDOUT, OutputChannel.STDERR):
                raise RuntimeOperationError(f"docker attach stream: unknown stream id {stream}")
            self._stream = (
                OutputChannel.STDERR if stream == OutputChannel.STDERR else OutputChannel.STDOUT
            )
            self._left = size
        return out
