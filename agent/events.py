"""A bounded in-memory record of events (node: pod created, container restarted, bad
manifest; master: node registered, approved, pod scheduled, and the events its nodes report).

Shaped like Kubernetes ``v1 Event`` so operators read them the way they read ``kubectl get
events``; served at ``/v1/events``. Bounded so a crash-looping pod cannot grow memory, and
aggregated as Kubernetes' event correlator does: an event with the same source, object, type,
reason and message as one still held raises that one's ``count`` and ``lastTimestamp`` instead
of adding another (a crash loop is one ``BackOff`` event with a growing count).

Every event carries a sequence number, raised again when it is aggregated into: a node ships
what changed since the last number the master took (``since``), and the master files what a
node reports under the node's own count (``file_reported``), so sending an event twice (after a
reconnect) changes nothing.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

MAX_EVENTS = 1000

_Key = tuple[str, str, str, str, str, str, str, str]
_Events = list[dict[str, Any]]  # spelled here: the class's ``list`` method shadows the builtin


def _stamp(now_s: float) -> str:
    return datetime.fromtimestamp(now_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self,
        node_name: str,
        capacity: int = MAX_EVENTS,
        component: str = "node-agent",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node_name = node_name
        self._component = component
        self._capacity = capacity
        self._clock = clock
        # key -> (sequence, event); in the order the events first happened.
        self._events: OrderedDict[_Key, tuple[int, dict[str, Any]]] = OrderedDict()
        self._names = itertools.count(1)
        self._sequence = 0

    def record(
        self,
        *,
        kind: str,
        name: str,
        namespace: str,
        reason: str,
        message: str,
        warning: bool = False,
        uid: str = "",
    ) -> None:
        stamp = _stamp(self._clock())
        event = {
            "metadata": {"name": f"{name}.{next(self._names)}", "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "uid": uid},
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {"component": self._component, "host": self._node_name},
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        key = self._key(event)
        held = self._events.get(key)
        if held is not None:
            _, old = held
            old["count"] += 1
            old["lastTimestamp"] = stamp
            event = old
        self._put(key, event)

    def file_reported(self, event: dict[str, Any]) -> None:
        """File an event a node reported (already validated, its source set by the caller):
        the node's count and timestamps replace those of the same event held, so a report
        sent twice is filed once."""
        key = self._key(event)
        held = self._events.get(key)
        if held is not None:
            _, old = held
            event = {**event, "metadata": old["metadata"], "firstTimestamp": old["firstTimestamp"]}
        else:
            namespace = event["involvedObject"]["namespace"]
            name = f"{event['involvedObject']['name']}.{next(self._names)}"
            event = {**event, "metadata": {"name": name, "namespace": namespace}}
        self._put(key, event)

    def list(self, kind: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for _, e in self._events.values()
            if (kind is None or e["involvedObject"]["kind"] == kind)
            and (name is None or e["involvedObject"]["name"] == name)
        ]

    def since(self, sequence: int, limit: int) -> tuple[_Events, int]:
        """The events new or changed after ``sequence``, oldest change first, at most
        ``limit``; and the sequence to ask from next time (after the last one returned)."""
        changed = sorted((seq, event) for seq, event in self._events.values() if seq > sequence)[
            :limit
        ]
        if not changed:
            return [], sequence
        return [event for _, event in changed], changed[-1][0]

    @property
    def sequence(self) -> int:
        return self._sequence

    def _put(self, key: _Key, event: dict[str, Any]) -> None:
        self._sequence += 1
        if key not in self._events and len(self._events) >= self._capacity:
            self._events.popitem(last=False)  # the oldest first-seen event goes
        self._events[key] = (self._sequence, event)

    @staticmethod
    def _key(event: dict[str, Any]) -> _Key:
        obj, source = event["involvedObject"], event["source"]
        return (
            str(source.get("host", "")),
            str(obj.get("kind", "")),
            str(obj.get("namespace", "")),
            str(obj.get("name", "")),
            str(obj.get("uid", "")),
            str(event["type"]),
            str(event["reason"]),
            str(event["message"]),
        )
