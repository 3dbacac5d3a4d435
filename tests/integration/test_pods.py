"""Pods on the real Docker engine through a real agent process: start, share localhost,
restart with back-off, honour restart policies, delete, survive bad manifests and restarts."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import docker
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import (
    AgentProcess,
    node_containers,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]


def _ts(value: str) -> datetime:
    head, _, tail = value.partition(".")
    digits = "".join(ch for ch in tail if ch.isdigit())[:6]
    return datetime.fromisoformat(
        f"{head}.{digits or '0'}+00:00" if tail else value.replace("Z", "+00:00")
    )


def _app_containers(client: docker.DockerClient, node: str, pod: str) -> list[object]:
    return [
        c
        for c in node_containers(client, node)
        if c.labels.get("io.node-agent.pod.name") == pod
        and c.labels.get("io.node-agent.kind") == "app"
    ]


def _running_ids(client: docker.DockerClient, node: str) -> dict[str, str]:
    return {c.name: c.id for c in node_containers(client, node) if c.status == "running"}


def test_two_container_pod_shares_localhost(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    web = {
        "name": "web",
        "command": [
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-web > /www/index.html"
            " && exec httpd -f -p 8080 -h /www",
        ],
        "ports": [{"containerPort": 8080}],
        "resources": {
            "limits": {"cpu": "500m", "memory": "64Mi"},
            "requests": {"cpu": "100m", "memory": "32Mi"},
        },
        "env": [
            {"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PLAIN", "value": "x"},
        ],
    }
    sidecar = {
        "name": "sidecar",
        "command": [
            "sh",
            "-c",
            "until wget -q -O - http://127.0.0.1:8080/; do sleep 0.2; done; exec sleep 3600",
        ],
    }
    agent.write_manifest("web.yaml", pod_manifest("web", [web, sidecar]))

    pod = wait_for(lambda: running_phase(agent, "web"), what="pod web Running")
    status = pod["status"]
    assert status["podIP"], status
    assert {c["name"] for c in status["containerStatuses"]} == {"web", "sidecar"}
    assert all(c["containerID"].startswith("docker://") for c in status["containerStatuses"])
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }

    sidecar_c = next(
        c
        for c in _app_containers(docker_client, agent.node_name, "web")
        if c.labels["io.node-agent.container"] == "sidecar"
    )
    wait_for(
        lambda: b"hello-from-web" in sidecar_c.logs(),
        what="sidecar fetched the page over 127.0.0.1",
    )

    web_c = next(
        c
        for c in _app_containers(docker_client, agent.node_name, "web")
        if c.labels["io.node-agent.container"] == "web"
    )
    web_c.reload()
    host = web_c.attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 64 * 1024 * 1024
    assert host["CpuShares"] == 102
    assert host["LogConfig"]["Type"] == "json-file"
    assert host["LogConfig"]["Config"]["max-size"]
    assert host["NetworkMode"].startswith("container:")
    env = dict(item.split("=", 1) for item in web_c.attrs["Config"]["Env"])
    assert env["MY_POD"] == "web"
    assert env["MY_IP"] == status["podIP"]
    assert env["PLAIN"] == "x"
    assert web_c.name.startswith("web_web_default_") and web_c.name.endswith("_0")
    labels = web_c.labels
    for key in ("node", "pod.uid", "pod.name", "pod.namespace", "container", "attempt"):
        assert f"io.node-agent.{key}" in labels


def test_killed_container_restarts_with_backoff(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent(backoff_initial_s=2.0, backoff_max_s=8.0).start()
    agent.write_manifest("crash.yaml", pod_manifest("crash", [sleeper()]))
    wait_for(lambda: running_phase(agent, "crash"), what="pod crash Running")

    delays = []
    for expected_restarts in (1, 2):
        [victim] = [
            c
            for c in _app_containers(docker_client, agent.node_name, "crash")
            if c.status == "running"
        ]
        victim.kill()

        def restarted(n: int = expected_restarts) -> dict | None:
            pod = running_phase(agent, "crash")
            return (
                pod if pod and pod["status"]["containerStatuses"][0]["restartCount"] == n else None
            )

        pod = wait_for(restarted, timeout_s=40, what=f"restartCount {expected_restarts}")
        cs = pod["status"]["containerStatuses"][0]
        assert cs["lastState"]["terminated"]["exitCode"] == 137
        victim.reload()
        new = docker_client.containers.get(cs["containerID"].removeprefix("docker://"))
        gap = (
            _ts(new.attrs["State"]["StartedAt"]) - _ts(victim.attrs["State"]["FinishedAt"])
        ).total_seconds()
        delays.append(gap)
        assert new.labels["io.node-agent.attempt"] == str(expected_restarts)
    # The back-off starts at 2 s and doubles: the restarts waited at least that long.
    assert delays[0] >= 1.9, delays
    assert delays[1] >= 3.9, delays
    # Old attempts are kept only as the previous container (for logs --previous).
    # The attempt before the previous one is pruned by the sync that starts the new one.
    wait_for(
        lambda: len(_app_containers(docker_client, agent.node_name, "crash")) == 2,
        what="only the current and the previous attempt kept",
    )


@pytest.mark.parametrize(
    ("policy", "exit_code", "phase", "restarts"),
    [
        ("Never", 3, "Failed", 0),
        ("Never", 0, "Succeeded", 0),
        ("OnFailure", 0, "Succeeded", 0),
    ],
)
def test_restart_policy_terminal(
    make_agent: MakeAgent, policy: str, exit_code: int, phase: str, restarts: int
) -> None:
    agent = make_agent().start()
    agent.write_manifest(
        "job.yaml",
        pod_manifest(
            "job",
            [{"name": "job", "command": ["sh", "-c", f"exit {exit_code}"]}],
            restart_policy=policy,
        ),
    )

    def terminal() -> dict | None:
        pod = agent.pod("job")
        return pod if pod and pod["status"].get("phase") == phase else None

    pod = wait_for(terminal, what=f"phase {phase}")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["state"]["terminated"]["exitCode"] == exit_code
    assert cs["restartCount"] == restarts
    container_id = cs["containerID"]
    # Stays terminal through a full reconcile: a restarted agent is healthy only once it has
    # synced every pod, and must adopt the exited container, not run it again or replace it.
    assert agent.stop() == 0
    agent.start()
    pod = wait_for(terminal, what=f"phase {phase} after the agent restarted")
    cs = pod["status"]["containerStatuses"][0]
    assert cs["restartCount"] == restarts
    assert cs["containerID"] == container_id
    assert cs["state"]["terminated"]["exitCode"] == exit_code


def test_on_failure_restarts_failed_container(make_agent: MakeAgent) -> None:
    agent = make_agent(backoff_initial_s=0.5).start()
    agent.write_manifest(
        "flaky.yaml",
        pod_manifest(
            "flaky",
            [{"name": "flaky", "command": ["sh", "-c", "sleep 0.5; exit 1"]}],
            restart_policy="OnFailure",
        ),
    )

    def restarted_twice() -> bool:
        pod = agent.pod("flaky")
        return bool(
            pod
            and pod["status"]["containerStatuses"]
            and pod["status"]["containerStatuses"][0]["restartCount"] >= 2
        )

    wait_for(restarted_twice, timeout_s=40, what="OnFailure restarts a failing container")
    pod = agent.pod("flaky")
    assert pod is not None
    assert pod["status"]["phase"] in ("Running", "Pending")
    last = pod["status"]["containerStatuses"][0]["lastState"]
    assert last["terminated"]["exitCode"] == 1


def test_removing_manifest_removes_every_container(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    path = agent.write_manifest("gone.yaml", pod_manifest("gone", [sleeper("a"), sleeper("b")]))
    wait_for(lambda: running_phase(agent, "gone"), what="pod gone Running")
    assert len(node_containers(docker_client, agent.node_name)) == 3  # sandbox + 2 apps

    path.unlink()
    wait_for(
        lambda: not node_containers(docker_client, agent.node_name),
        timeout_s=30,
        what="all containers removed",
    )
    wait_for(lambda: agent.pod("gone") is None, what="pod gone from the API")


def test_changed_manifest_replaces_pod(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    agent.write_manifest(
        "app.yaml",
        pod_manifest(
            "app", [{"name": "main", "command": ["sh", "-c", "echo v1; exec sleep 3600"]}]
        ),
    )
    old = wait_for(lambda: running_phase(agent, "app"), what="v1 Running")
    agent.write_manifest(
        "app.yaml",
        pod_manifest(
            "app", [{"name": "main", "command": ["sh", "-c", "echo v2; exec sleep 3600"]}]
        ),
    )

    def replaced() -> dict | None:
        pod = running_phase(agent, "app")
        return pod if pod and pod["metadata"]["uid"] != old["metadata"]["uid"] else None

    new = wait_for(replaced, timeout_s=30, what="pod replaced")
    cid = new["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
    wait_for(lambda: b"v2" in docker_client.containers.get(cid).logs(), what="v2 output")
    wait_for(
        lambda: len(node_containers(docker_client, agent.node_name)) == 2,
        what="old pod's containers removed",
    )


def test_bad_manifest_does_not_disturb_good_ones(make_agent: MakeAgent) -> None:
    agent = make_agent().start()
    agent.write_manifest("good-1.yaml", pod_manifest("good-1", [sleeper()]))
    bad = pod_manifest("bad", [sleeper()])
    bad["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "x"}}]
    agent.write_manifest("bad.yaml", bad)
    agent.write_manifest("good-2.yaml", pod_manifest("good-2", [sleeper()]))
    (agent.manifest_dir / "broken.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n"
    )

    wait_for(
        lambda: running_phase(agent, "good-1") and running_phase(agent, "good-2"),
        what="good pods Running",
    )
    assert agent.pod("bad") is None

    def reported() -> list[dict] | None:
        found = [e for e in agent.events() if e["reason"] == "FailedToParse"]
        return found if len(found) >= 2 else None

    events = reported_events = wait_for(reported, what="bad files reported as events")
    messages = " ".join(e["message"] for e in reported_events)
    assert "spec.containers[0].envFrom" in messages
    assert "broken.yaml" in messages
    assert all(e["type"] == "Warning" for e in events)
    assert agent.get("/healthz") == (200, "ok")


def test_kill9_and_restart_adopts_running_containers(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent(backoff_initial_s=0.5).start()
    agent.write_manifest("a.yaml", pod_manifest("a", [sleeper("x"), sleeper("y")]))
    agent.write_manifest("b.yaml", pod_manifest("b", [sleeper()]))
    wait_for(lambda: running_phase(agent, "a") and running_phase(agent, "b"), what="pods Running")
    # Give pod b one restart so a preserved restartCount is visible.
    [victim] = _app_containers(docker_client, agent.node_name, "b")
    victim.kill()
    wait_for(
        lambda: (
            (p := running_phase(agent, "b"))
            and p["status"]["containerStatuses"][0]["restartCount"] == 1
        ),
        what="b restarted once",
    )
    wait_for(lambda: (agent.state_dir / "checkpoint.json").exists(), what="checkpoint written")
    before = _running_ids(docker_client, agent.node_name)
    all_before = {c.id for c in node_containers(docker_client, agent.node_name)}

    agent.kill9()
    agent.start()
    wait_for(
        lambda: running_phase(agent, "a") and running_phase(agent, "b"),
        what="pods Running after restart",
    )
    assert _running_ids(docker_client, agent.node_name) == before
    assert {c.id for c in node_containers(docker_client, agent.node_name)} == all_before
    assert agent.pod("b")["status"]["containerStatuses"][0]["restartCount"] == 1


def test_sigterm_leaves_pods_running(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    agent.write_manifest("keep.yaml", pod_manifest("keep", [sleeper()]))
    wait_for(lambda: running_phase(agent, "keep"), what="pod Running")
    before = _running_ids(docker_client, agent.node_name)
    assert agent.stop() == 0
    assert _running_ids(docker_client, agent.node_name) == before
    assert "containers left running" in agent.log_tail()


def test_corrupt_checkpoint_rebuilds_from_runtime(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    agent.write_manifest("c.yaml", pod_manifest("c", [sleeper()]))
    wait_for(lambda: running_phase(agent, "c"), what="pod Running")
    wait_for(lambda: (agent.state_dir / "checkpoint.json").exists(), what="checkpoint written")
    before = _running_ids(docker_client, agent.node_name)
    agent.kill9()
    (agent.state_dir / "checkpoint.json").write_text(
        '{"version": 1, "checksum": "sha256:00", "data": {trunc'
    )

    agent.start()
    wait_for(lambda: running_phase(agent, "c"), what="pod Running after corrupt checkpoint")
    assert _running_ids(docker_client, agent.node_name) == before
    moved = list(agent.state_dir.glob("checkpoint.json.corrupt-*"))
    assert len(moved) == 1
    assert "checkpoint" in agent.log_tail(200) and "corrupt" in moved[0].name
    wait_for(
        lambda: json.loads((agent.state_dir / "checkpoint.json").read_text())["data"]["pods"],
        what="new checkpoint",
    )


def test_orphans_of_this_node_are_removed_and_other_nodes_untouched(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    other = make_agent().start()
    agent.write_manifest("o.yaml", pod_manifest("o", [sleeper()]))
    other.write_manifest("o.yaml", pod_manifest("o", [sleeper()]))
    wait_for(
        lambda: running_phase(agent, "o") and running_phase(other, "o"), what="both pods Running"
    )
    other_ids = _running_ids(docker_client, other.node_name)

    agent.kill9()
    (agent.manifest_dir / "o.yaml").unlink()
    agent.start()
    wait_for(lambda: not node_containers(docker_client, agent.node_name), what="orphans removed")
    assert _running_ids(docker_client, other.node_name) == other_ids


def test_thirty_pods_reach_running(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    agent = make_agent().start()
    for i in range(30):
        agent.write_manifest(f"p{i:02d}.yaml", pod_manifest(f"p{i:02d}", [sleeper()]))

    def all_running() -> bool:
        pods = agent.pods()
        return len(pods) == 30 and all(running_phase(agent, f"p{i:02d}") for i in range(30))

    wait_for(all_running, timeout_s=180, interval_s=0.5, what="30 pods Running")
    assert len(node_containers(docker_client, agent.node_name)) == 60


def test_health_and_metrics(make_agent: MakeAgent) -> None:
    agent = make_agent().start()
    agent.write_manifest("m.yaml", pod_manifest("m", [sleeper()]))
    wait_for(lambda: running_phase(agent, "m"), what="pod Running")
    status, text = agent.get("/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("node_agent_pods", (("phase", "Running"),))] == 1
    assert samples[("node_agent_reconcile_duration_seconds_count", ())] >= 1
    restarts = (("container", "main"), ("namespace", "default"), ("pod", "m"))
    assert samples[("node_agent_container_restarts", restarts)] == 0
    assert samples[("node_agent_runtime_up", ())] == 1
    # prometheus_client's process collector, scraped without blocking the loop (blockbuster).
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert samples[("process_open_fds", ())] > 0
    assert agent.get("/v1/pods")[0] == 404  # the health port shows no pod spec
    status, body = agent.api_get("/v1/pods")
    assert json.loads(body)["kind"] == "PodList"


def test_kill9_during_pod_churn_converges_exactly(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    """Kill the agent while it is creating pods, twice; after each restart every desired pod
    has exactly one sandbox and one container per spec, and nothing else exists."""
    agent = make_agent().start()
    for round_ in range(2):
        for i in range(8):
            agent.write_manifest(
                f"churn{round_}-{i}.yaml", pod_manifest(f"churn{round_}-{i}", [sleeper()])
            )
        created_before = 2 * 8 * round_
        wait_for(
            lambda floor=created_before: (
                len(node_containers(docker_client, agent.node_name)) >= floor + 3
            ),
            interval_s=0.02,
            what="agent mid-way through creating pods",
        )
        agent.kill9()
        agent.start()
        expected = {f"churn{r}-{i}" for r in range(round_ + 1) for i in range(8)}

        def converged(want: set[str] = expected) -> bool:
            containers = node_containers(docker_client, agent.node_name)
            by_pod: dict[str, list[str]] = {}
            for c in containers:
                by_pod.setdefault(c.labels["io.node-agent.pod.name"], []).append(
                    c.labels["io.node-agent.container"]
                )
            return (
                set(by_pod) == want
                and all(sorted(v) == ["POD", "main"] for v in by_pod.values())
                and all(c.status == "running" for c in containers)
            )

        wait_for(
            converged, timeout_s=120, what=f"exactly the desired containers after crash {round_}"
        )


def test_pods_deleted_while_being_created_are_removed(
    make_agent: MakeAgent, docker_client: docker.DockerClient
) -> None:
    """A delete that arrives in the middle of a pod's first sync still removes the pod."""
    agent = make_agent().start()
    paths = [
        agent.write_manifest(f"brief-{i}.yaml", pod_manifest(f"brief-{i}", [sleeper()]))
        for i in range(10)
    ]
    wait_for(
        lambda: len(node_containers(docker_client, agent.node_name)) >= 3,
        interval_s=0.02,
        what="creation under way",
    )
    for path in paths:
        path.unlink()
    wait_for(
        lambda: not node_containers(docker_client, agent.node_name),
        timeout_s=60,
        what="every container removed",
    )
    wait_for(lambda: not agent.pods(), what="no pods left in the API")
