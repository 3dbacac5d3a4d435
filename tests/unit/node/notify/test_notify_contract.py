"""The NotifyGate contract suite (tests/contracts/notify.py) against ``FakeNotify`` and against
the real ``NotifyHub``, whose sockets are real Unix datagram sockets under the test's directory
(a container's writes are made from a thread, as a process in the container would). One fake
clock drives the watchdog and the STATUS= wake in both."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster

from agent.aio.bridge import ThreadBridge
from agent.node.notify.fake import FakeNotify
from agent.node.notify.hub import RESULTS, NotifyHub
from agent.node.notify.wire import SOCKET_NAME, container_dir
from tests.contracts.notify import NotifyContract
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.fakeclock import FakeClock

SETTLE_ROUNDS = 10


class FakeHarness:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.fake = FakeNotify(clock=self.clock, timers=self.clock)
        self.gate = self.fake

    async def send(self, pod_uid: str, container: str, data: bytes) -> bool:
        return self.fake.send(pod_uid, container, data)

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


def _write(directory: Path, data: bytes) -> bool:
    """Blocking: one datagram to the socket in ``directory`` (through /proc/self/fd: the
    path may be longer than sun_path); False when nothing listens there."""
    try:
        dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    finally:
        os.close(dir_fd)
    return True


class HubHarness:
    def __init__(self, pods_dir: Path, bridge: ThreadBridge) -> None:
        self.pods_dir = pods_dir
        self.clock = FakeClock()
        self.hub = NotifyHub(pods_dir, bridge=bridge, clock=self.clock, timers=self.clock)
        self.gate = self.hub

    def _read(self) -> int:
        return sum(self.hub.count(result) for result in RESULTS)

    async def send(self, pod_uid: str, container: str, data: bytes) -> bool:
        before = self._read()
        directory = container_dir(self.pods_dir / pod_uid, container)
        if not await asyncio.to_thread(_write, directory, data):
            return False
        await until(lambda: self._read() > before, "the hub to read the datagram")
        return True

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for _ in range(SETTLE_ROUNDS):
            await asyncio.sleep(0)


class TestFakeNotify(NotifyContract):
    @pytest.fixture
    def harness(self, blockbuster: BlockBuster) -> FakeHarness:
        return FakeHarness()


class TestNotifyHub(NotifyContract):
    @pytest.fixture
    async def harness(self, tmp_path: Path, blockbuster: BlockBuster) -> AsyncIterator[HubHarness]:
        bridge = ThreadBridge(2, name="notify-contract")
        harness = HubHarness(tmp_path / "pods", bridge)
        try:
            yield harness
        finally:
            with contextlib.suppress(Exception):
                await harness.hub.stop()
            bridge.close()
