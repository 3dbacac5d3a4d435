"""The prober manager: one probe worker task per running container and probe kind.

Kubernetes' semantics (kubelet's prober): a container with a startup probe is neither probed
for readiness nor for liveness until the startup probe passes — those workers do not even
exist until then; the startup worker ends once it passed. Readiness is False until its probe
passes ``successThreshold`` times in a row, and flips back after ``failureThreshold`` failures
in a row; a container without a readiness probe is ready once started. A liveness (or startup)
probe that fails ``failureThreshold`` times in a row marks the container failed: its worker
ends, and the pod worker, woken, kills the container (events ``Unhealthy`` then ``Killing``),
which then restarts per the pod's restartPolicy with the usual back-off.

Workers are keyed by container id: a restarted container gets new workers and fresh results,
and the workers of a container that is no longer running are cancelled at the pod worker's next
sync. Each worker's first probe runs ``initialDelaySeconds`` after the container started plus a
random offset within one period, so that pods started (or adopted) together do not all probe in
the same millisecond; then once per period, on a fixed schedule (not drifting by the probe's own
duration).

A probe that cannot tell (the runtime does not answer an exec) counts neither way: a Docker
restart must not kill every container with an exec liveness probe. An ``Unhealthy`` event is
recorded when a run of failures starts and when it reaches the failure threshold, not on every
failure (the node's event list is bounded, and a pod that stays unready must not flush it).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.aio.clock import Clock
from agent.aio.logs import kv
from agent.aio.tasks import TaskScope
from agent.errors import RuntimeUnavailableError
from agent.events import EventRecorder
from agent.node.handlers import HandlerResult, Sleep, exec_in, http_get, resolve_port, tcp_socket
from agent.node.probes.base import UNPROBED, ProbeFailure, ProbeState
from agent.node.probes.grpc import health_check
from agent.node.runtime.base import ContainerRecord, Runtime
from agent.types import (
    Container,
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    Pod,
    Probe,
    ProbeKind,
    TCPSocketAction,
)

log = logging.getLogger(__name__)

_KIND_WORD = {
    ProbeKind.STARTUP: "Startup",
    ProbeKind.READINESS: "Readiness",
    ProbeKind.LIVENESS: "Liveness",
}


@dataclass(slots=True)
class _Probed:
    """One running container's probes and their verdicts so far."""

    pod: Pod
    container: Container
    record: ContainerRecord
    pod_ip: str
    started: bool
    ready: bool
    failure: ProbeFailure | None = None
    tasks: dict[ProbeKind, asyncio.Task[None]] = field(default_factory=dict)

    def state(self) -> ProbeState:
        return ProbeState(self.started, self.started and self.ready, self.failure)


def has_probes(container: Container) -> bool:
    return any(container.probe(kind) is not None for kind in ProbeKind)


