"""Nodes' resource usage for ``nodectl top`` (metrics-server's part): the ``usage`` section a
node's lease renewal carries (agent.node.usage), parsed at this trust boundary, kept in memory
(the latest per node, never in the store: it changes every few seconds and is worthless after
a restart), and served as kubectl's metrics API serves it (``/v1/metrics/nodes``,
``/v1/metrics/pods``: NodeMetrics and PodMetrics objects, CPU in millicores, memory in Ki).

Bounded: at most MAX_PODS pods of MAX_CONTAINERS containers each; every name checked as the
API checks names; every figure an integer from 0 to a signed 64-bit integer's maximum; the
window a finite number of seconds up to MAX_WINDOW_S. A malformed section is a 400 naming the
field (``usage.pods[3].containers[0].cpuMillis``). Figures older than STALE_S are not served
(the node stopped reporting: kubectl shows ``<unknown>`` then).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from agent.aio.clock import Clock, SystemClock
from agent.errors import BadRequestError
from agent.names import check_dns1123_label, check_dns1123_subdomain
from agent.quantity import INT64_MAX

MAX_PODS = 1000
MAX_CONTAINERS = 100
MAX_WINDOW_S = 86_400.0
STALE_S = 120.0  # a node's figures are served this long after its last report
_KIB = 1024


@dataclass(frozen=True, slots=True)
class Figures:
    cpu_millis: int
    memory_bytes: int

    def usage(self) -> dict[str, str]:
        """As the metrics API writes them: quantities."""
        return {"cpu": f"{self.cpu_millis}m", "memory": f"{self.memory_bytes // _KIB}Ki"}


@dataclass(frozen=True, slots=True)
class PodUsage:
    namespace: str
    name: str
    containers: tuple[tuple[str, Figures], ...]


@dataclass(frozen=True, slots=True)
class NodeUsage:
    window_s: float
    node: Figures | None
    pods: tuple[PodUsage, ...]


def _fail(field: str, problem: str) -> BadRequestError:
    return BadRequestError(f"{field}: {problem}")


def _int(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise _fail(f"{where}.{key}", f"must be an integer from 0 to {INT64_MAX}")
    return value


def _figures(raw: object, where: str) -> Figures:
    if not isinstance(raw, dict):
        raise _fail(where, "must be an object")
    return Figures(_int(raw, "cpuMillis", where), _int(raw, "memoryBytes", where))


def _list(raw: object, where: str, limit: int) -> list[Any]:
    if not isinstance(raw, list):
        raise _fail(where, "must be a list")
    if len(raw) > limit:
        raise _fail(where, f"more than {limit} items")
    return raw


def parse_usage(raw: object) -> NodeUsage:
    """A lease's ``usage`` section; BadRequestError naming the field when malformed."""
    if not isinstance(raw, dict):
        raise _fail("usage", "must be an object")
    window = raw.get("window", 0)
    if (
        isinstance(window, bool)
        or not isinstance(window, int | float)
        or not math.isfinite(window)
        or not 0 <= window <= MAX_WINDOW_S
    ):
        raise _fail("usage.window", f"must be a number of seconds from 0 to {MAX_WINDOW_S:g}")
    node = _figures(raw["node"], "usage.node") if "node" in raw else None
    pods = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(_list(raw.get("pods", []), "usage.pods", MAX_PODS)):
        where = f"usage.pods[{i}]"
        if not isinstance(item, dict):
            raise _fail(where, "must be an object")
        namespace = _name(item, "namespace", where, check_dns1123_label)
        name = _name(item, "name", where, check_dns1123_subdomain)
        if (namespace, name) in seen:
            raise _fail(where, f"pod {namespace}/{name} reported twice")
        seen.add((namespace, name))
        containers = []
        names: set[str] = set()
        for j, entry in enumerate(
            _list(item.get("containers"), f"{where}.containers", MAX_CONTAINERS)
        ):
            at = f"{where}.containers[{j}]"
            if not isinstance(entry, dict):
                raise _fail(at, "must be an object")
            container = _name(entry, "name", at, check_dns1123_label)
            if container in names:
                raise _fail(at, f"container {container} reported twice")
            names.add(container)
            containers.append((container, _figures(entry, at)))
        pods.append(PodUsage(namespace, name, tuple(containers)))
    return NodeUsage(float(window), node, tuple(pods))


def _name(raw: dict[str, Any], key: str, where: str, check: Any) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "must be a string")
    checked: str = check(value, f"{where}.{key}")
    return checked


class UsageBook:
    """The latest usage of each node, with when it arrived (the master's clock)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        # Received wall-clock time, for staleness and the objects' timestamps (shown to people).
        self._latest: dict[str, tuple[float, NodeUsage]] = {}

    def put(self, node: str, usage: NodeUsage) -> None:
        self._latest[node] = (self._clock.time(), usage)

    def forget(self, node: str) -> None:
        self._latest.pop(node, None)

    def get(self, node: str) -> tuple[str, NodeUsage] | None:
        """The node's figures and when they arrived (RFC 3339), if fresh."""
        found = self._latest.get(node)
        if found is None or self._clock.time() - found[0] > STALE_S:
            return None
        at, usage = found
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)), usage


def window(usage: NodeUsage) -> str:
    """The metrics API's ``window`` (a Go duration)."""
    return f"{usage.window_s:.3f}".rstrip("0").rstrip(".") + "s"
