"""Per-hop timestamps of small stream messages, for ``bench/streaming.py --hops`` (issue 20).

Off unless ``NODE_AGENT_HOPS`` names a directory when a process starts: then :data:`RECORDER`
is set and every process of the path (nodectl, the master, the agent) stamps the small messages
it moves at each hop — a port-forward's local socket read and write (nodectl), each TLS read
(``data_received``) and write (the driver's flush) and the pod socket's write and read (agent)
— with ``CLOCK_MONOTONIC`` (one clock for every process of the machine). The bench pairs the
stamps with its own pings and prints where a round trip's microseconds go.

When off, a hop costs one test of a module global (``if hops.RECORDER is not None``), read
once at start-up: nothing is stamped, nothing is imported or opened.

The records go into a file-backed shared mapping (``<dir>/<pid>.hops``), so stamping makes no
system call and the records survive a process that is killed (the bench ends the agent with
SIGKILL); the bench reads the files afterwards.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from enum import IntEnum

ENV_VAR = "NODE_AGENT_HOPS"
# Only messages up to this size are stamped: the bench's 1-byte pings (a 1-byte DATA frame is
# 10 bytes, with TLS framing a few dozen), not bulk transfers.
SMALL_BYTES = 128
CAPACITY_RECORDS = 1 << 18  # 4 MiB per process: a few 10,000 pings at each of its hops
RECORD = struct.Struct("<QBBxxI")  # monotonic ns, point, side, pad, nbytes


class Point(IntEnum):
    LOCAL_READ = 1  # nodectl port-forward: bytes from the local client's socket
    LOCAL_WRITE = 2  # … written to it
    TLS_READ = 3  # an HTTP/2 connection's bytes decrypted (data_received)
    TLS_WRITE = 4  # … handed to the TLS transport (encrypted and sent)
    POD_WRITE = 5  # agent port-forward: bytes written to the pod's socket
    POD_READ = 6  # … read from it


class Side(IntEnum):
    NONE = 0  # not an HTTP/2 connection (local or pod socket)
    SERVER = 1  # the connection's server end (a node API or master connection)
    CLIENT = 2  # the connection's client end (nodectl, the master's link to a node)


class HopRecorder:
    __slots__ = ("_count", "_map", "_pack")

    def __init__(self, directory: str) -> None:
        path = os.path.join(directory, f"{os.getpid()}.hops")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, CAPACITY_RECORDS * RECORD.size)
            self._map = mmap.mmap(fd, CAPACITY_RECORDS * RECORD.size)
        finally:
            os.close(fd)
        self._count = 0
        self._pack = RECORD.pack_into

    def mark(self, point: Point, side: Side, nbytes: int) -> None:
        if nbytes > SMALL_BYTES or self._count >= CAPACITY_RECORDS:
            return
        self._pack(self._map, self._count * RECORD.size, time.monotonic_ns(), point, side, nbytes)
        self._count += 1


def read_records(path: str) -> list[tuple[int, Point, Side, int]]:
    """A process's records, in the order stamped: (monotonic ns, point, side, bytes)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    for t, point, side, nbytes in RECORD.iter_unpack(data):
        if t == 0:
            break
        out.append((t, Point(point), Side(side), nbytes))
    return out


def _from_env() -> HopRecorder | None:
    directory = os.environ.get(ENV_VAR)
    return HopRecorder(directory) if directory else None


RECORDER: HopRecorder | None = _from_env()
