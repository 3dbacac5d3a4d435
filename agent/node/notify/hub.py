"""The notify sockets of every opted-in container on this node, read on the event loop.

One Unix datagram socket per container (``node-agent.io/notify``, :mod:`agent.annotations`),
bound by the agent in a directory of its own that is bind-mounted into that container only: a
message is trusted as the container's because of the socket it arrives on, never because of
what it says. Sockets are non-blocking and watched with ``loop.add_reader`` (no thread, no task
per socket); each delivers at most :data:`~agent.node.notify.wire.BURST` datagrams at once and
:data:`~agent.node.notify.wire.RATE_PER_S` a second. A datagram over the bucket is dropped and
counted, and the socket is not read again until the bucket has a token: the excess waits in the
kernel's queue, whose senders then block or get ``EAGAIN``, so a flood costs the agent a few
reads a second whatever its rate.

The pod worker (one per pod) drives it through :class:`NotifyGate`: ``sync`` before it creates
containers (sockets exist before a container can write), ``begin`` when it creates an attempt
(the new process must say ``READY=1`` again), ``view`` for readiness and the watchdog,
``close`` when the pod goes. What a container said (per attempt: ready, started, stopping, the
watchdog armed) is saved in ``<pod dir>/notify/state.json`` by ``sync``, so an agent restart
does not forget that a running container is ready; its watchdog then restarts from the agent's
start (the pings sent while the agent was down were lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from agent.aio.bridge import ThreadBridge
from agent.aio.clock import Clock
from agent.aio.logs import kv
from agent.annotations import NO_NOTIFY, NotifySettings, notify_settings
from agent.errors import ManifestError
from agent.node.notify.wire import (
    BURST,
    MAX_DATAGRAM_BYTES,
    NOTIFY_DIR,
    RATE_PER_S,
    SOCKET_NAME,
    NotifyMessage,
    TokenBucket,
    container_dir,
    escape_status,
    parse_datagram,
)
from agent.types import Pod

log = logging.getLogger(__name__)

NOTIFY_DIR_MODE = 0o700  # <pod dir>/notify: nobody else on the host reaches the sockets
CONTAINER_DIR_MODE = 0o711  # what is mounted: any user in the container may reach the socket
SOCKET_MODE = 0o666  # ... and write to it, whatever uid the container runs as
STATE_FILE = "state.json"
READS_PER_WAKE = 64  # datagrams read per readiness callback before yielding to the loop
STALE_DATAGRAMS_DROPPED_MAX = 4096  # at a new attempt: more than a receive queue holds
STATUS_WAKE_DELAY_S = 1.0  # a STATUS= change refreshes the pod's status at most this often
RESULTS = ("accepted", "rate_limited", "oversize", "malformed")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The pod worker's timers (real: the loop's; tests: the fake clock)."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer: ...


@dataclass(frozen=True, slots=True)
class NotifyView:
    """What the container of ``attempt`` said: ``started`` once ``READY=1`` came (and stays),
    ``ready`` while it holds (``RELOADING=1``, ``STOPPING=1`` and a missed watchdog end it),
    ``expired`` why its watchdog ran out ("" while it has not), ``status`` its last
    ``STATUS=`` (escaped)."""

    attempt: int
    ready: bool
    started: bool
    stopping: bool
    expired: str
    status: str
    watchdog_s: int | None


class NotifyGate(Protocol):
    """What the pod worker asks of the notify sockets (:class:`NotifyHub`; a fake in tests)."""

    async def sync(self, pod: Pod, wake: Callable[[], None]) -> None:
        """Sockets for the pod's notify containers exist and are read; state saved."""
        ...

    def begin(self, pod_uid: str, container: str, attempt: int) -> None:
        """A new attempt of ``container`` is being created: it starts unready."""
        ...

    def view(self, pod_uid: str, container: str) -> NotifyView | None:
        """None when ``container`` does not use sd_notify."""
        ...

    async def close(self, pod_uid: str) -> None:
        """The pod is gone: its sockets are closed (its directory goes with the pod's)."""
        ...


