"""Images through a real agent on the real engine (issue 16 items 1 and 2): the pull policy
matrix with local images, an unreachable registry on loopback (ImagePullBackOff with the
per-image back-off, one attempt per step for two pods, a neighbour unaffected), an invalid
name, and digest pinning: a running pod keeps the image id its tag named at admission after
the tag moves, after its container crashes and restarts, and after ``kill -9`` of the agent
and a restart; a changed manifest resolves the tag again."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.helpers import (
    TEST_IMAGE,
    AgentProcess,
    MasterProcess,
    node_ready,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
UNREACHABLE = "127.0.0.1:1/node-agent-test/nope:1"  # loopback, nothing listens: refused at once
# A deadline for what follows an agent's start (a sandbox, a pull): generous, for a CI machine
# running two test workers beside other load (seen at 30 s+ under a load of 10).
SLOW_S = 90.0


def container_status(agent: AgentProcess, pod: str, name: str = "c") -> dict[str, Any] | None:
    found = agent.pod(pod)
    if not found:
        return None
    statuses = found["status"].get("containerStatuses") or []
    return next((s for s in statuses if s["name"] == name), None)


def waiting_reason(agent: AgentProcess, pod: str) -> str | None:
    status = container_status(agent, pod)
    return status["state"].get("waiting", {}).get("reason") if status else None


def log_lines(agent: AgentProcess, msg: str, image: str) -> list[dict[str, Any]]:
    """The agent's log lines ``msg`` about ``image``."""
    lines = []
    for line in agent.log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("msg") == msg and entry.get("image") == image:
                lines.append(entry)
    return lines


def test_pull_policy_matrix_and_an_unreachable_registry(make_agent: MakeAgent) -> None:
    agent = make_agent(backoff_initial_s=1.0, backoff_max_s=8.0).start()
    absent = f"node-agent-test/absent-{uuid.uuid4().hex[:8]}:1"
    pods = {
        "never-present": (TEST_IMAGE, "Never"),
        "ifnp-present": (TEST_IMAGE, "IfNotPresent"),
        "never-absent": (absent, "Never"),
        "ifnp-absent": ("127.0.0.1:1/node-agent-test/absent:1", "IfNotPresent"),
        "always-a": (UNREACHABLE, "Always"),
        "always-b": (UNREACHABLE, "Always"),
        "invalid": ("node-agent-test/Bad:Name", "IfNotPresent"),
    }
    for name, (image, policy) in pods.items():
        spec = {**sleeper("c"), "image": image, "imagePullPolicy": policy}
        agent.write_manifest(f"{name}.yaml", pod_manifest(name, [spec]))

    wait_for(
        lambda: running_phase(agent, "never-present"),
        timeout_s=SLOW_S,
        what="Never, present: Running",
    )
    wait_for(
        lambda: running_phase(agent, "ifnp-present"),
        timeout_s=SLOW_S,
        what="IfNotPresent, present: Running",
    )
    wait_for(
        lambda: waiting_reason(agent, "never-absent") == "ErrImageNeverPull",
        timeout_s=SLOW_S,
        what="Never, absent: ErrImageNeverPull",
    )
    wait_for(
        lambda: waiting_reason(agent, "invalid") == "InvalidImageName",
        timeout_s=SLOW_S,
        what="an invalid reference: InvalidImageName",
    )
    wait_for(
        lambda: waiting_reason(agent, "ifnp-absent") in ("ErrImagePull", "ImagePullBackOff"),
        timeout_s=SLOW_S,
        what="IfNotPresent, absent and unpullable: pulled and failed",
    )
    for name in ("always-a", "always-b"):
        wait_for(
            lambda name=name: waiting_reason(agent, name) == "ImagePullBackOff",
            timeout_s=SLOW_S,
            what=f"{name}: ImagePullBackOff",
        )
    # Meanwhile a pod with a local image starts: nothing waits for the failing pulls.
    agent.write_manifest("neighbour.yaml", pod_manifest("neighbour", [sleeper("c")]))
    wait_for(
        lambda: running_phase(agent, "neighbour"),
        timeout_s=SLOW_S,
        what="a neighbour starts meanwhile",
    )

    # One attempt per back-off step for the two pods: the image's back-off doubles at each
    # failure (1, 2, 4 s). Two pods pulling on their own would fail twice per step (1, 1, 2, …).
    def failures() -> list[float]:
        return [float(e["retry_s"]) for e in log_lines(agent, "image pull failed", UNREACHABLE)]

    wait_for(lambda: len(failures()) >= 3, timeout_s=SLOW_S, what="three failed attempts")
    failed = failures()
    assert failed[:3] == [1.0, 2.0, 4.0]
    attempts = log_lines(agent, "pulling image", UNREACHABLE)  # read after: never fewer
    assert len(attempts) - len(failed) in (0, 1)  # 1: one in flight

    events = agent.events()

    def messages(pod: str, reason: str) -> list[str]:
        return [
            e["message"]
            for e in events
            if e["involvedObject"]["name"] == pod and e["reason"] == reason
        ]

    assert messages("ifnp-present", "Pulled") == [
        f'Container image "{TEST_IMAGE}" already present on machine'
    ]
    assert messages("never-absent", "ErrImageNeverPull") == [
        f'Container image "{absent}" is not present with pull policy of Never'
    ]
    # Which of the two pods ran an attempt (and so heard Pulling and Failed) is a race; each
    # was told BackOff (the other's failure, or its own attempt's ErrImagePull turning into
    # ImagePullBackOff).
    both = [*messages("always-a", "Pulling"), *messages("always-b", "Pulling")]
    assert f'Pulling image "{UNREACHABLE}"' in both
    failed = [*messages("always-a", "Failed"), *messages("always-b", "Failed")]
    assert failed and all(m.startswith(f'Failed to pull image "{UNREACHABLE}": ') for m in failed)
    for name in ("always-a", "always-b"):
        assert messages(name, "BackOff") == [f'Back-off pulling image "{UNREACHABLE}"']
    assert messages("invalid", "InspectFailed")[0].endswith("invalid reference format")
    assert agent.pod("always-a")["status"]["phase"] == "Pending"


