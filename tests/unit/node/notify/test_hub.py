"""The notify hub on real Unix datagram sockets in a tmp dir, with the fake clock: readiness,
STATUS=, the watchdog, limits, the rate limit under a flood, saving across an agent restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from blockbuster import BlockBuster

from agent.aio.bridge import ThreadBridge
from agent.manifest import parse_pod
from agent.node.notify.hub import NotifyHub
from agent.node.notify.wire import BURST, MAX_DATAGRAM_BYTES, SOCKET_NAME
from agent.types import Pod
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.fakeclock import FakeClock

UID = "0e1f2a3b-0000-4000-8000-000000000001"


def notify_pod(
    notify: str = "web", watchdog: str | None = None, uid: str = UID, names: tuple[str, ...] = ()
) -> Pod:
    annotations = {"node-agent.io/notify": notify}
    if watchdog is not None:
        annotations["node-agent.io/notify-watchdog-seconds"] = watchdog
    containers = [{"name": n, "image": "img:1"} for n in (names or ("web", "side"))]
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "uid": uid, "annotations": annotations},
            "spec": {"containers": containers},
        },
        source="api",
    )


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def bridge() -> Iterator[ThreadBridge]:
    bridge = ThreadBridge(2, name="notify-test")
    yield bridge
    bridge.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def hub(
    tmp_path: Path, bridge: ThreadBridge, clock: FakeClock, blockbuster: BlockBuster
) -> AsyncIterator[NotifyHub]:
    # blockbuster: nothing the hub does on the loop may block (sockets, files).
    hub = NotifyHub(tmp_path / "pods", bridge=bridge, clock=clock, timers=clock)
    yield hub
    await hub.stop()


def socket_path(tmp_path: Path, container: str = "web", uid: str = UID) -> Path:
    return tmp_path / "pods" / uid / "notify" / container / SOCKET_NAME


class Sender:
    """What a process in the container does: datagrams to $NOTIFY_SOCKET (reached through
    ``/proc/self/fd``: pytest's tmp paths are longer than ``sun_path``)."""

    def __init__(self, path: Path) -> None:
        self.dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
        self.address = f"/proc/self/fd/{self.dir_fd}/{path.name}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)  # sent from the loop under blockbuster: the queue has room

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.address)

    def close(self) -> None:
        self.sock.close()
        os.close(self.dir_fd)


@contextlib.contextmanager
def sender(path: Path) -> Iterator[Sender]:
    s = Sender(path)
    try:
        yield s
    finally:
        s.close()


async def test_sockets_only_for_opted_in_containers_with_modes_any_uid_can_use(
    hub: NotifyHub, tmp_path: Path
) -> None:
    wakes = Wakes()
    plain = notify_pod(notify="", uid="plain-pod")
    await hub.sync(plain, wakes)
    assert not await asyncio.to_thread((tmp_path / "pods" / "plain-pod").exists)
    assert hub.view("plain-pod", "web") is None

    await hub.sync(notify_pod(), wakes)
    path = socket_path(tmp_path)

    def modes() -> tuple[int, ...]:
        return tuple(p.stat().st_mode for p in (path, path.parent, path.parent.parent))

    sock_mode, dir_mode, notify_mode = await asyncio.to_thread(modes)
    assert stat.S_ISSOCK(sock_mode)
    assert stat.S_IMODE(sock_mode) == 0o666
    assert stat.S_IMODE(dir_mode) == 0o711  # what the container gets
    assert stat.S_IMODE(notify_mode) == 0o700  # nobody else on the host
    assert not await asyncio.to_thread(socket_path(tmp_path, "side").exists)
    assert hub.view(UID, "side") is None
    view = hub.view(UID, "web")
    assert view is not None and not view.ready and not view.started


