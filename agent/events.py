"""A bounded in-memory record of events (node: pod created, container restarted, bad
manifest; master: node registered, approved, pod scheduled).

Shaped like Kubernetes ``v1 Event`` so operators read them the way they read ``kubectl get
events``; served at ``/v1/events``. Bounded so a crash-looping pod cannot grow memory.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

MAX_EVENTS = 1000


class EventRecorder:
    def __init__(
        self, node_name: str, capacity: int = MAX_EVENTS, component: str = "node-agent"
    ) -> None:
        self._node_name = node_name
        self._component = component
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._counter = itertools.count(1)

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
        stamp = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._events.append(
            {
                "metadata": {"name": f"{name}.{next(self._counter)}", "namespace": namespace},
                "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "uid": uid},
                "reason": reason,
                "message": message,
                "type": "Warning" if warning else "Normal",
                "source": {"component": self._component, "host": self._node_name},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            }
        )

    def list(self, kind: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self._events
            if (kind is None or e["involvedObject"]["kind"] == kind)
            and (name is None or e["involvedObject"]["name"] == name)
        ]
