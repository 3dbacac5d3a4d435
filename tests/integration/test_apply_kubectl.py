"""Issue 17 items 6 and 7 with a real master and agent: `kubectl get pod -o yaml` output applies
unchanged and runs; a changed image restarts the container with the new image; any other
change is refused naming the fields, unless `--force` (delete, wait, recreate)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.types import LABEL_CONTAINER, LABEL_IMAGE
from tests.helpers import AgentProcess, MasterProcess, node_containers, node_ready, wait_for

pytestmark = pytest.mark.docker

FIXTURE = Path(__file__).parent.parent / "fixtures" / "kubectl" / "get-pod.yaml"
IMAGE = "node-agent-test/busybox:latest"
SECOND = "node-agent-test/busybox:apply-update"  # tagged here, removed after


@pytest.fixture
def second_image(docker_client: docker.DockerClient) -> Iterator[str]:
    docker_client.images.get(IMAGE).tag(SECOND)
    try:
        yield SECOND
    finally:
        docker_client.images.remove(SECOND, noprune=True)


def _running_image(client: docker.DockerClient, node: str) -> tuple[str, str] | None:
    """(image reference, container id) of the pod's running app container, or None. The
    container is made from the pinned image id; its reference is on a label (docs/images.md)."""
    for container in node_containers(client, node):
        labels = container.labels
        if labels.get(LABEL_CONTAINER) == "sleeper" and container.status == "running":
            return labels.get(LABEL_IMAGE, ""), str(container.id)
    return None


def test_kubectl_output_applies_and_updates_as_kubernetes(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    docker_client: docker.DockerClient,
    second_image: str,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        None, master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")

    # kubectl get pod -o yaml output, unchanged: applied with the API server's additions
    # dropped and warned about, and the pod runs here (kind-worker was the other cluster's).
    done = master.nodectl("apply", "-f", str(FIXTURE))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pod/sleeper created\n"
    assert len([line for line in done.stderr.splitlines() if line.startswith("Warning: ")]) == 3

    def running() -> dict[str, Any] | None:
        pod = master.pods().get("sleeper")
        return pod if pod and pod["status"].get("phase") == "Running" else None

    wait_for(running, timeout_s=60, what="the fixture's pod Running")
    first = wait_for(
        lambda: _running_image(docker_client, agent.node_name), what="the app container"
    )
    assert first[0] == IMAGE

    # A new image: the pod is updated in place and its container restarts with the new image.
    changed = tmp_path / "image.yaml"
    changed.write_text(FIXTURE.read_text().replace(f"image: {IMAGE}", f"image: {second_image}"))
    done = master.nodectl("apply", "-f", str(changed))
    assert done.returncode == 0, done.stderr

    def restarted() -> tuple[str, str] | None:
        now = _running_image(docker_client, agent.node_name)
        return now if now is not None and now[0] == second_image else None

    _, second_id = wait_for(restarted, timeout_s=60, what="the container on the new image")
    assert second_id != first[1]
    assert master.pods()["sleeper"]["spec"]["containers"][0]["image"] == second_image

    # Another change (a port): refused naming the field, nothing changes.
    port = tmp_path / "port.yaml"
    port.write_text(changed.read_text().replace("containerPort: 8080", "containerPort: 8081"))
    done = master.nodectl("apply", "-f", str(port))
    assert done.returncode == 1
    [refusal] = [line for line in done.stderr.splitlines() if not line.startswith("Warning: ")]
    assert refusal.startswith(
        'The Pod "sleeper" is invalid: spec: Forbidden: pod updates may not change fields '
        "other than spec.containers[*].image"
    ), done.stderr
    assert "changed: spec.containers[0].ports[0].containerPort" in done.stderr
    assert "Traceback" not in done.stderr
    assert _running_image(docker_client, agent.node_name) == (second_image, second_id)

    # --force: deleted, waited for, created again with the new port (and a new uid).
    old_uid = master.pods()["sleeper"]["metadata"]["uid"]
    done = master.nodectl("apply", "-f", str(port), "--force")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pod/sleeper replaced\n"
    pod = wait_for(running, timeout_s=60, what="the recreated pod Running")
    assert pod["spec"]["containers"][0]["ports"][0]["containerPort"] == 8081
    assert pod["metadata"]["uid"] != old_uid
