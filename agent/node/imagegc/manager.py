"""The image GC manager: observes images and disk, keeps the last-used record, runs image GC
(periodically, at once when disk pressure appears, or when asked) and the node-wide dead
container bound, and reports the ``DiskPressure`` condition.

A run: observe (images, every container's image, the image filesystem, asked at once), refresh
and persist the last-used record (the write overlapping the deletions), plan
(``planner.plan_gc``), then delete the planned images in batches, each under the reservations
lock after checking the reservations again — so a pod admitted on an image between the plan
and its deletion keeps it (the ``imagegc-before-delete`` hold point lets a test stand exactly
there). Engine refusals (a container someone else just created) are
counted as refusals, not errors. Runs never overlap; ``node-agent images gc`` waits for the one
in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from agent.aio.bridge import ThreadBridge
from agent.aio.clock import Clock
from agent.aio.logs import kv
from agent.aio.tasks import TaskScope
from agent.errors import AgentError, ImageConflictError, RuntimeUnavailableError
from agent.node import crashpoints
from agent.node.imagegc.lastused import LastUsedStore
from agent.node.imagegc.metrics import ImageGCMetrics
from agent.node.imagegc.planner import (
    FsUsage,
    GCPlan,
    GCPolicy,
    Keep,
    Usage,
    Verdict,
    dead_containers_to_remove,
    plan_gc,
    refresh_usage,
)
from agent.node.imagegc.pressure import NO_PRESSURE, PressurePolicy, PressureState, judge
from agent.node.imagegc.reservations import ImageReservations
from agent.node.runtime.base import ImageRecord, Runtime

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
REPLAN_PASSES = 3  # sizes overlap (shared layers): measure again, plan again, at most this often
DELETE_BATCH = 16  # deletions under the lock at once: what an admission may wait for


@dataclass(frozen=True, slots=True)
class GCSettings:
    policy: GCPolicy
    period_s: float = 300.0
    disk_check_interval_s: float = 10.0
    dead_per_container: int = 1
    dead_total: int | None = 100
    pressure: PressurePolicy = field(default_factory=PressurePolicy)


@dataclass(slots=True)
class GCReport:
    """One run (or dry run): the plan's verdicts and what became of each deletion."""

    dry_run: bool
    usage_before: FsUsage
    plan: GCPlan
    results: dict[str, str] = field(default_factory=dict)  # image id -> deleted / refused: why
    usage_after: FsUsage | None = None

    def to_json(self) -> dict[str, Any]:
        def fs(u: FsUsage | None) -> dict[str, Any] | None:
            if u is None:
                return None
            return {
                "capacityBytes": u.capacity_bytes,
                "usedBytes": u.used_bytes,
                "percent": round(u.percent, 2),
            }

        return {
            "dryRun": self.dry_run,
            "triggered": self.plan.triggered,
            "bytesToFree": self.plan.bytes_to_free,
            "usageBefore": fs(self.usage_before),
            "usageAfter": fs(self.usage_after),
            "freedBytes": (
                max(0, self.usage_before.used_bytes - self.usage_after.used_bytes)
                if self.usage_after is not None
                else 0
            ),
            "images": [
                _verdict_json(v, self.results.get(v.image.id, "")) for v in self.plan.verdicts
            ],
        }


