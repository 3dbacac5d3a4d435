"""The pod manager wired as the composition root wires it, on the FakeRuntime: the manager's
own tests, the runtime watcher's and the streaming API's use it.

Workers and the runtime share a ``FakeClock`` (back-offs fire only when a test advances it);
the runtime is the pod rig's ``TracingRuntime`` (container operations in order); the manager's
checkpoint loop gets ``CheckpointSleeps``: the coalescing pause
passes at once, a retry after a failed write waits until the test lets it go. ``restart()``
makes a new manager on the same runtime and state directory, as an agent restart does. The
checkpoint gets a bridge of its own, as in the composition root.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.aio.bridge import ThreadBridge
from agent.aio.tasks import Supervisor
from agent.events import EventRecorder
from agent.manifest import parse_pod
from agent.node.backoff import BackoffPolicy
from agent.node.health.metrics import NodeMetrics
from agent.node.pods.admission import ADMIT_ALL, Admission
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.manager import CHECKPOINT_RETRY_S, PodManager
from agent.node.pods.specs import SpecContext
from agent.node.pods.worker import WorkerDeps
from agent.node.runtime.base import ContainerRecord
from agent.types import Pod
from tests.unit.node.pods.fakeclock import FakeClock
from tests.unit.node.pods.rig import NODE, SANDBOX_IMAGE, TracingRuntime

IMAGE = "busybox:1"
DEADLINE_S = 10.0


class CheckpointSleeps:
    """The manager's sleep: records every delay; a retry after a failed write waits for
    ``release()`` (one retry per call), any other pause only yields."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._retry = asyncio.Event()
        self.retrying = asyncio.Event()  # set while a retry waits

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        if delay_s < CHECKPOINT_RETRY_S:
            await asyncio.sleep(0)
            return
        self.retrying.set()
        try:
            await self._retry.wait()
        finally:
            self._retry.clear()
            self.retrying.clear()

    def release(self) -> None:
        self._retry.set()


def static_pod(
    name: str,
    *containers: dict[str, Any],
    source: str = "file:/m/pods.yaml",
    namespace: str = "default",
    uid: str = "",
    **spec: Any,
) -> Pod:
    """A pod as a source hands it over: its uid derived from the manifest unless given (as the
    master gives one)."""
    meta = {"name": name, "namespace": namespace, **({"uid": uid} if uid else {})}
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": list(containers)
            or [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}],
            **spec,
        },
    }
    return parse_pod(manifest, source=source, node_name=NODE)


@dataclass
class ManagerRig:
    state_dir: Path
    runtime: TracingRuntime
    bridge: ThreadBridge
    supervisor: Supervisor
    clock: FakeClock
    metrics: NodeMetrics = field(default_factory=NodeMetrics)
    events: EventRecorder = field(default_factory=lambda: EventRecorder(NODE))
    sleeps: CheckpointSleeps = field(default_factory=CheckpointSleeps)
    managers: list[PodManager] = field(default_factory=list)  # not stopped yet
    # The checkpoint's own bridge, as the composition root gives it (PodManager's docstring).
    checkpoint_bridge: ThreadBridge = field(
        default_factory=lambda: ThreadBridge(1, name="test-checkpoint")
    )
    made: int = 0
    admission: Admission = ADMIT_ALL  # what the next manager made admits

    @property
    def checkpoint_path(self) -> Path:
        return self.state_dir / "checkpoint.json"

    @property
    def pods(self) -> PodManager:
        """The newest manager."""
        return self.managers[-1]

    def new_manager(self) -> PodManager:
        """A manager (not started) on the rig's runtime and state directory."""

        def deps(manager: PodManager) -> WorkerDeps:
            return WorkerDeps(
                runtime=self.runtime,
                bridge=self.bridge,
                ctx=SpecContext(
                    node_name=NODE,
                    sandbox_image=SANDBOX_IMAGE,
                    state_dir=self.state_dir,
                    host_ip="127.0.0.1",
                ),
                backoff=BackoffPolicy(10.0, 40.0, 600.0),
                clock=self.clock,
                events=self.events,
                on_book_changed=manager.mark_dirty,
                on_synced=manager.on_synced,
                timers=self.clock,
            )

        manager = PodManager(
            node_name=NODE,
            make_deps=deps,
            runtime=self.runtime,
            checkpoint=CheckpointStore(self.checkpoint_path),
            bridge=self.checkpoint_bridge,
            metrics=self.metrics,
            tasks=self.supervisor.scope(f"pods-{self.made}"),
            admission=self.admission,
            sleep=self.sleeps,
        )
        self.managers.append(manager)
        self.made += 1
        return manager

    async def restart(self) -> PodManager:
        """Stop the current manager (containers keep running) and start a new one."""
        await self.managers.pop().stop()
        manager = self.new_manager()
        await manager.start()
        return manager

    async def apply(self, *pods: Pod, prefix: str = "file:") -> None:
        """Hand ``pods`` over as the source ``prefix``'s whole set; wait for their first sync."""
        self.pods.apply_source(prefix, pods)
        await asyncio.wait_for(self.pods.wait_synced(), DEADLINE_S)

    async def app_records(self, pod: Pod | None = None) -> list[ContainerRecord]:
        """App containers (of ``pod``, else of every pod), oldest first."""
        records = await self.runtime.list_containers(pod.uid if pod else None)
        return sorted((r for r in records if not r.is_sandbox), key=lambda r: r.name)


@asynccontextmanager
async def manager_rig(
    state_dir: Path, *, start: bool = True, admission: Admission = ADMIT_ALL
) -> AsyncIterator[ManagerRig]:
    """A rig with one manager (started unless ``start=False``) admitting what ``admission``
    admits; every manager it made is stopped at the end, then the bridge closed."""
    clock = FakeClock()
    runtime = TracingRuntime(clock)
    runtime.add_image(IMAGE, size_bytes=1 << 20)
    bridge = ThreadBridge(2, name="test-pods")
    rig = ManagerRig(state_dir, runtime, bridge, Supervisor(), clock, admission=admission)
    try:
        async with rig.supervisor:
            manager = rig.new_manager()
            if start:
                await manager.start()
            try:
                yield rig
            finally:
                for each in rig.managers:
                    await each.stop()
    finally:
        bridge.close()
        rig.checkpoint_bridge.close()
