"""Init containers on the real Docker engine, through a real master and ``nodectl``: they run in
order, each to success, before the app; a failing one is retried with back-off (``Init:N/M``,
``Init:CrashLoopBackOff``, ``Init:Error`` in ``nodectl get pods``); after init completed,
``kill -9`` of the agent and a restart with the master down do not run them again — proved by a
counter the init containers append to on a hostPath volume; a lost sandbox runs them again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import pytest

from agent.types import KIND_INIT, LABEL_CONTAINER, LABEL_KIND, LABEL_POD_NAME
from tests.helpers import (
    TEST_IMAGE,
    AgentProcess,
    MasterProcess,
    node_containers,
    node_ready,
    pod_manifest,
    running_phase,
    sleeper,
    wait_for,
)

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


def join(make_agent: MakeAgent, master: MasterProcess, **config: Any) -> AgentProcess:
    return make_agent(
        None, master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0, **config
    )


def apply(master: MasterProcess, tmp_path: Path, *manifests: dict[str, Any]) -> None:
    path = tmp_path / "pods.json"
    path.write_text("\n---\n".join(json.dumps(m) for m in manifests))
    done = master.nodectl("apply", "-f", str(path))
    assert done.returncode == 0, done.stderr


def get_pods(master: MasterProcess) -> dict[str, list[str]]:
    """``nodectl get pods``: NAME → [READY, STATUS, RESTARTS]."""
    done = master.nodectl("get", "pods")
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    return {row[0]: row[1:] for row in rows}


def shows(master: MasterProcess, name: str, status: str) -> list[str] | None:
    row = get_pods(master).get(name)
    return row if row is not None and row[1] == status else None


def counter_volume(directory: Path) -> list[dict[str, Any]]:
    return [{"name": "counter", "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"}}]


MOUNT = [{"name": "counter", "mountPath": "/counter"}]


def init_container(name: str, script: str) -> dict[str, Any]:
    return {
        "name": name,
        "image": TEST_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "volumeMounts": MOUNT,
    }


def init_ids(client: docker.DockerClient, node: str, pod: str) -> set[str]:
    return {
        c.id
        for c in node_containers(client, node)
        if c.labels.get(LABEL_POD_NAME) == pod and c.labels.get(LABEL_KIND) == KIND_INIT
    }


def test_init_containers_run_in_order_once_even_across_kill9_with_the_master_down(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = join(make_agent, master).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    counter = tmp_path / "counter"
    go = counter / "go"
    log = counter / "log"
    manifest = pod_manifest(
        "initialized",
        [sleeper()],
        initContainers=[
            # The first waits for the test's word, so `Init:0/2` can be seen.
            init_container(
                "first", "until [ -f /counter/go ]; do sleep 0.1; done; echo first >> /counter/log"
            ),
            init_container("second", "echo second >> /counter/log"),
        ],
        volumes=counter_volume(counter),
    )
    apply(master, tmp_path, manifest)
    row = wait_for(lambda: shows(master, "initialized", "Init:0/2"), what="Init:0/2")
    assert row[0] == "0/1"
    pod = agent.pod("initialized")
    assert pod is not None
    assert pod["status"]["phase"] == "Pending"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Initialized"] == "False"
    assert not log.exists()

    go.touch()
    wait_for(lambda: running_phase(agent, "initialized"), what="pod Running after init")
    assert log.read_text() == "first\nsecond\n"  # in order, each once
    wait_for(lambda: shows(master, "initialized", "Running"), what="Running via the master")
    pod = agent.pod("initialized")
    assert pod is not None
    inits = pod["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["exitCode"], s["ready"]) for s in inits] == [
        ("first", 0, True),
        ("second", 0, True),
    ]
    # The completion is in the checkpoint before the agent dies.
    checkpoint = agent.state_dir / "checkpoint.json"

    def checkpointed() -> bool:
        if not checkpoint.exists():
            return False
        pods = json.loads(checkpoint.read_text())["data"]["pods"]
        return any(p["book"].get("init_done_sandbox", -1) >= 0 for p in pods.values())

    wait_for(checkpointed, what="init completion checkpointed")
    before = {c.id for c in node_containers(docker_client, agent.node_name)}
    init_before = init_ids(docker_client, agent.node_name, "initialized")
    assert len(init_before) == 2  # kept, exited, as kubelet keeps them

    agent.kill9()
    master.stop()
    agent.start(wait_ready=False)
    # Running and ready again means a sync after the restart, which is where init would run.
    wait_for(lambda: running_phase(agent, "initialized"), what="pod Running after kill -9")
    assert {c.id for c in node_containers(docker_client, agent.node_name)} == before
    assert init_ids(docker_client, agent.node_name, "initialized") == init_before
    assert log.read_text() == "first\nsecond\n"

    # A lost sandbox is a new pod network: Kubernetes runs the init containers again.
    [sandbox] = [
        c
        for c in node_containers(docker_client, agent.node_name)
        if c.labels.get(LABEL_POD_NAME) == "initialized" and c.labels.get(LABEL_CONTAINER) == "POD"
    ]
    sandbox.remove(force=True)
    wait_for(
        lambda: log.read_text() == "first\nsecond\nfirst\nsecond\n",
        what="init containers run again in the new sandbox",
    )
    wait_for(lambda: running_phase(agent, "initialized"), what="pod Running in its new sandbox")
    assert not init_ids(docker_client, agent.node_name, "initialized") & init_before


def test_a_failing_init_container_is_retried_with_back_off_per_restart_policy(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = join(make_agent, master, backoff_initial_s=1.0, backoff_max_s=8.0).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    flaky_dir, broken_dir, never_dir = (tmp_path / n for n in ("flaky", "broken", "never"))
    # Fails twice, then succeeds: the app starts after the third run.
    flaky = pod_manifest(
        "flaky",
        [sleeper()],
        initContainers=[
            init_container(
                "setup", 'echo run >> /counter/runs; [ "$(wc -l < /counter/runs)" -ge 3 ]'
            )
        ],
        volumes=counter_volume(flaky_dir),
    )
    broken = pod_manifest(
        "broken",
        [sleeper()],
        initContainers=[init_container("setup", "echo run >> /counter/runs; exit 3")],
        volumes=counter_volume(broken_dir),
    )
    never = pod_manifest(
        "never",
        [sleeper()],
        restart_policy="Never",
        initContainers=[init_container("setup", "echo run >> /counter/runs; exit 3")],
        volumes=counter_volume(never_dir),
    )
    apply(master, tmp_path, flaky, broken, never)

    wait_for(lambda: running_phase(agent, "flaky"), timeout_s=90, what="flaky pod Running")
    assert (flaky_dir / "runs").read_text() == "run\n" * 3
    pod = agent.pod("flaky")
    assert pod is not None
    [setup] = pod["status"]["initContainerStatuses"]
    assert setup["restartCount"] == 2
    assert setup["lastState"]["terminated"]["exitCode"] == 1

    # Always failing: crash-loop back-off, doubling (1 s, 2 s, 4 s…), shown by nodectl.
    def backing_off(seconds: int) -> bool:
        pod = agent.pod("broken")
        if pod is None:
            return False
        [setup] = pod["status"].get("initContainerStatuses") or [{}]
        waiting = setup.get("state", {}).get("waiting", {})
        message = str(waiting.get("message", ""))
        return waiting.get("reason") == "CrashLoopBackOff" and message.startswith(
            f"back-off {seconds}s"
        )

    wait_for(lambda: backing_off(4), timeout_s=90, what="broken init backing off 4s")

    # The master's copy of the status follows the node's report.
    def crash_looping() -> list[str] | None:
        row = shows(master, "broken", "Init:CrashLoopBackOff")
        return row if row is not None and int(row[2]) >= 2 else None

    row = wait_for(crash_looping, what="Init:CrashLoopBackOff with 2 restarts, via the master")
    assert row[0] == "0/1"
    # Each retry waited at least its back-off after the previous run ended.
    runs = sorted(
        (
            c
            for c in node_containers(docker_client, agent.node_name)
            if c.labels.get(LABEL_POD_NAME) == "broken" and c.labels.get(LABEL_KIND) == KIND_INIT
        ),
        key=lambda c: int(c.labels["io.node-agent.attempt"]),
    )
    assert len(runs) == 2  # the current run and the previous one are kept
    earlier, later = (c.attrs["State"] for c in runs)
    assert later["StartedAt"] > earlier["FinishedAt"]
    pod = agent.pod("broken")
    assert pod is not None and pod["status"]["phase"] == "Pending"
    assert "containerID" not in pod["status"]["containerStatuses"][0]  # the app never ran

    # restartPolicy Never: one run, the pod Failed, Init:Error.
    row = wait_for(lambda: shows(master, "never", "Init:Error"), what="Init:Error")
    assert row[2] == "0"
    pod = agent.pod("never")
    assert pod is not None and pod["status"]["phase"] == "Failed"
    assert (never_dir / "runs").read_text() == "run\n"
