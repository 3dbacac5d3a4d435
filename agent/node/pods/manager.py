"""The pod manager: desired pods by source, their workers, adoption and the checkpoint.

Sources (the manifest directory now, the master later) hand over their complete set of pods;
the manager diffs it against what it runs, starts a worker per new pod, replaces changed ones,
terminates removed ones, and writes desired state plus worker bookkeeping to the checkpoint
(coalesced, at most one write per ``CHECKPOINT_MIN_INTERVAL_S``).

``start()`` restores the desired pods from the checkpoint (or, when it is lost, from the
manifests our sandboxes carry) and starts their workers, which adopt the containers they find.
Containers of any other pod of this node are removed only later, by
``adopt_found_at_start()``, once every source has had its first say. ``stop()`` cancels the
workers (their containers keep running) and writes the checkpoint a last time. Every worker
runs in the manager's own TaskScope.

The checkpoint's reads and writes run on a bridge of their own (``bridge``, one thread, built
by the composition root), not on the runtime's: a cancelled worker abandons its wait on a
Docker call, but the call goes on in its thread (a stop with its grace period, up to a minute),
and the last write of ``stop()`` must not queue behind those calls past the stop step's
time-out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.aio.tasks import TaskScope
from agent.errors import CheckpointError, ManifestError
from agent.manifest import parse_pod
from agent.node import crashpoints
from agent.node.health.metrics import NodeMetrics
from agent.node.pods.admission import ADMIT_ALL, Admission, Rejection
from agent.node.pods.checkpoint import CheckpointStore
from agent.node.pods.worker import PodWorker, WorkerBook, WorkerDeps
from agent.node.runtime.base import ContainerRecord, Runtime
from agent.types import (
    LABEL_POD_MANIFEST,
    LABEL_POD_SOURCE,
    ObjectMeta,
    Pod,
    PodSpec,
)

log = logging.getLogger(__name__)

CHECKPOINT_MIN_INTERVAL_S = 0.2
CHECKPOINT_RETRY_S = 5.0
CHECKPOINT_FORMAT = 1
PHASE_FAILED = "Failed"


@dataclass(frozen=True, slots=True)
class RejectedPod:
    """A pod a source wants that this node's admission policy refuses: it never runs, and it
    is listed ``Failed`` (reason and message from the rejection) until its source drops it."""

    pod: Pod
    rejection: Rejection

    def status(self) -> dict[str, Any]:
        return {
            "phase": PHASE_FAILED,
            "reason": self.rejection.reason,
            "message": self.rejection.message,
        }


class PodManager:
    name = "pods"

    def __init__(
        self,
        *,
        node_name: str,
        make_deps: Callable[[PodManager], WorkerDeps],
        runtime: Runtime,
        checkpoint: CheckpointStore,
        bridge: ThreadBridge,
        metrics: NodeMetrics,
        tasks: TaskScope,
        admission: Admission = ADMIT_ALL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.node_name = node_name
        self._admission = admission
        self._sleep = sleep
        self._runtime = runtime
        self._checkpoint = checkpoint
        self._checkpoint_bridge = bridge
        self._metrics = metrics
        self._tasks = tasks
        self._deps = make_deps(self)
        self.workers: dict[str, PodWorker] = {}
        self.rejected: dict[str, RejectedPod] = {}
        self._found_at_start: list[ContainerRecord] = []
        self._restored = False  # until then the checkpoint on disk is the only desired state
        self._dirty = asyncio.Event()
        self.checkpoint_error = ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._tasks.start()
        restored = await self.load_checkpoint()
        records = await self._runtime.list_containers()
        books: dict[str, WorkerBook] = {}
        if restored is None:
            pods = self.pods_from_runtime(records)
            log.info("desired state rebuilt from the runtime", extra=kv(pods=len(pods)))
        else:
            pods, books = restored
            log.info("desired state restored from the checkpoint", extra=kv(pods=len(pods)))
        self.restore(pods, books)
        self._restored = True
        self._found_at_start = records
        self._tasks.spawn("checkpoint", self._checkpoint_loop, eternal=True)

    async def stop(self) -> None:
        """Cancel the workers (containers keep running) and save the checkpoint — only once
        it was restored: stopped before that (say, while the runtime was down), the manager
        knows no pods, and writing that down would make the next start remove them all."""
        await self._tasks.stop()
        if self._restored:
            await self.save_now()

    @property
    def count(self) -> int:
        return len(self.workers)

    def _spawn(self, worker: PodWorker) -> None:
        self.workers[worker.uid] = worker
        self._tasks.spawn(f"pod-worker:{worker.pod.full_name}", lambda: self._run_worker(worker))

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        finally:
            if worker.terminating and self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
                self.mark_dirty()

    # -- restore and adopt -----------------------------------------------------------------

    async def load_checkpoint(self) -> tuple[list[Pod], dict[str, WorkerBook]] | None:
        """Desired pods and bookkeeping from disk; None when absent or corrupt."""
        try:
            data = await self._checkpoint_bridge.run(self._checkpoint.load)
        except CheckpointError as exc:
            log.error(
                "checkpoint unusable, rebuilding desired state from the runtime",
                extra=kv(error=str(exc)),
            )
            return None
        if data is None:
            return None
        pods: list[Pod] = []
        books: dict[str, WorkerBook] = {}
        for uid, entry in dict(data.get("pods") or {}).items():
            try:
                pod = parse_pod(entry["manifest"], source=str(entry.get("source", "api")))
            except (ManifestError, KeyError, TypeError, ValueError) as exc:
                log.error("checkpointed pod skipped", extra=kv(uid=uid, error=str(exc)))
                continue
            try:
                books[uid] = WorkerBook.from_json(entry.get("book") or {})
            except ValueError as exc:
                # The pod is still desired: skipping it would remove its running containers as
                # strays. A fresh book relearns the attempt numbers from the containers' labels;
                # only the restart back-off starts over.
                log.error(
                    "checkpointed worker book unusable, pod kept with a fresh one",
                    extra=kv(pod=pod.full_name, uid=uid, error=str(exc)),
                )
            pods.append(pod)
        return pods, books

    @staticmethod
    def pods_from_runtime(records: Iterable[ContainerRecord]) -> list[Pod]:
        """Desired pods rebuilt from the manifests our sandboxes carry (checkpoint lost)."""
        pods: dict[str, Pod] = {}
        for record in records:
            raw = record.labels.get(LABEL_POD_MANIFEST)
            if not record.is_sandbox or not raw or record.pod_uid in pods:
                continue
            try:
                source = record.labels.get(LABEL_POD_SOURCE, "api")
                pods[record.pod_uid] = parse_pod(json.loads(raw), source=source)
            except (ManifestError, ValueError) as exc:
                log.warning(
                    "sandbox manifest unusable", extra=kv(container=record.name, error=str(exc))
                )
        return list(pods.values())

    def restore(self, pods: Iterable[Pod], books: dict[str, WorkerBook]) -> None:
        """Workers for ``pods`` — those the admission policy still admits (it may have been
        narrowed since they were checkpointed: the others' containers are then strays)."""
        for pod in self._admit(pods):
            if pod.uid not in self.workers:
                self._spawn(PodWorker(pod, self._deps, books.get(pod.uid)))

    def _admit(self, pods: Iterable[Pod]) -> list[Pod]:
        """The pods the policy admits; the others are recorded as rejected (an event when a
        pod, its spec or the reason is new)."""
        admitted = []
        for pod in pods:
            rejection = self._admission.check(pod)
            if rejection is None:
                self.rejected.pop(pod.uid, None)
                admitted.append(pod)
                continue
            known = self.rejected.get(pod.uid)
            self.rejected[pod.uid] = RejectedPod(pod, rejection)
            if known is not None and known.pod.spec_hash == pod.spec_hash:
                continue
            log.warning(
                "pod refused by the node's admission policy",
                extra=kv(pod=pod.full_name, uid=pod.uid, rule=rejection.rule),
            )
            self._deps.events.record(
                kind="Pod",
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                reason=rejection.reason,
                message=rejection.message,
                warning=True,
                uid=pod.uid,
            )
        return admitted

    def adopt_found_at_start(self) -> None:
        """Remove the containers found at start whose pod no source wants (call once every
        source has had its first say)."""
        records, self._found_at_start = self._found_at_start, []
        self.adopt(records)

    def adopt(self, records: Iterable[ContainerRecord]) -> None:
        """Start teardown workers for containers of pods that are not desired."""
        strays: dict[str, list[ContainerRecord]] = {}
        for record in records:
            if record.pod_uid not in self.workers:
                strays.setdefault(record.pod_uid, []).append(record)
        for uid, found in strays.items():
            record = found[0]
            log.info(
                "removing containers of a pod that is no longer desired",
                extra=kv(pod=f"{record.pod_namespace}/{record.pod_name}", uid=uid),
            )
            # The sandbox's manifest gives the pod's own grace period for the teardown.
            known = self.pods_from_runtime(found)
            pod = known[0] if known else _placeholder_pod(record)
            worker = PodWorker(pod, self._deps)
            worker.terminating = True
            self._spawn(worker)

    # -- sources ---------------------------------------------------------------------------

    def pods_of_source(self, prefix: str) -> dict[str, Pod]:
        """The pods of a source this node holds: running, and rejected by admission."""
        rejected = {
            uid: r.pod for uid, r in self.rejected.items() if r.pod.source.startswith(prefix)
        }
        return {**rejected, **self._running_of_source(prefix)}

    def _running_of_source(self, prefix: str) -> dict[str, Pod]:
        return {
            uid: w.pod
            for uid, w in self.workers.items()
            if not w.terminating and w.pod.source.startswith(prefix)
        }

    def apply_source(
        self,
        prefix: str,
        pods: Iterable[Pod],
        *,
        deletion_grace_s: Mapping[str, int] = MappingProxyType({}),
    ) -> None:
        """Make the pods whose source starts with ``prefix`` exactly ``pods`` (those the
        admission policy refuses are recorded, not run; a running one whose new spec is
        refused is stopped). ``deletion_grace_s``: by uid, the grace period a deletion gave
        a pod that goes (the master's ``deletionGracePeriodSeconds``), in place of its own."""
        given = list(pods)
        given_uids = {p.uid for p in given}
        for uid in [u for u, r in self.rejected.items() if r.pod.source.startswith(prefix)]:
            if uid not in given_uids:
                del self.rejected[uid]
        wanted = {p.uid: p for p in self._admit(given)}
        current = self._running_of_source(prefix)
        for uid in current.keys() - wanted.keys():
            self.workers[uid].terminate(grace_s=deletion_grace_s.get(uid))
            why = "refused by admission" if uid in self.rejected else "deleted by its source"
            log.info("pod stopped", extra=kv(pod=current[uid].full_name, uid=uid, why=why))
        for uid, pod in wanted.items():
            existing = self.workers.get(uid)
            if existing is not None and not existing.terminating:
                if existing.pod.spec_hash != pod.spec_hash or existing.pod.source != pod.source:
                    log.info("pod changed, replacing", extra=kv(pod=pod.full_name, uid=uid))
                    existing.update(pod)
                continue
            # A pod replacing another of the same name (a changed static manifest gets a new
            # uid) starts only once the old one is gone, so they never hold ports together.
            before = [
                w.done
                for w in self.workers.values()
                if w.pod.full_name == pod.full_name and w.uid != uid
            ]
            if existing is not None:
                before.append(existing.done)
            after = self._all_set(before) if before else None
            log.info("pod added", extra=kv(pod=pod.full_name, uid=uid, source=pod.source))
            self._spawn(PodWorker(pod, self._deps, after=after))
        crashpoints.hit("source-applied")
        self.mark_dirty()

    # -- wake-ups from the runtime ---------------------------------------------------------

    def wake(self, uid: str) -> bool:
        worker = self.workers.get(uid)
        if worker is None:
            return False
        worker.wake()
        return True

    def wake_all(self) -> None:
        """The runtime is back: every pod syncs now, whatever its retry back-off."""
        for worker in self.workers.values():
            worker.wake_now()

    async def wait_synced(self) -> None:
        await asyncio.gather(*(w.synced_once.wait() for w in list(self.workers.values())))

    # -- checkpoint ------------------------------------------------------------------------

    def mark_dirty(self) -> None:
        self._dirty.set()

    def checkpoint_data(self) -> dict[str, Any]:
        pods = {
            uid: {
                "manifest": dict(w.pod.manifest),
                "source": w.pod.source,
                "book": w.book.to_json(),
            }
            for uid, w in self.workers.items()
            if not w.terminating
        }
        return {"format": CHECKPOINT_FORMAT, "node_name": self.node_name, "pods": pods}

    async def save_now(self) -> bool:
        self._dirty.clear()
        data = self.checkpoint_data()
        started = time.monotonic()
        try:
            await self._checkpoint_bridge.run(self._checkpoint.save, data)
        except CheckpointError as exc:
            if self.checkpoint_error != str(exc):
                log.error(
                    "checkpoint write failed; previous checkpoint kept", extra=kv(error=str(exc))
                )
            self.checkpoint_error = str(exc)
            self._metrics.checkpoint_error()
            self._dirty.set()
            return False
        if self.checkpoint_error:
            log.info("checkpoint writable again")
        self.checkpoint_error = ""
        self._metrics.checkpoint_seconds.observe(time.monotonic() - started)
        return True

    async def _checkpoint_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await self._sleep(CHECKPOINT_MIN_INTERVAL_S)  # coalesce bursts into one write
            if not await self.save_now():
                await self._sleep(CHECKPOINT_RETRY_S)

    def _all_set(self, events: list[asyncio.Event]) -> asyncio.Event:
        """An event set once every one of ``events`` is set."""
        combined = asyncio.Event()

        async def wait_all() -> None:
            await asyncio.gather(*(e.wait() for e in events))
            combined.set()

        self._tasks.spawn("pod-replacement-wait", wait_all)
        return combined

    # -- reporting -------------------------------------------------------------------------

    def on_synced(self, worker: PodWorker, seconds: float) -> None:
        self._metrics.reconcile_seconds.observe(seconds)

    def pod_list(self) -> list[dict[str, Any]]:
        """Every pod of the node as a v1 Pod: the workers' and the rejected ones (a rejected
        pod whose old worker still stops is listed once, rejected)."""
        entries: dict[str, tuple[Pod, dict[str, Any], bool]] = {
            uid: (w.pod, w.status or {"phase": "Pending"}, w.terminating)
            for uid, w in self.workers.items()
        }
        for uid, rejected in self.rejected.items():
            entries[uid] = (rejected.pod, rejected.status(), False)
        items = []
        for pod, status, terminating in sorted(entries.values(), key=lambda e: e[0].full_name):
            manifest = pod.manifest
            item = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": dict(manifest.get("metadata", {})),
                "spec": manifest.get("spec", {}),
                "status": status,
            }
            if terminating:
                item["metadata"]["deletionTimestamp"] = "pending"
            item["metadata"].setdefault("annotations", {})
            item["metadata"]["annotations"] = {
                **item["metadata"]["annotations"],
                "node-agent.io/source": pod.source,
            }
            items.append(item)
        return items


def _placeholder_pod(record: ContainerRecord) -> Pod:
    """Enough of a pod to tear down containers whose manifest we no longer have."""
    meta = ObjectMeta(
        name=record.pod_name or "unknown",
        namespace=record.pod_namespace or "default",
        uid=record.pod_uid,
    )
    return Pod(
        metadata=meta,
        spec=PodSpec(containers=()),
        manifest={"metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid}},
        source="orphan",
    )
