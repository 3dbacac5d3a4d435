"""The scheduler places no new pod on a node reporting DiskPressure, and says so."""

from __future__ import annotations

from tests.unit.master.rig import MasterRig
from tests.unit.master.test_pods import condition, manifest


async def _report(rig: MasterRig, node: str, pressure: bool) -> None:
    await rig.registry.update_status(
        node,
        {
            "conditions": [
                {
                    "type": "DiskPressure",
                    "status": "True" if pressure else "False",
                    "reason": "KubeletHasDiskPressure" if pressure else "KubeletHasNoDiskPressure",
                    "message": "nodefs.available 3.0% < 10%" if pressure else "",
                }
            ]
        },
    )


async def test_a_node_under_disk_pressure_gets_no_new_pod(rig: MasterRig) -> None:
    await rig.ready_node("n1")
    await _report(rig, "n1", True)
    obj, _ = await rig.pods.apply(manifest("web"))
    assert obj["nodeName"] == ""
    assert condition(obj)["message"] == "0/1 nodes are available: 1 node(s) had disk pressure"
    assert ("FailedScheduling", condition(obj)["message"]) in rig.events("Pod", "web")

    await _report(rig, "n1", False)  # cleared: the pending pod is placed
    await rig.pods.schedule_pending()
    placed = (await rig.pods.list("n1"))[0]
    assert [o["manifest"]["metadata"]["name"] for o in placed] == ["web"]


async def test_the_other_node_is_chosen(rig: MasterRig) -> None:
    await rig.ready_node("full", cpu="64", memory="256Gi")  # the freer one, but under pressure
    await rig.ready_node("ok")
    await _report(rig, "full", True)
    obj, _ = await rig.pods.apply(manifest("web"))
    assert obj["nodeName"] == "ok"
