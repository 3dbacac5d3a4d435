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
    # run -it --rm starts now in a terminal of its own (its pod starts meanwhile); the test
    # types into it at the end.
    terminal = Terminal(master)

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

    # delete -f: the pods of the files ("quick", without waiting for it here). Then several
    # names, one missing: reported, the others deleted, exit 1. With a grace period of 3 s the
    # node stops "stubborn" (which ignores SIGTERM) after 3 s, not its own 300: when delete
    # --wait returns, no container of "stubborn" runs (the master alone would have dropped
    # the pod after 3 + 5 s, its container still running).
    check_rows(
        master,
        [
            Row(
                f"delete -f {manifests / 'sub'} --wait=false",
                0,
                lambda o, e: o == 'pod "quick" deleted\n',
            ),
            Row(
                "delete pod stubborn nope --grace-period=3",
                1,
                lambda o, e: (
                    o == 'pod "stubborn" deleted\n'
                    and e == 'Error from server (NotFound): pods "nope" not found\n'
                ),
            ),
        ],
    )
    assert "stubborn" not in master.pods()
    assert running_containers(docker_client, node, "stubborn") == []
    wait_for(lambda: "quick" not in master.pods(), what="quick gone")
    terminal.finish()


class Terminal:
    """``run -it --rm shell`` in a real terminal: tmux runs nodectl, the test types into it."""

    def __init__(self, master: MasterProcess) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/bootstrap.sh installs it)")
        self.master = master
        self.server = f"nodectl-verbs-{uuid.uuid4().hex[:8]}"
        self.env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TERM="xterm")
        command = (
            f"{nodectl_line(master)} run -it --rm shell --image={TEST_IMAGE} "
            f"--image-pull-policy=Never -- sh; echo EXITED=$?; sleep 600"
        )
        self.tmux(
            "new-session", "-d", "-s", "verbs", "-x", "160", "-y", "40", "bash", "-c", command
        )

    def tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-L", self.server, *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=self.env,
            timeout=30,
            check=True,
        )
        return done.stdout

    def screen(self) -> list[str]:
        lines = self.tmux("capture-pane", "-p", "-t", "verbs").splitlines()
        return [line.rstrip() for line in lines]

    def finish(self) -> None:
        """A shell prompt in the new pod; ``echo hi`` answers; ``exit`` deletes the pod."""
        try:
            wait_for(
                lambda: any(line.endswith("#") for line in self.screen()),
                timeout_s=60,
                what="a shell prompt in the new pod",
            )
            assert "shell" in self.master.pods()
            self.tmux("send-keys", "-t", "verbs", "echo h''i", "Enter")  # its echo is not "hi"
            wait_for(lambda: "hi" in self.screen(), what="the shell's answer")
            self.tmux("send-keys", "-t", "verbs", "exit", "Enter")
            wait_for(
                lambda: 'pod "shell" deleted' in self.screen() and "EXITED=0" in self.screen(),
                timeout_s=30,
                what="the pod deleted as the session ended",
            )
            wait_for(lambda: "shell" not in self.master.pods(), timeout_s=30, what="shell gone")
        finally:
            subprocess.run(
                ["tmux", "-L", self.server, "kill-server"], capture_output=True, check=False
            )
            self.master.nodectl("delete", "pod", "shell", "--ignore-not-found", "--wait=false")
