"""``FakeNotify``: the :class:`~agent.node.notify.hub.NotifyGate` protocol in memory, for unit
tests of the pod worker.

It keeps the hub's (:class:`~agent.node.notify.hub.NotifyHub`) semantics — the same contract
suite (``tests/contracts/notify.py``) runs against both — without sockets: a test makes a
container say something with ``send(pod uid, container, datagram)``, which is read as the hub
reads a datagram from that container's socket (``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
``STATUS=``, ``WATCHDOG=1``, ``WATCHDOG=trigger``; malformed or oversized ones ignored). The
watchdog and the delayed wake of a ``STATUS=`` change run on the timers given (a test's fake
clock). Not modelled: the rate limit, and the state saved for an agent restart (the hub's own
tests cover both). ``calls`` records the gate's calls in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent.aio.clock import Clock
from agent.annotations import NO_NOTIFY, NotifySettings, notify_settings
from agent.errors import ManifestError
from agent.node.notify.hub import STATUS_WAKE_DELAY_S, NotifyView, Timer, Timers
from agent.node.notify.wire import MAX_DATAGRAM_BYTES, escape_status, parse_datagram
from agent.types import Pod


@dataclass(slots=True)
class _Channel:
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
    watchdog_timer: Timer | None = None
    status_timer: Timer | None = None
    closed: bool = False


class FakeNotify:
    """See the module docstring."""

    def __init__(self, *, clock: Clock, timers: Timers) -> None:
        self._clock = clock
        self._timers = timers
        self._pods: dict[str, dict[str, _Channel]] = {}
        self.calls: list[tuple[str, ...]] = []

    # -- test controls -----------------------------------------------------------------------

    def send(self, pod_uid: str, container: str, data: bytes) -> bool:
        """``container`` writes ``data`` to its notify socket; False when no socket of the gate
        listens there (the container does not use sd_notify, or its pod's sockets closed)."""
        channel = self._pods.get(pod_uid, {}).get(container)
        if channel is None:
            return False
        if len(data) > MAX_DATAGRAM_BYTES:
            return True  # dropped, as the hub drops it
        message = parse_datagram(data)
        if message is None:
            return True
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
                channel.last_ping = self._clock.monotonic()
            else:
                self._arm(channel)
        if message.watchdog_trigger and not channel.stopping:
            self._expire(channel, "WATCHDOG=trigger")
        if (channel.ready, channel.started, channel.stopping, channel.armed) != before:
            channel.wake()
        return True

    # -- NotifyGate --------------------------------------------------------------------------

    async def sync(self, pod: Pod, wake: Callable[[], None]) -> None:
        self.calls.append(("sync", pod.uid))
        settings = self._settings(pod)
        channels = self._pods.get(pod.uid)
        if channels is None:
            if not settings.containers:
                return
            channels = self._pods[pod.uid] = {}
        for name in [n for n in channels if not settings.wants(n)]:
            self._close_channel(channels.pop(name))
        for name in sorted(settings.containers - set(channels)):
            channels[name] = _Channel(wake, settings.watchdog_s)
        for channel in channels.values():
            channel.wake = wake
            channel.watchdog_s = settings.watchdog_s

    def begin(self, pod_uid: str, container: str, attempt: int) -> None:
        self.calls.append(("begin", container, str(attempt)))
        channel = self._pods.get(pod_uid, {}).get(container)
        if channel is None:
            return
        self._disarm(channel)
        channel.attempt = attempt
        channel.ready = channel.started = channel.stopping = False
        channel.status = channel.expired = ""

    def view(self, pod_uid: str, container: str) -> NotifyView | None:
        channel = self._pods.get(pod_uid, {}).get(container)
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
        self.calls.append(("close", pod_uid))
        for channel in self._pods.pop(pod_uid, {}).values():
            self._close_channel(channel)

    # -- inside ------------------------------------------------------------------------------

    @staticmethod
    def _settings(pod: Pod) -> NotifySettings:
        try:
            return notify_settings(pod.metadata.annotations, {c.name for c in pod.spec.containers})
        except ManifestError:
            return NO_NOTIFY

    def _close_channel(self, channel: _Channel) -> None:
        channel.closed = True
        self._disarm(channel)
        if channel.status_timer is not None:
            channel.status_timer.cancel()

    def _status_changed(self, channel: _Channel) -> None:
        if channel.status_timer is not None:
            return

        def wake() -> None:
            channel.status_timer = None
            if not channel.closed:
                channel.wake()

        channel.status_timer = self._timers.call_later(STATUS_WAKE_DELAY_S, wake)

    def _arm(self, channel: _Channel) -> None:
        channel.armed = True
        channel.last_ping = self._clock.monotonic()
        if channel.watchdog_s is None or channel.watchdog_timer is not None:
            return
        channel.watchdog_timer = self._timers.call_later(
            channel.watchdog_s, lambda: self._watchdog_due(channel)
        )

    @staticmethod
    def _disarm(channel: _Channel) -> None:
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
            channel.watchdog_timer = self._timers.call_later(
                left, lambda: self._watchdog_due(channel)
            )
            return
        self._expire(channel, f"no WATCHDOG=1 for {channel.watchdog_s}s")

    def _expire(self, channel: _Channel, why: str) -> None:
        self._disarm(channel)
        channel.expired = why
        channel.ready = False
        channel.wake()
