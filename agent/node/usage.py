"""Resource usage for ``nodectl top`` (what metrics-server gives kubectl): the node's CPU and
memory, and each running container's, sampled here and carried to the master by the lease.

The node's figures come from psutil (busy CPU time, memory in use = total - available). A
container's come from its cgroup, found through its process (``/proc/PID/cgroup``) and read
directly: ``cpuacct.usage`` or ``cpu.stat`` for CPU time, memory usage minus the inactive file
cache for memory (the working set, as kubelet and ``kubectl top`` count it). A few small files a
container, where Docker's stats call costs an API round trip and, without ``one-shot``, waits a
second for its second sample; the process id is asked of the runtime once per container (an
inspect) and kept while the container lives.

CPU is a rate: the CPU time used between two samples over the time between them, in
millicores; a container's first sample gives its average since it started, the node's first its
average since boot. Samples are taken at most every :data:`USAGE_SAMPLE_S` (a lease renewal
more often sends nothing new), every file read on the thread bridge. A container that ended
between the list and the read is left out. At most :data:`MAX_PODS_REPORTED` pods and
:data:`MAX_CONTAINERS_REPORTED` containers each are reported (the master's bounds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import psutil

from agent.aio.bridge import ThreadBridge
from agent.errors import AgentError
from agent.node.runtime.base import ContainerRecord

log = logging.getLogger(__name__)

USAGE_SAMPLE_S = 5.0  # the shortest time between two samples
MAX_PODS_REPORTED = 1000
MAX_CONTAINERS_REPORTED = 100
_NS_PER_S = 1_000_000_000
_MILLIS_PER_CORE = 1000
PROC_ROOT = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    cpu_ns: int  # CPU time used since the cgroup was made, nanoseconds
    working_set_bytes: int


def _stat_file(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (``memory.stat``, ``cpu.stat``)."""
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def cgroup_paths(pid: int, proc_root: Path = PROC_ROOT) -> dict[str, str]:
    """Each controller's cgroup of process ``pid`` (cgroup v2's single hierarchy as ``""``)."""
    paths: dict[str, str] = {}
    for line in (proc_root / str(pid) / "cgroup").read_text().splitlines():
        _, _, rest = line.partition(":")
        controllers, sep, path = rest.partition(":")
        if not sep:
            continue
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def read_cgroup_usage(
    pid: int, proc_root: Path = PROC_ROOT, cgroup_root: Path = CGROUP_ROOT
) -> CgroupUsage:
    """The CPU time and working set of ``pid``'s cgroup (v1 or v2); OSError or ValueError
    when it is gone or unreadable. Blocking: bridge it."""
    paths = cgroup_paths(pid, proc_root)
    if "cpuacct" in paths and "memory" in paths:  # cgroup v1
        cpu_ns = int(
            (cgroup_root / "cpuacct" / _rel(paths["cpuacct"]) / "cpuacct.usage").read_text()
        )
        memory = cgroup_root / "memory" / _rel(paths["memory"])
        usage = int((memory / "memory.usage_in_bytes").read_text())
        inactive = _stat_file(memory / "memory.stat").get("total_inactive_file", 0)
    elif "" in paths:  # cgroup v2
        group = cgroup_root / _rel(paths[""])
        cpu_ns = _stat_file(group / "cpu.stat")["usage_usec"] * 1000
        usage = int((group / "memory.current").read_text())
        inactive = _stat_file(group / "memory.stat").get("inactive_file", 0)
    else:
        raise ValueError(f"process {pid}: no cpu and memory cgroups in {sorted(paths)}")
    return CgroupUsage(cpu_ns, max(0, usage - inactive))


def _rel(path: str) -> str:
    relative = path.lstrip("/")
    if ".." in relative.split("/"):
        raise ValueError(f"cgroup path {path!r} leaves the hierarchy")
    return relative


