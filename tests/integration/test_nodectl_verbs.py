"""kubectl's verbs against a real master and agent (issue 17 item 5): ``apply -f DIR -R``,
``exec POD CMD`` without ``--`` (kubectl's hint), ``logs --since/--since-time``, ``delete`` of
several names with one missing, ``--grace-period`` honoured by the node (a container that
ignores SIGTERM is gone after the deletion's grace period, not its own 300 s), ``delete -f``,
and ``run -it --rm`` typed into a real terminal (tmux): a shell in a new pod, ``echo hi``,
``exit`` deletes the pod. Every row: no Python traceback on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from agent.types import LABEL_NODE, LABEL_POD_NAME
from tests.helpers import (
    REPO_ROOT,
    TEST_IMAGE,
    AgentProcess,
    MasterProcess,
    node_ready,
    pod_manifest,
    sleeper,
    wait_for,
)
from tests.integration.test_nodectl_habits import Row, check_rows, nodectl_line

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]


def running_containers(client: docker.DockerClient, node: str, pod: str) -> list[object]:
    return list(
        client.containers.list(
            filters={"label": [f"{LABEL_NODE}={node}", f"{LABEL_POD_NAME}={pod}"]},
            ignore_removed=True,
        )
    )


def test_kubectl_verbs(
    make_master: MakeMaster,
    make_agent: MakeAgent,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        f"verbs-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    ).start()
    node = agent.node_name
    wait_for(lambda: node_ready(master, node), what="node Ready")

    # apply -f DIR -R: the files in order, the subdirectory's too; a bad file is reported
    # with its path and the others applied (exit 1, as kubectl).
    # "stubborn" ignores SIGTERM (sleep as PID 1) and has a 300 s grace period of its own.
    stubborn = pod_manifest(
        "stubborn",
        [{"name": "c", "command": ["sh", "-c", "echo early; sleep 2; echo late; exec sleep 3600"]}],
        grace_s=300,
    )
    quick = pod_manifest("quick", [sleeper()], grace_s=0)
    manifests = tmp_path / "manifests"
    (manifests / "sub").mkdir(parents=True)
    (manifests / "a.yaml").write_text(json.dumps(stubborn))
    (manifests / "sub" / "b.yml").write_text(json.dumps(quick))
    (manifests / "bad.json").write_text('{"apiVersion": "v1", "kind": "Pod"')
    (manifests / "notes.txt").write_text("not a manifest")
    check_rows(
        master,
        [
            Row(
                f"apply -f {manifests} -R",
                1,
                lambda o, e: (
                    [line.split()[0] for line in o.splitlines()] == ["pod/stubborn", "pod/quick"]
                    and str(manifests / "bad.json") in e
                ),
            ),
        ],
    )

    def phase(name: str) -> object:
        return master.pods().get(name, {}).get("status", {}).get("phase")

    wait_for(lambda: phase("stubborn") == phase("quick") == "Running", what="pods Running")

    def logs(*args: str) -> str:
        done = master.nodectl("logs", "stubborn", *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    wait_for(lambda: "late" in logs(), what="the second log line")
    stamped = logs("--timestamps").splitlines()
    late_at = next(line.split()[0] for line in stamped if line.endswith(" late"))
    hint = "nodectl exec [POD] [COMMAND] is DEPRECATED and will be removed in a future version."
    check_rows(
        master,
        [
            # exec without --: runs, with kubectl's hint on stderr.
            Row("exec quick echo hi", 0, lambda o, e: o == "hi\n" and hint in e),
            # logs --since / --since-time (the node filters by its own clock).
            Row("logs stubborn --since=1h", 0, lambda o, e: o == "early\nlate\n"),
            Row(f"logs stubborn --since-time={late_at}", 0, lambda o, e: o == "late\n"),
            Row("logs stubborn --since-time=2999-01-01T00:00:00Z", 0, lambda o, e: o == ""),
            # Bad input: kubectl's words, never a traceback (each verb's other refusals are
            # unit-tested: tests/unit/cli/test_nodectl_verbs.py).
            Row("logs stubborn --since=5", 2, lambda o, e: "missing unit" in e),
            Row(
                f"logs stubborn --since=1m --since-time={late_at}",
                2,
                lambda o, e: "at most one of `sinceTime` or `sinceSeconds`" in e,
            ),
            Row("exec quick ls -- -l", 2, lambda o, e: "after --" in e),
            Row("delete", 2, lambda o, e: "you must provide one or more resources" in e),
            Row("delete pod a pod/b", 2, lambda o, e: "resource/name form" in e),
            Row("delete -f /nonexistent.yaml", 2, lambda o, e: "nonexistent" in e),
            Row("run x", 2, lambda o, e: '"image" not set' in e),
            Row("run x --image=busybox --rm", 2, lambda o, e: "attached containers" in e),
            Row(
                "run Bad_Name --image=busybox", 1, lambda o, e: 'The Pod "Bad_Name" is invalid' in e
            ),
            Row("run quick --image=busybox", 1, lambda o, e: "(AlreadyExists)" in e),
            Row(
                "run x --image=busybox --dry-run=client -o json",
                0,
                lambda o, e: json.loads(o)["metadata"]["labels"] == {"run": "x"},
            ),
        ],
    )

    # delete several names, one missing: reported, the others deleted, exit 1. With a grace
    # period of 3 s, the node stops "stubborn" (which ignores SIGTERM) after 3 s, not its own
    # 300: when delete --wait returns, the master has neither pod and no container of
    # "stubborn" runs (the master alone would have dropped it after 3 + 5 s, the container
    # still running).
    check_rows(
        master,
        [
            Row(
                "delete pod stubborn nope quick --grace-period=3",
                1,
                lambda o, e: (
                    o == 'pod "stubborn" deleted\npod "quick" deleted\n'
                    and e == 'Error from server (NotFound): pods "nope" not found\n'
                ),
            ),
        ],
    )
    pods = master.pods()
    assert "stubborn" not in pods and "quick" not in pods
    assert running_containers(docker_client, node, "stubborn") == []

    # delete -f: the pods of the files (the one already gone ignored).
    assert master.nodectl("apply", "-f", str(manifests / "sub")).returncode == 0
    wait_for(lambda: phase("quick") == "Running", what="quick Running again")
    check_rows(
        master,
        [
            Row(
                f"delete -f {manifests / 'sub'} --ignore-not-found",
                0,
                lambda o, e: o == 'pod "quick" deleted\n',
            ),
        ],
    )
    assert "quick" not in master.pods()
    run_interactive(master)


def run_interactive(master: MasterProcess) -> None:
    """``run -it --rm`` typed into a real terminal: tmux runs nodectl, we type into it."""
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/bootstrap.sh installs it)")
    server = f"nodectl-verbs-{uuid.uuid4().hex[:8]}"
    command = (
        f"{nodectl_line(master)} run -it --rm shell --image={TEST_IMAGE} "
        f"--image-pull-policy=Never -- sh; echo EXITED=$?; sleep 600"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TERM="xterm")

    def tmux(*args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", server, *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=env,
            timeout=30,
            check=True,
        )
        return done.stdout

    tmux("new-session", "-d", "-s", "verbs", "-x", "160", "-y", "40", "bash", "-c", command)
    try:

        def screen() -> list[str]:
            return [
                line.rstrip() for line in tmux("capture-pane", "-p", "-t", "verbs").splitlines()
            ]

        wait_for(
            lambda: any(line.endswith("#") for line in screen()),
            timeout_s=60,
            what="a shell prompt in the new pod",
        )
        assert "shell" in master.pods()
        tmux("send-keys", "-t", "verbs", "echo h''i", "Enter")
        wait_for(lambda: "hi" in screen(), what="the shell's answer")
        tmux("send-keys", "-t", "verbs", "exit", "Enter")
        wait_for(
            lambda: 'pod "shell" deleted' in screen() and "EXITED=0" in screen(),
            timeout_s=30,
            what="the pod deleted as the session ended",
        )
        wait_for(lambda: "shell" not in master.pods(), timeout_s=30, what="shell gone")
    finally:
        subprocess.run(["tmux", "-L", server, "kill-server"], capture_output=True, check=False)
        master.nodectl("delete", "pod", "shell", "--ignore-not-found", "--wait=false")
