"""The systemd notify protocol (READY=1, WATCHDOG=1, STOPPING=1, STATUS=) without a dependency.

Owns talking to ``$NOTIFY_SOCKET`` and reading the watchdog interval from ``$WATCHDOG_USEC``.
Every message is one datagram; failures are swallowed (logged at debug) because a dead or absent
systemd must never take the agent down.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)
USEC_PER_S = 1_000_000


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, as systemd recommends; None when there is none.

    Like sd_watchdog_enabled(3), a ``$WATCHDOG_PID`` naming another process means the watchdog is
    not ours (the variables were inherited).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC") or 0)
    except ValueError:
        return None
    return usec / USEC_PER_S / 2 if usec > 0 else None


def _one_line(text: str) -> str:
    # A newline inside a value would start a new assignment in the datagram (STATUS=x\nREADY=1).
    return " ".join(text.splitlines())


class Notifier(Protocol):
    """What a daemon tells systemd (``SystemdNotifier``; a fake in tests)."""

    def ready(self, status: str = "") -> object: ...

    def stopping(self) -> object: ...

    def watchdog(self) -> object: ...

    def watchdog_interval_s(self) -> float | None: ...


class SystemdNotifier:
    """Sends sd_notify datagrams to one socket: a path, or ``@name`` for the abstract namespace."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        """The notifier for ``$NOTIFY_SOCKET``; one that sends nothing when it is unset."""
        return cls(os.environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *states: str) -> bool:
        """Send ``states`` (``"READY=1"``, ...) as one datagram; True if it was sent."""
        if self._address is None or not states:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Non-blocking: a systemd that stopped reading must not stall the event loop.
                sock.setblocking(False)
                sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            log.debug("sd_notify failed", exc_info=exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog_interval_s(self) -> float | None:
        """See the module-level :func:`watchdog_interval_s`."""
        return watchdog_interval_s()