def read_node_usage() -> tuple[float, int, float]:
    """(busy CPU seconds since boot, memory in use in bytes, boot time). Blocking: bridge it."""
    times = psutil.cpu_times()
    # Linux's guest time is counted in user time already: not added again.
    busy = sum(
        getattr(times, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")
    )
    memory = psutil.virtual_memory()
    return busy, int(memory.total - memory.available), psutil.boot_time()


class UsageRuntime(Protocol):
    async def list_containers(self, pod_uid: str | None = None) -> list[ContainerRecord]: ...

    async def container_pid(self, container_id: str) -> int: ...


@dataclass(frozen=True, slots=True)
class _Sample:
    at: float  # wall-clock seconds
    cpu_ns: int


class UsageSampler:
    """The lease's ``usage`` section, sampled at most every :data:`USAGE_SAMPLE_S`."""

    def __init__(
        self,
        bridge: ThreadBridge,
        runtime: UsageRuntime,
        *,
        clock: Callable[[], float] = time.time,
        read_node: Callable[[], tuple[float, int, float]] = read_node_usage,
        read_cgroup: Callable[[int], CgroupUsage] = read_cgroup_usage,
    ) -> None:
        self._bridge = bridge
        self._runtime = runtime
        self._clock = clock
        self._read_node = read_node
        self._read_cgroup = read_cgroup
        self._node: tuple[float, float] | None = None  # (at, busy CPU seconds)
        self._pids: dict[str, int] = {}  # container id -> pid, while it runs
        self._containers: dict[str, _Sample] = {}
        self._sampled_at = float("-inf")

    async def report(self) -> dict[str, Any] | None:
        """A new sample when one is due, else None (nothing new to send)."""
        now = self._clock()
        if now - self._sampled_at < USAGE_SAMPLE_S:
            return None
        self._sampled_at = now
        window = now - self._node[0] if self._node is not None else 0.0
        report: dict[str, Any] = {"window": round(window, 3)}
        try:
            report["node"] = await self._node_usage(now)
        except (OSError, psutil.Error) as exc:  # psutil's own errors are not OSErrors
            log.debug("node usage unreadable: %s", exc)
        try:
            records = await self._runtime.list_containers()
        except AgentError as exc:  # the runtime is down: the node's figures still go
            log.debug("container usage skipped: %s", exc)
            return report
        report["pods"] = await self._pods_usage(records, now)
        return report

    async def _node_usage(self, now: float) -> dict[str, int]:
        busy, memory, boot = await self._bridge.run(self._read_node)
        before = self._node or (boot, 0.0)
        self._node = (now, busy)
        return {"cpuMillis": _millicores(busy - before[1], now - before[0]), "memoryBytes": memory}

    async def _pods_usage(self, records: list[ContainerRecord], now: float) -> list[dict[str, Any]]:
        running = [r for r in records if r.running and not r.is_sandbox and r.container_name]
        live = {r.id for r in running}
        self._pids = {k: v for k, v in self._pids.items() if k in live}
        self._containers = {k: v for k, v in self._containers.items() if k in live}
        pods: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for record in running:
            key = (record.pod_namespace, record.pod_name)
            if key not in pods and len(pods) >= MAX_PODS_REPORTED:
                continue
            containers = pods.setdefault(key, [])
            if len(containers) >= MAX_CONTAINERS_REPORTED:
                continue
            usage = await self._container_usage(record, now)
            if usage is not None:
                containers.append({"name": record.container_name, **usage})
        return [
            {"namespace": ns, "name": name, "containers": containers}
            for (ns, name), containers in sorted(pods.items())
            if containers
        ]

    async def _container_usage(self, record: ContainerRecord, now: float) -> dict[str, int] | None:
        try:
            pid = self._pids.get(record.id)
            if pid is None:
                pid = self._pids[record.id] = await self._runtime.container_pid(record.id)
            usage = await self._bridge.run(self._read_cgroup, pid)
        except (AgentError, OSError, ValueError, KeyError) as exc:
            log.debug("usage of container %s unreadable: %s", record.id[:12], exc)
            self._pids.pop(record.id, None)
            return None
        before = self._containers.get(record.id) or _Sample(_started(record, now), 0)
        self._containers[record.id] = _Sample(now, usage.cpu_ns)
        cpu = _millicores((usage.cpu_ns - before.cpu_ns) / _NS_PER_S, now - before.at)
        return {"cpuMillis": cpu, "memoryBytes": usage.working_set_bytes}


def _started(record: ContainerRecord, now: float) -> float:
    started: datetime | None = record.started_at
    return started.timestamp() if started is not None else now


def _millicores(cpu_s: float, elapsed_s: float) -> int:
    if elapsed_s <= 0 or cpu_s < 0:
        return 0
    return round(cpu_s / elapsed_s * _MILLIS_PER_CORE)