async def test_ready_status_reloading_stopping(
    hub: NotifyHub, tmp_path: Path, clock: FakeClock
) -> None:
    wakes = Wakes()
    await hub.sync(notify_pod(), wakes)
    hub.begin(UID, "web", 0)
    with sender(socket_path(tmp_path)) as s:
        s.send(b"STATUS=warming up\x1b[2J")
        await until(lambda: hub.count("accepted") == 1, "STATUS read")
        view = hub.view(UID, "web")
        assert view is not None and view.status == "warming up\\x1b[2J" and not view.ready
        # A STATUS= change wakes the worker once a second at most, not per datagram.
        assert wakes.count == 0
        s.send(b"STATUS=still warming")
        await until(lambda: hub.count("accepted") == 2, "second STATUS read")
        clock.advance(1.0)
        assert wakes.count == 1

        s.send(b"READY=1\nSTATUS=serving")
        await until(lambda: (v := hub.view(UID, "web")) is not None and v.ready, "READY=1")
        view = hub.view(UID, "web")
        assert view is not None and view.started and view.status == "serving"
        assert wakes.count == 2

        s.send(b"RELOADING=1")
        await until(lambda: (v := hub.view(UID, "web")) is not None and not v.ready, "RELOADING")
        s.send(b"READY=1")
        await until(lambda: (v := hub.view(UID, "web")) is not None and v.ready, "ready again")

        s.send(b"STOPPING=1")
        await until(lambda: (v := hub.view(UID, "web")) is not None and v.stopping, "STOPPING")
        view = hub.view(UID, "web")
        assert view is not None and not view.ready and view.started
        s.send(b"READY=1")  # a stopping container does not become ready again
        await until(lambda: hub.count("accepted") == 7, "READY after STOPPING read")
        view = hub.view(UID, "web")
        assert view is not None and not view.ready

    # A new attempt starts afresh: it must say READY=1 itself.
    hub.begin(UID, "web", 1)
    view = hub.view(UID, "web")
    assert view is not None
    assert (view.attempt, view.ready, view.started, view.stopping, view.status) == (
        1,
        False,
        False,
        False,
        "",
    )


async def test_a_new_attempt_drops_what_the_previous_one_left_queued(
    hub: NotifyHub, tmp_path: Path
) -> None:
    """READY=1 sent by a process just before it died, still queued when the worker begins the
    next attempt, must not make the new process ready: begin() drops the queue."""
    await hub.sync(notify_pod(), Wakes())
    hub.begin(UID, "web", 0)
    with sender(socket_path(tmp_path)) as s:
        # Sent and still unread (the loop has not run since): the old attempt's last words.
        s.send(b"READY=1")
        s.send(b"STATUS=old")
        hub.begin(UID, "web", 1)
        assert hub.count("stale") == 2
        view = hub.view(UID, "web")
        assert view is not None and (view.attempt, view.ready, view.status) == (1, False, "")
        s.send(b"STATUS=new")  # the new process is heard
        await until(lambda: hub.count("accepted") == 1, "the new attempt's datagram")
        view = hub.view(UID, "web")
        assert view is not None and view.status == "new" and not view.ready


async def test_watchdog_armed_by_ready_expires_without_pings(
    hub: NotifyHub, tmp_path: Path, clock: FakeClock
) -> None:
    wakes = Wakes()
    await hub.sync(notify_pod(watchdog="10"), wakes)
    hub.begin(UID, "web", 0)
    clock.advance(60.0)  # not armed before READY=1 or a first WATCHDOG=1
    view = hub.view(UID, "web")
    assert view is not None and view.expired == "" and view.watchdog_s == 10
    with sender(socket_path(tmp_path)) as s:
        s.send(b"READY=1")
        await until(lambda: (v := hub.view(UID, "web")) is not None and v.ready, "READY=1")
        for _ in range(5):  # pings every 8 s keep it alive for 40 s
            clock.advance(8.0)
            s.send(b"WATCHDOG=1")
            count = hub.count("accepted")
            await until(lambda c=count: hub.count("accepted") == c + 1, "ping read")  # type: ignore[misc]
        view = hub.view(UID, "web")
        assert view is not None and view.expired == "" and view.ready
        before = wakes.count
        clock.advance(9.9)
        assert hub.expired_count == 0
        clock.advance(0.2)
        view = hub.view(UID, "web")
        assert view is not None and view.expired == "no WATCHDOG=1 for 10s" and not view.ready
        assert hub.expired_count == 1 and wakes.count == before + 1
        # Expired stays expired for this attempt: a late READY=1 does not revive it.
        s.send(b"READY=1\nWATCHDOG=1")
        await until(lambda: hub.count("accepted") == 7, "late ping read")
        view = hub.view(UID, "web")
        assert view is not None and view.expired and not view.ready
    hub.begin(UID, "web", 1)
    view = hub.view(UID, "web")
    assert view is not None and view.expired == ""
    clock.advance(100.0)
    assert hub.expired_count == 1  # the new attempt is not armed until it says so


