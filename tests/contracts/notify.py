"""The NotifyGate contract (agent/node/notify/hub.py): what the pod worker relies on, the same
tests for every implementation.

A test module runs the suite by subclassing :class:`NotifyContract` in a ``Test*`` class with a
``harness`` fixture yielding a :class:`NotifyHarness` (tests/unit/node/notify/
test_notify_contract.py: ``FakeNotify``, and ``NotifyHub`` with real Unix datagram sockets in
the test's directory). Time is a fake clock (the watchdog's and the STATUS= wake's timers).

The contract:

* ``sync`` opens one channel per container named in ``node-agent.io/notify`` (a socket the
  container can write to), none for the others and none for a pod without the annotation;
  the view of a fresh channel: attempt -1, nothing said, the pod's watchdog interval;
* ``begin(attempt)``: the attempt, unready, what an earlier attempt said forgotten;
* ``READY=1``: ready and started (wake); ``RELOADING=1``: not ready, still started (wake);
  ``STOPPING=1``: stopping and not ready for good (``READY=1`` after it does not count), its
  watchdog disarmed (wake); ``STATUS=``: the status, escaped — a wake within
  ``STATUS_WAKE_DELAY_S``, not at once;
* the watchdog, once ``READY=1`` (or a first ``WATCHDOG=1``) armed it: ``WATCHDOG=1`` within
  each interval keeps it; an interval without one expires it (``expired`` says why, not ready,
  wake); ``WATCHDOG=trigger`` expires it at once;
* malformed and oversized datagrams change nothing;
* the wake called is the one the latest ``sync`` gave;
* ``close`` (idempotent) releases the pod's sockets: nothing listens there any more, and the
  views are None; a container dropped from the annotation loses its socket at the next sync.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from agent.manifest import parse_pod
from agent.node.notify.hub import STATUS_WAKE_DELAY_S, NotifyGate, NotifyView
from agent.node.notify.wire import MAX_DATAGRAM_BYTES
from agent.types import Pod

UID = "u1"
WATCHDOG_S = 10


class NotifyHarness(Protocol):
    gate: NotifyGate

    async def send(self, pod_uid: str, container: str, data: bytes) -> bool:
        """``container`` writes ``data`` to its notify socket; returns once the gate has read
        it (True), or False when nothing listens there."""
        ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the fake clock."""
        ...


def notify_pod(notify: str | None = "web", watchdog_s: int | None = WATCHDOG_S) -> Pod:
    annotations = {}
    if notify is not None:
        annotations["node-agent.io/notify"] = notify
    if watchdog_s is not None:
        annotations["node-agent.io/notify-watchdog-seconds"] = str(watchdog_s)
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": UID,
                "annotations": annotations,
            },
            "spec": {
                "containers": [
                    {"name": "web", "image": "img:1"},
                    {"name": "plain", "image": "img:1"},
                ]
            },
        },
        source="api",
        node_name="n1",
    )


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def view(harness: NotifyHarness, container: str = "web") -> NotifyView:
    found = harness.gate.view(UID, container)
    assert found is not None
    return found


