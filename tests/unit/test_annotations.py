"""Our annotations (agent/annotations.py): the sd_notify opt-in, checked with the pod."""

from __future__ import annotations

from typing import Any

import pytest

from agent.annotations import NO_NOTIFY, NotifySettings, notify_settings
from agent.errors import ManifestError
from agent.manifest import parse_pod


def pod_doc(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations},
        "spec": {
            "containers": [{"name": "web", "image": "i:1"}, {"name": "worker", "image": "i:1"}]
        },
    }


@pytest.mark.parametrize(
    ("annotations", "settings"),
    [
        ({}, NO_NOTIFY),
        ({"other": "x"}, NO_NOTIFY),
        ({"node-agent.io/notify": ""}, NotifySettings()),
        ({"node-agent.io/notify": "web"}, NotifySettings(frozenset({"web"}))),
        (
            {"node-agent.io/notify": " web , worker,web,"},
            NotifySettings(frozenset({"web", "worker"})),
        ),
        (
            {"node-agent.io/notify": "web", "node-agent.io/notify-watchdog-seconds": "30"},
            NotifySettings(frozenset({"web"}), 30),
        ),
    ],
)
def test_notify_settings(annotations: dict[str, str], settings: NotifySettings) -> None:
    assert parse_pod(pod_doc(annotations), source="p.yaml")  # the parser accepts it
    assert notify_settings(annotations, {"web", "worker"}) == settings


NOTIFY = 'metadata.annotations["node-agent.io/notify"]'
WATCHDOG = 'metadata.annotations["node-agent.io/notify-watchdog-seconds"]'


@pytest.mark.parametrize(
    ("annotations", "field", "problem"),
    [
        ({"node-agent.io/notify": "ghost"}, NOTIFY, '"ghost" is not an app container of this pod'),
        ({"node-agent.io/notify": "web;worker"}, NOTIFY, "is not an app container"),
        (
            {"node-agent.io/notify": "web", "node-agent.io/notify-watchdog-seconds": "1.5"},
            WATCHDOG,
            '"1.5" is not a whole number of seconds',
        ),
        (
            {"node-agent.io/notify": "web", "node-agent.io/notify-watchdog-seconds": "0"},
            WATCHDOG,
            "0 is out of range (must be between 1 and 86400)",
        ),
        (
            {"node-agent.io/notify": "web", "node-agent.io/notify-watchdog-seconds": "99999999"},
            WATCHDOG,
            "is not a whole number of seconds",
        ),
        (
            {"node-agent.io/notify": "web", "node-agent.io/notify-watchdog-seconds": "\u0663"},
            WATCHDOG,
            "is not a whole number of seconds",
        ),
        (
            {"node-agent.io/notify-watchdog-seconds": "30"},
            WATCHDOG,
            'needs containers in "node-agent.io/notify" to watch',
        ),
    ],
)
def test_bad_notify_annotations_name_the_annotation(
    annotations: dict[str, str], field: str, problem: str
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_pod(pod_doc(annotations), source="p.yaml")
    assert info.value.field == field
    assert problem in info.value.problem
    assert str(info.value).startswith(f"p.yaml: {field}: ")


@pytest.mark.parametrize(
    "mount", ["/run/node-agent/notify", "/run/node-agent/notify/x", "//run/node-agent/notify/"]
)
def test_a_notify_container_may_not_mount_over_its_socket(mount: str) -> None:
    doc = pod_doc({"node-agent.io/notify": "worker"})
    doc["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    doc["spec"]["containers"][1]["volumeMounts"] = [
        {"name": "v", "mountPath": "/data"},
        {"name": "v", "mountPath": mount},
    ]
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="p.yaml")
    assert info.value.field == "spec.containers[1].volumeMounts[1].mountPath"
    assert 'is where the notify socket of "worker" is mounted' in info.value.problem
    # Elsewhere, or in a container without notify, it is any path.
    doc["spec"]["containers"][1]["volumeMounts"][1]["mountPath"] = "/run/node-agent"
    parse_pod(doc, source="p.yaml")
    doc["spec"]["containers"][0]["volumeMounts"] = [{"name": "v", "mountPath": mount}]
    doc["spec"]["containers"][1]["volumeMounts"] = []
    parse_pod(doc, source="p.yaml")