async def test_watchdog_trigger_and_stopping(
    hub: NotifyHub, tmp_path: Path, clock: FakeClock
) -> None:
    await hub.sync(notify_pod(watchdog="5"), Wakes())
    hub.begin(UID, "web", 0)
    with sender(socket_path(tmp_path)) as s:
        s.send(b"WATCHDOG=1")  # a first ping arms it too
        await until(lambda: hub.count("accepted") == 1, "ping read")
        s.send(b"STOPPING=1")  # a stopping container is not watched
        await until(lambda: (v := hub.view(UID, "web")) is not None and v.stopping, "STOPPING")
        clock.advance(60.0)
        assert hub.expired_count == 0
        hub.begin(UID, "web", 1)
        s.send(b"WATCHDOG=trigger")
        await until(lambda: hub.expired_count == 1, "trigger")
        view = hub.view(UID, "web")
        assert view is not None and view.expired == "WATCHDOG=trigger"


async def test_oversize_and_malformed_datagrams_are_dropped_and_counted(
    hub: NotifyHub, tmp_path: Path
) -> None:
    await hub.sync(notify_pod(), Wakes())
    hub.begin(UID, "web", 0)
    with sender(socket_path(tmp_path)) as s:
        s.send(b"READY=1\nSTATUS=" + b"x" * MAX_DATAGRAM_BYTES)
        s.send(b"READY=1\0")
        s.send(b"READY=1\nSTATUS=\xff")
        s.send(b"STATUS=" + b"y" * (MAX_DATAGRAM_BYTES - 7))  # exactly the limit: fine
        await until(lambda: hub.count("accepted") == 1, "the datagram at the limit")
    assert (hub.count("oversize"), hub.count("malformed")) == (1, 2)
    view = hub.view(UID, "web")
    assert view is not None and not view.ready and view.status.startswith("yyy")


async def test_rate_limit_drops_the_excess_and_pauses_the_socket(
    hub: NotifyHub, tmp_path: Path, clock: FakeClock
) -> None:
    await hub.sync(notify_pod(), Wakes())
    hub.begin(UID, "web", 0)
    given_up = threading.Event()

    def send_all() -> None:
        # From a thread: the kernel queues only a few datagrams (net.unix.max_dgram_qlen), then
        # a blocking sender waits for the reader, as a container's would.
        with sender(socket_path(tmp_path)) as s:
            s.sock.settimeout(1.0)  # from a thread: blocking is the point
            try:
                for n in range(BURST + 100):
                    s.send(f"STATUS={n}".encode())
            except TimeoutError:
                given_up.set()

    thread = threading.Thread(target=send_all)
    thread.start()
    try:
        await until(lambda: hub.count("rate_limited") == 1, "the bucket ran out")
        assert hub.count("accepted") == BURST
        view = hub.view(UID, "web")
        assert view is not None and view.status == str(BURST - 1)
        # The socket is not read until a token is there: the sender is held up meanwhile.
        await until(given_up.is_set, "the sender blocked on the full queue")
        assert hub.count("accepted") + hub.count("rate_limited") == BURST + 1
        clock.advance(0.1)  # one token (10/s)
        await until(lambda: hub.count("accepted") == BURST + 1, "one more after a token")
        await until(lambda: hub.count("rate_limited") == 2, "paused again")
        view = hub.view(UID, "web")
        assert view is not None and view.status == str(BURST + 1)
    finally:
        thread.join()


async def test_flood_of_10000_datagrams_leaves_the_loop_and_other_sockets_responsive(
    hub: NotifyHub, tmp_path: Path
) -> None:
    pods = [notify_pod(uid=f"flood-{n}") for n in range(2)]
    for pod in pods:
        await hub.sync(pod, Wakes())
        hub.begin(pod.uid, "web", 0)
    flooded = socket_path(tmp_path, uid="flood-0")
    quiet = socket_path(tmp_path, uid="flood-1")
    sent = {"ok": 0, "refused": 0}

    def flood() -> None:
        with sender(flooded) as s:
            s.sock.setblocking(False)
            for n in range(10_000):
                try:
                    s.send(f"STATUS=flood {n}".encode())
                    sent["ok"] += 1
                except BlockingIOError:
                    sent["refused"] += 1

    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    flooder = threading.Thread(target=flood)
    flooder.start()
    try:
        with sender(quiet) as s:
            s.send(b"READY=1")
        await until(
            lambda: (v := hub.view("flood-1", "web")) is not None and v.ready, "quiet READY"
        )
        await until(lambda: not flooder.is_alive(), "the flood sent")
        seen = ticks
        await until(lambda: ticks > seen + 100, "the loop keeps running")
    finally:
        flooder.join()
        beating.cancel()
    assert sent["ok"] + sent["refused"] == 10_000
    # The fake clock stands still: the flooded socket delivered its burst and one datagram it
    # could not afford; everything else waited in the kernel or was refused to the sender.
    assert hub.count("accepted") == BURST + 1  # the flood's burst and the quiet READY=1
    assert hub.count("rate_limited") == 1


