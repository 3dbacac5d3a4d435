"""Pod workers: one serialized worker per pod reconciling desired state with the runtime.

A worker never trusts its memory over the runtime: every sync lists the pod's containers by
label and decides from what is there. Container names are deterministic per attempt, so a sync
repeated after a crash (``kill -9`` of the agent at any point) creates nothing twice. The
worker's own bookkeeping (attempt numbers, back-off) is exported to the checkpoint so that an
agent restart neither resets back-off nor restarts running containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent.aio.bridge import ThreadBridge
from agent.aio.clock import Clock
from agent.aio.logs import kv
from agent.errors import (
    AgentError,
    ContainerConflictError,
    ImagePullError,
    RuntimeOperationError,
    RuntimeUnavailableError,
    VolumeError,
)
from agent.events import EventRecorder
from agent.node import crashpoints
from agent.node.backoff import BackoffPolicy, RestartState
from agent.node.handlers import HandlerResult
from agent.node.hooks.preconditions import PreconditionRun, Verdict
from agent.node.hooks.runner import Hooks, HookTarget, LifecycleHooks
from agent.node.imagegc.planner import dead_containers_to_remove
from agent.node.imagegc.reservations import ImageReservations
from agent.node.images.pinning import PinnedImage
from agent.node.images.puller import (
    ERR_IMAGE_NEVER_PULL,
    ERR_IMAGE_PULL,
    IMAGE_PULL_BACKOFF,
    ImagePuller,
    PullManager,
)
from agent.node.notify.hub import NotifyGate, NotifyView
from agent.node.pods.specs import (
    SpecContext,
    app_spec,
    init_spec,
    pod_volume_dir,
    sandbox_spec,
)
from agent.node.pods.status import PHASE_PENDING, ContainerView, pod_status
from agent.node.probes.base import NO_PROBES, ProbeFailure, Prober
from agent.node.runtime.base import ContainerRecord, ContainerState, ImageRecord, Runtime
from agent.types import (
    LABEL_IMAGE,
    Container,
    ExecAction,
    LifecycleAction,
    Pod,
    PreStartHook,
    ProbeKind,
    RestartPolicy,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SYNC_RETRY_INITIAL_S = 1.0
SYNC_RETRY_MAX_S = 30.0
MIN_WAKE_S = 0.01  # a deadline already passed still yields to the loop once
EMPTY_DIR_MODE = 0o777  # as kubelet: any user of the pod may write
HOST_PATH_DIR_MODE = 0o755  # hostPath DirectoryOrCreate, as kubelet
# How long a failed pull shows ErrImagePull before the status says ImagePullBackOff (kubelet's
# next sync does the same), unless the back-off itself is shorter.
ERR_IMAGE_PULL_SHOWN_S = 2.0


@dataclass(slots=True)
class WorkerBook:
    """Per-pod bookkeeping that must survive an agent restart (checkpointed)."""

    attempts: dict[str, int] = field(default_factory=dict)
    restarts: dict[str, RestartState] = field(default_factory=dict)
    sandbox_attempt: int = -1
    start_time: float | None = None
    # The sandbox attempt in which every init container succeeded (-1: not yet). Tied to the
    # sandbox because a pod whose sandbox is lost runs its init containers again (Kubernetes).
    init_done_sandbox: int = -1
    # Container name -> the sandbox attempt in which its preStart preconditions passed: an
    # agent restart does not check them again for a container that has started in it.
    prestart_done: dict[str, int] = field(default_factory=dict)
    # Container name -> the attempt the agent killed for failing its liveness or startup probe
    # (or sd_notify watchdog). Kubernetes restarts such a container under every policy but
    # Never, whatever its exit code: a process that exits 0 on SIGTERM is still unhealthy.
    killed_unhealthy: dict[str, int] = field(default_factory=dict)
    # Container name -> the image its reference resolved to at admission (digest pinning):
    # every container of it is created from that id until the pod's spec changes.
    images: dict[str, PinnedImage] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempts": dict(self.attempts),
            "restarts": {name: rs.to_json() for name, rs in self.restarts.items()},
            "sandbox_attempt": self.sandbox_attempt,
            "start_time": self.start_time,
            "init_done_sandbox": self.init_done_sandbox,
            "prestart_done": dict(self.prestart_done),
            "killed_unhealthy": dict(self.killed_unhealthy),
            "images": {name: pin.to_json() for name, pin in self.images.items()},
        }

    @classmethod
    def from_json(cls, data: object) -> WorkerBook:
        """The book ``to_json`` wrote; missing or null fields take their defaults.

        Raises ValueError naming the offending field for anything else (a checkpoint edited by
        hand, or written by another version): the caller decides what to do with the pod.
        """
        book = _object(data, "worker book")
        restarts: dict[str, RestartState] = {}
        for name, value in _object(book.get("restarts") or {}, "worker book restarts").items():
            where = f"worker book restarts[{name!r}]"
            entry = dict(_object(value, where))
            try:
                restarts[str(name)] = RestartState.from_json(entry)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from exc
        start = book.get("start_time")
        if start is not None and not _is_number(start):
            raise ValueError(f"worker book start_time: expected a number, got {start!r}")
        return cls(
            attempts={
                str(name): _integer(value, f"worker book attempts[{name!r}]")
                for name, value in _object(
                    book.get("attempts") or {}, "worker book attempts"
                ).items()
            },
            restarts=restarts,
            sandbox_attempt=_integer(
                book.get("sandbox_attempt", -1), "worker book sandbox_attempt"
            ),
            start_time=float(start) if start is not None else None,
            init_done_sandbox=_integer(
                book.get("init_done_sandbox", -1), "worker book init_done_sandbox"
            ),
            prestart_done={
                str(name): _integer(value, f"worker book prestart_done[{name!r}]")
                for name, value in _object(
                    book.get("prestart_done") or {}, "worker book prestart_done"
                ).items()
            },
            killed_unhealthy={
                str(name): _integer(value, f"worker book killed_unhealthy[{name!r}]")
                for name, value in _object(
                    book.get("killed_unhealthy") or {}, "worker book killed_unhealthy"
                ).items()
            },
            images={
                str(name): PinnedImage.from_json(value, f"worker book images[{name!r}]")
                for name, value in _object(book.get("images") or {}, "worker book images").items()
            },
        )


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value


class Timer(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """Where the worker's timed wake-ups (back-off, sync retry) come from, so that tests fire
    them by advancing a fake clock instead of waiting."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` once, ``delay_s`` seconds from now, unless cancelled first."""
        ...


