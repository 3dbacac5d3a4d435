"""``lifecycle`` in manifests: postStart/preStop as Kubernetes, preStart preconditions (our
extension); defaults in the normalised manifest, bad values refused naming the field path."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import parse_pod
from agent.types import (
    ExecAction,
    HTTPGetAction,
    Lifecycle,
    PreStartHook,
    SleepAction,
    TCPSocketAction,
    WaitForAction,
)


def pod(lifecycle: Any, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "uid": "u1"},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "img:1",
                    "ports": [{"containerPort": 8080, "name": "web"}],
                    "lifecycle": lifecycle,
                    **container,
                }
            ]
        },
    }


def lifecycle_of(doc: dict[str, Any]) -> tuple[Lifecycle, dict[str, Any]]:
    parsed = parse_pod(doc, source="test")
    again = parse_pod(dict(parsed.manifest), source="test")
    assert again.spec == parsed.spec and again.manifest == parsed.manifest
    return parsed.spec.containers[0].lifecycle, parsed.manifest["spec"]["containers"][0].get(
        "lifecycle", {}
    )


def test_post_start_and_pre_stop_handlers() -> None:
    got, out = lifecycle_of(
        pod(
            {
                "postStart": {"exec": {"command": ["sh", "-c", "setup"]}},
                "preStop": {"sleep": {"seconds": 5}},
            }
        )
    )
    assert got == Lifecycle(post_start=ExecAction(("sh", "-c", "setup")), pre_stop=SleepAction(5))
    assert out == {
        "postStart": {"exec": {"command": ["sh", "-c", "setup"]}},
        "preStop": {"sleep": {"seconds": 5}},
    }
    got, _ = lifecycle_of(
        pod({"postStart": {"tcpSocket": {"port": 80}}, "preStop": {"httpGet": {"port": "web"}}})
    )
    assert got.post_start == TCPSocketAction(80)
    assert got.pre_stop == HTTPGetAction("web", "/", None, "HTTP")


def test_pre_start_preconditions_with_their_defaults() -> None:
    got, out = lifecycle_of(
        pod(
            {
                "preStart": [
                    {"tcpSocket": {"host": "db", "port": 5432}},
                    {"waitFor": {"pod": "cache"}, "deadlineSeconds": 60, "failureThreshold": 3},
                    {"waitFor": {"pod": "x", "namespace": "other", "condition": "Ready"}},
                    {"exec": {"command": ["true"]}, "timeoutSeconds": 5, "periodSeconds": 7},
                ]
            }
        )
    )
    assert got.pre_start == (
        PreStartHook(TCPSocketAction(5432, "db")),
        PreStartHook(WaitForAction("cache"), deadline_s=60, failure_threshold=3),
        PreStartHook(WaitForAction("x", "other")),
        PreStartHook(ExecAction(("true",)), timeout_s=5, period_s=7),
    )
    assert out["preStart"][0] == {
        "tcpSocket": {"host": "db", "port": 5432},
        "timeoutSeconds": 1,
        "periodSeconds": 2,
        "deadlineSeconds": 300,
    }
    assert out["preStart"][1]["waitFor"] == {"pod": "cache", "condition": "Ready"}
    assert out["preStart"][1]["failureThreshold"] == 3


def test_an_empty_lifecycle_is_left_out() -> None:
    got, out = lifecycle_of(pod({"preStart": []}))
    assert got == Lifecycle() and out == {}


@pytest.mark.parametrize(
    ("lifecycle", "field", "problem"),
    [
        ({"onStart": {}}, "lifecycle.onStart", "unknown field"),
        ({"postStart": {}}, "lifecycle.postStart", "must have a handler"),
        (
            {"preStop": {"sleep": {"seconds": 1}, "exec": {"command": ["x"]}}},
            "lifecycle.preStop",
            "exactly one handler",
        ),
        ({"preStop": {"sleep": {"seconds": -1}}}, "lifecycle.preStop.sleep.seconds", "range"),
        ({"postStart": {"waitFor": {"pod": "x"}}}, "lifecycle.postStart.waitFor", "unknown"),
        ({"preStart": {"tcpSocket": {"port": 1}}}, "lifecycle.preStart", "must be a list"),
        ({"preStart": [{"sleep": {"seconds": 1}}]}, "lifecycle.preStart[0].sleep", "unknown"),
        ({"preStart": [{}]}, "lifecycle.preStart[0]", "must have a handler"),
        (
            {"preStart": [{"tcpSocket": {"port": 1}, "periodSeconds": 0}]},
            "lifecycle.preStart[0].periodSeconds",
            "range",
        ),
        (
            {"preStart": [{"tcpSocket": {"port": 1}, "deadlineSeconds": "5"}]},
            "lifecycle.preStart[0].deadlineSeconds",
            "integer",
        ),
        (
            {"preStart": [{"tcpSocket": {"port": 1}, "failureThreshold": 0}]},
            "lifecycle.preStart[0].failureThreshold",
            "range",
        ),
        (
            {"preStart": [{"waitFor": {"pod": "Bad_Name"}}]},
            "lifecycle.preStart[0].waitFor.pod",
            "",
        ),
        (
            {"preStart": [{"waitFor": {"pod": "x", "condition": "Started"}}]},
            "lifecycle.preStart[0].waitFor.condition",
            "not one of Ready",
        ),
        (
            {"preStart": [{"httpGet": {"port": "nope"}}]},
            "lifecycle.preStart[0].httpGet.port",
            "no port named",
        ),
        (
            {"preStart": [{"exec": {"command": []}}]},
            "lifecycle.preStart[0].exec.command",
            "must not be empty",
        ),
    ],
)
def test_bad_lifecycles_name_the_field(lifecycle: Any, field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_pod(pod(lifecycle), source="test")
    assert caught.value.field == f"spec.containers[0].{field}"
    assert problem in caught.value.problem
