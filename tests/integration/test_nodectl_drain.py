"""``nodectl drain`` with a real master and two agents (issue 17 item 5): a drain refuses, and
lists, the pods it cannot move (pinned by ``spec.nodeName``) and the static pods it leaves,
evicting nothing; with ``--force --ignore-static`` it moves the scheduler-placed pod to the
other node, deletes the pinned one and leaves the static pod running."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, sleeper, wait_for

pytestmark = pytest.mark.docker

WAIT_S = 60.0


def test_drain_moves_a_scheduled_pod_and_leaves_pinned_and_static_pods(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    master = make_master().start()
    join = {"master": master.url, "ca_cert_hash": [master.pin], "master_backoff_max_s": 1.0}
    a, b = make_agent(**join), make_agent(**join)
    a.write_manifest("static.yaml", pod_manifest("static", [sleeper()]))
    a.start(wait_ready=False)
    b.start(wait_ready=False)
    for agent in (a, b):
        wait_for(lambda agent=agent: node_ready(master, agent.node_name), what="node Ready")
    mirror = f"static-{a.node_name}"

    def apply(name: str, **spec: Any) -> None:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(pod_manifest(name, [sleeper()], **spec)))
        done = master.nodectl("apply", "-f", str(path))
        assert done.returncode == 0, done.stderr

    # The scheduler places "placed" on a (b cordoned meanwhile); "pinned" names a.
    assert master.nodectl("cordon", b.node_name).returncode == 0
    apply("placed")
    assert master.nodectl("uncordon", b.node_name).returncode == 0
    apply("pinned", nodeName=a.node_name)

    def running_on(name: str, node: str) -> dict[str, Any] | None:
        pod = master.pods().get(name)
        if pod and pod["spec"].get("nodeName") == node and pod["status"].get("phase") == "Running":
            return pod
        return None

    for name in ("placed", "pinned", mirror):
        wait_for(
            lambda n=name: running_on(n, a.node_name), timeout_s=WAIT_S, what=f"{name} Running"
        )
    old_uid = master.pods()["placed"]["metadata"]["uid"]

    refused = master.nodectl("drain", a.node_name)
    assert refused.returncode == 1, refused
    assert f"node/{a.node_name} cordoned" in refused.stdout
    assert (
        "cannot evict Pods that cannot move (use --force to override): default/pinned"
        in refused.stderr
    )
    assert "cannot delete static Pods" in refused.stderr and f"default/{mirror}" in refused.stderr
    assert f"pinned to node {a.node_name} by its spec.nodeName" in refused.stderr
    assert master.node(a.node_name)["spec"]["unschedulable"] is True  # type: ignore[index]
    pods = master.pods()
    assert pods["placed"]["spec"]["nodeName"] == a.node_name  # nothing evicted
    assert not pods["placed"]["metadata"].get("deletionTimestamp")

    dry = master.nodectl("drain", a.node_name, "--force", "--ignore-daemonsets", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "evicting pod default/placed (placed again by the scheduler) (dry run)" in dry.stdout
    assert "evicting pod default/pinned (deleted) (dry run)" in dry.stdout
    assert master.pods()["pinned"]["spec"]["nodeName"] == a.node_name  # still nothing changed

    done = master.nodectl(
        "drain",
        a.node_name,
        "--force",
        "--ignore-static",
        "--timeout",
        "50s",
        "--grace-period",
        "1",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"node/{a.node_name} already cordoned" in lines
    assert "evicting pod default/placed (placed again by the scheduler)" in lines
    assert "evicting pod default/pinned (deleted)" in lines
    assert "pod/pinned evicted" in lines
    assert any(line.startswith("pod/placed evicted") for line in lines)
    assert lines[-1] == f"node/{a.node_name} drained"
    assert "Warning: ignoring static Pods" in done.stderr and mirror in done.stderr
    assert "Traceback" not in refused.stderr + dry.stderr + done.stderr

    moved = wait_for(
        lambda: running_on("placed", b.node_name), timeout_s=WAIT_S, what="placed Running on b"
    )
    assert moved["metadata"]["uid"] != old_uid  # a new pod, as a ReplicaSet's replacement
    pods = master.pods()
    assert "pinned" not in pods
    assert running_on(mirror, a.node_name)  # the static pod stays, running
    wait_for(lambda: a.pod("placed") is None, timeout_s=WAIT_S, what="placed gone from a")

    # describe node, kubectl's layout: cordoned, only the static pod left on it.
    described = master.nodectl("describe", "node", a.node_name).stdout.splitlines()
    assert described[0].split() == ["Name:", a.node_name]
    assert ["Unschedulable:", "true"] in [line.split() for line in described]
    table = described[described.index("Allocated resources:") - 4 :]
    assert table[0].split()[:3] == ["Non-terminated", "Pods:", "(1"]
    assert table[3].split()[:2] == ["default", mirror]
