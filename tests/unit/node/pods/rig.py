"""A pod worker on the FakeRuntime with a fake clock, and the means to step it.

Time only moves when a test calls ``rig.clock.advance()``; a worker syncs when its timer fires
or something wakes it, and ``rig.step()`` returns once that sync has ended. The runtime is the
FakeRuntime with a trace of the container operations in order (``rig.runtime.trace``) and a
few faults the fake cannot express: a create that waits on a gate (a create in flight), a
create that lands but reports a conflict (an earlier incarnation's create), faults on app
containers only.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.aio.bridge import ThreadBridge
from agent.errors import AgentError, ContainerConflictError
from agent.events import EventRecorder
from agent.node.backoff import BackoffPolicy
from agent.node.pods.specs import SpecContext
from agent.node.pods.worker import PodWorker, WorkerBook, WorkerDeps
from agent.node.runtime.base import ContainerRecord, ContainerSpec
from agent.node.runtime.fake import FakeRuntime
from agent.types import KIND_APP, LABEL_KIND, Pod
from tests.unit.node.pods.fakeclock import FakeClock

DEADLINE_S = 5.0  # how long a sync that is due may take before the test fails
NODE = "n1"
HOST_IP = "10.1.2.3"
SANDBOX_IMAGE = "pause:1"


class TracingRuntime(FakeRuntime):
    """The FakeRuntime, tracing container operations in order (by container name)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(NODE, clock=clock)
        self.trace: list[tuple[str, ...]] = []
        self.gate: asyncio.Event | None = None  # app creates wait on it while set
        self.at_gate = asyncio.Event()
        self.racing: set[str] = set()  # names whose create lands, then reports a conflict
        self.app_faults: dict[str, list[AgentError]] = {}

    def fail_app(self, operation: str, error: AgentError) -> None:
        """The next ``operation`` (create_container, start_container) of an app raises."""
        self.app_faults.setdefault(operation, []).append(error)

    def _app_fault(self, operation: str, spec: ContainerSpec) -> None:
        faults = self.app_faults.get(operation)
        if faults and spec.labels.get(LABEL_KIND) == KIND_APP:
            raise faults.pop(0)

    def _name(self, container_id: str) -> str:
        try:
            return self.spec_of(container_id).name
        except AgentError:
            return container_id

    async def create_container(self, spec: ContainerSpec) -> str:
        self.trace.append(("create", spec.name))
        if self.gate is not None and spec.labels.get(LABEL_KIND) == KIND_APP:
            self.at_gate.set()
            await self.gate.wait()
        self._app_fault("create_container", spec)
        if spec.name in self.racing:
            self.racing.discard(spec.name)
            await super().create_container(spec)
            raise ContainerConflictError(f"the name {spec.name!r} is already in use")
        return await super().create_container(spec)

    async def start_container(self, container_id: str) -> None:
        self.trace.append(("start", self._name(container_id)))
        if not self.down:
            self._app_fault("start_container", self.spec_of(container_id))
        await super().start_container(container_id)

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        self.trace.append(("stop", self._name(container_id), str(grace_s)))
        await super().stop_container(container_id, grace_s)

    async def remove_container(self, container_id: str) -> None:
        self.trace.append(("remove", self._name(container_id)))
        await super().remove_container(container_id)

    def now(self, pod_uid: str) -> list[ContainerRecord]:
        """The pod's containers as they are, without counting a call (sorted by name)."""
        return sorted(
            (self._record(c) for c in self._ours(pod_uid)),
            key=lambda r: (r.is_sandbox is False, r.container_name, r.attempt),
        )

    def one(self, pod_uid: str, name: str) -> ContainerRecord:
        """The newest container of ``name`` (``POD`` for the sandbox)."""
        return [r for r in self.now(pod_uid) if r.container_name == name][-1]