@pytest.fixture
def two_images(docker_client: docker.DockerClient) -> Iterator[tuple[str, str, str]]:
    """A fresh tag on an image built from the test image (``MARK=a``) and a second image
    (``MARK=b``) to move the tag to: (reference, id of a, id of b)."""
    ref = f"node-agent-test/pin-{uuid.uuid4().hex[:8]}:v1"
    ids = []
    for mark in ("a", "b"):
        dockerfile = f"FROM {TEST_IMAGE}\nENV MARK={mark}\nLABEL io.node-agent.test=pinning\n"
        image, _ = docker_client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=f"{ref}-{mark}", rm=True
        )
        ids.append(image.id)
    docker_client.api.tag(ids[0], *ref.rsplit(":", 1))
    yield ref, ids[0], ids[1]
    for tag in (ref, f"{ref}-a", f"{ref}-b"):
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


def test_a_running_pod_keeps_its_pinned_image(
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    two_images: tuple[str, str, str],
) -> None:
    ref, id_a, id_b = two_images
    agent = make_agent(backoff_initial_s=0.5, backoff_max_s=1.0).start()
    spec = {
        "name": "c",
        "image": ref,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sh", "-c", "echo mark=$MARK; trap 'exit 0' TERM; sleep 3600 & wait"],
    }
    manifest = pod_manifest("pinned", [spec])
    agent.write_manifest("pinned.yaml", manifest)
    wait_for(lambda: running_phase(agent, "pinned"), timeout_s=SLOW_S, what="pod pinned Running")

    def runs() -> tuple[int, str, str]:
        """(restartCount, imageID, the running container's image id) once it runs."""
        status = container_status(agent, "pinned")
        assert status is not None
        container = docker_client.containers.get(status["containerID"].removeprefix("docker://"))
        return status["restartCount"], status["imageID"], container.attrs["Image"]

    restarts, image_id, running = runs()
    assert (restarts, image_id, running) == (0, f"docker://{id_a}", id_a)

    docker_client.api.tag(id_b, *ref.rsplit(":", 1))  # the tag moves to another image
    assert docker_client.images.get(ref).id == id_b

    def crash_and_wait(count: int) -> None:
        status = container_status(agent, "pinned")
        assert status is not None
        docker_client.containers.get(status["containerID"].removeprefix("docker://")).kill()
        wait_for(
            lambda: (
                (s := container_status(agent, "pinned")) is not None
                and s["restartCount"] == count
                and "running" in s["state"]
            ),
            timeout_s=SLOW_S,
            what=f"restart {count} running",
        )

    crash_and_wait(1)
    assert runs() == (1, f"docker://{id_a}", id_a)

    agent.kill9()
    agent.start()
    wait_for(
        lambda: running_phase(agent, "pinned"),
        timeout_s=SLOW_S,
        what="pod pinned Running after kill -9",
    )
    crash_and_wait(2)
    assert runs() == (2, f"docker://{id_a}", id_a)
    current = container_status(agent, "pinned")
    assert current is not None
    logs = docker_client.containers.get(current["containerID"].removeprefix("docker://")).logs()
    assert b"mark=a" in logs

    # A changed manifest (here an annotation: the static file is the truth) resolves again.
    manifest["metadata"]["annotations"] = {"example.com/resolve": "again"}
    agent.write_manifest("pinned.yaml", manifest)
    wait_for(
        lambda: (
            (s := container_status(agent, "pinned")) is not None
            and s["imageID"] == f"docker://{id_b}"
            and "running" in s["state"]
        ),
        timeout_s=SLOW_S,
        what="the new manifest runs the tag's image of now",
    )


