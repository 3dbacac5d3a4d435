"""Pods on the master: apply, delete, bind to a node, report status, watch per node.

A pod is stored under ``/pods/<namespace>/<name>`` as ``{"manifest", "nodeName", "status"}``.
Binding is decided once (as in Kubernetes, a pod never moves): ``spec.nodeName`` when given,
otherwise the scheduler picks an Approved, Ready, schedulable node whose free cpu, memory and
pod slots fit the pod's requests, least allocated first. A pod that fits nowhere stays Pending
with the reason, and is retried whenever the scheduler runs.

Mirror pods (a node's static pods, shown read-only) are named ``<name>-<node>`` as kubelet
names them, in the same key space as the pods applied here, so ``nodectl get pods`` never shows
two pods of one name. A name is the API's first: a node's mirror over an applied pod is refused
(409, the node logs it), an administrator's ``apply`` over a mirror replaces it (the node's next
status report finds its mirror gone, puts it again, and logs the refusal). A node's mirrors go
when the node is deleted.

Capacity across masters: the pod's compare-and-swap makes a binding happen once, but the fit
check reads every pod first, so two binders (two masters, or two applies on one) could each see
the last free slot of a node. Every binding therefore first reserves the pod on its node's
allocation record ``/alloc/<node>`` by compare-and-swap, and the fit check counts the bound pods
*and* the reservations still in flight, read in that order (record first, then the pods): of two
binders onto one node the second's swap of the record fails and it looks again. A reservation is
dropped from the record when its pod is seen bound (it counts as a bound pod then), released when
the pod's own swap fails, and forgotten after :data:`RESERVATION_TTL_S` (a binder that died).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.aio.logs import kv
from agent.errors import (
    BadRequestError,
    ConflictError,
    ManifestError,
    MirrorConflictError,
    NotFoundError,
)
from agent.manifest import DEFAULT_GRACE_PERIOD_S, parse_pod
from agent.master.registry import APPROVED, NodeRegistry
from agent.master.store.base import EventType, KeyValue, Store
from agent.quantity import parse_cpu_millis, parse_memory_bytes
from agent.types import Pod

log = logging.getLogger(__name__)

PODS_PREFIX = "/pods/"
# A node's allocation record: the bindings onto it in flight (see the module docstring).
ALLOC_PREFIX = "/alloc/"
# A reservation whose pod was never seen bound is forgotten this long after it was made: its
# binder died between the two swaps (a live one takes milliseconds), or lost and could not
# release it. Masters' clocks must agree to well within this.
RESERVATION_TTL_S = 30.0
MIRROR_ANNOTATION = "node-agent.io/mirror"
DEFAULT_MAX_PODS = 110
TERMINAL_PHASES = ("Succeeded", "Failed")
# A deleted pod stays (Terminating) until its node reports no container running, at the latest
# its grace period plus this long (its node stops it with the grace period, then kills it).
DELETION_MARGIN_S = 5.0
# What an apply did, in kubectl apply's words (pod/x created, configured, unchanged).
CREATED, CONFIGURED, UNCHANGED = "created", "configured", "unchanged"


def pod_key(namespace: str, name: str) -> str:
    return f"{PODS_PREFIX}{namespace}/{name}"


def mirror_name(name: str, node: str) -> str:
    """The master's name of node ``node``'s static pod ``name``: ``<name>-<node>``, as kubelet
    names mirror pods (agent.node.masterlink.mirrors puts them under that name)."""
    return f"{name}-{node}"


def alloc_key(node: str) -> str:
    return f"{ALLOC_PREFIX}{node}"


@dataclass(frozen=True, slots=True)
class Fit:
    node: str
    free_fraction: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """A pod's place held on a node's allocation record until the pod's own swap binds it."""

    node: str
    uid: str


def _reservations(value: bytes) -> dict[str, dict[str, Any]]:
    """The reservations of an allocation record (uid -> pod, cpu, memory, at); a record that
    does not parse holds none (it is rewritten whole at the next binding onto its node)."""
    try:
        reserved = json.loads(value).get("reserved", {})
    except (ValueError, AttributeError):
        return {}
    return reserved if isinstance(reserved, dict) else {}


def _requests(pod: Pod) -> tuple[int, int]:
    """(cpu millis, memory bytes) the pod needs on a node: per resource, the larger of its
    app containers' sum and its largest init container (Kubernetes' effective request: init
    containers run one at a time, before the app containers)."""
    apps, inits = pod.spec.containers, pod.spec.init_containers
    cpu = max(
        sum(c.resources.cpu_request_millis or 0 for c in apps),
        max((c.resources.cpu_request_millis or 0 for c in inits), default=0),
    )
    memory = max(
        sum(c.resources.memory_request_bytes or 0 for c in apps),
        max((c.resources.memory_request_bytes or 0 for c in inits), default=0),
    )
    return cpu, memory


