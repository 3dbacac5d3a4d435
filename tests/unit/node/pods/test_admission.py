"""The node's admission policy (``agent.node.pods.admission``): the rules on their own, then in
the pod manager on the FakeRuntime — a refused pod never starts, is listed Failed with the rule
named, gets one event, and stops when a new spec (or a narrower policy at restart) refuses it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.node.pods.admission import (
    ADMIT_ALL,
    QUOTED_PATH_MAX_CHARS,
    AdmissionPolicy,
    normalise_host_path,
)
from agent.types import Pod
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import IMAGE, ManagerRig, manager_rig, static_pod

pytestmark = pytest.mark.usefixtures("blockbuster")

SRV_ONLY = AdmissionPolicy(allowed_host_paths=("/srv",))


def host_path_pod(path: str, name: str = "hp", **kwargs: Any) -> Pod:
    return static_pod(
        name,
        {
            "name": "main",
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "volumeMounts": [{"name": "v", "mountPath": "/data"}],
        },
        volumes=[{"name": "v", "hostPath": {"path": path}}],
        **kwargs,
    )


def unparsed_host_path(path: str) -> Pod:
    """A pod whose hostPath the parser would refuse (``..``): the policy does not rely on it."""
    pod = host_path_pod("/placeholder")
    (volume,) = pod.spec.volumes
    assert volume.host_path is not None
    volume = replace(volume, host_path=replace(volume.host_path, path=path))
    return replace(pod, spec=replace(pod.spec, volumes=(volume,)))


def host_port_pod(name: str = "hport") -> Pod:
    container = {
        "name": "web",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "ports": [{"containerPort": 80, "hostPort": 8080}],
    }
    return static_pod(name, container)


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("//", "/"),
        ("//srv", "/srv"),
        ("/srv/", "/srv"),
        ("/srv/./a//b", "/srv/a/b"),
        ("/srv/../etc", "/etc"),
        ("/srv/a/../../..", "/"),
    ],
)
def test_paths_are_normalised_before_they_are_compared(path: str, normal: str) -> None:
    assert normalise_host_path(path) == normal


@pytest.mark.parametrize(
    ("path", "admitted"),
    [
        ("/srv", True),
        ("/srv/data", True),
        ("//srv//data/", True),
        ("/srv-evil", False),
        ("/srvx/data", False),
        ("/srv/../etc", False),
        ("/srv/data/../../etc/shadow", False),
        ("/etc", False),
        ("/", False),
    ],
)
def test_host_paths_match_whole_segments_of_the_normalised_path(path: str, admitted: bool) -> None:
    rejection = SRV_ONLY.check(unparsed_host_path(path))
    assert (rejection is None) is admitted
    if rejection is not None:
        assert rejection.rule == "allowed_host_paths"
        assert rejection.reason == "Forbidden"
        assert rejection.message == (
            f"hostPath {path} of volume v is outside allowed_host_paths [/srv]"
        )


def test_the_configured_prefixes_are_normalised_too() -> None:
    policy = AdmissionPolicy(allowed_host_paths=("/srv/", "//var/lib/../data"))
    assert policy.allowed_host_paths == ("/srv", "/var/data")
    assert policy.check(host_path_pod("/var/data/x")) is None
    assert AdmissionPolicy(allowed_host_paths=("/",)).check(host_path_pod("/etc")) is None


def test_an_empty_list_refuses_every_host_path_and_none_admits_any() -> None:
    assert AdmissionPolicy(allowed_host_paths=()).check(host_path_pod("/srv")) is not None
    assert ADMIT_ALL.check(host_path_pod("/etc")) is None


def test_a_long_path_is_quoted_cut_short() -> None:
    path = "/etc/" + "a" * 5000
    rejection = SRV_ONLY.check(host_path_pod(path))
    assert rejection is not None
    assert len(rejection.message) < QUOTED_PATH_MAX_CHARS + 100


def test_host_network_and_host_ports_are_refused_only_when_the_policy_says_so() -> None:
    networked = static_pod("net", hostNetwork=True)
    assert ADMIT_ALL.check(networked) is None
    assert ADMIT_ALL.check(host_port_pod()) is None
    no_network = AdmissionPolicy(allow_host_network=False)
    rejection = no_network.check(networked)
    assert rejection is not None and rejection.rule == "allow_host_network"
    assert "allow_host_network" in rejection.message
    assert no_network.check(host_port_pod()) is None
    no_ports = AdmissionPolicy(allow_host_ports=False)
    rejection = no_ports.check(host_port_pod())
    assert rejection is not None and rejection.rule == "allow_host_ports"
    assert rejection.message == (
        "hostPort 8080 of container web is not allowed on this node (allow_host_ports)"
    )
    assert no_ports.check(static_pod("plain")) is None


def listed(rig: ManagerRig, name: str) -> dict[str, Any]:
    (item,) = [i for i in rig.pods.pod_list() if i["metadata"]["name"] == name]
    return item


def forbidden_events(rig: ManagerRig) -> list[dict[str, Any]]:
    return [e for e in rig.events.list(kind="Pod") if e["reason"] == "Forbidden"]


@pytest.mark.parametrize("prefix", ["file:", "api"])
async def test_a_refused_pod_never_starts_and_is_listed_failed_with_one_event(
    tmp_path: Path, prefix: str
) -> None:
    async with manager_rig(tmp_path / "state", admission=SRV_ONLY) as rig:
        bad = host_path_pod("/etc", source=f"{prefix}/m/p.yaml" if prefix == "file:" else prefix)
        good = host_path_pod("/srv/data", name="ok", source=bad.source)
        await rig.apply(bad, good, prefix=prefix)
        await rig.apply(bad, good, prefix=prefix)  # the source says it again: no new event
        assert bad.uid not in rig.pods.workers
        assert await rig.runtime.list_containers(bad.uid) == []
        assert [r.pod_name for r in await rig.app_records()] == ["ok"]
        status = listed(rig, "hp")["status"]
        assert status == {
            "phase": "Failed",
            "reason": "Forbidden",
            "message": "hostPath /etc of volume v is outside allowed_host_paths [/srv]",
        }
        (event,) = forbidden_events(rig)
        assert event["message"] == status["message"]
        assert event["involvedObject"]["name"] == "hp" and event["type"] == "Warning"
        # Mirrors and the master's watch see the pod as the node's: it is reported, not lost.
        assert set(rig.pods.pods_of_source(prefix)) == {bad.uid, good.uid}
        assert bad.uid not in rig.pods.checkpoint_data()["pods"]

        rig.pods.apply_source(prefix, [good])  # its source drops it: gone from the list
        assert [i["metadata"]["name"] for i in rig.pods.pod_list()] == ["ok"]


async def test_a_running_pod_whose_new_spec_is_refused_is_stopped(tmp_path: Path) -> None:
    async with manager_rig(tmp_path / "state", admission=SRV_ONLY) as rig:
        allowed = host_path_pod("/srv/a", uid="u1", source="api")
        await rig.apply(allowed, prefix="api")
        assert [r.running for r in await rig.app_records(allowed)] == [True]
        refused = host_path_pod("/etc", uid="u1", source="api")
        rig.pods.apply_source("api", [refused])
        await until(lambda: "u1" not in rig.pods.workers, "the old worker torn down")
        assert await rig.runtime.list_containers("u1") == []
        assert listed(rig, "hp")["status"]["phase"] == "Failed"
        # Allowed again: it runs again.
        await rig.apply(allowed, prefix="api")
        assert [r.running for r in await rig.app_records(allowed)] == [True]
        assert "u1" not in rig.pods.rejected


async def test_a_checkpointed_pod_the_policy_now_refuses_is_not_restored(tmp_path: Path) -> None:
    async with manager_rig(tmp_path / "state") as rig:
        pod = host_path_pod("/etc")
        await rig.apply(pod)
        assert await rig.pods.save_now()
        rig.admission = SRV_ONLY  # the operator narrowed the policy, then restarted
        manager = await rig.restart()
        assert pod.uid not in manager.workers
        assert manager.pod_list()[0]["status"]["reason"] == "Forbidden"
        manager.adopt_found_at_start()  # its containers are strays now
        await until(lambda: not manager.workers, "the strays' teardown done")
        assert await rig.runtime.list_containers(pod.uid) == []
