"""sd_notify datagrams to a real AF_UNIX socket (path and abstract), failures never raise."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.aio.sdnotify import SystemdNotifier, watchdog_interval_s

RECV_BYTES = 4096
HANG_GUARD_S = 30.0


@pytest.fixture(params=["path", "abstract"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd, and its $NOTIFY_SOCKET spelling."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "abstract":
        name = f"node-agent-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        address = "@" + name
    else:
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    sock.settimeout(HANG_GUARD_S)
    with sock:
        yield sock, address


def test_datagrams(server: tuple[socket.socket, str]) -> None:
    sock, address = server
    notifier = SystemdNotifier(address)
    assert notifier.enabled
    assert notifier.ready("running 3 pods")
    assert sock.recv(RECV_BYTES) == b"READY=1\nSTATUS=running 3 pods"
    assert notifier.ready()
    assert sock.recv(RECV_BYTES) == b"READY=1"
    assert notifier.status("syncing")
    assert sock.recv(RECV_BYTES) == b"STATUS=syncing"
    assert notifier.watchdog()
    assert sock.recv(RECV_BYTES) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(RECV_BYTES) == b"STOPPING=1"
    assert notifier.notify("RELOADING=1", "MONOTONIC_USEC=1")
    assert sock.recv(RECV_BYTES) == b"RELOADING=1\nMONOTONIC_USEC=1"


def test_status_cannot_inject_assignments(server: tuple[socket.socket, str]) -> None:
    sock, address = server
    assert SystemdNotifier(address).status("bad\nREADY=1")
    assert sock.recv(RECV_BYTES) == b"STATUS=bad READY=1"


def test_from_env(server: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sock, address = server
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert SystemdNotifier.from_env().watchdog()
    assert sock.recv(RECV_BYTES) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not SystemdNotifier.from_env().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert SystemdNotifier.from_env().ready() is False


def test_without_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier(None)
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False


def test_dead_socket_returns_false_and_logs_at_debug(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.aio.sdnotify")
    assert SystemdNotifier(str(tmp_path / "gone.sock")).watchdog() is False
    assert SystemdNotifier("@node-agent-test-nobody-" + uuid.uuid4().hex).ready() is False
    records = [r for r in caplog.records if r.name == "agent.aio.sdnotify"]
    assert len(records) == 2
    assert all(r.levelno == logging.DEBUG and r.exc_info for r in records)


def test_full_socket_does_not_block(server: tuple[socket.socket, str]) -> None:
    """A systemd that stopped reading: sends fail fast instead of blocking the event loop."""
    _, address = server
    notifier = SystemdNotifier(address)
    results: list[bool] = []

    def flood() -> None:
        # The receive queue holds net.unix.max_dgram_qlen datagrams (10 by default).
        for _ in range(10_000):
            results.append(notifier.watchdog())
            if not results[-1]:
                return

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), "notify() blocked on a full socket"
    assert results[-1] is False and all(results[:-1])


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert (
        watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    )
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({}) is None
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    assert watchdog_interval_s() == 10.0
    assert SystemdNotifier(None).watchdog_interval_s() == 10.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert SystemdNotifier(None).watchdog_interval_s() is None