DISK_PRESSURE = "node(s) had disk pressure"


def _has_disk_pressure(record: dict[str, Any]) -> bool:
    """The node reports DiskPressure (its own condition, from its lease)."""
    return any(
        c.get("type") == "DiskPressure" and c.get("status") == "True"
        for c in record.get("nodeConditions", [])
    )


def _terminal(obj: dict[str, Any]) -> bool:
    """A pod that has finished for good: it holds no resources and is never placed again
    (as in Kubernetes, whose scheduler and eviction skip Succeeded and Failed pods)."""
    return obj.get("status", {}).get("phase") in TERMINAL_PHASES


def _capacity(record: dict[str, Any]) -> tuple[int, int, int]:
    cap = record.get("capacity") or {}
    try:
        cpu = parse_cpu_millis(cap.get("cpu", 0), "capacity.cpu")
        memory = parse_memory_bytes(cap.get("memory", 0), "capacity.memory")
        pods = int(cap.get("pods", DEFAULT_MAX_PODS))
    except (ManifestError, ValueError, TypeError):
        return 0, 0, 0
    return cpu, memory, pods


class PodStore:
    def __init__(self, store: Store, registry: NodeRegistry) -> None:
        self.store = store
        self.registry = registry
        self.kick = asyncio.Event()  # set when scheduling may now succeed
        self.disrupted = False  # too many nodes NotReady at once: evicting nothing

    async def apply(
        self, manifest: object, pod: Pod | None = None, *, dry_run: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """:meth:`apply_outcome`: the stored object and whether it was created."""
        obj, outcome = await self.apply_outcome(manifest, pod, dry_run=dry_run)
        return obj, outcome == CREATED

    async def apply_outcome(
        self, manifest: object, pod: Pod | None = None, *, dry_run: bool = False
    ) -> tuple[dict[str, Any], str]:
        """Create or update a pod; returns the stored object and what happened, as kubectl
        apply says it: ``created``, ``configured``, or ``unchanged`` (nothing is written then,
        so a watch sees no change).
        ``pod``: the manifest already parsed (the API parses a large one off the loop).
        ``dry_run``: every check, the object that would be stored, nothing stored or scheduled.

        An update may change the containers' images only (and metadata), as Kubernetes: any
        other change to the spec is refused naming the fields (:func:`_forbidden_changes`);
        the agent replaces the pod whose manifest changed, so a new image restarts it."""
        if pod is None:
            pod = parse_pod(manifest, source="api")
        given = manifest.get("metadata", {}).get("uid") if isinstance(manifest, dict) else None
        key = pod_key(pod.metadata.namespace, pod.metadata.name)
        while True:
            existing = await self.store.get(key)
            if existing is None:
                normalised = dict(pod.manifest)
                normalised["metadata"] = {
                    **pod.manifest["metadata"],
                    # Like the API server: a new pod object gets a fresh uid unless one is
                    # given, so a pod re-created with the same content is a new pod.
                    "uid": given or str(uuid.uuid4()),
                }
                obj: dict[str, Any] = {
                    "manifest": normalised,
                    "nodeName": pod.spec.node_name or "",
                    "status": {"phase": "Pending"},
                    "createdAt": self._now(),  # metadata.creationTimestamp (pod_object)
                }
                if dry_run:
                    return obj, CREATED
                held = await self._schedule(obj) if not obj["nodeName"] else None
                if await self.store.compare_and_swap(key, json.dumps(obj).encode(), 0) is not None:
                    return obj, CREATED
                await self._release(held)
                continue
            obj = json.loads(existing.value)
            if obj.get("deletionTimestamp"):  # as the API server: not until it is gone
                raise ConflictError(
                    f"pod {pod.full_name} is being deleted (Terminating): apply it again once "
                    f"it is gone"
                )
            if obj.get("mirror"):
                if dry_run:  # the mirror would go and the pod be created as new
                    return {**obj, "manifest": dict(pod.manifest), "mirror": False}, CREATED
                # The API's name wins: the mirror goes, and the pod is created as new.
                if (
                    await self.store.delete(key, expected_mod_revision=existing.mod_revision)
                    is not None
                ):
                    self._mirror_replaced(pod.metadata.namespace, pod.metadata.name, obj)
                continue
            uid = obj["manifest"]["metadata"]["uid"]
            normalised = dict(pod.manifest)
            normalised["metadata"] = {**pod.manifest["metadata"], "uid": uid}
            if obj["nodeName"] and pod.spec.node_name and pod.spec.node_name != obj["nodeName"]:
                raise ManifestError(
                    "spec.nodeName",
                    f"pod is bound to {obj['nodeName']}; a pod never moves (delete it first)",
                )
            old_spec = obj["manifest"]["spec"]
            if not obj["nodeName"] and pod.spec.node_name:
                # Still pending, now with a node named: bound there, like a new pod would be.
                obj["nodeName"] = pod.spec.node_name
                obj["scheduled"] = False
                obj["status"] = {"phase": "Pending"}
            if obj["nodeName"]:
                normalised["spec"] = {**normalised["spec"], "nodeName": obj["nodeName"]}
            # Binding a pending pod to the node it now names is not a change of its spec.
            if "nodeName" not in old_spec and "nodeName" in normalised["spec"]:
                old_spec = {**old_spec, "nodeName": normalised["spec"]["nodeName"]}
            changed = _forbidden_changes(old_spec, normalised["spec"])
            if changed:
                raise ManifestError(
                    "spec",
                    "Forbidden: pod updates may not change fields other than "
                    "spec.containers[*].image and spec.initContainers[*].image "
                    f"(changed: {', '.join(changed)}; nodectl apply --force deletes and "
                    f"recreates the pod)",
                )
            obj["manifest"] = normalised
            if obj == json.loads(existing.value):
                return obj, UNCHANGED
            if dry_run:
                return obj, CONFIGURED
            if (
                await self.store.compare_and_swap(
                    key, json.dumps(obj).encode(), existing.mod_revision
                )
                is not None
            ):
                return obj, CONFIGURED

    def _now(self) -> str:
        """Now as the API's timestamps (RFC 3339, UTC, seconds), from the registry's clock."""
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.registry.clock.time()))

    def _mark_terminating(self, obj: dict[str, Any], grace_s: int | None) -> None:
        """A bound pod's deletion as the master holds it: Terminating with its grace period
        (the deletion's, else the pod's own), gone at the latest grace + DELETION_MARGIN_S."""
        grace = obj["manifest"]["spec"].get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD_S)
        if grace_s is not None:
            grace = grace_s
        obj["deletionTimestamp"] = self._now()
        obj["deletionGracePeriodSeconds"] = grace
        obj["deleteBy"] = self.registry.clock.time() + grace + DELETION_MARGIN_S

    def _mirror_replaced(self, namespace: str, name: str, mirror: dict[str, Any]) -> None:
        message = (
            f"pod {namespace}/{name} applied over the mirror pod of node {mirror['nodeName']}; "
            f"the mirror is dropped and the node's static pod keeps running unmirrored"
        )
        log.warning(
            "mirror pod replaced", extra=kv(pod=f"{namespace}/{name}", node=mirror["nodeName"])
        )
        self.registry.events.record(
            kind="Pod",
            name=name,
            namespace=namespace,
            reason="MirrorReplaced",
            message=message,
            warning=True,
        )

    async def _schedule(self, obj: dict[str, Any]) -> Reservation | None:
        """Pick ``obj``'s node and reserve its place there (the caller's swap of the pod then
        binds it; :meth:`_release` if that swap fails), or mark it Unschedulable with the
        reasons and return None."""
        pod = parse_pod(obj["manifest"], source="api")
        cpu, memory = _requests(pod)
        uid = str(obj["manifest"]["metadata"].get("uid", ""))
        records = [r for r in await self.registry.records() if r["registration"] == APPROVED]
        while True:  # again when another binding onto the chosen node came first
            # The records before the pods: a reservation gone from a record read first was
            # dropped by one who saw its pod bound, so the pods read after show it bound.
            allocs = {
                item.key[len(ALLOC_PREFIX) :]: item
                for item in (await self.store.list_prefix(ALLOC_PREFIX))[0]
            }
            items, _ = await self.store.list_prefix(PODS_PREFIX)
            done, held = await self._bind_once(obj, pod, cpu, memory, uid, records, allocs, items)
            if done:
                return held

    async def _bind_once(
        self,
        obj: dict[str, Any],
        pod: Pod,
        cpu: int,
        memory: int,
        uid: str,
        records: list[dict[str, Any]],
        allocs: dict[str, KeyValue],
        items: list[KeyValue],
    ) -> tuple[bool, Reservation | None]:
        """One attempt of :meth:`_schedule` on what it read: (False, None) when the
        reservation's swap lost (read again), else (True, what _schedule returns)."""
        allocated: dict[str, list[int]] = {}
        bound: set[str] = set()  # uids of pods bound to a node
        for item in items:
            other = json.loads(item.value)
            if other["nodeName"]:
                bound.add(str(other["manifest"]["metadata"].get("uid", "")))
            if other["nodeName"] and not _terminal(other):
                used = allocated.setdefault(other["nodeName"], [0, 0, 0])
                ocpu, omem = _requests(parse_pod(other["manifest"], source="api"))
                used[0] += ocpu
                used[1] += omem
                used[2] += 1
        now = self.registry.clock.time()
        in_flight: dict[str, dict[str, dict[str, Any]]] = {}
        for node, item in allocs.items():
            kept = {
                other: entry
                for other, entry in _reservations(item.value).items()
                if other not in bound
                and other != uid
                and now - entry.get("at", 0) < RESERVATION_TTL_S
            }
            in_flight[node] = kept
            used = allocated.setdefault(node, [0, 0, 0])
            for entry in kept.values():
                used[0] += int(entry.get("cpu", 0))
                used[1] += int(entry.get("memory", 0))
                used[2] += 1
        fits: list[Fit] = []
        reasons: dict[str, int] = {}
        for record in records:
            name = record["name"]
            if record.get("unschedulable"):
                reasons["cordoned"] = reasons.get("cordoned", 0) + 1
                continue
            if self.registry.readiness(name)[0] != "True":
                reasons["not Ready"] = reasons.get("not Ready", 0) + 1
                continue
            if _has_disk_pressure(record):  # no new pods; those there stay (no eviction)
                reasons[DISK_PRESSURE] = reasons.get(DISK_PRESSURE, 0) + 1
                continue
            cap_cpu, cap_mem, cap_pods = _capacity(record)
            used = allocated.get(name, [0, 0, 0])
            if used[2] + 1 > cap_pods:
                reasons["too many pods"] = reasons.get("too many pods", 0) + 1
                continue
            if used[0] + cpu > cap_cpu:
                reasons["insufficient cpu"] = reasons.get("insufficient cpu", 0) + 1
                continue
            if used[1] + memory > cap_mem:
                reasons["insufficient memory"] = reasons.get("insufficient memory", 0) + 1
                continue
            free = (
                (cap_cpu - used[0] - cpu) / max(cap_cpu, 1)
                + (cap_mem - used[1] - memory) / max(cap_mem, 1)
            ) / 2
            fits.append(Fit(name, free))
        if fits:
            best = max(fits, key=lambda f: (f.free_fraction, f.node))
            entries = {
                **in_flight.get(best.node, {}),
                uid: {"pod": pod.full_name, "cpu": cpu, "memory": memory, "at": now},
            }
            current = allocs.get(best.node)
            if (
                await self.store.compare_and_swap(
                    alloc_key(best.node),
                    json.dumps({"reserved": entries}).encode(),
                    current.mod_revision if current is not None else 0,
                )
                is None
            ):
                return False, None
            obj["nodeName"] = best.node
            obj["scheduled"] = True  # placed by us, so it may be moved if its node dies
            obj["manifest"]["spec"] = {**obj["manifest"]["spec"], "nodeName": best.node}
            obj["status"] = {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
            }
            log.info("pod scheduled", extra=kv(pod=pod.full_name, node=best.node))
            self.registry.events.record(
                kind="Pod",
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                reason="Scheduled",
                message=f"assigned {pod.full_name} to {best.node}",
            )
            return True, Reservation(best.node, uid)
        detail = (
            ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) or "no Approved nodes"
        )
        message = f"0/{len(records)} nodes are available: {detail}"
        previous = obj.get("status", {}).get("conditions", [{}])[0].get("message")
        if previous != message:
            self.registry.events.record(
                kind="Pod",
                name=pod.metadata.name,
                namespace=pod.metadata.namespace,
                reason="FailedScheduling",
                message=message,
                warning=True,
            )
        obj["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        }
        return True, None

    async def _release(self, held: Reservation | None) -> None:
        """Give back a reservation whose pod's swap failed (the pod changed or went meanwhile),
        so its place is free before RESERVATION_TTL_S."""
        if held is None:
            return
        key = alloc_key(held.node)
        while True:
            record = await self.store.get(key)
            if record is None:
                return
            entries = _reservations(record.value)
            if entries.pop(held.uid, None) is None:
                return
            value = json.dumps({"reserved": entries}).encode()
            if await self.store.compare_and_swap(key, value, record.mod_revision) is not None:
                return

    async def schedule_pending(self) -> int:
        """Retry binding every unbound pod; returns how many were bound."""
        bound = 0
        items, _ = await self.store.list_prefix(PODS_PREFIX)
        for item in items:
            obj = json.loads(item.value)
            if obj["nodeName"]:
                continue
            held = await self._schedule(obj)
            if obj["nodeName"] or obj["status"] != json.loads(item.value)["status"]:
                done = await self.store.compare_and_swap(
                    item.key, json.dumps(obj).encode(), item.mod_revision
                )
                bound += int(done is not None and bool(obj["nodeName"]))
                if done is None:
                    await self._release(held)
        return bound

    async def evict_from_unready_nodes(self) -> int:
        """Unbind the scheduler-placed pods of nodes NotReady for ``pod_eviction_timeout_s``
        so the scheduler places them elsewhere; returns how many moved. Pods bound with an
        explicit ``spec.nodeName`` and mirror pods never move. When too many nodes are
        NotReady together (``eviction_allowed``) nothing moves: that looks like the master's
        own network, and moving every pod would turn a partition into an outage."""
        config = self.registry.config
        if config.pod_eviction_timeout_s <= 0:
            return 0
        records = [r for r in await self.registry.records() if r["registration"] == APPROVED]
        not_ready: dict[str, float] = {}
        for record in records:
            seconds = self.registry.not_ready_for_s(record["name"])
            if seconds is not None:
                not_ready[record["name"]] = seconds
        # Only nodes that were Ready once count toward disruption mode: registrations that
        # never renewed a lease (fakes, or machines that never came up) would otherwise hold
        # eviction off cluster-wide. Their pods, if any, still move.
        counted = [r["name"] for r in records if self.registry.was_ever_ready(r["name"])]
        allowed = eviction_allowed(
            len(counted), sum(n in not_ready for n in counted), config.disruption_threshold
        )
        if not allowed and not self.disrupted:
            log.warning(
                "disruption mode: too many nodes NotReady at once, evicting no pods",
                extra=kv(not_ready=len(not_ready), nodes=len(records), counted=len(counted)),
            )
        elif allowed and self.disrupted:
            log.info("disruption mode over", extra=kv(not_ready=len(not_ready), nodes=len(records)))
        self.disrupted = not allowed
        due = {n: s for n, s in not_ready.items() if s >= config.pod_eviction_timeout_s}
        if not due:
            return 0
        if not allowed:
            log.info(
                "eviction held in disruption mode",
                extra=kv(nodes_past_timeout=len(due), not_ready=len(not_ready), nodes=len(records)),
            )
            return 0
        moved = 0
        items, _ = await self.store.list_prefix(PODS_PREFIX)
        for item in items:
            obj = json.loads(item.value)
            node = obj["nodeName"]
            if node not in due or not obj.get("scheduled") or obj.get("mirror") or _terminal(obj):
                continue
            if obj.get("deletionTimestamp"):
                continue  # going anyway: finalize_deletions removes it at its deadline
            message = f"node {node} NotReady for {due[node]:.0f}s; evicted to be placed again"
            obj["nodeName"] = ""
            obj["scheduled"] = False
            obj["evictedFrom"] = node
            spec = dict(obj["manifest"]["spec"])
            spec.pop("nodeName", None)
            obj["manifest"]["spec"] = spec
            obj["status"] = {
                "phase": "Pending",
                "reason": "Evicted",
                "message": message,
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "NodeNotReady",
                        "message": message,
                    }
                ],
            }
            if (
                await self.store.compare_and_swap(
                    item.key, json.dumps(obj).encode(), item.mod_revision
                )
                is None
            ):
                continue  # changed meanwhile: looked at again next round
            moved += 1
            metadata = obj["manifest"]["metadata"]
            log.warning(
                "pod evicted from a NotReady node",
                extra=kv(pod=f"{metadata['namespace']}/{metadata['name']}", node=node),
            )
            self.registry.events.record(
                kind="Pod",
                name=metadata["name"],
                namespace=metadata["namespace"],
                reason="Evicted",
                message=message,
                warning=True,
            )
        if moved:
            self.kick.set()
        return moved

    async def delete(self, namespace: str, name: str, *, grace_s: int | None = None) -> None:
        """Kubernetes' graceful deletion. A pod whose containers may run on its node is marked
        (``deletionTimestamp``: Terminating) and goes to its node as deleted; it leaves the
        store when the node reports no container running (:meth:`set_status`), at the latest
        when its grace period and :data:`DELETION_MARGIN_S` have passed
        (:meth:`finalize_deletions`). A pod with no container reported running (unbound,
        pending, finished) goes at once; deleting a terminating pod again changes nothing.
        ``grace_s`` (``nodectl delete --grace-period``): the grace period in place of the
        pod's ``terminationGracePeriodSeconds``; the node reads it from the deletion
        (``metadata.deletionGracePeriodSeconds``) and stops the containers within it."""
        while True:  # the check and the delete are one compare-and-swap; again if it changed
            item = await self.store.get(pod_key(namespace, name))
            if item is None:
                raise NotFoundError(f"pod {namespace}/{name} not found")
            obj = json.loads(item.value)
            if obj.get("mirror"):
                raise MirrorConflictError(
                    f"pod {namespace}/{name} mirrors a static pod of node {obj['nodeName']}; "
                    f"remove its manifest on that node"
                )
            if obj.get("deletionTimestamp"):
                if not obj.get("recreate"):
                    return
                # Being moved by a drain: deleted now, so it is not placed again.
                obj.pop("recreate")
                if await self.store.compare_and_swap(
                    item.key, json.dumps(obj).encode(), item.mod_revision
                ):
                    return
                continue
            if obj["nodeName"] and not _stopped(obj.get("status") or {}):
                self._mark_terminating(obj, grace_s)
                written = await self.store.compare_and_swap(
                    item.key, json.dumps(obj).encode(), item.mod_revision
                )
                if written is not None:
                    return
                continue
            if (
                await self.store.delete(item.key, expected_mod_revision=item.mod_revision)
                is not None
            ):
                return

    async def evict(
        self,
        namespace: str,
        name: str,
        *,
        force: bool = False,
        dry_run: bool = False,
        grace_s: int | None = None,
    ) -> str:
        """``nodectl drain``'s eviction of one pod from its node; returns what happens:
        ``moved`` (placed by the scheduler: Terminating on its node, then, once the node
        reports it stopped or its deadline passed, created again unbound as a new pod with a
        new uid, which the scheduler places on another node — the ReplicaSet of Kubernetes'
        eviction, here the master's own), ``deleted`` (finished, or pinned and ``force``: a
        graceful delete, the pod is gone for good), ``terminating`` (being deleted already).
        Refused (409): a mirror pod (its node's static pod comes back from its file), an
        unbound pod, a pod pinned by its ``spec.nodeName`` without ``force`` (it cannot move:
        the scheduler did not choose its node). ``dry_run``: the answer, nothing changed.
        ``grace_s`` (``drain --grace-period``): the grace period in place of the pod's own."""
        key = pod_key(namespace, name)
        while True:
            item = await self.store.get(key)
            if item is None:
                raise NotFoundError(f"pod {namespace}/{name} not found")
            obj = json.loads(item.value)
            node = obj["nodeName"]
            if obj.get("mirror"):
                raise MirrorConflictError(
                    f"pod {namespace}/{name} mirrors a static pod of node {node}: it comes back "
                    f"from its manifest file, so it is not evicted"
                )
            if not node:
                raise ConflictError(f"pod {namespace}/{name} is bound to no node")
            if obj.get("deletionTimestamp"):
                return "terminating"
            if _terminal(obj):
                action = "deleted"  # finished: placing it again would run it again
            elif obj.get("scheduled"):
                action = "moved"
            elif force:
                action = "deleted"
            else:
                raise ConflictError(
                    f"pod {namespace}/{name} is pinned to node {node} by its spec.nodeName: it "
                    f"cannot move (--force deletes it)"
                )
            if dry_run:
                return action
            if action == "deleted":
                await self.delete(namespace, name, grace_s=grace_s)
                return action
            message = f"evicted from node {node} (drain); placed again as a new pod"
            if _stopped(obj.get("status") or {}):
                if not await self._place_again(key, obj, item.mod_revision):
                    continue
            else:
                self._mark_terminating(obj, grace_s)
                obj["recreate"] = True
                if (
                    await self.store.compare_and_swap(
                        key, json.dumps(obj).encode(), item.mod_revision
                    )
                    is None
                ):
                    continue
            self.registry.events.record(
                kind="Pod", name=name, namespace=namespace, reason="Evicted", message=message
            )
            return action

    async def _place_again(self, key: str, obj: dict[str, Any], revision: int) -> bool:
        """A drained pod, stopped on its node, created again as a new pending pod (new uid,
        no node) for the scheduler; False if the object changed meanwhile."""
        node = obj["nodeName"]
        manifest = dict(obj["manifest"])
        manifest["metadata"] = {**manifest["metadata"], "uid": str(uuid.uuid4())}
        manifest["spec"] = {k: v for k, v in manifest["spec"].items() if k != "nodeName"}
        again = {
            "manifest": manifest,
            "nodeName": "",
            "status": {"phase": "Pending"},
            "createdAt": self._now(),
            "evictedFrom": node,
        }
        if await self.store.compare_and_swap(key, json.dumps(again).encode(), revision) is None:
            return False
        self.kick.set()
        return True

    async def finalize_deletions(self) -> int:
        """Remove the terminating pods whose deadline passed (their node never reported them
        stopped: it is down, or its last report was lost); returns how many."""
        now = self.registry.clock.time()
        removed = 0
        items, _ = await self.store.list_prefix(PODS_PREFIX)
        for item in items:
            obj = json.loads(item.value)
            deadline = obj.get("deleteBy")
            if deadline is None or deadline > now:
                continue
            # A concurrent change (a status report that removed it): looked at next round.
            if obj.get("recreate"):
                if await self._place_again(item.key, obj, item.mod_revision):
                    removed += 1
            elif await self.store.delete(item.key, expected_mod_revision=item.mod_revision):
                removed += 1
        return removed

    async def put_mirror(self, node: str, manifest: object) -> None:
        """A node's static pod, shown read-only on the master (kubelet's mirror pods), under
        its mirror name ``<name>-<node>``; MirrorConflictError when a pod of the API's or
        another node's mirror holds the name."""
        pod = parse_pod(manifest, source=f"mirror:{node}")
        if not pod.metadata.name.endswith(mirror_name("", node)):
            raise BadRequestError(
                f"a mirror pod of node {node} is named <static pod name>-{node}, not "
                f"{pod.metadata.name}"
            )
        key = pod_key(pod.metadata.namespace, pod.metadata.name)
        while True:
            existing = await self.store.get(key)
            status: dict[str, Any] = {"phase": "Pending"}
            created = self._now()
            if existing is not None:
                obj = json.loads(existing.value)
                if not obj.get("mirror") or obj["nodeName"] != node:
                    raise MirrorConflictError(f"pod {pod.full_name} already exists on the master")
                if obj["manifest"] == dict(pod.manifest):
                    return
                status = obj.get("status", status)
                created = obj.get("createdAt") or created
            obj = {
                "manifest": dict(pod.manifest),
                "nodeName": node,
                "status": status,
                "mirror": True,
                "createdAt": created,
            }
            expected = existing.mod_revision if existing is not None else 0
            if (
                await self.store.compare_and_swap(key, json.dumps(obj).encode(), expected)
                is not None
            ):
                return

    async def delete_mirror(self, node: str, namespace: str, name: str) -> None:
        item = await self.store.get(pod_key(namespace, name))
        if item is None:
            return
        obj = json.loads(item.value)
        if not obj.get("mirror") or obj["nodeName"] != node:
            raise MirrorConflictError(f"pod {namespace}/{name} is not a mirror pod of node {node}")
        await self.store.delete(item.key, expected_mod_revision=item.mod_revision)

    async def delete_mirrors_of(self, node: str) -> int:
        """Remove every mirror pod of ``node`` (the node was deleted); returns how many."""
        removed = 0
        items, _ = await self.store.list_prefix(PODS_PREFIX)
        for item in items:
            obj = json.loads(item.value)
            if not obj.get("mirror") or obj["nodeName"] != node:
                continue
            # A concurrent change (an apply over it) already removed the mirror: nothing to do.
            if await self.store.delete(item.key, expected_mod_revision=item.mod_revision):
                removed += 1
        if removed:
            log.info("mirror pods of a deleted node removed", extra=kv(node=node, pods=removed))
        return removed

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        item = await self.store.get(pod_key(namespace, name))
        if item is None:
            raise NotFoundError(f"pod {namespace}/{name} not found")
        obj: dict[str, Any] = json.loads(item.value)
        return obj

    async def list(self, node: str | None = None) -> tuple[list[dict[str, Any]], int]:
        items, rev = await self.store.list_prefix(PODS_PREFIX)
        objs = [json.loads(i.value) for i in items]
        if node is not None:
            objs = [o for o in objs if o["nodeName"] == node]
        return objs, rev

    async def set_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        node: str,
        mirror: bool | None = None,
    ) -> None:
        """Write a pod's status while it is bound to ``node``. ``mirror`` (a node's report
        says which it means): the object must be a mirror pod (True) or not (False), so a
        static pod's report never lands on an applied pod that took its mirror's name."""
        key = pod_key(namespace, name)
        while True:
            item = await self.store.get(key)
            if item is None:
                raise NotFoundError(f"pod {namespace}/{name} not found")
            obj = json.loads(item.value)
            if obj["nodeName"] != node:
                raise NotFoundError(f"pod {namespace}/{name} is not bound to {node}")
            if mirror is not None and bool(obj.get("mirror")) != mirror:
                raise MirrorConflictError(
                    f"pod {namespace}/{name} is {'not ' if mirror else ''}a mirror pod"
                )
            if obj["status"] == status:
                return
            obj["status"] = status
            if obj.get("deletionTimestamp") and _stopped(status):
                # The node confirms it: nothing of the deleted pod runs any more.
                if obj.get("recreate"):
                    if await self._place_again(key, obj, item.mod_revision):
                        return
                elif await self.store.delete(key, expected_mod_revision=item.mod_revision):
                    return
                continue
            if (
                await self.store.compare_and_swap(key, json.dumps(obj).encode(), item.mod_revision)
                is not None
            ):
                return

    async def watch_node(self, node: str, after: int) -> AsyncIterator[dict[str, Any]]:
        """Kubernetes-style watch events for pods bound to ``node`` after revision ``after``."""
        known: set[str] = {
            f"{o['manifest']['metadata']['namespace']}/{o['manifest']['metadata']['name']}"
            for o in (await self.list(node))[0]
            if not o.get("deletionTimestamp")
        }
        async for event in self.store.watch(PODS_PREFIX, after):
            obj = json.loads(event.value)
            ident = event.key.removeprefix(PODS_PREFIX)
            if obj["nodeName"] != node:
                # The eviction itself (unbound, evicted from this node) is the one change that
                # tells a node, even one resuming an old watch, that the pod left it.
                if (
                    event.type is EventType.PUT
                    and not obj["nodeName"]
                    and obj.get("evictedFrom") == node
                ):
                    known.discard(ident)
                    yield {
                        "type": "DELETED",
                        "object": pod_object(obj),
                        "resourceVersion": event.revision,
                    }
                continue
            if event.type is EventType.DELETE or obj.get("deletionTimestamp"):
                # Terminating is deleted for the node (it stops the pod with its grace
                # period); the store's delete that follows says it again, which changes nothing.
                known.discard(ident)
                kind = "DELETED"
            else:
                kind = "MODIFIED" if ident in known else "ADDED"
                known.add(ident)
            yield {"type": kind, "object": pod_object(obj), "resourceVersion": event.revision}