async def test_state_survives_an_agent_restart(
    tmp_path: Path, bridge: ThreadBridge, clock: FakeClock
) -> None:
    first = NotifyHub(tmp_path / "pods", bridge=bridge, clock=clock, timers=clock)
    pod = notify_pod(watchdog="10")
    await first.sync(pod, Wakes())
    first.begin(UID, "web", 3)
    with sender(socket_path(tmp_path)) as s:
        s.send(b"READY=1\nSTATUS=serving")
        await until(lambda: (v := first.view(UID, "web")) is not None and v.ready, "READY=1")
    await first.sync(pod, Wakes())  # the worker's next sync saves it
    await first.stop()

    clock.advance(3600.0)  # the agent was down a long time: no ping was heard
    second = NotifyHub(tmp_path / "pods", bridge=bridge, clock=clock, timers=clock)
    try:
        await second.sync(pod, Wakes())
        view = second.view(UID, "web")
        assert view is not None
        assert (view.attempt, view.ready, view.started, view.status, view.expired) == (
            3,
            True,
            True,
            "serving",
            "",
        )
        # The socket was re-created where the container has it mounted.
        with sender(socket_path(tmp_path)) as s:
            s.send(b"WATCHDOG=1")
            await until(lambda: second.count("accepted") == 1, "ping to the new socket")
        clock.advance(9.0)
        assert second.expired_count == 0  # a full interval from the restart
        clock.advance(2.0)
        assert second.expired_count == 1
    finally:
        await second.stop()


async def test_a_path_longer_than_sun_path(
    bridge: ThreadBridge, clock: FakeClock, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    uid = "u" * 100
    container = "c" * 63
    hub = NotifyHub(deep / "pods", bridge=bridge, clock=clock, timers=clock)
    try:
        await hub.sync(notify_pod(notify=container, uid=uid, names=(container,)), Wakes())
        hub.begin(uid, container, 0)
        path = socket_path(deep, container, uid)
        assert len(str(path)) > 108
        with sender(path) as s:
            s.send(b"READY=1")
        await until(lambda: (v := hub.view(uid, container)) is not None and v.ready, "READY=1")
    finally:
        await hub.stop()


async def test_close_and_containers_leaving_the_annotation(hub: NotifyHub, tmp_path: Path) -> None:
    await hub.sync(notify_pod(notify="web,side"), Wakes())
    assert hub.view(UID, "side") is not None
    await hub.sync(notify_pod(notify="web"), Wakes())
    assert hub.view(UID, "side") is None
    await hub.close(UID)
    assert hub.view(UID, "web") is None
    with sender(socket_path(tmp_path)) as s, pytest.raises(ConnectionRefusedError):
        s.send(b"READY=1")


async def test_a_corrupt_state_file_starts_afresh(
    tmp_path: Path, bridge: ThreadBridge, clock: FakeClock
) -> None:
    state = tmp_path / "pods" / UID / "notify" / "state.json"
    for text in ("{not json", '["a list"]', '{"web": {"attempt": true, "ready": "yes"}}'):

        def write(text: str = text) -> None:
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(text)

        await asyncio.to_thread(write)
        hub = NotifyHub(tmp_path / "pods", bridge=bridge, clock=clock, timers=clock)
        try:
            await hub.sync(notify_pod(), Wakes())
            view = hub.view(UID, "web")
            assert view is not None
            assert (view.attempt, view.ready, view.started) == (-1, False, False)
        finally:
            await hub.stop()


async def test_closing_a_paused_socket(hub: NotifyHub, tmp_path: Path, clock: FakeClock) -> None:
    await hub.sync(notify_pod(), Wakes())
    hub.begin(UID, "web", 0)

    def send_all() -> None:
        with sender(socket_path(tmp_path)) as s:
            s.sock.settimeout(5.0)  # from a thread: waits while the queue is full
            for n in range(BURST + 1):
                s.send(f"STATUS={n}".encode())

    await asyncio.to_thread(send_all)
    await until(lambda: hub.count("rate_limited") == 1, "paused")
    await hub.close(UID)
    clock.advance(1.0)  # the resume timer was cancelled with the socket
    assert hub.view(UID, "web") is None
