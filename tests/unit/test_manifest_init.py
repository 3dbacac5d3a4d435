"""``spec.initContainers``: parsed as containers, Kubernetes' rules for init containers, the
normalised manifest round trip, and every rejection naming its path."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import parse_pod
from agent.types import Container, EnvVar, PullPolicy, VolumeMount


def doc(*inits: dict[str, Any], containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "uid": "u1"},
        "spec": {
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": containers or [{"name": "app", "image": "img:1"}],
            "initContainers": list(inits),
        },
    }


def reject(document: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_pod(document, source="pods/p.yaml")
    return info.value


def test_init_containers_parse_in_order_with_container_fields() -> None:
    pod = parse_pod(
        doc(
            {
                "name": "migrate",
                "image": "tool:2",
                "command": ["sh", "-c", "migrate"],
                "env": [{"name": "MODE", "value": "up"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
            {"name": "warm", "image": "tool:latest"},
        ),
        source="api",
    )
    assert pod.spec.init_containers == (
        Container(
            name="migrate",
            image="tool:2",
            image_pull_policy=PullPolicy.IF_NOT_PRESENT,
            command=("sh", "-c", "migrate"),
            env=(EnvVar("MODE", "up"),),
            volume_mounts=(VolumeMount("data", "/data"),),
        ),
        Container(name="warm", image="tool:latest", image_pull_policy=PullPolicy.ALWAYS),
    )
    assert [c.name for c in pod.spec.containers] == ["app"]
    # Normalised with defaults, and parsing the normalised manifest gives the same pod.
    assert pod.manifest["spec"]["initContainers"] == [
        {
            "name": "migrate",
            "image": "tool:2",
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", "migrate"],
            "env": [{"name": "MODE", "value": "up"}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        {"name": "warm", "image": "tool:latest", "imagePullPolicy": "Always"},
    ]
    again = parse_pod(pod.manifest, source="api")
    assert again == pod
    assert again.spec_hash == pod.spec_hash


def test_no_init_containers_leaves_the_manifest_as_before() -> None:
    empties: list[object] = [[], None]
    for empty in empties:
        document = doc()
        document["spec"]["initContainers"] = empty
        pod = parse_pod(document, source="api")
        assert pod.spec.init_containers == ()
        assert "initContainers" not in pod.manifest["spec"]


def test_an_init_container_changes_the_spec_hash() -> None:
    without = parse_pod(doc(), source="api")
    with_init = parse_pod(doc({"name": "i", "image": "img:1"}), source="api")
    assert without.spec_hash != with_init.spec_hash


@pytest.mark.parametrize(
    ("inits", "containers", "path", "problem"),
    [
        (
            [{"name": "app", "image": "x"}],
            None,
            "spec.initContainers[0].name",
            'duplicate container name "app" (unique across initContainers and containers)',
        ),
        (
            [{"name": "i", "image": "x"}, {"name": "i", "image": "y"}],
            None,
            "spec.initContainers[1].name",
            'duplicate container name "i" (unique across initContainers and containers)',
        ),
        (
            [{"name": "i", "image": "x", "restartPolicy": "Always"}],
            None,
            "spec.initContainers[0].restartPolicy",
            "not supported yet (sidecar init containers, restartPolicy: Always)",
        ),
        (
            [{"name": "i", "image": "x", "lifecycle": {"postStart": {}}}],
            None,
            "spec.initContainers[0].lifecycle",
            "must not be set for init containers",
        ),
        *(
            (
                [{"name": "i", "image": "x", probe: {"exec": {"command": ["true"]}}}],
                None,
                f"spec.initContainers[0].{probe}",
                "must not be set for init containers",
            )
            for probe in ("livenessProbe", "readinessProbe", "startupProbe")
        ),
        ([{"image": "x"}], None, "spec.initContainers[0].name", "required"),
        ([{"name": "i"}], None, "spec.initContainers[0].image", "required"),
        ([{"name": "i", "image": "x", "bogus": 1}], None, "spec.initContainers[0].bogus", ""),
        (
            [{"name": "i", "image": "x", "volumeMounts": [{"name": "nope", "mountPath": "/a"}]}],
            None,
            "spec.initContainers[0].volumeMounts[0].name",
            'no volume named "nope" in spec.volumes',
        ),
        ([{"name": "I_1", "image": "x"}], None, "spec.initContainers[0].name", ""),
    ],
)
def test_init_container_rejections_name_the_path(
    inits: list[dict[str, Any]],
    containers: list[dict[str, Any]] | None,
    path: str,
    problem: str,
) -> None:
    error = reject(doc(*inits, containers=containers))
    assert error.field == path
    assert problem in error.problem


def test_init_containers_must_be_a_list_of_objects() -> None:
    document = doc()
    document["spec"]["initContainers"] = {"name": "i"}
    assert reject(document).field == "spec.initContainers"
    document["spec"]["initContainers"] = ["i"]
    assert reject(document).field == "spec.initContainers[0]"