def eviction_allowed(nodes: int, not_ready: int, threshold: float) -> bool:
    """kube-controller-manager's lesson: when every node, or (in a cluster of more than two)
    at least ``threshold`` of them, is NotReady at once, the likelier cause is the master's own
    network, so no pod is moved."""
    if not_ready == 0:
        return True
    if not_ready >= nodes:
        return False
    return not (nodes > 2 and not_ready / nodes >= threshold)


MAX_CHANGES_NAMED = 10  # a refusal names this many changed fields, then "..."


def _forbidden_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The paths where two normalised pod specs differ, other than containers' images (the one
    update Kubernetes allows to a pod's spec we support); empty when the update is allowed."""
    changed: list[str] = []

    def walk(a: object, b: object, path: str, in_container: bool) -> None:
        if len(changed) > MAX_CHANGES_NAMED:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in sorted({*a, *b}):
                if in_container and key == "image":
                    continue
                walk(a.get(key), b.get(key), f"{path}.{key}", False)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            container_list = path in ("spec.containers", "spec.initContainers")
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{path}[{i}]", container_list)
        elif a != b:
            changed.append(path)

    walk(old, new, "spec", False)
    if len(changed) > MAX_CHANGES_NAMED:
        changed[MAX_CHANGES_NAMED:] = ["..."]
    return changed


def _stopped(status: dict[str, Any]) -> bool:
    """Whether a node's status report says no container of the pod runs."""
    if status.get("phase") in TERMINAL_PHASES:
        return True
    containers = (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    )
    return not any(
        isinstance(c, dict) and isinstance(c.get("state"), dict) and "running" in c["state"]
        for c in containers
    )


def pod_object(obj: dict[str, Any]) -> dict[str, Any]:
    manifest = obj["manifest"]
    metadata = dict(manifest["metadata"])
    if obj.get("mirror"):
        metadata["annotations"] = {**metadata.get("annotations", {}), MIRROR_ANNOTATION: "true"}
    if obj.get("createdAt"):  # pods stored before it was kept have none
        metadata["creationTimestamp"] = obj["createdAt"]
    if obj.get("deletionTimestamp"):
        metadata["deletionTimestamp"] = obj["deletionTimestamp"]
        metadata["deletionGracePeriodSeconds"] = obj.get("deletionGracePeriodSeconds")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": manifest["spec"],
        "status": obj.get("status", {}),
    }