def test_describe_pod_shows_the_pull_events_and_the_pinned_image(
    make_master: Callable[..., MasterProcess],
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    """What an operator reads: the node's pull events reach ``nodectl describe pod`` through
    the master (Pulling, Failed, BackOff; Pulled "already present"), and the Image ID is the
    pinned one."""
    master = make_master().start()
    agent = make_agent(
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
        backoff_initial_s=1.0,
        backoff_max_s=4.0,
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), timeout_s=SLOW_S, what="node Ready")
    unpullable = {**sleeper("c"), "image": UNREACHABLE, "imagePullPolicy": "Always"}
    local = {**sleeper("c"), "imagePullPolicy": "IfNotPresent"}
    manifest = tmp_path / "pods.yaml"
    manifest.write_text(
        "\n---\n".join(
            json.dumps(pod_manifest(name, [spec]))
            for name, spec in (("unpullable", unpullable), ("local", local))
        )
    )
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def described(pod: str, *needles: str) -> str | None:
        out = master.nodectl("describe", "pod", pod).stdout
        return out if all(n in out for n in needles) else None

    out = wait_for(
        lambda: described(
            "unpullable",
            f'Pulling image "{UNREACHABLE}"',
            f'Failed to pull image "{UNREACHABLE}": ',
            f'Back-off pulling image "{UNREACHABLE}"',
        ),
        timeout_s=SLOW_S,
        what="the pull events in describe pod",
    )
    events = out[out.find("Events:") :]
    assert re.search(r"^ +Warning +Failed ", events, re.MULTILINE)
    assert re.search(r"^ +Reason: +(ErrImagePull|ImagePullBackOff)$", out, re.MULTILINE)
    image_id = docker_client.images.get(TEST_IMAGE).id
    out = wait_for(
        lambda: described(
            "local",
            f'Container image "{TEST_IMAGE}" already present on machine',
            f"docker://{image_id}",
        ),
        timeout_s=SLOW_S,
        what="the pinned image id and Pulled in describe pod",
    )
    assert re.search(rf"^ +Image ID: +docker://{re.escape(image_id)}$", out, re.MULTILINE)


class _Registry(http.server.BaseHTTPRequestHandler):
    """A registry on loopback that wants Basic credentials and then knows no image: what
    dockerd sends it is recorded (the Authorization headers)."""

    seen: list[str]

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        if auth:
            self.seen.append(auth)
            self.send_response(404)
            body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}'
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="node-agent-test"')
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
        self.send_header("Content-Type", "application/json")
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[tuple[str, list[str]]]:
    """(host:port, the Authorization headers it received)."""
    seen: list[str] = []
    handler = type("Registry", (_Registry,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_credentials_from_the_configured_file_reach_the_registry(
    make_agent: MakeAgent, registry: tuple[str, list[str]], tmp_path: Path
) -> None:
    host, seen = registry
    secret = f"pw-{uuid.uuid4().hex[:8]}"
    creds = tmp_path / "config.json"
    token = base64.b64encode(f"puller:{secret}".encode()).decode()
    creds.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    creds.chmod(0o600)
    agent = make_agent(image_credentials_file=str(creds), backoff_initial_s=1.0).start()
    image = f"{host}/private/app:1"
    spec = {**sleeper("c"), "image": image, "imagePullPolicy": "Always"}
    agent.write_manifest("private.yaml", pod_manifest("private", [spec]))
    wait_for(
        lambda: f"Basic {token}" in seen,
        timeout_s=SLOW_S,
        what="the registry saw the file's credentials",
    )
    wait_for(
        lambda: waiting_reason(agent, "private") in ("ErrImagePull", "ImagePullBackOff"),
        timeout_s=SLOW_S,
        what="the pull failed (the registry knows no image)",
    )
    assert secret not in agent.log_path.read_text(errors="replace")
    assert all(secret not in json.dumps(e) for e in agent.events())