class LoopTimers:
    """Timers of the running event loop (real time)."""

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_later(delay_s, callback)


@dataclass(frozen=True, slots=True)
class WorkerDeps:
    runtime: Runtime
    bridge: ThreadBridge
    ctx: SpecContext
    backoff: BackoffPolicy
    clock: Clock
    events: EventRecorder
    on_book_changed: Callable[[], None]
    on_synced: Callable[[PodWorker, float], None]
    timers: Timers = field(default_factory=LoopTimers)
    hooks: LifecycleHooks | None = None  # None: Hooks on the runtime, without waitFor lookups
    prober: Prober = NO_PROBES
    notify: NotifyGate | None = None  # sd_notify sockets (None: no container uses them)
    # Image GC: the pod's images are reserved while it exists (None: no GC on this node).
    image_reservations: ImageReservations | None = None
    dead_per_container: int = 1  # terminated containers kept per pod container
    # The node's pull manager (None: each worker makes its own, for tests of one pod).
    images: ImagePuller | None = None


@dataclass(slots=True)
class _Waiting:
    reason: str
    message: str = ""
    retry_at: float = 0.0
    delay_s: float = 0.0


@dataclass(slots=True)
class _PreStart:
    """A container's preconditions between syncs (in memory: after an agent restart a
    pending run starts over; a passed one is in the book)."""

    run: PreconditionRun | None = None
    hook: int = -1  # the hook last reported as pending (one event per hook)
    delay_s: float = 0.0  # the back-off after the last failed run
    retry_at: float = 0.0  # wall clock
    gave_up: bool = False  # failed under restartPolicy Never


PRE_STOP_MIN_GRACE_S = 2  # kubelet: what is left for SIGTERM when preStop used the whole grace
POST_START_TIMEOUT_S = 300.0  # a postStart that runs longer has failed (kubelet: no bound)