@dataclass
class Rig:
    state_dir: Path
    clock: FakeClock = field(default_factory=FakeClock)
    backoff: BackoffPolicy = field(default_factory=lambda: BackoffPolicy(10.0, 40.0, 600.0))
    runtime: TracingRuntime = field(init=False)
    events: EventRecorder = field(init=False)
    bridge: ThreadBridge = field(init=False)
    deps: WorkerDeps = field(init=False)
    syncs: Counter[PodWorker] = field(default_factory=Counter)
    sync_seconds: list[float] = field(default_factory=list)
    book_changes: int = 0
    tasks: list[tuple[PodWorker, asyncio.Task[None]]] = field(default_factory=list)
    _synced: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.runtime = TracingRuntime(self.clock)
        self.events = EventRecorder(NODE)
        self.bridge = ThreadBridge(2, name="test-bridge")
        self.deps = self.make_deps(self.state_dir)

    def make_deps(self, state_dir: Path) -> WorkerDeps:
        ctx = SpecContext(
            node_name=NODE, sandbox_image=SANDBOX_IMAGE, state_dir=state_dir, host_ip=HOST_IP
        )
        return WorkerDeps(
            runtime=self.runtime,
            bridge=self.bridge,
            ctx=ctx,
            backoff=self.backoff,
            clock=self.clock,
            events=self.events,
            on_book_changed=self._book_changed,
            on_synced=self._on_synced,
            timers=self.clock,
        )

    def _book_changed(self) -> None:
        self.book_changes += 1

    def _on_synced(self, worker: PodWorker, seconds: float) -> None:
        self.syncs[worker] += 1
        self.sync_seconds.append(seconds)
        self._synced.set()

    async def wait_syncs(self, worker: PodWorker, count: int) -> None:
        """Until ``worker`` has ended ``count`` syncs in all."""
        async with asyncio.timeout(DEADLINE_S):
            while self.syncs[worker] < count:
                self._synced.clear()
                await self._synced.wait()

    def spawn(
        self,
        pod: Pod,
        book: WorkerBook | None = None,
        *,
        after: asyncio.Event | None = None,
        deps: WorkerDeps | None = None,
        terminating: bool = False,
    ) -> PodWorker:
        """A worker for ``pod``, running (``terminating``: made to remove the pod, as the pod
        manager does for containers of a pod nobody wants)."""
        worker = PodWorker(pod, deps or self.deps, book, after=after)
        worker.terminating = terminating
        self.tasks.append((worker, asyncio.get_running_loop().create_task(worker.run())))
        return worker

    async def start(self, pod: Pod, book: WorkerBook | None = None) -> PodWorker:
        """A worker for ``pod``, once its first sync has ended."""
        worker = self.spawn(pod, book)
        await self.wait_syncs(worker, 1)
        return worker

    async def step(self, worker: PodWorker, action: Callable[[], object] | None = None) -> None:
        """Do ``action`` (default: wake the worker), then wait for the sync it causes."""
        before = self.syncs[worker]
        (action or worker.wake)()
        await self.wait_syncs(worker, before + 1)

    async def advance(self, worker: PodWorker, seconds: float) -> None:
        """Let ``seconds`` pass; the worker's timer must fire and cause one sync."""
        await self.step(worker, lambda: self.clock.advance(seconds))

    async def stop(self, worker: PodWorker) -> None:
        """As the agent stopping: the worker's task is cancelled, its containers stay."""
        task = self.task_of(worker)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def task_of(self, worker: PodWorker) -> asyncio.Task[None]:
        return next(task for w, task in self.tasks if w is worker)

    async def finished(self, worker: PodWorker) -> None:
        """Until the worker's run() has returned (a completed teardown)."""
        async with asyncio.timeout(DEADLINE_S):
            await worker.done.wait()
        task = self.task_of(worker)
        async with asyncio.timeout(DEADLINE_S):
            await task  # returns: a worker that crashed fails the test here

    async def close(self) -> None:
        tasks = [task for _, task in self.tasks]
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self.bridge.close()
        failures = [r for r in results if isinstance(r, BaseException)]
        failures = [r for r in failures if not isinstance(r, asyncio.CancelledError)]
        if failures:
            raise failures[0]