@dataclass(slots=True)
class _Channel:
    pod_uid: str
    container: str
    sock: socket.socket
    bucket: TokenBucket
    wake: Callable[[], None]
    watchdog_s: int | None
    attempt: int = -1
    ready: bool = False
    started: bool = False
    stopping: bool = False
    expired: str = ""
    status: str = ""
    armed: bool = False
    last_ping: float = 0.0
    paused: Timer | None = None
    watchdog_timer: Timer | None = None
    status_timer: Timer | None = None
    closed: bool = False

    def saved(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "ready": self.ready,
            "started": self.started,
            "stopping": self.stopping,
            "status": self.status,
            "armed": self.armed,
        }

    def restore(self, data: object) -> None:
        if not isinstance(data, dict):
            return
        attempt = data.get("attempt")
        if isinstance(attempt, int) and not isinstance(attempt, bool):
            self.attempt = attempt
        for name in ("ready", "started", "stopping", "armed"):
            if isinstance(data.get(name), bool):
                setattr(self, name, data[name])
        if isinstance(data.get("status"), str):
            self.status = escape_status(data["status"])


@dataclass(slots=True)
class _PodSockets:
    directory: Path  # <pod dir>/notify
    channels: dict[str, _Channel] = field(default_factory=dict)
    loaded: dict[str, Any] | None = None
    dirty: bool = False


def _open_socket(directory: Path) -> socket.socket:
    """Bind ``directory/notify.sock`` (blocking: on the bridge). A socket left by an earlier
    agent is replaced. Bound through ``/proc/self/fd`` so the path may exceed the 107 bytes of
    ``sun_path`` (a long state dir, uid and container name)."""
    notify_dir = directory.parent
    notify_dir.mkdir(parents=True, exist_ok=True)
    notify_dir.chmod(NOTIFY_DIR_MODE)
    directory.mkdir(exist_ok=True)
    directory.chmod(CONTAINER_DIR_MODE)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        short = f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(short)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.bind(short)
            os.chmod(short, SOCKET_MODE)
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(dir_fd)
    return sock


def _load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("notify state unreadable, starting afresh", extra=kv(path=str(path), error=exc))
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    tmp.replace(path)


