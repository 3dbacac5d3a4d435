"""The systemd notify protocol (READY=1, WATCHDOG=1, STOPPING=1) without a dependency.

A datagram to ``$NOTIFY_SOCKET``; failures are swallowed (logged at debug) because a dead or
absent systemd must never take the agent down.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
USEC_PER_S = 1_000_000


class SystemdNotifier:
    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self._address = address or None

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        return cls(os.environ.get("NOTIFY_SOCKET"))

    def notify(self, *states: str) -> bool:
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto("\n".join(states).encode(), self._address)
        except OSError as exc:
            log.debug("sd_notify failed", exc_info=exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog_interval_s(self) -> float | None:
        """Half of ``$WATCHDOG_USEC``, as systemd recommends; None when no watchdog is set."""
        raw = os.environ.get("WATCHDOG_USEC")
        try:
            usec = int(raw) if raw else 0
        except ValueError:
            return None
        return usec / USEC_PER_S / 2 if usec > 0 else None