class ProberManager:
    """Owns every probe worker of the node (in its own TaskScope); see the module docstring."""

    name = "prober"

    def __init__(
        self,
        *,
        runtime: Runtime,
        events: EventRecorder,
        clock: Clock,
        tasks: TaskScope,
        on_change: Callable[[str], None],
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._runtime = runtime
        self._events = events
        self._clock = clock
        self._tasks = tasks
        self._on_change = on_change
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._pods: dict[str, dict[str, _Probed]] = {}  # pod uid -> container id -> probes
        self.probes_run = 0

    async def start(self) -> None:
        await self._tasks.start()

    async def stop(self) -> None:
        await self._tasks.stop()
        self._pods.clear()

    @property
    def workers(self) -> int:
        """Probe workers running now."""
        return sum(
            1
            for probed in self._pods.values()
            for entry in probed.values()
            for task in entry.tasks.values()
            if not task.done()
        )

    # -- Prober ----------------------------------------------------------------------------

    def sync_pod(self, pod: Pod, running: Mapping[str, ContainerRecord], pod_ip: str) -> None:
        probed = self._pods.get(pod.uid, {})
        alive = {record.id for record in running.values()}
        for container_id in [cid for cid in probed if cid not in alive]:
            self._cancel(probed.pop(container_id))
        for name, record in running.items():
            container = pod.container(name)
            if container is None or record.id in probed or not has_probes(container):
                continue
            if not self._tasks.running:
                break  # stopping: no new workers
            started = container.startup_probe is None
            entry = _Probed(
                pod, container, record, pod_ip, started, container.readiness_probe is None
            )
            probed[record.id] = entry
            if started:
                self._spawn_after_startup(entry)
            else:
                self._spawn(entry, ProbeKind.STARTUP)
        if probed:
            self._pods[pod.uid] = probed
        else:
            self._pods.pop(pod.uid, None)

    def state(self, pod_uid: str, container_id: str) -> ProbeState:
        entry = self._pods.get(pod_uid, {}).get(container_id)
        return entry.state() if entry is not None else UNPROBED

    def forget_pod(self, pod_uid: str) -> None:
        for entry in self._pods.pop(pod_uid, {}).values():
            self._cancel(entry)

    # -- workers ---------------------------------------------------------------------------

    @staticmethod
    def _cancel(entry: _Probed) -> None:
        for task in entry.tasks.values():
            task.cancel()

    def _spawn_after_startup(self, entry: _Probed) -> None:
        for kind in (ProbeKind.READINESS, ProbeKind.LIVENESS):
            if entry.container.probe(kind) is not None:
                self._spawn(entry, kind)

    def _spawn(self, entry: _Probed, kind: ProbeKind) -> None:
        probe = entry.container.probe(kind)
        assert probe is not None
        name = f"probe:{entry.pod.full_name}/{entry.container.name}:{kind.value}"
        entry.tasks[kind] = self._tasks.spawn(name, lambda: self._work(entry, kind, probe))

    def _first_delay_s(self, entry: _Probed, probe: Probe) -> float:
        started_at = entry.record.started_at
        ran_s = max(0.0, self._clock.time() - started_at.timestamp()) if started_at else 0.0
        return max(0.0, probe.initial_delay_s - ran_s) + self._rng.uniform(0.0, probe.period_s)

    async def _work(self, entry: _Probed, kind: ProbeKind, probe: Probe) -> None:
        due = self._clock.monotonic() + self._first_delay_s(entry, probe)
        successes = failures = 0
        while True:
            await self._sleep(max(0.0, due - self._clock.monotonic()))
            try:
                result = await self._probe_once(entry, probe)
            except Exception as exc:
                # What a pod's server answers must never end the agent (an escaping error
                # would fail the daemon): a handler's own bug is this probe's failure.
                log.warning(
                    "probe failed unexpectedly",
                    extra=kv(
                        pod=entry.pod.full_name, container=entry.container.name, error=repr(exc)
                    ),
                )
                result = HandlerResult.failed(f"probe error: {type(exc).__name__}: {exc}")
            self.probes_run += 1
            if result is not None:
                if result.ok:
                    successes, failures = successes + 1, 0
                else:
                    successes, failures = 0, failures + 1
                    if failures in (1, probe.failure_threshold):
                        self._unhealthy(entry, kind, result)
                if self._judge(entry, kind, probe, successes, failures, result):
                    return
            # Fixed schedule; a probe that overran its period skips the ticks it missed.
            now = self._clock.monotonic()
            due += probe.period_s
            if due < now:
                due += (now - due) // probe.period_s * probe.period_s + probe.period_s

    def _judge(
        self,
        entry: _Probed,
        kind: ProbeKind,
        probe: Probe,
        successes: int,
        failures: int,
        result: HandlerResult,
    ) -> bool:
        """Apply one result; True when this worker is done (startup passed, or failed)."""
        if kind is ProbeKind.READINESS:
            if successes >= probe.success_threshold and not entry.ready:
                entry.ready = True
                self._changed(entry, "ready", True)
            elif failures >= probe.failure_threshold and entry.ready:
                entry.ready = False
                self._changed(entry, "ready", False)
            return False
        if kind is ProbeKind.STARTUP and successes >= probe.success_threshold:
            entry.started = True
            self._changed(entry, "started", True)
            self._spawn_after_startup(entry)
            return True
        if failures >= probe.failure_threshold:
            entry.failure = ProbeFailure(kind, result.message, probe.termination_grace_period_s)
            self._changed(entry, f"{kind.value} failed", True)
            return True
        return False

    def _changed(self, entry: _Probed, what: str, value: bool) -> None:
        log.info(
            "probe verdict changed",
            extra=kv(
                pod=entry.pod.full_name, container=entry.container.name, what=what, value=value
            ),
        )
        self._on_change(entry.pod.uid)

    def _unhealthy(self, entry: _Probed, kind: ProbeKind, result: HandlerResult) -> None:
        self._events.record(
            kind="Pod",
            name=entry.pod.metadata.name,
            namespace=entry.pod.metadata.namespace,
            uid=entry.pod.uid,
            reason="Unhealthy",
            message=f"{_KIND_WORD[kind]} probe failed: {result.message}",
            warning=True,
        )

    async def _probe_once(self, entry: _Probed, probe: Probe) -> HandlerResult | None:
        """One run of the probe's handler; None when it could not tell."""
        action = probe.action
        timeout_s = float(probe.timeout_s)
        if isinstance(action, ExecAction):
            try:
                return await exec_in(
                    self._runtime,
                    entry.record.id,
                    action.command,
                    timeout_s=timeout_s,
                    sleep=self._sleep,
                )
            except RuntimeUnavailableError:
                return None
        if not entry.pod_ip:
            return HandlerResult.failed("the pod has no IP address")
        if isinstance(action, GRPCAction):
            return await health_check(
                entry.pod_ip, action.port, action.service, timeout_s=timeout_s, sleep=self._sleep
            )
        port = resolve_port(action.port, entry.container)
        if port is None:
            return HandlerResult.failed(f"no port named {action.port!r} in the container")
        host = action.host or entry.pod_ip
        if isinstance(action, HTTPGetAction):
            return await http_get(
                host,
                port,
                action.path,
                scheme=action.scheme,
                headers=[(h.name, h.value) for h in action.headers],
                timeout_s=timeout_s,
                sleep=self._sleep,
            )
        assert isinstance(action, TCPSocketAction)
        return await tcp_socket(host, port, timeout_s, self._sleep)