def _verdict_json(v: Verdict, result: str) -> dict[str, Any]:
    return {
        "id": v.image.id,
        "tags": list(v.image.repo_tags),
        "sizeBytes": v.image.size_bytes,
        "lastUsed": datetime.fromtimestamp(v.last_used, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "delete": v.delete,
        "reason": v.reason,
        "detail": v.detail,
        "result": result,
    }


def _state_fs_available_percent(path: Path) -> float:
    """Free space of the state dir's filesystem, percent of its size (blocking: statvfs)."""
    disk = psutil.disk_usage(str(path))
    return 100.0 * disk.free / disk.total if disk.total else 100.0


class ImageGC:
    name = "image-gc"

    def __init__(
        self,
        *,
        runtime: Runtime,
        reservations: ImageReservations,
        store: LastUsedStore,
        bridge: ThreadBridge,
        settings: GCSettings,
        clock: Clock,
        metrics: ImageGCMetrics,
        tasks: TaskScope,
        state_dir: Path,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._runtime = runtime
        self._reservations = reservations
        self._store = store
        self._bridge = bridge
        self.settings = settings
        self._clock = clock
        self._metrics = metrics
        self._tasks = tasks
        self._state_dir = state_dir
        self._sleep = sleep
        self._usage: dict[str, Usage] = {}
        self._run_lock = asyncio.Lock()
        self._persist_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        self.pressure: PressureState = NO_PRESSURE

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._usage = await self._bridge.run(self._store.load)
        await self._tasks.start()
        self._tasks.spawn("image-gc", self._gc_loop, eternal=True)
        self._tasks.spawn("disk-pressure", self._disk_loop, eternal=True)

    async def stop(self) -> None:
        await self._tasks.stop()

    def kick(self) -> None:
        """Run GC now (disk pressure seen) instead of at the end of the period."""
        self._kick.set()

    def condition(self) -> dict[str, str]:
        return self.pressure.condition()

    @property
    def last_used(self) -> dict[str, Usage]:
        return dict(self._usage)

    # -- observing and planning -----------------------------------------------------------------

    async def _observe(self) -> tuple[list[ImageRecord], dict[str, str], FsUsage, str, bool]:
        """Images, the images containers use, the disk and the sandbox image's id, asked of
        the engine at once (an image that becomes used meanwhile is refused by the engine at
        deletion); the last-used record refreshed in memory. The last value says whether the
        record changed: the caller persists it (``_persist``)."""
        name = self.settings.policy.sandbox_image
        images, in_use, usage, sandbox = await asyncio.gather(
            self._runtime.list_images(),
            self._runtime.image_ids_in_use(),
            self._runtime.image_fs_usage(),
            self._runtime.inspect_image(name) if name else _nothing(),
        )
        fs = FsUsage.of(usage)
        refreshed = refresh_usage(self._usage, images, in_use, self._clock.time())
        changed = refreshed != self._usage
        self._usage = refreshed
        self._metrics.images.set(len(images))
        self._metrics.fs_used_bytes.set(fs.used_bytes)
        self._metrics.fs_capacity_bytes.set(fs.capacity_bytes)
        return images, in_use, fs, sandbox.id if sandbox is not None else "", changed

    async def _persist(self) -> None:
        """Write the last-used record as it is when the write's turn comes (writes queue on a
        lock, so the last one written holds the newest record whatever order they started in).
        A failed write is logged: the record stays in memory, the next observation writes it."""
        async with self._persist_lock:
            try:
                await self._bridge.run(self._store.save, dict(self._usage))
            except OSError as exc:
                log.warning("image usage record not written", extra=kv(error=str(exc)))

    def _reserved(self) -> dict[str, str]:
        return {
            image_id: ",".join(self._reservations.holders_of(image_id))
            for image_id in self._reservations.reserved()
        }

    async def plan(self, *, force: bool = False) -> GCPlan:
        plan, changed = await self._plan(force)
        if changed:
            await self._persist()
        return plan

    async def _plan(self, force: bool) -> tuple[GCPlan, bool]:
        """The plan, and whether the observation changed the last-used record."""
        images, in_use, fs, sandbox_id, changed = await self._observe()
        plan = plan_gc(
            images=images,
            in_use=in_use,
            reserved=self._reserved(),
            usage=self._usage,
            fs=fs,
            now=self._clock.time(),
            policy=self.settings.policy,
            sandbox_id=sandbox_id,
            force=force,
        )
        return plan, changed

    # -- running --------------------------------------------------------------------------------

    async def collect(self, *, dry_run: bool = False, force: bool = False) -> GCReport:
        """One GC run (``dry_run``: the plan only). ``force``: as if usage were over the high
        threshold (an operator's ``images gc``)."""
        async with self._run_lock:
            plan, changed = await self._plan(force)
            report = GCReport(dry_run, plan.usage, plan)
            if dry_run:
                if changed:
                    await self._persist()
                return report
            # The record's write overlaps the deletions (its fsyncs were up to a tenth of a
            # run under load, BENCHMARKS.md "image GC"); the run ends after it.
            saving = asyncio.ensure_future(self._persist()) if changed else None
            try:
                await self._run(plan, report, force)
            finally:
                if saving is not None:
                    await saving
            return report

    async def _run(self, plan: GCPlan, report: GCReport, force: bool) -> None:
        """The deletions of ``plan`` (and of the re-plans while usage stays over the low
        threshold), into ``report``."""
        self._metrics.runs.inc()
        started = time.monotonic()
        self._log_plan(plan)
        for _ in range(REPLAN_PASSES):
            if not plan.deletions:
                break
            await crashpoints.hold("imagegc-before-delete")
            await self._delete(plan.deletions, report)
            after = FsUsage.of(await self._runtime.image_fs_usage())
            report.usage_after = after
            over = after.percent > self.settings.policy.low_percent
            more = any(v.reason == Keep.NOT_NEEDED for v in plan.verdicts)
            if not over or not more or not (plan.triggered or force):
                break  # under the threshold, or nothing else may go
            plan = await self.plan(force=force)
            report.plan = GCPlan(
                report.usage_before,
                report.plan.triggered,
                report.plan.bytes_to_free,
                _merge(report.plan.verdicts, plan.verdicts, report.results),
            )
        if report.usage_after is None:
            report.usage_after = FsUsage.of(await self._runtime.image_fs_usage())
        freed = max(0, report.usage_before.used_bytes - report.usage_after.used_bytes)
        self._metrics.freed_bytes.inc(freed)
        deleted = sum(1 for r in report.results.values() if r == "deleted")
        log.info(
            "image gc done",
            extra=kv(
                deleted=deleted,
                freed_bytes=freed,
                usage_before=f"{report.usage_before.percent:.1f}%",
                usage_after=f"{report.usage_after.percent:.1f}%",
                seconds=round(time.monotonic() - started, 3),
            ),
        )

    def _log_plan(self, plan: GCPlan) -> None:
        loud = plan.triggered or any(v.delete for v in plan.verdicts)
        for v in plan.verdicts:
            if v.delete:
                continue
            if v.reason != Keep.NOT_NEEDED and loud:
                self._metrics.refused.labels(reason=v.reason).inc()
            (log.info if loud else log.debug)(
                "image kept",
                extra=kv(image=v.name, id=v.image.id[:19], reason=v.reason, detail=v.detail),
            )

    async def _delete(self, deletions: tuple[Verdict, ...], report: GCReport) -> None:
        """Delete in batches of DELETE_BATCH, each under the reservations lock after checking
        the reservations again; a batch's deletions run concurrently (the engine serialises
        little of them), so an admission waits for one batch at most."""
        pending = [v for v in deletions if v.image.id not in report.results]
        for first in range(0, len(pending), DELETE_BATCH):
            batch = pending[first : first + DELETE_BATCH]
            async with self._reservations.deleting() as reserved:
                go = []
                for v in batch:
                    if v.image.id in reserved:
                        holders = ",".join(self._reservations.holders_of(v.image.id))
                        self._refuse(report, v, Keep.RESERVED, f"reserved by pod {holders}")
                    else:
                        go.append(v)
                await asyncio.gather(*(self._delete_one(v, report) for v in go))
        await self._persist()

    async def _delete_one(self, v: Verdict, report: GCReport) -> None:
        try:
            await self._remove(v.image)
        except ImageConflictError as exc:
            self._refuse(report, v, Keep.IN_USE, str(exc))
            return
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            self._refuse(report, v, "error", str(exc))
            return
        report.results[v.image.id] = "deleted"
        self._usage.pop(v.image.id, None)
        self._metrics.deleted.inc()
        log.info(
            "image deleted",
            extra=kv(
                image=v.name,
                id=v.image.id[:19],
                size_bytes=v.image.size_bytes,
                reason=v.reason,
                detail=v.detail,
            ),
        )

    def _refuse(self, report: GCReport, v: Verdict, reason: str, detail: str) -> None:
        report.results[v.image.id] = f"refused: {reason}: {detail}"
        self._metrics.refused.labels(reason=reason).inc()
        log.info(
            "image not deleted",
            extra=kv(image=v.name, id=v.image.id[:19], reason=reason, detail=detail),
        )

    async def _remove(self, image: ImageRecord) -> None:
        """By id: that image, whatever its tags point to now (a tag moved since the plan
        is not followed); one call in the common case. Refused while several references
        name it: then each reference is untagged, the last one removing the image. Never
        forced: forcing would untag an image a stopped container of someone else's uses."""
        try:
            await self._runtime.remove_image(image.id)
            return
        except ImageConflictError:
            current = await self._runtime.inspect_image(image.id)
            if current is None:
                return
            if len(current.repo_tags) < 2:
                raise  # in use: a container someone just created
        for tag in current.repo_tags:
            await self._runtime.remove_image(tag)

    async def collect_containers(self) -> int:
        """The node-wide bound on terminated containers (the per-container one is the pod
        workers'; applying it here too is harmless)."""
        records = await self._runtime.list_containers()
        doomed = dead_containers_to_remove(
            records,
            per_container=self.settings.dead_per_container,
            total=self.settings.dead_total,
        )
        for record in doomed:
            await self._runtime.remove_container(record.id)
            self._metrics.dead_containers_removed.inc()
            log.info(
                "dead container removed",
                extra=kv(
                    container=record.name,
                    pod_uid=record.pod_uid,
                    attempt=record.attempt,
                    bound=f"{self.settings.dead_per_container} per container, "
                    f"{self.settings.dead_total} on the node",
                ),
            )
        return len(doomed)

    # -- loops ----------------------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.settings.period_s)
            self._kick.clear()
            try:
                await self.collect_containers()
                await self.collect()
            except AgentError as exc:
                log.warning("image gc run failed", extra=kv(error=str(exc)))

    async def _disk_loop(self) -> None:
        while True:
            try:
                await self.check_disk()
            except AgentError as exc:
                log.debug("disk check failed", extra=kv(error=str(exc)))
            await self._sleep(self.settings.disk_check_interval_s)

    async def check_disk(self) -> PressureState:
        fs = FsUsage.of(await self._runtime.image_fs_usage())
        self._metrics.fs_used_bytes.set(fs.used_bytes)
        self._metrics.fs_capacity_bytes.set(fs.capacity_bytes)
        image_avail = 100.0 - fs.percent if fs.capacity_bytes else 100.0
        node_avail = await self._bridge.run(_state_fs_available_percent, self._state_dir)
        was = self.pressure
        self.pressure = judge(was.pressure, image_avail, node_avail, self.settings.pressure)
        self._metrics.disk_pressure.set(1 if self.pressure.pressure else 0)
        if self.pressure.pressure != was.pressure:
            (log.warning if self.pressure.pressure else log.info)(
                "disk pressure " + ("set" if self.pressure.pressure else "cleared"),
                extra=kv(
                    message=self.pressure.message,
                    imagefs_available=f"{image_avail:.1f}%",
                    nodefs_available=f"{node_avail:.1f}%",
                ),
            )
        if self.pressure.pressure and not was.pressure:
            self.kick()
        return self.pressure


async def _nothing() -> None:
    return None


def _merge(
    first: tuple[Verdict, ...], second: tuple[Verdict, ...], results: dict[str, str]
) -> tuple[Verdict, ...]:
    """The report's verdicts after a second pass: what the first deleted, then the second's."""
    done = [v for v in first if v.image.id in results]
    seen = {v.image.id for v in done}
    return (*done, *(v for v in second if v.image.id not in seen))
