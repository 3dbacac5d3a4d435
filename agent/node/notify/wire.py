"""The sd_notify protocol as a container speaks it to us (pure): datagrams, limits, paths.

A datagram is newline-separated ``KEY=VALUE`` assignments, as systemd reads them
(``sd_notify(3)``): ``READY=1``, ``RELOADING=1``, ``STOPPING=1``, ``STATUS=…``, ``WATCHDOG=1``,
``WATCHDOG=trigger``; other assignments (``MAINPID=``, ``ERRNO=``, ``EXTEND_TIMEOUT_USEC=`` …)
and lines without ``=`` are ignored, as systemd ignores what it does not know. Like systemd, a
datagram with a NUL byte or that is not UTF-8 is refused whole.

Also owns the token bucket that rate-limits each socket and where the sockets live: on the host
``<pod dir>/notify/<container>/notify.sock`` (the directory, not the socket, is bind-mounted, so a
socket re-created by a restarted agent is the one the container sees), in the container
``/run/node-agent/notify/notify.sock``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.annotations import NOTIFY_CONTAINER_DIR

MAX_DATAGRAM_BYTES = 4096  # a datagram above this is dropped (systemd reads up to 4 KiB too)
STATUS_MAX_CHARS = 256  # STATUS= as shown in the pod's status, escaped, then cut
RATE_PER_S = 10.0  # datagrams a socket may deliver per second, sustained ...
BURST = 20  # ... and at once
NOTIFY_DIR = "notify"  # under the pod's directory
SOCKET_NAME = "notify.sock"
CONTAINER_DIR = NOTIFY_CONTAINER_DIR
CONTAINER_SOCKET = f"{CONTAINER_DIR}/{SOCKET_NAME}"
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"  # what sd_watchdog_enabled(3) reads in the container
USEC_PER_S = 1_000_000
_TOKEN_EPSILON = 1e-9  # float sums of rate * elapsed fall short of 1.0 by an ulp


def container_dir(pod_dir: Path, container: str) -> Path:
    """The host directory bind-mounted at :data:`CONTAINER_DIR` in ``container``."""
    return pod_dir / NOTIFY_DIR / container


@dataclass(frozen=True, slots=True)
class NotifyMessage:
    """What one datagram says; ``status`` is None when it sets no ``STATUS=``."""

    ready: bool = False
    reloading: bool = False
    stopping: bool = False
    watchdog: bool = False
    watchdog_trigger: bool = False
    status: str | None = None


def parse_datagram(data: bytes) -> NotifyMessage | None:
    """The message of one datagram, or None when it is malformed (NUL byte, not UTF-8, or
    nothing in it)."""
    if not data or b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ready = reloading = stopping = watchdog = trigger = False
    status: str | None = None
    for line in text.split("\n"):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "READY":
            ready = value == "1"
        elif key == "RELOADING":
            reloading = value == "1"
        elif key == "STOPPING":
            stopping = value == "1"
        elif key == "WATCHDOG":
            watchdog = watchdog or value == "1"
            trigger = trigger or value == "trigger"
        elif key == "STATUS":
            status = value
    return NotifyMessage(ready, reloading, stopping, watchdog, trigger, status)


def escape_status(text: str) -> str:
    """``STATUS=`` as it may be shown: control characters escaped (``\\n``, ``\\x1b``), at most
    :data:`STATUS_MAX_CHARS` characters (cut with ``…``)."""
    out: list[str] = []
    size = 0
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            piece = "\\\\"
        elif ch == "\n":
            piece = "\\n"
        elif ch == "\t":
            piece = "\\t"
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            piece = f"\\x{code:02x}"
        elif code in (0x2028, 0x2029) or 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069:
            # Line separators and bidirectional overrides would forge or reorder a line.
            piece = f"\\u{code:04x}"
        else:
            piece = ch
        if size + len(piece) > STATUS_MAX_CHARS:
            out.append("…")
            break
        out.append(piece)
        size += len(piece)
    return "".join(out)


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved; one per datagram."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = max(self._stamp, now)

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0 - _TOKEN_EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until a token is there (0 when one is)."""
        self._refill(now)
        if self._tokens >= 1.0 - _TOKEN_EPSILON:
            return 0.0
        return (1.0 - self._tokens) / self._rate