def _make_dirs(path: Path, mode: int) -> None:
    """``mkdir -p`` with ``mode`` on every directory it creates (not on existing ones)."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        directory.chmod(mode)


def should_restart(policy: RestartPolicy, exit_code: int | None) -> bool:
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return exit_code != 0
    return False


def _attempts_of(records: list[ContainerRecord], name: str) -> list[ContainerRecord]:
    """The containers (app or init: their names are unique in a pod) of ``name``, oldest
    attempt first."""
    return sorted(
        (r for r in records if not r.is_sandbox and r.container_name == name),
        key=lambda r: r.attempt,
    )


def _succeeded(record: ContainerRecord) -> bool:
    """Ran and exited 0 (an init container that is done)."""
    return (
        record.ever_started
        and not record.running
        and record.state is not ContainerState.CREATED
        and record.exit_code == 0
    )


def _ran_for_s(record: ContainerRecord) -> float:
    if record.started_at is None or record.finished_at is None:
        return 0.0
    return max(0.0, (record.finished_at - record.started_at).total_seconds())


class PodWorker:
    """Owns one pod: its sandbox, its app containers, their restarts and its status."""

    def __init__(
        self,
        pod: Pod,
        deps: WorkerDeps,
        book: WorkerBook | None = None,
        *,
        after: asyncio.Event | None = None,
    ) -> None:
        self.pod = pod
        self.deps = deps
        self.book = book or WorkerBook()
        self.terminating = False
        self.status: dict[str, Any] = {}
        self.synced_once = asyncio.Event()
        self.done = asyncio.Event()
        self.last_error = ""
        self._after = after
        self._wake = asyncio.Event()
        self._waiting: dict[str, _Waiting] = {}
        self._records: list[ContainerRecord] = []
        self._sandbox_moved: set[str] = set()
        self._failing = False  # the last sync failed: wake() waits for its retry timer
        self._spec_hash = pod.spec_hash
        self._initialized = False  # every init container succeeded in the current sandbox
        # Set only by a completed teardown: terminate() may arrive in the middle of a normal
        # sync, and the worker must then sync once more to actually remove the pod.
        self._torn_down = False
        self._prestart: dict[str, _PreStart] = {}
        self._pod_ip_now = ""
        self._replaced: Pod | None = None
        self._terminate_requested = asyncio.Event()  # ends a precondition check in flight
        self._deletion_grace_s: int | None = None  # a deletion's grace period (terminate)
        self._hooks = deps.hooks or Hooks(deps.runtime)
        self._images: ImagePuller = deps.images or PullManager(
            deps.runtime, clock=deps.clock, backoff=deps.backoff
        )
        self._pins_reserved = False  # the book's pins reserved against image GC (once)

    @property
    def uid(self) -> str:
        return self.pod.uid

    def wake(self) -> None:
        """Something changed in the runtime or a probe: sync now — unless the last sync
        failed, then its retry back-off holds. A pod whose sandbox keeps failing hears its own
        failed containers die: waking on those turned the back-off into a hot loop (about 30
        sandboxes in 9 s, seen with the Docker bridge gone)."""
        if not self._failing:
            self._wake.set()

    def wake_now(self) -> None:
        """A new spec, a deletion, the runtime back: sync now, back-off or not."""
        self._wake.set()

    def update(self, pod: Pod) -> None:
        if pod.spec_hash != self.pod.spec_hash:
            self._replaced = self.pod  # its containers' preStop hooks run when they stop
        self.pod = pod
        self.wake_now()

    def terminate(self, *, grace_s: int | None = None) -> None:
        """Stop and remove the pod; ``grace_s``: the deletion's grace period, in place of the
        pod's own (``nodectl delete --grace-period``; the shortest one given holds)."""
        if grace_s is not None:
            held = self._deletion_grace_s
            self._deletion_grace_s = grace_s if held is None else min(held, grace_s)
        self.terminating = True
        self._terminate_requested.set()
        self.wake_now()

    async def run(self) -> None:
        """Sync until terminated; runtime errors are retried with back-off, never fatal."""
        if self._after is not None:
            await self._after.wait()
        retry_s = SYNC_RETRY_INITIAL_S
        try:
            while True:
                self._wake.clear()
                started = self.deps.clock.monotonic()
                try:
                    next_wake_s = await self._sync()
                    self.last_error = ""
                    self._failing = False
                    retry_s = SYNC_RETRY_INITIAL_S
                except AgentError as exc:
                    self.last_error = str(exc)
                    self._failing = True
                    self._report_failure(exc, retry_s)
                    log.warning(
                        "pod sync failed, will retry",
                        extra=kv(
                            pod=self.pod.full_name, uid=self.uid, error=str(exc), retry_s=retry_s
                        ),
                    )
                    next_wake_s = retry_s
                    retry_s = min(retry_s * 2, SYNC_RETRY_MAX_S)
                self.deps.on_synced(self, self.deps.clock.monotonic() - started)
                if self._torn_down:
                    return
                self.synced_once.set()
                timer = (
                    None
                    if next_wake_s is None
                    else self.deps.timers.call_later(max(next_wake_s, MIN_WAKE_S), self._wake.set)
                )
                try:
                    await self._wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        finally:
            self.synced_once.set()
            if self.terminating:
                self.done.set()

    # -- one sync --------------------------------------------------------------------------

    async def _sync(self) -> float | None:
        """One reconcile pass; returns seconds until a timer-driven resync, or None."""
        runtime = self.deps.runtime
        records = await runtime.list_containers(self.uid)
        self._learn_attempts(records)
        if self.terminating:
            await self._teardown(records)
            return None

        pod = self.pod
        if pod.spec_hash != self._spec_hash:
            # A new spec starts without the old one's waits (kubelet keys back-off by the
            # container's spec): a fixed image or command must not wait out the broken one's.
            self._spec_hash = pod.spec_hash
            self._waiting.clear()
            self._prestart.clear()
            if self.book.restarts or self.book.images:
                self.book.restarts.clear()
                self.book.images.clear()  # a new spec resolves its images again
                self.deps.on_book_changed()
        stale = [r for r in records if r.pod_hash != pod.spec_hash]
        if stale:
            log.info(
                "pod spec changed, replacing its containers",
                extra=kv(pod=pod.full_name, uid=self.uid),
            )
            await self._stop_and_remove(stale)
            records = [r for r in records if r.pod_hash == pod.spec_hash]

        await self._learn_pins(records)
        sandbox, records = await self._ensure_sandbox(records)
        now = self.deps.clock.time()
        if self.book.start_time is None:
            self.book.start_time = now
            self.deps.on_book_changed()
        pod_ip = self.deps.ctx.host_ip if pod.spec.host_network else sandbox.ip_address
        self._pod_ip_now = pod_ip  # for the hooks of this sync's starts and stops
        await self._ensure_volumes()
        if self.deps.notify is not None:  # the sockets exist before a container can write
            await self.deps.notify.sync(pod, self.wake)

        wanted = {c.name for c in (*pod.spec.init_containers, *pod.spec.containers)}
        unknown = [r for r in records if not r.is_sandbox and r.container_name not in wanted]
        if unknown:
            await self._stop_and_remove(unknown)

        # The app containers wait until every init container has succeeded.
        self._initialized, next_wake = await self._sync_init(records, sandbox, pod_ip, now)
        for container in pod.spec.containers if self._initialized else ():
            mine = _attempts_of(records, container.name)
            wait_s = await self._sync_container(container, mine, sandbox, pod_ip, now)
            if wait_s is not None:
                next_wake = wait_s if next_wake is None else min(next_wake, wait_s)

        # Pruned after the containers were synced, so that the one just created counts.
        self._records = await runtime.list_containers(self.uid)
        old = dead_containers_to_remove(
            [r for r in self._records if not r.is_sandbox],
            per_container=self.deps.dead_per_container,
            total=None,
        )
        if old:
            await self._stop_and_remove(old)
            self._records = [r for r in self._records if r not in old]
        self._sync_probes(pod_ip)
        self._refresh_status(pod_ip)
        return next_wake

    def _sync_probes(self, pod_ip: str) -> None:
        """The prober learns which app containers run now (new ones get probe workers,
        stopped ones lose theirs)."""
        running = {}
        for container in self.pod.spec.containers:
            mine = _attempts_of(self._records, container.name)
            if mine and mine[-1].running and self._notify_started(mine[-1]):
                running[container.name] = mine[-1]
        self.deps.prober.sync_pod(self.pod, running, pod_ip)

    def _notify_started(self, record: ContainerRecord) -> bool:
        """An sd_notify container has started once it said READY=1 (its startup gate: no
        probe runs before); any other container once it runs."""
        view = self._notify_view(record)
        return view is None or (view.attempt == record.attempt and view.started)

    def _notify_status(self, record: ContainerRecord | None) -> str:
        """The STATUS= this very attempt sent, if any."""
        if record is None or not record.running:
            return ""
        view = self._notify_view(record)
        return view.status if view is not None and view.attempt == record.attempt else ""

    def _notify_view(self, record: ContainerRecord) -> NotifyView | None:
        notify = self.deps.notify
        return notify.view(self.uid, record.container_name) if notify is not None else None

    async def _kill_unhealthy(
        self, container: Container, record: ContainerRecord, failure: ProbeFailure
    ) -> None:
        """A liveness or startup probe failed for good: stop the container (its probe's grace
        period, else the pod's); the next sync restarts it per restartPolicy, with back-off."""
        grace_s = failure.grace_s
        if grace_s is None:
            grace_s = self.pod.spec.termination_grace_period_s
        log.info(
            "container failed its probe, killing it",
            extra=kv(
                pod=self.pod.full_name,
                container=container.name,
                probe=failure.kind.value,
                error=failure.message,
            ),
        )
        self._event(
            "Killing",
            f"Container {container.name} failed {failure.kind.value} probe, will be restarted",
        )
        # Booked (and checkpointed) before the stop: an agent killed in between still
        # restarts it under OnFailure when the process exits 0 on SIGTERM.
        self.book.killed_unhealthy[container.name] = record.attempt
        self.deps.on_book_changed()
        await self._stop_app(record, grace_s, self._pod_ip_now)  # its preStop first
        self.wake()  # the next sync sees it exited and applies the restart policy

    def _restarts(self, exited: ContainerRecord) -> bool:
        """Whether an exited app container is restarted: by its exit code under the pod's
        policy, and always (but under Never) when the agent killed it as unhealthy."""
        policy = self.pod.spec.restart_policy
        if policy is not RestartPolicy.NEVER and (
            self.book.killed_unhealthy.get(exited.container_name) == exited.attempt
        ):
            return True
        exit_code = exited.exit_code if exited.exit_code is not None else 128
        return should_restart(policy, exit_code)

    def _learn_attempts(self, records: list[ContainerRecord]) -> None:
        changed = False
        for record in records:
            if record.is_sandbox:
                if record.attempt > self.book.sandbox_attempt:
                    self.book.sandbox_attempt = record.attempt
                    changed = True
            elif record.attempt > self.book.attempts.get(record.container_name, -1):
                self.book.attempts[record.container_name] = record.attempt
                changed = True
        if changed:
            self.deps.on_book_changed()

    async def _ensure_sandbox(
        self, records: list[ContainerRecord]
    ) -> tuple[ContainerRecord, list[ContainerRecord]]:
        runtime = self.deps.runtime
        sandboxes = sorted((r for r in records if r.is_sandbox), key=lambda r: r.attempt)
        running = [s for s in sandboxes if s.running]
        sandbox = running[-1] if running else None
        extra = [s for s in sandboxes if s is not sandbox]
        for record in extra:
            await runtime.remove_container(record.id)
        records = [r for r in records if r not in extra]
        if sandbox is not None:
            return sandbox, records

        # The pod's network namespace is gone: containers still running inside it are cut
        # off, so they are stopped and started again in the new sandbox without back-off.
        # Init containers, even exited ones, belonged to the lost sandbox: they all run again
        # in the new one, as Kubernetes does.
        apps = [r for r in records if not r.is_sandbox]
        orphaned = [r for r in apps if r.running or r.state is ContainerState.CREATED or r.is_init]
        if orphaned:
            await self._stop_and_remove(orphaned)
            records = [r for r in records if r not in orphaned]
            for record in orphaned:
                self._waiting.pop(record.container_name, None)
        self._sandbox_moved = {r.container_name for r in orphaned if not r.is_init}
        attempt = self.book.sandbox_attempt + 1
        await runtime.ensure_sandbox_image(self.deps.ctx.sandbox_image)
        spec = sandbox_spec(self.deps.ctx, self.pod, attempt)
        self.book.sandbox_attempt = attempt
        self.deps.on_book_changed()
        try:
            sandbox_id = await runtime.create_container(spec)
        except ContainerConflictError:
            # Created by an earlier incarnation that died before it could record it.
            found = [r for r in await runtime.list_containers(self.uid) if r.name == spec.name]
            if not found:
                raise
            sandbox_id = found[0].id
        crashpoints.hit("sandbox-created")
        await runtime.start_container(sandbox_id)
        fresh = [r for r in await runtime.list_containers(self.uid) if r.id == sandbox_id]
        if not fresh or not fresh[0].running:
            raise RuntimeOperationError(f"sandbox {spec.name} did not stay running")
        log.info("sandbox started", extra=kv(pod=self.pod.full_name, uid=self.uid, attempt=attempt))
        self._event("SandboxStarted", f"pod sandbox {spec.name} started")
        return fresh[0], records

    async def _ensure_volumes(self) -> None:
        empty_dirs = [v.name for v in self.pod.spec.volumes if v.empty_dir is not None]
        host_dirs = [
            v.host_path.path
            for v in self.pod.spec.volumes
            if v.host_path is not None and v.host_path.type == "DirectoryOrCreate"
        ]
        if not empty_dirs and not host_dirs:
            return
        base = pod_volume_dir(self.deps.ctx, self.uid)

        def make() -> None:
            # Modes set explicitly: the agent runs under umask 077 (agent.aio.private), and a
            # pod's volumes are as Kubernetes makes them whatever user its containers run as.
            if empty_dirs:
                base.mkdir(parents=True, exist_ok=True, mode=0o700)
            for name in empty_dirs:
                _make_dirs(base / name, EMPTY_DIR_MODE)
            for path in host_dirs:
                _make_dirs(Path(path), HOST_PATH_DIR_MODE)

        try:
            await self.deps.bridge.run(make)
        except OSError as exc:
            raise VolumeError(f"cannot prepare volumes of {self.pod.full_name}: {exc}") from exc

    async def _sync_init(
        self,
        records: list[ContainerRecord],
        sandbox: ContainerRecord,
        pod_ip: str,
        now: float,
    ) -> tuple[bool, float | None]:
        """Run the init containers in order, each to success; (initialized, seconds until a
        timer-driven resync). A failed one is retried per the pod's restartPolicy with the
        app containers' back-off (``_sync_container``); under ``Never`` the pod has failed.

        Completion is in the book (checkpointed) for the sandbox it happened in, so an agent
        restart never runs the init containers of a running pod again. Without the book (a
        checkpoint lost, or written just before the crash), the runtime is the evidence, as
        for kubelet: an app container running, or every init container's last run a success.
        """
        inits = self.pod.spec.init_containers
        if not inits or self.book.init_done_sandbox == sandbox.attempt:
            return True, None
        app_running = any(r.running for r in records if not r.is_sandbox and not r.is_init)
        for container in inits:
            mine = _attempts_of(records, container.name)
            if (mine and _succeeded(mine[-1])) or app_running:
                continue
            # The first init container that has not succeeded: started, restarted after its
            # back-off, or (Never) left failed. The next one waits for it.
            return False, await self._sync_container(container, mine, sandbox, pod_ip, now)
        self.book.init_done_sandbox = sandbox.attempt
        self.deps.on_book_changed()
        log.info(
            "pod initialized",
            extra=kv(pod=self.pod.full_name, uid=self.uid, sandbox_attempt=sandbox.attempt),
        )
        return True, None

    def _is_init(self, container: Container) -> bool:
        return any(c.name == container.name for c in self.pod.spec.init_containers)

    async def _sync_container(
        self,
        container: Container,
        mine: list[ContainerRecord],
        sandbox: ContainerRecord,
        pod_ip: str,
        now: float,
    ) -> float | None:
        latest = mine[-1] if mine else None
        name = container.name
        moved = name in self._sandbox_moved
        if latest is not None and latest.running:
            self._waiting.pop(name, None)
            failure = self.deps.prober.state(self.uid, latest.id).failure
            view = self._notify_view(latest)
            # The sd_notify watchdog is its liveness.
            if (
                failure is None
                and view is not None
                and view.attempt == latest.attempt
                and view.expired
            ):
                self._event(
                    "Unhealthy",
                    f"container {name}: sd_notify watchdog: {view.expired}",
                    warning=True,
                )
                failure = ProbeFailure(ProbeKind.LIVENESS, f"sd_notify watchdog: {view.expired}")
            if failure is not None:
                await self._kill_unhealthy(container, latest, failure)
            return None
        if latest is not None and latest.state is ContainerState.CREATED and not latest.error:
            # Created by an incarnation that died before starting it: start it now.
            return await self._start(container, latest.id, latest.attempt, now)

        if latest is not None and not moved:
            exit_code = latest.exit_code if latest.exit_code is not None else 128
            if not self._restarts(latest):
                self._waiting.pop(name, None)
                return None
            restart = self.book.restarts.get(name)
            exited_now = False
            if restart is None or restart.handled_attempt != latest.attempt:
                exited_now = True
                finished = latest.finished_at.timestamp() if latest.finished_at else now
                delay = self.deps.backoff.next_delay(
                    restart.delay_s if restart else None, _ran_for_s(latest)
                )
                restart = RestartState(delay, finished + delay, latest.attempt)
                self.book.restarts[name] = restart
                self.deps.on_book_changed()
                log.info(
                    "container exited",
                    extra=kv(
                        pod=self.pod.full_name,
                        container=name,
                        exit_code=exit_code,
                        attempt=latest.attempt,
                        restart_in_s=round(max(0.0, restart.not_before - now), 3),
                    ),
                )
            if now < restart.not_before:
                if exited_now:  # once per exit: repeats aggregate into the event's count
                    self._event(
                        "BackOff",
                        f"Back-off restarting failed container {name} in pod "
                        f"{self.pod.metadata.name}",
                        warning=True,
                    )
                self._waiting[name] = _Waiting(
                    "CrashLoopBackOff",
                    f"back-off {restart.delay_s:g}s restarting failed container={name} "
                    f"pod={self.pod.metadata.name}",
                )
                return restart.not_before - now
        waiting = self._waiting.get(name)
        if waiting is not None and now < waiting.retry_at:
            if waiting.reason == ERR_IMAGE_PULL:
                # kubelet: the attempt showed ErrImagePull; until the next one, back-off.
                waiting.reason = IMAGE_PULL_BACKOFF
                self._event("BackOff", f'Back-off pulling image "{container.image}"')
            return waiting.retry_at - now
        if container.lifecycle.pre_start and self.book.prestart_done.get(name) != sandbox.attempt:
            wait_s = await self._preconditions(container, sandbox, pod_ip, now)
            if wait_s is not None or self.book.prestart_done.get(name) != sandbox.attempt:
                return wait_s
        self._sandbox_moved.discard(name)
        return await self._create_and_start(container, sandbox, pod_ip, now)

    async def _preconditions(
        self, container: Container, sandbox: ContainerRecord, pod_ip: str, now: float
    ) -> float | None:
        """Step the container's preStart preconditions; passed → recorded in the book (the
        caller creates the container), else the seconds until the next step (None: never,
        under restartPolicy Never after a failure)."""
        name = container.name
        state = self._prestart.setdefault(name, _PreStart())
        if state.gave_up:
            return None
        if now < state.retry_at:
            return state.retry_at - now
        attempt = self.book.attempts.get(name, -1) + 1
        spec = app_spec(self.deps.ctx, self.pod, container, attempt, sandbox.id, pod_ip)
        if any(isinstance(h.action, ExecAction) for h in container.lifecycle.pre_start):
            # An exec check's helper runs the container's image: the pin, as every container
            # of the pod does (the first check pins it; a tag moved later changes nothing).
            # Before the run starts: a pull's time is not the preconditions' deadline.
            try:
                pin = await self._pinned_image(container)
            except ImagePullError as exc:
                return self._image_wait(container, exc, now)
            if pin is None:
                return None  # the pod is being deleted
            spec = replace(
                spec, image=pin.image_id, labels={**spec.labels, LABEL_IMAGE: pin.reference}
            )
        clock = self.deps.clock
        if state.run is None:
            state.run = PreconditionRun(container.lifecycle.pre_start, clock.monotonic())
            state.hook = -1
        target = HookTarget(self.pod, container, pod_ip, spec=spec)

        async def check(index: int, hook: PreStartHook) -> HandlerResult:
            # A check may take its whole timeout (an exec helper longer): a deletion of the
            # pod does not wait for it.
            result = await self._unless_deleted(self._hooks.check(target, index, hook))
            return result or HandlerResult.failed("the pod is being deleted")

        status = await state.run.step(clock.monotonic, check)
        if self.terminating:
            return None  # the next sync removes the pod; nothing to report
        if status.verdict is Verdict.PASSED:
            self._prestart.pop(name, None)
            self._waiting.pop(name, None)
            self.book.prestart_done[name] = sandbox.attempt
            self.deps.on_book_changed()
            self._event(
                "PreStartHookSucceeded", f"container {name}: every preStart precondition passed"
            )
            return None
        if status.verdict is Verdict.PENDING:
            self._waiting[name] = _Waiting("PreStartHookPending", status.message)
            if state.hook != status.hook:
                state.hook = status.hook
                self._event("PreStartHookPending", f"container {name}: {status.message}")
            return status.next_check_in_s
        state.run = None
        policy = self.pod.spec.restart_policy
        if policy is RestartPolicy.NEVER:
            state.gave_up = True
            message = status.message
            self._waiting[name] = _Waiting("PreStartHookFailed", message)
            self._event("PreStartHookFailed", f"container {name}: {message}", warning=True)
            return None
        state.delay_s = self.deps.backoff.next_delay(state.delay_s or None, 0.0)
        state.retry_at = now + state.delay_s
        message = f"{status.message} (back-off {state.delay_s:g}s)"
        self._waiting[name] = _Waiting("PreStartHookFailed", message, retry_at=state.retry_at)
        self._event("PreStartHookFailed", f"container {name}: {message}", warning=True)
        log.warning(
            "preStart precondition failed",
            extra=kv(pod=self.pod.full_name, container=name, error=status.message),
        )
        return state.delay_s

    async def _unless_deleted(self, hook: Coroutine[Any, Any, T]) -> T | None:
        """``hook``'s result, or None once the pod's deletion is asked for (the hook is then
        cancelled: a deletion never waits for a precondition's or a postStart's timeout, nor
        for an image pull)."""
        work = asyncio.ensure_future(hook)
        stop = asyncio.ensure_future(self._terminate_requested.wait())
        try:
            await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        return None if work.cancelled() else work.result()

    def _event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.deps.events.record(
            kind="Pod",
            name=self.pod.metadata.name,
            namespace=self.pod.metadata.namespace,
            uid=self.uid,
            reason=reason,
            message=message,
            warning=warning,
        )

    async def _create_and_start(
        self, container: Container, sandbox: ContainerRecord, pod_ip: str, now: float
    ) -> float | None:
        runtime = self.deps.runtime
        name = container.name
        attempt = self.book.attempts.get(name, -1) + 1
        try:
            pin = await self._pinned_image(container)
        except ImagePullError as exc:
            return self._image_wait(container, exc, now)
        if pin is None:
            return None  # the pod is being deleted: the next sync removes it
        make_spec = init_spec if self._is_init(container) else app_spec
        spec = make_spec(self.deps.ctx, self.pod, container, attempt, sandbox.id, pod_ip)
        # Created from the pinned id; the reference stays on it for people and for adoption.
        spec = replace(spec, image=pin.image_id, labels={**spec.labels, LABEL_IMAGE: pin.reference})
        self.book.attempts[name] = attempt
        self.deps.on_book_changed()
        if self.deps.notify is not None:  # the new process must say READY=1 itself
            self.deps.notify.begin(self.uid, name, attempt)
        crashpoints.hit("container-create")
        try:
            container_id = await runtime.create_container(spec)
        except ContainerConflictError:
            self.wake()  # an earlier incarnation created it: the next sync sees and adopts it
            return None
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            return self._retry_later(name, "CreateContainerError", str(exc), now)
        crashpoints.hit("container-created")
        return await self._start(container, container_id, attempt, now)

    async def _start(
        self, container: Container, container_id: str, attempt: int, now: float
    ) -> float | None:
        try:
            await self.deps.runtime.start_container(container_id)
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            # Counted like a crash (kubelet's RunContainerError): back-off, then a new attempt.
            await self.deps.runtime.remove_container(container_id)
            return self._retry_later(container.name, "RunContainerError", str(exc), now)
        crashpoints.hit("container-started")
        self._waiting.pop(container.name, None)
        log.info(
            "container started",
            extra=kv(pod=self.pod.full_name, container=container.name, attempt=attempt),
        )
        self._event(
            "Started" if attempt == 0 else "Restarted",
            f"container {container.name} started (attempt {attempt})",
        )
        post_start = container.lifecycle.post_start
        if post_start is not None:
            await self._post_start(container, container_id, post_start)
        return None

    async def _post_start(
        self, container: Container, container_id: str, action: LifecycleAction
    ) -> None:
        """Kubernetes: a postStart that fails kills the container, which then restarts per
        the pod's restartPolicy (its exit is judged like any other)."""
        target = HookTarget(self.pod, container, self._pod_ip_now, container_id=container_id)
        result = await self._unless_deleted(self._hooks.run(target, action, POST_START_TIMEOUT_S))
        if result is None:
            return  # the pod is being deleted: the next sync stops the container
        if result.ok:
            return
        self._event(
            "FailedPostStartHook",
            f"container {container.name}: postStart hook failed: {result.message}",
            warning=True,
        )
        log.warning(
            "postStart hook failed, killing the container",
            extra=kv(pod=self.pod.full_name, container=container.name, error=result.message),
        )
        await self.deps.runtime.stop_container(
            container_id, self.pod.spec.termination_grace_period_s
        )

    # -- images: pull policy and digest pinning ---------------------------------------------

    def _pull_reporter(self, reason: str, message: str, warning: bool) -> None:
        self._event(reason, message, warning=warning)

    async def _pinned_image(self, container: Container) -> PinnedImage | None:
        """The image ``container`` is created from: its pin, or (first creation for this
        spec) its reference made present per its pull policy, resolved and pinned; None when
        the pod's deletion was asked for during the pull (a pull that hangs never holds a
        deletion up; the pull goes on if another pod waits for it).

        The pull runs outside the reservations' lock (GC waits for no pull); the resolution
        and the reservation happen under it, so GC cannot delete the image in between."""
        name = container.name
        pin = self.book.images.get(name)
        if pin is not None and pin.reference == container.image:
            if await self.deps.runtime.inspect_image(pin.image_id) is not None:
                return pin
            return await self._pinned_image_gone(container, pin)
        present = await self._unless_deleted(
            self._images.ensure(
                container.image, container.image_pull_policy.value, self._pull_reporter
            )
        )
        if present is None:
            return None
        reservations = self.deps.image_reservations
        if reservations is None:
            record = await self.deps.runtime.inspect_image(container.image)
        else:
            async with reservations.pinning(self.uid) as reserved:
                record = await self.deps.runtime.inspect_image(container.image)
                if record is not None:
                    reserved.add(record.id)
        if record is None:  # removed right after it was made present (by hand)
            raise ImagePullError(
                f"image {container.image!r} vanished right after it was made present",
                reason=ERR_IMAGE_PULL,
                retry_in_s=self.deps.backoff.initial_s,
            )
        pin = PinnedImage.of(container.image, record)
        self.book.images[name] = pin
        self.deps.on_book_changed()
        log.info(
            "image pinned",
            extra=kv(
                pod=self.pod.full_name,
                container=name,
                image=container.image,
                id=pin.image_id,
                digest=pin.repo_digest,
            ),
        )
        return pin

    async def _pinned_image_gone(self, container: Container, pin: PinnedImage) -> PinnedImage:
        """The pinned image was removed (by hand: GC keeps reserved and used images): pulled
        again by its repo digest, which names the same content, or the pod waits until its
        spec changes (a re-apply resolves afresh) — never the tag's image of today."""
        if pin.repo_digest:
            record = await self._images.ensure(
                pin.repo_digest, container.image_pull_policy.value, self._pull_reporter
            )
            if record.id == pin.image_id:
                return pin
        raise ImagePullError(
            f"pinned image {pin.image_id} of {container.image!r} is no longer present and "
            "cannot be pulled by digest; re-apply the pod to resolve its image afresh",
            reason=ERR_IMAGE_PULL,
            retry_in_s=self.deps.backoff.max_s,
        )

    def _image_wait(self, container: Container, exc: ImagePullError, now: float) -> float | None:
        """The container waits with the pull's reason (its events were reported already)."""
        name = container.name
        if exc.retry_in_s is None:
            if exc.reason == ERR_IMAGE_NEVER_PULL:
                # The image may be loaded by hand (docker load): look again with back-off.
                previous = self._waiting.get(name)
                delay = self.deps.backoff.next_delay(previous.delay_s if previous else None, 0.0)
                self._waiting[name] = _Waiting(exc.reason, exc.message, now + delay, delay)
                return delay
            # InvalidImageName: nothing changes until the spec does.
            self._waiting[name] = _Waiting(exc.reason, exc.message, math.inf)
            return None
        retry_s = exc.retry_in_s
        self._waiting[name] = _Waiting(exc.reason, exc.message, now + retry_s, retry_s)
        if exc.reason == ERR_IMAGE_PULL:
            return min(retry_s, ERR_IMAGE_PULL_SHOWN_S)
        return retry_s

    async def _learn_pins(self, records: list[ContainerRecord]) -> None:
        """The pins the book holds reserved against image GC (once per worker: after an
        agent restart before anything is created), and pins the book lost learnt from the
        runtime: a container of this spec made from an id, its reference on a label (an
        agent killed between a create and the checkpoint's write)."""
        learnt = False
        for record in records:
            name = record.container_name
            reference = record.labels.get(LABEL_IMAGE, "")
            container = self.pod.container(name)
            if (
                record.is_sandbox
                or name in self.book.images
                or record.pod_hash != self.pod.spec_hash
                or container is None
                or reference != container.image
                or not record.image_id
            ):
                continue
            found = await self.deps.runtime.inspect_image(record.image_id)
            digests = found.repo_digests if found is not None else ()
            self.book.images[name] = PinnedImage.of(
                reference, ImageRecord(id=record.image_id, repo_digests=digests)
            )
            learnt = True
        if learnt:
            self.deps.on_book_changed()
        reservations = self.deps.image_reservations
        if reservations is not None and (learnt or not self._pins_reserved):
            self._pins_reserved = True
            await reservations.reserve(self.uid, [p.image_id for p in self.book.images.values()])

    def _status_image_id(self, name: str, current: ContainerRecord | None) -> str:
        """``imageID`` of a container: what it runs, named by the pin's digest when the pin
        is what it runs."""
        if current is None:
            return ""
        pin = self.book.images.get(name)
        if pin is not None and pin.image_id == current.image_id:
            return pin.status_image_id()
        return f"docker://{current.image_id}" if current.image_id else ""

    def _retry_later(self, name: str, reason: str, message: str, now: float) -> float:
        previous = self._waiting.get(name)
        delay = self.deps.backoff.next_delay(previous.delay_s if previous else None, 0.0)
        self._waiting[name] = _Waiting(reason, message, retry_at=now + delay, delay_s=delay)
        log.warning(
            "container cannot start",
            extra=kv(
                pod=self.pod.full_name, container=name, reason=reason, error=message, retry_s=delay
            ),
        )
        self._event(reason, message, warning=True)
        return delay

    async def _stop_and_remove(self, records: list[ContainerRecord]) -> None:
        runtime = self.deps.runtime
        grace_s = self.pod.spec.termination_grace_period_s
        if self.terminating and self._deletion_grace_s is not None:
            grace_s = self._deletion_grace_s
        apps = [r for r in records if not r.is_sandbox]
        sandboxes = [r for r in records if r.is_sandbox]
        running = [r for r in sandboxes if r.running]
        pod_ip = self._pod_ip(running[-1]) if running else self._pod_ip_now
        await asyncio.gather(*(self._stop_app(r, grace_s, pod_ip) for r in apps if r.running))
        crashpoints.hit("containers-stopped")
        await asyncio.gather(*(runtime.remove_container(r.id) for r in apps))
        crashpoints.hit("containers-removed")
        for record in sandboxes:
            await runtime.remove_container(record.id)

    async def _stop_app(self, record: ContainerRecord, grace_s: int, pod_ip: str) -> None:
        """Stop a running container, its preStop hook first (Kubernetes): the hook counts
        against the grace period, and whatever it leaves (at least PRE_STOP_MIN_GRACE_S) is
        SIGTERM's. The hook is the one of the spec the container was made from (the current
        one, or the one it replaces)."""
        specs = [p for p in (self.pod, self._replaced) if p is not None]
        made_from = next((p for p in specs if p.spec_hash == record.pod_hash), None)
        container = made_from.container(record.container_name) if made_from else None
        action = container.lifecycle.pre_stop if container is not None else None
        if container is not None and action is not None:
            clock = self.deps.clock
            started = clock.monotonic()
            target = HookTarget(self.pod, container, pod_ip, container_id=record.id)
            result = await self._hooks.run(target, action, float(grace_s))
            if not result.ok:
                self._event(
                    "FailedPreStopHook",
                    f"container {container.name}: preStop hook failed: {result.message}",
                    warning=True,
                )
            used_s = clock.monotonic() - started
            grace_s = max(PRE_STOP_MIN_GRACE_S, math.ceil(grace_s - used_s))
        await self.deps.runtime.stop_container(record.id, grace_s)

    def _pod_ip(self, sandbox: ContainerRecord) -> str:
        return self.deps.ctx.host_ip if self.pod.spec.host_network else sandbox.ip_address

    async def _teardown(self, records: list[ContainerRecord]) -> None:
        self.deps.prober.forget_pod(self.uid)
        if self.deps.notify is not None:
            await self.deps.notify.close(self.uid)
        await self._stop_and_remove(records)
        if self.deps.image_reservations is not None:
            self.deps.image_reservations.release(self.uid)
        crashpoints.hit("pod-torn-down")
        base = pod_volume_dir(self.deps.ctx, self.uid).parent
        await self.deps.bridge.run(shutil.rmtree, base, True)
        self._records = []
        self._torn_down = True
        log.info("pod removed", extra=kv(pod=self.pod.full_name, uid=self.uid))
        self._event("Killed", f"pod {self.pod.full_name} removed from the node")

    # -- status ----------------------------------------------------------------------------

    def _report_failure(self, exc: AgentError, retry_s: float) -> None:
        """The last status stays (the containers did not change because a sync failed) but
        says why it may be stale; the next successful sync replaces it whole."""
        reason = "RuntimeUnavailable" if isinstance(exc, RuntimeUnavailableError) else "SyncError"
        self.status = {
            **(self.status or {"phase": PHASE_PENDING}),
            "reason": reason,
            "message": f"{exc} (retrying in {retry_s:g}s)",
        }

    def _refresh_status(self, pod_ip: str) -> None:
        views = []
        for container in self.pod.spec.containers:
            mine = _attempts_of(self._records, container.name)
            current = mine[-1] if mine else None
            previous = mine[-2] if len(mine) > 1 else None
            waiting = self._waiting.get(container.name)
            gave_up = (state := self._prestart.get(container.name)) is not None and state.gave_up
            will_restart = not gave_up and (
                current is None or current.running or self._restarts(current)
            )
            started, ready = self._readiness(current)
            views.append(
                ContainerView(
                    name=container.name,
                    image=container.image,
                    image_id=self._status_image_id(container.name, current),
                    current=current,
                    previous=previous,
                    restart_count=max(0, current.attempt) if current is not None else 0,
                    waiting_reason=waiting.reason if waiting else None,
                    waiting_message=waiting.message if waiting else "",
                    will_restart=will_restart,
                    started=started,
                    ready=ready,
                    notify_status=self._notify_status(current),
                )
            )
        start = self.book.start_time
        self.status = pod_status(
            self.pod,
            views,
            host_ip=self.deps.ctx.host_ip,
            pod_ip=pod_ip,
            start_time=datetime.fromtimestamp(start, UTC) if start is not None else None,
            previous=self.status,
            now=datetime.fromtimestamp(self.deps.clock.time(), UTC),
            init_views=self._init_views(),
            initialized=self._initialized,
        )

    def _init_views(self) -> list[ContainerView]:
        views = []
        for container in self.pod.spec.init_containers:
            mine = _attempts_of(self._records, container.name)
            current = mine[-1] if mine else None
            waiting = self._waiting.get(container.name)
            views.append(
                ContainerView(
                    name=container.name,
                    image=container.image,
                    image_id=self._status_image_id(container.name, current),
                    current=current,
                    previous=mine[-2] if len(mine) > 1 else None,
                    restart_count=max(0, current.attempt) if current is not None else 0,
                    waiting_reason=waiting.reason if waiting else None,
                    waiting_message=waiting.message if waiting else "",
                    will_restart=self.pod.spec.restart_policy is not RestartPolicy.NEVER,
                )
            )
        return views

    def _readiness(self, current: ContainerRecord | None) -> tuple[bool, bool]:
        """(started, ready) of an app container while it runs: the one place where what
        decides readiness (its probes) is merged."""
        if current is None or not current.running:
            return False, False
        state = self.deps.prober.state(self.uid, current.id)
        started, ready = state.started, state.ready
        # sd_notify: READY=1 of this very attempt, and it still holds (not reloading,
        # stopping, or past its watchdog).
        view = self._notify_view(current)
        if view is not None:
            mine = view.attempt == current.attempt
            started = started and mine and view.started
            ready = ready and mine and view.ready
        return started, ready

    def restart_counts(self) -> dict[str, int]:
        return {s["name"]: int(s["restartCount"]) for s in self.status.get("containerStatuses", [])}