class NotifyContract:
    """The tests; a subclass provides the ``harness`` fixture."""

    @pytest.fixture
    async def wakes(self, harness: NotifyHarness) -> Wakes:
        """The pod synced (web opted in, a 10 s watchdog) and web's attempt 0 begun."""
        wakes = Wakes()
        await harness.gate.sync(notify_pod(), wakes)
        harness.gate.begin(UID, "web", 0)
        return wakes

    async def test_sync_opens_a_socket_per_opted_in_container_only(
        self, harness: NotifyHarness
    ) -> None:
        await harness.gate.sync(notify_pod(), Wakes())
        assert harness.gate.view(UID, "web") == NotifyView(
            attempt=-1,
            ready=False,
            started=False,
            stopping=False,
            expired="",
            status="",
            watchdog_s=WATCHDOG_S,
        )
        assert harness.gate.view(UID, "plain") is None
        assert harness.gate.view("no-such-pod", "web") is None
        assert await harness.send(UID, "plain", b"READY=1") is False
        assert await harness.send(UID, "web", b"READY=1") is True
        await harness.gate.sync(notify_pod(), Wakes())  # again: the same channel, kept
        assert view(harness).ready is True

    async def test_a_pod_without_the_annotation_gets_no_socket(
        self, harness: NotifyHarness
    ) -> None:
        await harness.gate.sync(notify_pod(notify=None, watchdog_s=None), Wakes())
        assert harness.gate.view(UID, "web") is None
        assert await harness.send(UID, "web", b"READY=1") is False
        await harness.gate.close(UID)

    async def test_ready_1_makes_the_container_ready_and_started(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        assert (view(harness).attempt, view(harness).ready) == (0, False)
        assert await harness.send(UID, "web", b"READY=1")
        assert (view(harness).ready, view(harness).started) == (True, True)
        assert wakes.count == 1
        assert await harness.send(UID, "web", b"READY=1")  # nothing new: no wake
        assert wakes.count == 1

    async def test_begin_starts_an_attempt_unready(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1\nSTATUS=serving")
        harness.gate.begin(UID, "web", 1)
        assert view(harness) == NotifyView(1, False, False, False, "", "", WATCHDOG_S)
        await harness.advance(WATCHDOG_S * 2)  # the old attempt's watchdog is gone too
        assert view(harness).expired == ""
        await harness.send(UID, "web", b"READY=1")
        assert (view(harness).attempt, view(harness).ready) == (1, True)
        harness.gate.begin(UID, "plain", 1)  # not a notify container: nothing
        assert harness.gate.view(UID, "plain") is None

    async def test_status_is_escaped_and_wakes_within_the_delay(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"STATUS=warming \x1b[31m up")
        assert view(harness).status == "warming \\x1b[31m up"
        assert wakes.count == 0  # a STATUS= change alone waits ...
        await harness.advance(STATUS_WAKE_DELAY_S)
        assert wakes.count == 1  # ... at most this long
        await harness.send(UID, "web", b"STATUS=a")
        await harness.send(UID, "web", b"STATUS=b")
        await harness.advance(STATUS_WAKE_DELAY_S)
        assert (view(harness).status, wakes.count) == ("b", 2)  # one wake for the two

    async def test_reloading_ends_ready_and_started_stays(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1")
        await harness.send(UID, "web", b"RELOADING=1")
        assert (view(harness).ready, view(harness).started) == (False, True)
        assert wakes.count == 2
        await harness.send(UID, "web", b"READY=1")
        assert view(harness).ready is True

    async def test_stopping_ends_ready_for_good_and_disarms_the_watchdog(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1")
        await harness.send(UID, "web", b"STOPPING=1")
        found = view(harness)
        assert (found.stopping, found.ready, found.started) == (True, False, True)
        assert wakes.count == 2
        await harness.send(UID, "web", b"READY=1")
        assert view(harness).ready is False
        await harness.advance(WATCHDOG_S * 2)
        assert view(harness).expired == ""

    async def test_watchdog_pings_keep_it_and_a_missed_interval_expires_it(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1")  # arms the watchdog
        for _ in range(3):
            await harness.advance(WATCHDOG_S - 1)
            await harness.send(UID, "web", b"WATCHDOG=1")
        assert (view(harness).expired, view(harness).ready) == ("", True)
        assert wakes.count == 1
        await harness.advance(WATCHDOG_S - 1)
        assert view(harness).expired == ""
        await harness.advance(1)
        found = view(harness)
        assert (found.expired, found.ready) == (f"no WATCHDOG=1 for {WATCHDOG_S}s", False)
        assert wakes.count == 2
        await harness.send(UID, "web", b"READY=1\nWATCHDOG=1")  # too late: it stays expired
        assert view(harness).ready is False and view(harness).expired

    async def test_a_first_watchdog_1_arms_it_without_ready(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"WATCHDOG=1")
        assert view(harness).ready is False
        await harness.advance(WATCHDOG_S)
        assert view(harness).expired == f"no WATCHDOG=1 for {WATCHDOG_S}s"

    async def test_watchdog_trigger_expires_it_at_once(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1")
        await harness.send(UID, "web", b"WATCHDOG=trigger")
        assert (view(harness).expired, view(harness).ready) == ("WATCHDOG=trigger", False)
        assert wakes.count >= 2  # woken (the hub wakes twice here: harmless)

    async def test_malformed_and_oversized_datagrams_change_nothing(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        before = view(harness)
        for data in (b"READY=1\0", b"\xffREADY=1", b"READY=1\n" + b"x" * MAX_DATAGRAM_BYTES):
            assert await harness.send(UID, "web", data)
        assert view(harness) == before
        assert wakes.count == 0

    async def test_the_latest_syncs_wake_is_called(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        later = Wakes()
        await harness.gate.sync(notify_pod(), later)
        await harness.send(UID, "web", b"READY=1")
        assert (wakes.count, later.count) == (0, 1)

    async def test_close_releases_the_pods_sockets(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.send(UID, "web", b"READY=1")
        await harness.gate.close(UID)
        assert harness.gate.view(UID, "web") is None
        assert await harness.send(UID, "web", b"READY=1") is False
        await harness.advance(WATCHDOG_S * 2)  # no watchdog left to fire
        assert wakes.count == 1
        await harness.gate.close(UID)
        await harness.gate.close("no-such-pod")

    async def test_a_container_dropped_from_the_annotation_loses_its_socket(
        self, harness: NotifyHarness, wakes: Wakes
    ) -> None:
        await harness.gate.sync(notify_pod(notify="plain"), wakes)
        assert harness.gate.view(UID, "web") is None
        assert await harness.send(UID, "web", b"READY=1") is False
        assert await harness.send(UID, "plain", b"READY=1") is True
        assert harness.gate.view(UID, "plain") is not None
