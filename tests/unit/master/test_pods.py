"""Pods on the master, on the memory store with a driven clock: apply and validation,
scheduling (capacity, cordon, readiness, least allocated), pending pods placed later, eviction
from NotReady nodes and its disruption guard, mirror pods, status reports, and the per-node
watch (resume, and compaction, after which the caller relists)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent.errors import (
    BadRequestError,
    CompactedError,
    ManifestError,
    MirrorConflictError,
    NotFoundError,
)
from agent.master.pki_files import ClusterPki
from agent.master.pods import MIRROR_ANNOTATION, PODS_PREFIX, mirror_name, pod_key, pod_object
from agent.master.store.memory import MemoryStore
from tests.unit.master.rig import (
    EVICTION_TIMEOUT_S,
    LEASE_GRACE_S,
    MasterRig,
    NodeKey,
    make_rig,
)

pytestmark = pytest.mark.usefixtures("blockbuster")

WAIT_S = 10.0


def manifest(
    name: str,
    *,
    cpu: str | None = None,
    memory: str | None = None,
    node: str | None = None,
    namespace: str = "default",
    image: str = "busybox:1",
    **metadata: Any,
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: dict[str, Any] = {"name": "main", "image": image}
    if requests:
        container["resources"] = {"requests": requests}
    spec: dict[str, Any] = {"containers": [container]}
    if node is not None:
        spec["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **metadata},
        "spec": spec,
    }


def condition(obj: dict[str, Any]) -> dict[str, Any]:
    [scheduled] = obj["status"]["conditions"]
    assert scheduled["type"] == "PodScheduled"
    return dict(scheduled)


async def stored(rig: MasterRig, name: str, namespace: str = "default") -> dict[str, Any]:
    return await rig.pods.get(namespace, name)


async def take(events: AsyncIterator[dict[str, Any]], n: int) -> list[tuple[str, str, str]]:
    """The next ``n`` watch events as (type, pod name, node in the object's spec)."""

    async def collect() -> list[tuple[str, str, str]]:
        out = []
        while len(out) < n:
            event = await anext(events)
            obj = event["object"]
            out.append((event["type"], obj["metadata"]["name"], obj["spec"].get("nodeName", "")))
        return out

    return await asyncio.wait_for(collect(), WAIT_S)


# -- apply ----------------------------------------------------------------------------------


async def test_apply_creates_then_updates_keeping_uid_and_binding(rig: MasterRig) -> None:
    await rig.ready_node("n1")
    obj, created = await rig.pods.apply(manifest("web", cpu="100m"))
    assert created
    uid = obj["manifest"]["metadata"]["uid"]
    assert uid and obj["nodeName"] == "n1" and obj["scheduled"] is True
    assert obj["manifest"]["spec"]["nodeName"] == "n1"
    assert obj["status"] == {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
    }
    updated, created = await rig.pods.apply(manifest("web", cpu="100m", image="busybox:2"))
    assert not created
    assert updated["manifest"]["metadata"]["uid"] == uid
    assert updated["manifest"]["spec"]["nodeName"] == "n1"
    assert updated["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"
    assert await stored(rig, "web") == updated
    assert ("Scheduled", "assigned default/web to n1") in rig.events("Pod", "web")


async def test_an_update_may_change_images_only_naming_the_fields_it_changed(
    rig: MasterRig,
) -> None:
    await rig.pods.apply(manifest("web", cpu="100m", node="n1"))
    changed = manifest("web", cpu="200m", node="n1", image="busybox:2")
    changed["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
    with pytest.raises(ManifestError) as info:
        await rig.pods.apply(changed)
    assert info.value.field == "spec"
    assert info.value.problem.startswith(
        "Forbidden: pod updates may not change fields other than spec.containers[*].image"
    )
    assert "changed: spec.containers[0].ports, spec.containers[0].resources.requests.cpu;" in (
        info.value.problem
    )
    assert (await stored(rig, "web"))["manifest"]["spec"]["containers"][0]["image"] == "busybox:1"
    # Metadata (labels) and images may change; so may an init container's image.
    relabelled, _ = await rig.pods.apply(
        manifest("web", cpu="100m", node="n1", image="busybox:2", labels={"tier": "a"})
    )
    assert relabelled["manifest"]["metadata"]["labels"] == {"tier": "a"}
    assert relabelled["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"
    more = manifest("web", cpu="100m", node="n1")
    more["spec"]["containers"].append({"name": "second", "image": "busybox:1"})
    with pytest.raises(ManifestError, match=r"changed: spec\.containers;"):
        await rig.pods.apply(more)


async def test_a_server_dry_run_checks_everything_and_stores_nothing(rig: MasterRig) -> None:
    await rig.ready_node("n1")
    obj, created = await rig.pods.apply(manifest("web", cpu="100m"), dry_run=True)
    assert created and obj["manifest"]["metadata"]["name"] == "web"
    assert (await rig.pods.list())[0] == []
    assert rig.events("Pod", "web") == []
    await rig.pods.apply(manifest("web", cpu="100m"))
    before = await stored(rig, "web")
    would, created = await rig.pods.apply(
        manifest("web", cpu="100m", image="busybox:2"), dry_run=True
    )
    assert not created and would["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"
    assert await stored(rig, "web") == before
    with pytest.raises(ManifestError, match="Forbidden"):
        await rig.pods.apply(manifest("web", cpu="300m"), dry_run=True)
    with pytest.raises(ManifestError):
        await rig.pods.apply(manifest("Bad_Name"), dry_run=True)


async def test_a_given_uid_is_kept_and_a_recreated_pod_gets_a_new_one(rig: MasterRig) -> None:
    obj, _ = await rig.pods.apply(manifest("web", node="n9", uid="u-1"))
    assert obj["manifest"]["metadata"]["uid"] == "u-1"
    await rig.pods.delete("default", "web")
    again, created = await rig.pods.apply(manifest("web", node="n9"))
    assert created and again["manifest"]["metadata"]["uid"] not in ("u-1", "")


async def test_an_invalid_manifest_is_refused(rig: MasterRig) -> None:
    with pytest.raises(ManifestError):
        await rig.pods.apply({"kind": "Pod", "metadata": {"name": "x"}, "spec": {}})
    with pytest.raises(ManifestError):
        await rig.pods.apply(manifest("Bad_Name"))
    assert (await rig.pods.list())[0] == []


async def test_a_bound_pod_never_moves(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("web", node="n1"))
    with pytest.raises(ManifestError, match="pod is bound to n1; a pod never moves"):
        await rig.pods.apply(manifest("web", node="n2"))
    same, _ = await rig.pods.apply(manifest("web", node="n1"))
    assert same["nodeName"] == "n1"


async def test_a_pending_pod_updated_with_a_node_name_is_bound_there(rig: MasterRig) -> None:
    pending, _ = await rig.pods.apply(manifest("web"))
    assert pending["nodeName"] == ""
    still, _ = await rig.pods.apply(manifest("web", image="busybox:2"))
    assert still["nodeName"] == "" and "nodeName" not in still["manifest"]["spec"]
    bound, created = await rig.pods.apply(manifest("web", node="n2"))
    assert not created
    assert (bound["nodeName"], bound["scheduled"], bound["status"]) == (
        "n2",
        False,
        {"phase": "Pending"},
    )
    assert bound["manifest"]["spec"]["nodeName"] == "n2"
    assert [o["manifest"]["metadata"]["name"] for o in (await rig.pods.list("n2"))[0]] == ["web"]


async def test_concurrent_applies_create_once(rig: MasterRig) -> None:
    results = await asyncio.gather(
        rig.pods.apply(manifest("web", node="n1")), rig.pods.apply(manifest("web", node="n1"))
    )
    assert sorted(created for _, created in results) == [False, True]
    uids = {obj["manifest"]["metadata"]["uid"] for obj, _ in results}
    assert len(uids) == 1


# -- scheduling -----------------------------------------------------------------------------


async def test_no_node_means_pending_with_the_reason(rig: MasterRig) -> None:
    obj, _ = await rig.pods.apply(manifest("web"))
    assert obj["nodeName"] == ""
    assert condition(obj) == {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/0 nodes are available: no Approved nodes",
    }
    assert rig.events("Pod", "web") == [
        ("FailedScheduling", "0/0 nodes are available: no Approved nodes")
    ]


async def test_each_reason_a_node_does_not_fit_is_counted(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    await rig.ready_node("cordoned")
    await rig.registry.set_unschedulable("cordoned", True)
    await rig.ready_node("small-cpu", cpu="500m")
    await rig.ready_node("small-mem", memory="64Mi")
    await rig.ready_node("full", pods="0")
    await rig.ready_node("silent")
    rig.clock.advance(LEASE_GRACE_S + 1)
    for name in ("cordoned", "small-cpu", "small-mem", "full"):
        rig.registry.renew_lease(name)
    await rig.register(NodeKey("queued"))  # Pending: not counted
    obj, _ = await rig.pods.apply(manifest("web", cpu="1", memory="128Mi"))
    assert condition(obj)["message"] == (
        "0/5 nodes are available: 1 cordoned, 1 insufficient cpu, 1 insufficient memory, "
        "1 not Ready, 1 too many pods"
    )


async def test_the_least_allocated_node_that_fits_wins(rig: MasterRig) -> None:
    await rig.ready_node("big", cpu="8", memory="16Gi")
    await rig.ready_node("small", cpu="2", memory="4Gi")
    first, _ = await rig.pods.apply(manifest("a", cpu="1", memory="1Gi"))
    assert first["nodeName"] == "big"
    for i in range(3):  # fill big until small is the freer one
        await rig.pods.apply(manifest(f"fill{i}", cpu="2", memory="4Gi", node="big"))
    second, _ = await rig.pods.apply(manifest("b", cpu="1", memory="1Gi"))
    assert second["nodeName"] == "small"
    with_nothing_left, _ = await rig.pods.apply(manifest("c", cpu="2"))
    assert with_nothing_left["nodeName"] == ""
    assert condition(with_nothing_left)["message"] == (
        "0/2 nodes are available: 2 insufficient cpu"
    )


async def test_init_containers_count_as_kubernetes_effective_request(rig: MasterRig) -> None:
    """Per resource, max(sum of the app containers, the largest init container)."""
    await rig.ready_node("n1", cpu="2", memory="4Gi")

    def with_init(name: str, cpu: str, memory: str) -> dict[str, Any]:
        obj = manifest(name, cpu="500m", memory="1Gi")
        obj["spec"]["initContainers"] = [
            {"name": "setup", "image": "busybox:1", "resources": {"requests": {"cpu": cpu}}},
            {
                "name": "migrate",
                "image": "busybox:1",
                "resources": {"requests": {"memory": memory}},
            },
        ]
        return obj

    too_big, _ = await rig.pods.apply(with_init("big-init", cpu="3", memory="1Gi"))
    assert condition(too_big)["message"] == "0/1 nodes are available: 1 insufficient cpu"
    placed, _ = await rig.pods.apply(with_init("fits", cpu="1500m", memory="3Gi"))
    assert placed["nodeName"] == "n1"  # 1.5 CPU and 3Gi: within 2 CPU and 4Gi
    # What it holds is its effective request (1.5 CPU, 3Gi), not the app's (0.5, 1Gi).
    after, _ = await rig.pods.apply(manifest("next", cpu="1", memory="512Mi"))
    assert condition(after)["message"] == "0/1 nodes are available: 1 insufficient cpu"


async def test_finished_pods_hold_no_capacity(rig: MasterRig) -> None:
    await rig.ready_node("n1", cpu="1", pods="1")
    await rig.pods.apply(manifest("job", cpu="1"))
    blocked, _ = await rig.pods.apply(manifest("next", cpu="1"))
    assert blocked["nodeName"] == ""
    await rig.pods.set_status("default", "job", {"phase": "Succeeded"}, "n1")
    assert await rig.pods.schedule_pending() == 1
    assert (await stored(rig, "next"))["nodeName"] == "n1"


async def test_unparseable_capacity_fits_nothing(rig: MasterRig) -> None:
    await rig.ready_node("odd", cpu="lots")
    obj, _ = await rig.pods.apply(manifest("web"))
    assert condition(obj)["message"] == "0/1 nodes are available: 1 too many pods"


async def test_pending_pods_are_placed_when_a_node_is_ready(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki)
    rig.clock.advance(LEASE_GRACE_S + 1)  # past the master's start: a silent node is NotReady
    await rig.ready_node("n1")
    rig.clock.advance(LEASE_GRACE_S + 1)
    pending, _ = await rig.pods.apply(manifest("web"))
    assert condition(pending)["message"] == "0/1 nodes are available: 1 not Ready"
    revision = (await rig.store.list_prefix(""))[1]
    assert await rig.pods.schedule_pending() == 0  # same reason: nothing rewritten
    assert (await rig.store.list_prefix(""))[1] == revision
    assert [r for r, _ in rig.events("Pod", "web")] == ["FailedScheduling"]  # said once
    await rig.registry.set_unschedulable("n1", True)
    rig.registry.renew_lease("n1")
    assert await rig.pods.schedule_pending() == 0  # a new reason: recorded
    assert condition(await stored(rig, "web"))["message"] == "0/1 nodes are available: 1 cordoned"
    await rig.registry.set_unschedulable("n1", False)
    assert await rig.pods.schedule_pending() == 1
    placed = await stored(rig, "web")
    assert placed["nodeName"] == "n1" and condition(placed)["status"] == "True"
    assert await rig.pods.schedule_pending() == 0  # bound pods are left alone


# -- eviction -------------------------------------------------------------------------------


async def _three_nodes_with_pods(cluster_pki: ClusterPki, **config: Any) -> MasterRig:
    rig = make_rig(cluster_pki, **config)
    for name in ("n1", "n2", "n3"):
        await rig.ready_node(name)
    await rig.pods.apply(manifest("placed", node=None))
    placed = await stored(rig, "placed")
    assert placed["nodeName"] == "n3"  # least allocated, ties to the last name
    await rig.pods.apply(manifest("pinned", node="n3"))
    await rig.pods.put_mirror("n3", manifest("static-n3"))
    await rig.pods.apply(manifest("done"))
    assert (await stored(rig, "done"))["nodeName"] == "n3"
    await rig.pods.set_status("default", "done", {"phase": "Succeeded"}, "n3")
    return rig


def _keep_alive(rig: MasterRig, *names: str) -> None:
    for name in names:
        rig.registry.renew_lease(name)


async def test_scheduled_pods_leave_a_node_not_ready_past_the_timeout(
    cluster_pki: ClusterPki,
) -> None:
    rig = await _three_nodes_with_pods(cluster_pki)
    rig.clock.advance(LEASE_GRACE_S + 1)
    _keep_alive(rig, "n1", "n2")
    assert await rig.pods.evict_from_unready_nodes() == 0  # NotReady, not for long enough
    rig.clock.advance(EVICTION_TIMEOUT_S)
    _keep_alive(rig, "n1", "n2")
    watch = rig.pods.watch_node("n3", (await rig.pods.list())[1])
    assert await rig.pods.evict_from_unready_nodes() == 1
    assert rig.pods.kick.is_set()
    evicted = await stored(rig, "placed")
    assert (evicted["nodeName"], evicted["scheduled"], evicted["evictedFrom"]) == ("", False, "n3")
    assert "nodeName" not in evicted["manifest"]["spec"]
    assert evicted["status"]["reason"] == "Evicted"
    assert condition(evicted)["reason"] == "NodeNotReady"
    assert evicted["status"]["message"].startswith("node n3 NotReady for 30")
    # Bound by name, mirrored, or finished: never moved.
    assert (await stored(rig, "pinned"))["nodeName"] == "n3"
    assert (await stored(rig, "static-n3"))["nodeName"] == "n3"
    assert (await stored(rig, "done"))["nodeName"] == "n3"
    assert [r for r, _ in rig.events("Pod", "placed")][-1] == "Evicted"
    # The node is told the pod left it, and the scheduler places it elsewhere.
    assert await take(watch, 1) == [("DELETED", "placed", "")]
    assert await rig.pods.schedule_pending() == 1
    assert (await stored(rig, "placed"))["nodeName"] in ("n1", "n2")


async def test_nothing_moves_when_too_many_nodes_are_not_ready(
    cluster_pki: ClusterPki,
) -> None:
    rig = await _three_nodes_with_pods(cluster_pki)
    rig.clock.advance(LEASE_GRACE_S + EVICTION_TIMEOUT_S + 1)
    _keep_alive(rig, "n1")  # two of three NotReady: the master's own network, most likely
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert rig.pods.disrupted
    assert (await stored(rig, "placed"))["nodeName"] == "n3"
    _keep_alive(rig, "n1", "n2")
    assert await rig.pods.evict_from_unready_nodes() == 1
    assert not rig.pods.disrupted


async def test_disruption_mode_is_entered_before_any_node_is_due(
    cluster_pki: ClusterPki,
) -> None:
    rig = await _three_nodes_with_pods(cluster_pki)
    rig.clock.advance(LEASE_GRACE_S + 1)
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert rig.pods.disrupted
    _keep_alive(rig, "n1", "n2", "n3")
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert not rig.pods.disrupted


async def test_nodes_never_ready_do_not_count_toward_disruption_mode(
    cluster_pki: ClusterPki,
) -> None:
    """Registrations that never renew a lease (an attacker's, or machines that never came up)
    would otherwise be NotReady nodes enough to hold eviction off for the whole cluster."""
    rig = await _three_nodes_with_pods(cluster_pki)
    for n in range(20):
        assert (await rig.register(NodeKey(f"fake-{n}"))).status == 200  # open: Approved
    rig.clock.advance(LEASE_GRACE_S + EVICTION_TIMEOUT_S + 1)
    _keep_alive(rig, "n1", "n2")
    assert not rig.registry.was_ever_ready("fake-0") and rig.registry.was_ever_ready("n3")
    # 21 of 23 Approved nodes are NotReady, but only n3 of the three that were ever Ready.
    assert await rig.pods.evict_from_unready_nodes() == 1
    assert not rig.pods.disrupted
    assert (await stored(rig, "placed"))["nodeName"] == ""
    # Ready once, then gone: those count (here two of three: disruption mode).
    await rig.registry.note_ready("fake-0")
    rig.registry.renew_lease("fake-0")
    rig.clock.advance(LEASE_GRACE_S + 1)
    _keep_alive(rig, "n1")
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert rig.pods.disrupted


async def test_ever_ready_survives_a_master_restart(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki)
    await rig.ready_node("n1")
    revision = (await rig.store.list_prefix(""))[1]
    await rig.registry.note_ready("n1")  # once only: no second write
    assert (await rig.store.list_prefix(""))[1] == revision
    await rig.registry.note_ready("ghost")  # unknown: nothing
    restarted = make_rig(cluster_pki, store=rig.store)
    await restarted.registry.load()
    assert restarted.registry.was_ever_ready("n1")
    assert not restarted.registry.was_ever_ready("ghost")


async def test_eviction_can_be_turned_off(cluster_pki: ClusterPki) -> None:
    rig = await _three_nodes_with_pods(cluster_pki, pod_eviction_timeout_s=0.0)
    rig.clock.advance(LEASE_GRACE_S + EVICTION_TIMEOUT_S + 1)
    _keep_alive(rig, "n1", "n2")
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert (await stored(rig, "placed"))["nodeName"] == "n3"


class _ChangesBeforeSwap(MemoryStore):
    """A memory store where another writer changes a key just before its next swap."""

    def __init__(self) -> None:
        super().__init__()
        self.interfere_with: str | None = None

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        if key == self.interfere_with:
            self.interfere_with = None
            current = await self.get(key)
            assert current is not None
            await self.put(key, current.value)
        return await super().compare_and_swap(key, value, expected_mod_revision)

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        if key == self.interfere_with:
            self.interfere_with = None
            current = await self.get(key)
            assert current is not None
            await self.put(key, current.value)
        return await super().delete(key, expected_mod_revision)


async def test_a_pod_changed_during_eviction_is_looked_at_next_round(
    cluster_pki: ClusterPki,
) -> None:
    store = _ChangesBeforeSwap()
    rig = make_rig(cluster_pki, store=store)
    await rig.ready_node("n1")
    await rig.ready_node("n2")
    await rig.ready_node("n3")
    await rig.pods.apply(manifest("placed"))
    rig.clock.advance(LEASE_GRACE_S + EVICTION_TIMEOUT_S + 1)
    _keep_alive(rig, "n1", "n2")
    store.interfere_with = pod_key("default", "placed")
    assert await rig.pods.evict_from_unready_nodes() == 0
    assert await rig.pods.evict_from_unready_nodes() == 1


async def test_delete_goes_through_a_concurrent_change(rig: MasterRig) -> None:
    store = _ChangesBeforeSwap()
    rig = make_rig(rig.registry.pki, store=store)
    await rig.pods.apply(manifest("web", node="n1"))
    store.interfere_with = pod_key("default", "web")
    await rig.pods.delete("default", "web")
    assert await store.get(pod_key("default", "web")) is None


async def test_updates_go_through_a_concurrent_change(cluster_pki: ClusterPki) -> None:
    store = _ChangesBeforeSwap()
    rig = make_rig(cluster_pki, store=store)
    key = pod_key("default", "web")
    await rig.pods.apply(manifest("web", node="n1"))
    store.interfere_with = key
    await rig.pods.apply(manifest("web", node="n1", image="busybox:2"))
    assert (await stored(rig, "web"))["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    store.interfere_with = pod_key("default", "static-n1")
    await rig.pods.put_mirror("n1", manifest("static-n1", image="busybox:2"))
    static = await stored(rig, "static-n1")
    assert static["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"


# -- delete, get, list, status ------------------------------------------------------------


async def test_delete_get_and_list(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("a", node="n1"))
    await rig.pods.apply(manifest("b", node="n2", namespace="other"))
    everything, revision = await rig.pods.list()
    assert [o["manifest"]["metadata"]["name"] for o in everything] == ["a", "b"]
    assert revision == (await rig.store.list_prefix(""))[1]
    assert [o["manifest"]["metadata"]["name"] for o in (await rig.pods.list("n2"))[0]] == ["b"]
    await rig.pods.delete("default", "a")
    with pytest.raises(NotFoundError, match="pod default/a not found"):
        await rig.pods.get("default", "a")
    with pytest.raises(NotFoundError, match="pod default/a not found"):
        await rig.pods.delete("default", "a")


async def test_status_reports_come_only_from_the_pods_node(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("web", node="n1"))
    running = {"phase": "Running", "podIP": "10.0.0.2"}
    await rig.pods.set_status("default", "web", running, "n1")
    assert (await stored(rig, "web"))["status"] == running
    revision = (await rig.store.list_prefix(""))[1]
    await rig.pods.set_status("default", "web", dict(running), "n1")  # unchanged: no write
    assert (await rig.store.list_prefix(""))[1] == revision
    with pytest.raises(NotFoundError, match="is not bound to n2"):
        await rig.pods.set_status("default", "web", {"phase": "Failed"}, "n2")
    with pytest.raises(NotFoundError, match="pod default/ghost not found"):
        await rig.pods.set_status("default", "ghost", running, "n1")


async def test_a_status_report_racing_an_update_is_applied_on_the_new_object(
    cluster_pki: ClusterPki,
) -> None:
    store = _ChangesBeforeSwap()
    rig = make_rig(cluster_pki, store=store)
    await rig.pods.apply(manifest("web", node="n1"))
    store.interfere_with = pod_key("default", "web")
    await rig.pods.set_status("default", "web", {"phase": "Running"}, "n1")
    assert (await stored(rig, "web"))["status"] == {"phase": "Running"}


# -- mirror pods ----------------------------------------------------------------------------


async def test_mirror_pods_are_read_only_on_the_master(rig: MasterRig) -> None:
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    obj = await stored(rig, "static-n1")
    assert (obj["mirror"], obj["nodeName"], obj["status"]) == (True, "n1", {"phase": "Pending"})
    assert pod_object(obj)["metadata"]["annotations"] == {MIRROR_ANNOTATION: "true"}
    revision = (await rig.store.list_prefix(""))[1]
    await rig.pods.put_mirror("n1", manifest("static-n1"))  # unchanged: no write
    assert (await rig.store.list_prefix(""))[1] == revision
    await rig.pods.set_status("default", "static-n1", {"phase": "Running"}, "n1", mirror=True)
    await rig.pods.put_mirror("n1", manifest("static-n1", image="busybox:2"))
    changed = await stored(rig, "static-n1")
    assert changed["status"] == {"phase": "Running"}  # the status stays with the new manifest
    assert changed["manifest"]["spec"]["containers"][0]["image"] == "busybox:2"
    with pytest.raises(MirrorConflictError, match="is a mirror pod"):
        await rig.pods.set_status("default", "static-n1", {"phase": "Failed"}, "n1", mirror=False)
    with pytest.raises(MirrorConflictError, match="remove its manifest on that node"):
        await rig.pods.delete("default", "static-n1")
    with pytest.raises(MirrorConflictError, match="is not a mirror pod of node n2"):
        await rig.pods.delete_mirror("n2", "default", "static-n1")
    await rig.pods.delete_mirror("n1", "default", "static-n1")
    await rig.pods.delete_mirror("n1", "default", "static-n1")  # gone already: fine
    with pytest.raises(NotFoundError):
        await rig.pods.get("default", "static-n1")


async def test_a_mirror_is_named_after_its_node(rig: MasterRig) -> None:
    """Kubelet's ``<name>-<node>``: a node can take only names ending in its own, so it can
    neither squat an API pod's name like ``web`` nor another node's mirror."""
    for name in ("static", "static-n2", "n1"):
        with pytest.raises(BadRequestError, match="is named <static pod name>-n1"):
            await rig.pods.put_mirror("n1", manifest(name))
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    with pytest.raises(BadRequestError, match="is named <static pod name>-n2"):
        await rig.pods.put_mirror("n2", manifest("static-n1"))
    assert mirror_name("static", "n1") == "static-n1"


async def test_a_master_pod_is_not_replaced_by_a_mirror(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("web-n1", node="n1"))
    with pytest.raises(MirrorConflictError, match="already exists on the master"):
        await rig.pods.put_mirror("n1", manifest("web-n1"))
    with pytest.raises(MirrorConflictError, match="is not a mirror pod"):
        await rig.pods.delete_mirror("n1", "default", "web-n1")
    with pytest.raises(MirrorConflictError, match="is not a mirror pod"):
        await rig.pods.set_status("default", "web-n1", {"phase": "Running"}, "n1", mirror=True)
    assert (await stored(rig, "web-n1"))["status"] == {"phase": "Pending"}


async def test_an_apply_over_a_mirror_wins(rig: MasterRig) -> None:
    """The API's name comes first: an administrator's pod replaces a mirror of that name (a new
    object, with a new uid, placed as any new pod), with a warning event."""
    await rig.ready_node("n2")
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    mirror_uid = (await stored(rig, "static-n1"))["manifest"]["metadata"].get("uid")
    obj, created = await rig.pods.apply(manifest("static-n1"))
    assert created and not obj.get("mirror")
    assert obj["nodeName"] == "n2" and obj["manifest"]["metadata"]["uid"] != mirror_uid
    assert "MirrorReplaced" in [r for r, _ in rig.events("Pod", "static-n1")]
    # The node's next put of its mirror is refused: the name is the API's now.
    with pytest.raises(MirrorConflictError, match="already exists on the master"):
        await rig.pods.put_mirror("n1", manifest("static-n1"))


async def test_a_deleted_nodes_mirrors_go_with_it(rig: MasterRig) -> None:
    await rig.pods.put_mirror("n1", manifest("a-n1"))
    await rig.pods.put_mirror("n1", manifest("b-n1", namespace="other"))
    await rig.pods.put_mirror("n2", manifest("a-n2"))
    await rig.pods.apply(manifest("web", node="n1"))
    assert await rig.pods.delete_mirrors_of("n1") == 2
    left = {o["manifest"]["metadata"]["name"] for o in (await rig.pods.list())[0]}
    assert left == {"a-n2", "web"}  # other nodes' mirrors and the API's pods stay
    assert await rig.pods.delete_mirrors_of("n1") == 0


async def test_pod_object(rig: MasterRig) -> None:
    obj, _ = await rig.pods.apply(manifest("web", node="n1", labels={"app": "web"}))
    shown = pod_object(obj)
    assert shown["apiVersion"] == "v1" and shown["kind"] == "Pod"
    assert shown["metadata"]["labels"] == {"app": "web"}
    assert "annotations" not in shown["metadata"]
    assert shown["spec"]["nodeName"] == "n1"
    assert shown["status"] == {"phase": "Pending"}
    json.dumps(shown)


# -- the per-node watch ---------------------------------------------------------------------


async def test_watch_node_sends_its_pods_changes(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("old", node="n1"))
    _, revision = await rig.pods.list("n1")
    watch = rig.pods.watch_node("n1", revision)
    await rig.pods.set_status("default", "old", {"phase": "Running"}, "n1")
    # The watch starts (lists what the node has) at its first step, as the API's does.
    assert await take(watch, 1) == [("MODIFIED", "old", "n1")]
    await rig.pods.apply(manifest("new", node="n1"))
    await rig.pods.apply(manifest("elsewhere", node="n2"))
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    await rig.pods.delete("default", "new")
    await rig.pods.delete("default", "elsewhere")
    assert await take(watch, 3) == [
        ("ADDED", "new", "n1"),
        ("ADDED", "static-n1", ""),
        ("DELETED", "new", "n1"),
    ]
    await rig.pods.apply(manifest("last", node="n1"))
    [event] = [e async for e in _first(watch)]
    assert event["type"] == "ADDED"
    assert event["resourceVersion"] == (await rig.store.list_prefix(""))[1]
    assert event["object"]["metadata"]["name"] == "last"


async def _first(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    yield await asyncio.wait_for(anext(events), WAIT_S)


async def test_watch_node_resumes_from_a_revision(rig: MasterRig) -> None:
    _, start = await rig.pods.list("n1")
    await rig.pods.apply(manifest("a", node="n1"))
    _, middle = await rig.pods.list("n1")
    await rig.pods.apply(manifest("b", node="n1"))
    assert await take(rig.pods.watch_node("n1", middle), 1) == [("MODIFIED", "b", "n1")]
    # Pods that exist now count as known: a resumed watch shows them as modified.
    assert await take(rig.pods.watch_node("n1", start), 2) == [
        ("MODIFIED", "a", "n1"),
        ("MODIFIED", "b", "n1"),
    ]


async def test_watch_node_of_a_compacted_revision_makes_the_caller_relist(
    cluster_pki: ClusterPki,
) -> None:
    rig = make_rig(cluster_pki, store=MemoryStore(history=5))
    await rig.pods.apply(manifest("web", node="n1"))
    _, old = await rig.pods.list("n1")
    for i in range(12):
        await rig.pods.set_status("default", "web", {"phase": "Running", "n": i}, "n1")
    with pytest.raises(CompactedError, match="relist"):
        await take(rig.pods.watch_node("n1", old), 1)
    objs, now = await rig.pods.list("n1")  # the relist
    assert [o["status"]["n"] for o in objs] == [11]
    await rig.pods.delete("default", "web")
    assert await take(rig.pods.watch_node("n1", now), 1) == [("DELETED", "web", "n1")]


async def test_pods_prefix_is_the_store_layout(rig: MasterRig) -> None:
    await rig.pods.apply(manifest("web", node="n1", namespace="shop"))
    keys = [kv.key for kv in (await rig.store.list_prefix(PODS_PREFIX))[0]]
    assert keys == [pod_key("shop", "web")] == ["/pods/shop/web"]


# -- creation time (kubectl's AGE) ------------------------------------------------------------


async def test_a_pod_keeps_the_time_it_was_created_through_updates(rig: MasterRig) -> None:
    """metadata.creationTimestamp, as the API server sets it: once, at creation, kept by an
    update (and by a mirror's manifest change); a manifest's own value is not taken."""
    await rig.ready_node("n1")
    obj, _ = await rig.pods.apply(manifest("web", creationTimestamp="2001-01-01T00:00:00Z"))
    created = pod_object(obj)["metadata"]["creationTimestamp"]
    assert created != "2001-01-01T00:00:00Z"
    rig.clock.advance(3600)
    updated, _ = await rig.pods.apply(manifest("web", image="busybox:2"))
    assert pod_object(updated)["metadata"]["creationTimestamp"] == created
    await rig.pods.put_mirror("n1", manifest("static-n1"))
    mirror = pod_object(await stored(rig, "static-n1"))["metadata"]["creationTimestamp"]
    rig.clock.advance(60)
    await rig.pods.put_mirror("n1", manifest("static-n1", image="busybox:2"))
    assert pod_object(await stored(rig, "static-n1"))["metadata"]["creationTimestamp"] == mirror
    assert mirror != created  # an hour later
    # A pod stored before the field was kept shows none (kubectl: AGE <unknown>).
    assert (
        "creationTimestamp"
        not in pod_object({"manifest": manifest("old"), "status": {}})["metadata"]
    )
