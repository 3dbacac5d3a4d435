"""The cluster-wide pod watch as ``nodectl get -w`` relies on it (agent/cli/nodectl_watch.py):
the lines its transport yields and what they mean to its resume logic.

Written once and run against the fake master the watch's unit tests use
(tests/unit/cli/test_fakewatch_contract.py) and against a real ``node-master`` through the real
transport (tests/integration/test_nodectl_watch.py), so the fake cannot drift from the truth.

What the watch relies on:

* ``sendInitialEvents=true``: the namespace's pods as ADDED, then a BOOKMARK annotated
  ``k8s.io/initial-events-end`` carrying the revision the list is consistent with; every line
  ends with a newline.
* ``resourceVersion=R``: every change after R, in order, revisions increasing, none missed
  (a pod deleted is DELETED).
* A revision that is not one: refused before the stream (ServerError 400). A revision the
  master cannot resume from (newer than its store, or compacted): an in-band 410, which the
  decoder raises as WatchGoneError.
* A master that cannot be reached: WatchDroppedError, never another error.
"""

from __future__ import annotations

from typing import Protocol

import pytest

from agent.cli.nodectl_watch import Transport, WatchEvent, decode_event
from agent.errors import ServerError, WatchDroppedError, WatchGoneError


class WatchWorld(Protocol):
    def transport(self) -> Transport:
        """A transport to the master."""
        ...

    def unreachable(self) -> Transport:
        """A transport to a master that cannot be reached."""
        ...

    def create(self, name: str, namespace: str = "default") -> None:
        """Apply a pod (no node: it stays Pending)."""
        ...

    def remove(self, name: str, namespace: str = "default") -> None:
        """Delete a pod."""
        ...


def read(world: WatchWorld, path: str, count: int) -> list[WatchEvent]:
    """The first ``count`` events of a watch (then the connection is closed)."""
    events: list[WatchEvent] = []
    with world.transport().lines(path) as lines:
        for line in lines:
            assert line.endswith(b"\n")
            events.append(decode_event(line, "pods"))
            if len(events) == count:
                break
    assert len(events) == count, events
    return events


def check_watch_wire(world: WatchWorld, prefix: str) -> None:
    """Every clause above, with pods named ``prefix``-…, in namespaces of that name."""
    ns = f"{prefix}-ns"
    world.create(f"{prefix}-a", ns)
    world.create(f"{prefix}-b", f"{prefix}-other")
    base = f"/v1/pods?watch=1&namespace={ns}"

    added, end = read(world, f"{base}&sendInitialEvents=true", 2)
    assert (added.type, added.obj["metadata"]["name"]) == ("ADDED", f"{prefix}-a")
    assert end.type == "BOOKMARK" and end.initial_end and end.revision is not None

    world.create(f"{prefix}-c", ns)
    world.remove(f"{prefix}-a", ns)
    changes = read(world, f"{base}&resourceVersion={end.revision}", 2)
    assert [(e.type, e.obj["metadata"]["name"]) for e in changes] == [
        ("ADDED", f"{prefix}-c"),
        ("DELETED", f"{prefix}-a"),
    ]
    revisions = [e.revision or 0 for e in changes]
    assert revisions == sorted(revisions) and revisions[0] > end.revision

    with pytest.raises(ServerError) as refused:
        read(world, f"{base}&resourceVersion=x", 1)
    assert refused.value.status == 400

    with pytest.raises(WatchGoneError):
        read(world, f"{base}&resourceVersion={10**15}", 1)

    with pytest.raises(WatchDroppedError), world.unreachable().lines(base) as lines:
        next(iter(lines))
