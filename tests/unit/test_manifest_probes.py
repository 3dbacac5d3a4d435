"""Probes in manifests: every handler, Kubernetes' defaults, and each bad value refused naming
its field path."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import parse_pod
from agent.types import (
    ExecAction,
    GRPCAction,
    HTTPGetAction,
    HTTPHeader,
    Probe,
    ProbeKind,
    TCPSocketAction,
)

C0 = "spec.containers[0]"
PORTS = [{"name": "http", "containerPort": 8080}]


def pod_with(**container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "img:1", "ports": PORTS, **container}]},
    }


def reject(**container: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_pod(pod_with(**container), source="api")
    return info.value


def test_defaults_are_kubernetes_and_written_into_the_manifest() -> None:
    pod = parse_pod(pod_with(livenessProbe={"exec": {"command": ["true"]}}), source="api")
    container = pod.spec.containers[0]
    assert container.liveness_probe == Probe(ExecAction(("true",)))
    assert (container.liveness_probe.period_s, container.liveness_probe.timeout_s) == (10, 1)
    assert container.probe(ProbeKind.LIVENESS) is container.liveness_probe
    assert container.readiness_probe is None and container.startup_probe is None
    assert pod.manifest["spec"]["containers"][0]["livenessProbe"] == {
        "exec": {"command": ["true"]},
        "initialDelaySeconds": 0,
        "periodSeconds": 10,
        "timeoutSeconds": 1,
        "successThreshold": 1,
        "failureThreshold": 3,
    }
    # The normalised manifest parses to the same pod.
    assert parse_pod(pod.manifest, source="api").spec == pod.spec


def test_every_handler_and_timing_field() -> None:
    pod = parse_pod(
        pod_with(
            startupProbe={
                "tcpSocket": {"port": "http", "host": "10.0.0.9"},
                "failureThreshold": 30,
                "periodSeconds": 2,
                "terminationGracePeriodSeconds": 5,
            },
            readinessProbe={
                "httpGet": {
                    "path": "healthz",
                    "port": 8080,
                    "scheme": "HTTPS",
                    "httpHeaders": [{"name": "X-Probe", "value": "yes"}],
                },
                "initialDelaySeconds": 3,
                "timeoutSeconds": 2,
                "successThreshold": 2,
            },
            livenessProbe={"grpc": {"port": 9090, "service": "db"}},
        ),
        source="api",
    )
    c = pod.spec.containers[0]
    assert c.startup_probe == Probe(
        TCPSocketAction("http", "10.0.0.9"),
        period_s=2,
        failure_threshold=30,
        termination_grace_period_s=5,
    )
    assert c.readiness_probe == Probe(
        HTTPGetAction(8080, "/healthz", None, "HTTPS", (HTTPHeader("X-Probe", "yes"),)),
        initial_delay_s=3,
        timeout_s=2,
        success_threshold=2,
    )
    assert c.liveness_probe == Probe(GRPCAction(9090, "db"))
    assert parse_pod(pod.manifest, source="api").spec == pod.spec


@pytest.mark.parametrize(
    ("field", "probe", "where", "problem"),
    [
        ("livenessProbe", {}, "livenessProbe", "must have a handler"),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "tcpSocket": {"port": 1}},
            "livenessProbe",
            "must have exactly one handler, got exec, tcpSocket",
        ),
        ("livenessProbe", {"exec": {"command": []}}, "livenessProbe.exec.command", "empty"),
        ("livenessProbe", {"exec": {}}, "livenessProbe.exec.command", "required"),
        ("livenessProbe", {"httpGet": {}}, "livenessProbe.httpGet.port", "required"),
        (
            "readinessProbe",
            {"httpGet": {"port": "metrics"}},
            "readinessProbe.httpGet.port",
            'no port named "metrics"',
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": 0}},
            "readinessProbe.httpGet.port",
            "out of range",
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": 80, "scheme": "FTP"}},
            "readinessProbe.httpGet.scheme",
            "not one of HTTP, HTTPS",
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": 80, "path": "/a\r\nHost: evil"}},
            "readinessProbe.httpGet.path",
            "control characters",
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": 80, "httpHeaders": [{"name": "X", "value": "a\nb: c"}]}},
            "readinessProbe.httpGet.httpHeaders[0].value",
            "control characters",
        ),
        (
            "readinessProbe",
            {"httpGet": {"port": 80, "httpHeaders": [{"name": "X Y", "value": "1"}]}},
            "readinessProbe.httpGet.httpHeaders[0].name",
            "not a valid HTTP header name",
        ),
        (
            "readinessProbe",
            {"tcpSocket": {"port": 80, "host": "a/b"}},
            "readinessProbe.tcpSocket.host",
            "not a host name",
        ),
        ("startupProbe", {"grpc": {"port": "http"}}, "startupProbe.grpc.port", "integer"),
        ("startupProbe", {"grpc": {"port": 1, "x": 1}}, "startupProbe.grpc.x", "unknown field"),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "periodSeconds": 0},
            "livenessProbe.periodSeconds",
            "out of range",
        ),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "initialDelaySeconds": -1},
            "livenessProbe.initialDelaySeconds",
            "out of range",
        ),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "timeoutSeconds": "1s"},
            "livenessProbe.timeoutSeconds",
            "must be an integer",
        ),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "successThreshold": 2},
            "livenessProbe.successThreshold",
            "must be 1 for a liveness probe",
        ),
        (
            "startupProbe",
            {"exec": {"command": ["a"]}, "successThreshold": 3},
            "startupProbe.successThreshold",
            "must be 1 for a startup probe",
        ),
        (
            "readinessProbe",
            {"exec": {"command": ["a"]}, "terminationGracePeriodSeconds": 3},
            "readinessProbe.terminationGracePeriodSeconds",
            "must not be set for a readiness probe",
        ),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "terminationGracePeriodSeconds": 0},
            "livenessProbe.terminationGracePeriodSeconds",
            "out of range",
        ),
        (
            "livenessProbe",
            {"exec": {"command": ["a"]}, "failureThreshold": 0},
            "livenessProbe.failureThreshold",
            "out of range",
        ),
        ("livenessProbe", {"exec": {"command": ["a"]}, "x": 1}, "livenessProbe.x", "unknown"),
    ],
)
def test_bad_probes_are_refused_naming_the_field(
    field: str, probe: dict[str, Any], where: str, problem: str
) -> None:
    error = reject(**{field: probe})
    assert error.field == f"{C0}.{where}"
    assert problem in error.problem
