"""The Downward API in env (issue 15 item 6), seen by a real container: `env` in busybox."""

from __future__ import annotations

from collections.abc import Callable

import docker
import pytest

from tests.helpers import AgentProcess, pod_manifest, running_phase, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]


def _field(name: str, path: str) -> dict[str, object]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource(name: str, **ref: str) -> dict[str, object]:
    return {"name": name, "valueFrom": {"resourceFieldRef": ref}}


def test_env_from_labels_annotations_ips_and_resources(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    app: dict[str, object] = {
        "name": "app",
        # `env` prints the environment; the marker says it is complete.
        "command": ["sh", "-c", "env; echo END-OF-ENV; exec sleep 3600"],
        "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
        "env": [
            _field("APP", "metadata.labels['app']"),
            _field("OWNER", "metadata.annotations['example.com/owner']"),
            _field("NOPE", "metadata.labels['nope']"),
            _field("SA", "spec.serviceAccountName"),
            _field("POD_IPS", "status.podIPs"),
            _field("POD_IP", "status.podIP"),
            _resource("CPU_LIMIT", resource="limits.cpu"),
            _resource("CPU_MILLIS", resource="limits.cpu", divisor="1m"),
            _resource("MEM_MI", resource="limits.memory", divisor="1Mi"),
            _resource("MEM_REQ", resource="requests.memory"),
            _resource("SIDE_CPU_REQ", resource="requests.cpu", divisor="1m", containerName="side"),
            _resource("SIDE_CPU_LIMIT", resource="limits.cpu", containerName="side"),
        ],
    }
    side: dict[str, object] = {
        "name": "side",
        "command": ["sleep", "3600"],
        "resources": {"requests": {"cpu": "100m"}},
    }
    manifest = pod_manifest("downward", [app, side])
    manifest["metadata"]["labels"] = {"app": "shop"}
    manifest["metadata"]["annotations"] = {"example.com/owner": "ops team"}
    agent.write_manifest("downward.yaml", manifest)
    pod = wait_for(lambda: running_phase(agent, "downward"), what="pod downward Running")
    app_id = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "app")[
        "containerID"
    ].removeprefix("docker://")

    def printed() -> str | None:
        text: str = docker_client.containers.get(app_id).logs().decode()
        return text if "END-OF-ENV" in text else None

    logs = wait_for(printed, what="the app printed its environment")
    env = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
    pod_ip = pod["status"]["podIP"]
    assert pod_ip
    cpus = docker_client.info()["NCPU"]
    expected = {
        "APP": "shop",
        "OWNER": "ops team",
        "NOPE": "",
        "SA": "",
        "POD_IPS": pod_ip,
        "POD_IP": pod_ip,
        "CPU_LIMIT": "1",  # 250m rounded up to whole cpus
        "CPU_MILLIS": "250",
        "MEM_MI": "64",
        "MEM_REQ": str(64 * 2**20),  # the request defaults to the limit
        "SIDE_CPU_REQ": "100",
        "SIDE_CPU_LIMIT": str(cpus),  # no limit: the node's capacity
    }
    assert {name: env.get(name) for name in expected} == expected