class NotifyHub:
    """Owns every notify socket of the node (a Manager: ``stop`` closes them all)."""

    name = "notify"

    def __init__(
        self,
        pods_dir: Path,
        *,
        bridge: ThreadBridge,
        clock: Clock,
        timers: Timers,
        registry: CollectorRegistry | None = None,
        rate_per_s: float = RATE_PER_S,
        burst: int = BURST,
    ) -> None:
        self._pods_dir = pods_dir
        self._bridge = bridge
        self._clock = clock
        self._timers = timers
        self._rate_per_s = rate_per_s
        self._burst = burst
        self._pods: dict[str, _PodSockets] = {}
        self._datagrams = Counter(
            "node_agent_notify_datagrams",
            "Datagrams read from containers' notify sockets, by what became of them.",
            ["result"],
            registry=registry,
        )
        self._expired = Counter(
            "node_agent_notify_watchdog_expired",
            "Containers whose sd_notify watchdog ran out.",
            registry=registry,
        )
        for result in RESULTS:
            self._datagrams.labels(result)

    # -- Manager -----------------------------------------------------------------------------

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        for uid in list(self._pods):
            self._close_pod(uid)

    # -- NotifyGate --------------------------------------------------------------------------

    async def sync(self, pod: Pod, wake: Callable[[], None]) -> None:
        settings = self._settings(pod)
        entry = self._pods.get(pod.uid)
        if entry is None:
            if not settings.containers:
                return
            entry = _PodSockets(self._pods_dir / pod.uid / NOTIFY_DIR)
            self._pods[pod.uid] = entry
        for name in [n for n in entry.channels if not settings.wants(n)]:
            self._close_channel(entry.channels.pop(name))
        missing = sorted(settings.containers - set(entry.channels))
        if missing:
            await self._open(pod.uid, entry, missing, settings, wake)
        for channel in entry.channels.values():
            channel.wake = wake
            channel.watchdog_s = settings.watchdog_s
        if entry.dirty:
            entry.dirty = False
            data = {name: ch.saved() for name, ch in entry.channels.items()}
            await self._bridge.run(_save_state, entry.directory / STATE_FILE, data)

    def begin(self, pod_uid: str, container: str, attempt: int) -> None:
        entry = self._pods.get(pod_uid)
        channel = entry.channels.get(container) if entry is not None else None
        if entry is None or channel is None:
            return
        self._disarm(channel)
        self._drop_queued(channel)
        channel.attempt = attempt
        channel.ready = channel.started = channel.stopping = False
        channel.status = channel.expired = ""
        entry.dirty = True

    def view(self, pod_uid: str, container: str) -> NotifyView | None:
        entry = self._pods.get(pod_uid)
        channel = entry.channels.get(container) if entry is not None else None
        if channel is None:
            return None
        return NotifyView(
            attempt=channel.attempt,
            ready=channel.ready,
            started=channel.started,
            stopping=channel.stopping,
            expired=channel.expired,
            status=channel.status,
            watchdog_s=channel.watchdog_s,
        )

    async def close(self, pod_uid: str) -> None:
        self._close_pod(pod_uid)

    # -- what tests and metrics read ---------------------------------------------------------

    def count(self, result: str) -> int:
        [family] = self._datagrams.collect()
        return int(
            sum(
                s.value
                for s in family.samples
                if s.name.endswith("_total") and s.labels.get("result") == result
            )
        )

    @property
    def expired_count(self) -> int:
        [family] = self._expired.collect()
        return int(sum(s.value for s in family.samples if s.name.endswith("_total")))

    # -- sockets -----------------------------------------------------------------------------

    @staticmethod
    def _settings(pod: Pod) -> NotifySettings:
        try:
            return notify_settings(pod.metadata.annotations, {c.name for c in pod.spec.containers})
        except ManifestError:  # the parser refused it already; a pod built otherwise has none
            return NO_NOTIFY

    async def _open(
        self,
        pod_uid: str,
        entry: _PodSockets,
        names: list[str],
        settings: NotifySettings,
        wake: Callable[[], None],
    ) -> None:
        pod_dir = entry.directory.parent

        def open_all() -> tuple[dict[str, Any] | None, list[tuple[str, socket.socket]]]:
            loaded = _load_state(entry.directory / STATE_FILE) if entry.loaded is None else None
            opened: list[tuple[str, socket.socket]] = []
            try:
                for name in names:
                    opened.append((name, _open_socket(container_dir(pod_dir, name))))
            except BaseException:
                for _, sock in opened:
                    sock.close()
                raise
            return loaded, opened

        loaded, opened = await self._bridge.run(open_all)
        if loaded is not None:
            entry.loaded = loaded
        if self._pods.get(pod_uid) is not entry:  # closed while the bridge worked
            for _, sock in opened:
                sock.close()
            return
        now = self._clock.monotonic()
        loop = asyncio.get_running_loop()
        for name, sock in opened:
            channel = _Channel(
                pod_uid,
                name,
                sock,
                TokenBucket(self._rate_per_s, self._burst, now),
                wake,
                settings.watchdog_s,
            )
            channel.restore((entry.loaded or {}).get(name))
            entry.channels[name] = channel
            if channel.armed and not channel.stopping:
                # The pings sent while no agent listened are lost: a full interval from now.
                self._arm(channel, now)
            loop.add_reader(sock.fileno(), self._readable, channel)
            log.info(
                "notify socket open",
                extra=kv(pod_uid=pod_uid, container=name, attempt=channel.attempt),
            )
        entry.dirty = True

    def _close_pod(self, pod_uid: str) -> None:
        entry = self._pods.pop(pod_uid, None)
        if entry is None:
            return
        for channel in entry.channels.values():
            self._close_channel(channel)

    def _close_channel(self, channel: _Channel) -> None:
        channel.closed = True
        self._disarm(channel)
        for timer in (channel.paused, channel.status_timer):
            if timer is not None:
                timer.cancel()
        if channel.paused is None:
            asyncio.get_running_loop().remove_reader(channel.sock.fileno())
        channel.sock.close()

    # -- reading -----------------------------------------------------------------------------

    def _drop_queued(self, channel: _Channel) -> None:
        """Drop the datagrams still queued on the socket: their sender is the previous attempt,
        which has exited (a worker begins an attempt once the last one ended), so a READY=1 it
        sent just before dying must not make the new process ready before it says so itself.
        Bounded: the socket's receive queue holds a few hundred datagrams at most."""
        for _ in range(STALE_DATAGRAMS_DROPPED_MAX):
            try:
                channel.sock.recv(MAX_DATAGRAM_BYTES + 1)
            except OSError:  # BlockingIOError: the queue is empty
                return
            self._datagrams.labels("stale").inc()

    def _readable(self, channel: _Channel) -> None:
        for _ in range(READS_PER_WAKE):
            try:
                data = channel.sock.recv(MAX_DATAGRAM_BYTES + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning(
                    "notify socket read failed",
                    extra=kv(pod_uid=channel.pod_uid, container=channel.container, error=exc),
                )
                return
            now = self._clock.monotonic()
            if not channel.bucket.take(now):
                self._datagrams.labels("rate_limited").inc()
                self._pause(channel, channel.bucket.wait_s(now))
                return
            if len(data) > MAX_DATAGRAM_BYTES:
                self._datagrams.labels("oversize").inc()
                continue
            message = parse_datagram(data)
            if message is None:
                self._datagrams.labels("malformed").inc()
                continue
            self._datagrams.labels("accepted").inc()
            self._apply(channel, message, now)

    def _pause(self, channel: _Channel, delay_s: float) -> None:
        asyncio.get_running_loop().remove_reader(channel.sock.fileno())

        def resume() -> None:
            channel.paused = None
            if not channel.closed:
                asyncio.get_running_loop().add_reader(
                    channel.sock.fileno(), self._readable, channel
                )

        channel.paused = self._timers.call_later(delay_s, resume)

    def _apply(self, channel: _Channel, message: NotifyMessage, now: float) -> None:
        entry = self._pods.get(channel.pod_uid)
        before = (channel.ready, channel.started, channel.stopping, channel.armed)
        if message.status is not None:
            status = escape_status(message.status)
            if status != channel.status:
                channel.status = status
                self._status_changed(channel)
        if message.stopping:
            channel.stopping = True
            channel.ready = False
            self._disarm(channel)
        elif message.reloading:
            channel.ready = False
        elif message.ready and not channel.stopping and not channel.expired:
            channel.ready = channel.started = True
        if (message.ready or message.watchdog) and not channel.stopping and not channel.expired:
            if channel.armed:
                channel.last_ping = now
            else:
                self._arm(channel, now)
        if message.watchdog_trigger and not channel.stopping:
            self._expire(channel, "WATCHDOG=trigger")
        after = (channel.ready, channel.started, channel.stopping, channel.armed)
        if after != before:
            if entry is not None:
                entry.dirty = True
            channel.wake()

    def _status_changed(self, channel: _Channel) -> None:
        if channel.status_timer is not None:
            return

        def wake() -> None:
            channel.status_timer = None
            if not channel.closed:
                channel.wake()

        channel.status_timer = self._timers.call_later(STATUS_WAKE_DELAY_S, wake)

    # -- the watchdog ------------------------------------------------------------------------

    def _arm(self, channel: _Channel, now: float) -> None:
        channel.armed = True
        channel.last_ping = now
        if channel.watchdog_s is None or channel.watchdog_timer is not None:
            return
        channel.watchdog_timer = self._timers.call_later(
            channel.watchdog_s, lambda: self._watchdog_due(channel)
        )

    def _disarm(self, channel: _Channel) -> None:
        channel.armed = False
        if channel.watchdog_timer is not None:
            channel.watchdog_timer.cancel()
            channel.watchdog_timer = None

    def _watchdog_due(self, channel: _Channel) -> None:
        channel.watchdog_timer = None
        if channel.closed or not channel.armed or channel.watchdog_s is None:
            return
        left = channel.last_ping + channel.watchdog_s - self._clock.monotonic()
        if left > 0:
            # Pinged since the timer was set: one timer per interval, not one per ping.
            channel.watchdog_timer = self._timers.call_later(
                left, lambda: self._watchdog_due(channel)
            )
            return
        self._expire(channel, f"no WATCHDOG=1 for {channel.watchdog_s}s")

    def _expire(self, channel: _Channel, why: str) -> None:
        self._disarm(channel)
        channel.expired = why
        channel.ready = False
        self._expired.inc()
        log.warning(
            "notify watchdog expired",
            extra=kv(
                pod_uid=channel.pod_uid,
                container=channel.container,
                attempt=channel.attempt,
                why=why,
            ),
        )
        entry = self._pods.get(channel.pod_uid)
        if entry is not None:
            entry.dirty = True
        channel.wake()
