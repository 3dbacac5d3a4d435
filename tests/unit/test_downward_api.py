"""The Downward API in env (issue 15 item 6): fieldRef paths with keys, resourceFieldRef, as
Kubernetes parses, validates and computes them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import parse_pod
from agent.node.pods.specs import resolve_env
from agent.types import ContainerResource, EnvVar, FieldRef, Pod, ResourceFieldRef
from tests.unit.node.pods.builders import make_ctx

CTX = replace(make_ctx(), node_cpu_millis=4000, node_memory_bytes=8 * 2**30)
C0 = "spec.containers[0]"


def doc(*env: dict[str, Any], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "img:1", "env": list(env)}
    if resources is not None:
        app["resources"] = resources
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "uid": "u1",
            "labels": {"app": "shop", "example.com/tier": "front"},
            "annotations": {"note": "a b\nc", "example.com/Owner": "ops"},
        },
        "spec": {
            "containers": [
                app,
                {
                    "name": "side",
                    "image": "img:1",
                    "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
                },
            ]
        },
    }


def field(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def resource(name: str, **ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"resourceFieldRef": ref}}


def env_of(pod: Pod, pod_ip: str = "172.17.0.9") -> dict[str, str]:
    return resolve_env(pod, pod.spec.containers[0], CTX, pod_ip)


def reject(document: dict[str, Any]) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_pod(document, source="p.yaml")
    return info.value


def test_field_paths_with_keys_and_the_new_fields() -> None:
    pod = parse_pod(
        doc(
            field("APP", "metadata.labels['app']"),
            field("TIER", "metadata.labels['example.com/tier']"),
            field("MISSING", "metadata.labels['nope']"),
            field("NOTE", "metadata.annotations['note']"),
            field("OWNER", "metadata.annotations['example.com/Owner']"),
            field("SA", "spec.serviceAccountName"),
            field("IPS", "status.podIPs"),
            field("HOSTS", "status.hostIPs"),
        ),
        source="p.yaml",
    )
    assert pod.spec.containers[0].env[0] == EnvVar("APP", field_ref=FieldRef.LABEL, field_key="app")
    assert env_of(pod) == {
        "APP": "shop",
        "TIER": "front",
        "MISSING": "",  # an absent key is empty, as in Kubernetes
        "NOTE": "a b\nc",
        "OWNER": "ops",
        "SA": "",
        "IPS": "172.17.0.9",
        "HOSTS": "10.1.2.3",
    }


def test_normalised_manifest_keeps_the_paths_and_parses_again() -> None:
    pod = parse_pod(
        doc(
            field("APP", "metadata.labels['app']"),
            resource("M", resource="limits.memory", divisor="1Mi", containerName="side"),
            resource("C", resource="requests.cpu"),
        ),
        source="p.yaml",
    )
    env = pod.manifest["spec"]["containers"][0]["env"]
    assert env == [
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {
            "name": "M",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": "side",
                    "resource": "limits.memory",
                    "divisor": "1Mi",
                }
            },
        },
        {"name": "C", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
    ]
    again = parse_pod(dict(pod.manifest), source="p.yaml")
    assert again.spec == pod.spec


@pytest.mark.parametrize(
    ("ref", "resources", "expected"),
    [
        # cpu: millicores / divisor, rounded up (kubelet's convertResourceCPUToString)
        ({"resource": "limits.cpu"}, {"limits": {"cpu": "250m"}}, "1"),
        ({"resource": "limits.cpu", "divisor": "1m"}, {"limits": {"cpu": "250m"}}, "250"),
        ({"resource": "limits.cpu", "divisor": "1m"}, {"limits": {"cpu": "1.5"}}, "1500"),
        ({"resource": "limits.cpu"}, {"limits": {"cpu": "2"}}, "2"),
        ({"resource": "requests.cpu", "divisor": "1m"}, {"requests": {"cpu": "100m"}}, "100"),
        # a request defaults to its limit; no request at all is 0
        ({"resource": "requests.cpu", "divisor": "1m"}, {"limits": {"cpu": "300m"}}, "300"),
        ({"resource": "requests.cpu"}, {}, "0"),
        ({"resource": "requests.memory"}, {}, "0"),
        # no limit: the node's allocatable (kubelet's defaultPodLimitsForDownwardAPI)
        ({"resource": "limits.cpu"}, {}, "4"),
        ({"resource": "limits.memory", "divisor": "1Gi"}, {}, "8"),
        # memory: bytes / divisor, rounded up
        ({"resource": "limits.memory"}, {"limits": {"memory": "64Mi"}}, str(64 * 2**20)),
        ({"resource": "limits.memory", "divisor": "1Mi"}, {"limits": {"memory": "64Mi"}}, "64"),
        ({"resource": "limits.memory", "divisor": "1M"}, {"limits": {"memory": "64Mi"}}, "68"),
        ({"resource": "requests.memory", "divisor": "1Ki"}, {"requests": {"memory": "1k"}}, "1"),
        # divisor "0" is what kubectl prints for an unset one: 1
        ({"resource": "limits.cpu", "divisor": "0"}, {"limits": {"cpu": "250m"}}, "1"),
        ({"resource": "limits.memory", "divisor": 0}, {"limits": {"memory": "1Ki"}}, "1024"),
        ({"resource": "limits.cpu", "divisor": "1000m"}, {"limits": {"cpu": "250m"}}, "1"),
    ],
)
def test_resource_field_ref_as_kubelet_computes_it(
    ref: dict[str, Any], resources: dict[str, Any], expected: str
) -> None:
    pod = parse_pod(doc(resource("V", **ref), resources=resources), source="p.yaml")
    assert env_of(pod) == {"V": expected}


def test_resource_field_ref_of_another_container() -> None:
    pod = parse_pod(
        doc(
            resource("CPU", resource="limits.cpu", divisor="1m", containerName="side"),
            resource("OWN", resource="limits.cpu", divisor="1m", containerName="app"),
        ),
        source="p.yaml",
    )
    assert pod.spec.containers[0].env[0].resource_ref == ResourceFieldRef(
        ContainerResource.LIMITS_CPU, "side", 1
    )
    assert env_of(pod) == {"CPU": "250", "OWN": "4000"}


def test_resource_field_ref_naming_an_init_container_and_from_one() -> None:
    """kubelet resolves containerName among init containers too, and an init container's own
    env may use resourceFieldRef; a name in neither list is refused with the init path."""
    document = doc(resource("INIT_MEM", resource="requests.memory", containerName="setup"))
    document["spec"]["initContainers"] = [
        {
            "name": "setup",
            "image": "img:1",
            "resources": {"requests": {"memory": "32Mi"}},
            "env": [resource("SIDE", resource="limits.memory", containerName="side")],
        }
    ]
    pod = parse_pod(document, source="p.yaml")
    assert env_of(pod) == {"INIT_MEM": str(32 * 1024 * 1024)}
    init_env = resolve_env(pod, pod.spec.init_containers[0], CTX, "172.17.0.9")
    assert init_env == {"SIDE": str(64 * 1024 * 1024)}
    document["spec"]["initContainers"][0]["env"][0]["valueFrom"]["resourceFieldRef"][
        "containerName"
    ] = "ghost"
    error = reject(document)
    assert error.field == "spec.initContainers[0].env[0].valueFrom.resourceFieldRef.containerName"


VF = f"{C0}.env[0].valueFrom"


@pytest.mark.parametrize(
    ("var", "where", "problem"),
    [
        (field("A", "metadata.labels"), f"{VF}.fieldRef.fieldPath", "not supported yet"),
        (field("A", "metadata.annotations"), f"{VF}.fieldRef.fieldPath", "not supported yet"),
        (field("A", "metadata.labels[app]"), f"{VF}.fieldRef.fieldPath", "not supported yet"),
        (field("A", "metadata.labels['a b']"), f"{VF}.fieldRef.fieldPath", "not a valid label key"),
        (field("A", "metadata.labels['']"), f"{VF}.fieldRef.fieldPath", "not a valid label key"),
        (
            field("A", "metadata.annotations['-x']"),
            f"{VF}.fieldRef.fieldPath",
            "not a valid annotation key",
        ),
        (field("A", "spec.serviceAccount"), f"{VF}.fieldRef.fieldPath", "not supported yet"),
        (
            {
                "name": "A",
                "valueFrom": {
                    "fieldRef": {"fieldPath": "spec.nodeName"},
                    "resourceFieldRef": {"resource": "limits.cpu"},
                },
            },
            VF,
            "must have exactly one source (fieldRef or resourceFieldRef), got 2",
        ),
        (resource("A"), f"{VF}.resourceFieldRef.resource", "required"),
        (
            resource("A", resource="limits.ephemeral-storage"),
            f"{VF}.resourceFieldRef.resource",
            "not supported yet (supported: limits.cpu, limits.memory, requests.cpu,",
        ),
        (resource("A", resource="cpu"), f"{VF}.resourceFieldRef.resource", "not supported yet"),
        (
            resource("A", resource="limits.cpu", divisor="2"),
            f"{VF}.resourceFieldRef.divisor",
            '"2" is not a valid divisor for limits.cpu (one of 1m, 1)',
        ),
        (
            resource("A", resource="limits.memory", divisor="1m"),
            f"{VF}.resourceFieldRef.divisor",
            "is not a valid divisor for limits.memory (one of 1, 1k, 1M,",
        ),
        (
            resource("A", resource="limits.memory", divisor="2Mi"),
            f"{VF}.resourceFieldRef.divisor",
            "not a valid divisor",
        ),
        (
            resource("A", resource="limits.cpu", divisor="lots"),
            f"{VF}.resourceFieldRef.divisor",
            "is not a Kubernetes quantity",
        ),
        (
            resource("A", resource="limits.cpu", containerName="ghost"),
            f"{VF}.resourceFieldRef.containerName",
            'no container named "ghost" in this pod',
        ),
        (
            resource("A", resource="limits.cpu", containerName="Bad_Name"),
            f"{VF}.resourceFieldRef.containerName",
            "not a valid DNS-1123 label",
        ),
        (
            resource("A", resource="limits.cpu", bogus=1),
            f"{VF}.resourceFieldRef.bogus",
            "unknown field",
        ),
    ],
)
def test_rejections_name_the_field(var: dict[str, Any], where: str, problem: str) -> None:
    error = reject(doc(var))
    assert error.field == where
    assert problem in error.problem


def test_memory_divisors_kubernetes_allows() -> None:
    allowed = ("1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei")
    for divisor in allowed:
        pod = parse_pod(doc(resource("M", resource="requests.memory", divisor=divisor)), source="p")
        assert pod.spec.containers[0].env[0].resource_ref is not None
