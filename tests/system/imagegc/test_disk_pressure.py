"""DiskPressure (issue 16 item 6) on a node whose state dir is a small tmpfs the test fills:
the node reports the condition, the master schedules no new pod there and says why; once the
test frees the space (past the hysteresis margin) the condition clears and the pod is placed."""

from __future__ import annotations

import contextlib
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, sleeper, wait_for

STATE_FS_BYTES = 32 * 1024 * 1024


@pytest.fixture
def small_state_fs() -> Iterator[Path]:
    root = Path(f"/tmp/dp-{uuid.uuid4().hex[:8]}")
    root.mkdir(mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={STATE_FS_BYTES},mode=0700", "tmpfs", str(root)],
        check=True,
    )
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        with contextlib.suppress(OSError):
            root.rmdir()


def _disk_pressure(master: MasterProcess, node: str) -> str:
    found = master.node(node)
    if found is None:
        return ""
    for c in found["status"]["conditions"]:
        if c["type"] == "DiskPressure":
            return str(c["status"])
    return ""


def test_disk_pressure_set_refuses_scheduling_then_clears(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    small_state_fs: Path,
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        None,
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
        state_dir=str(small_state_fs),
        disk_check_interval_s=0.5,
        imagefs_available_min_percent=0.0,  # the machine's engine: not this test's subject
        nodefs_available_min_percent=10.0,  # kubelet's default, which make_agent turns off
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    wait_for(lambda: _disk_pressure(master, agent.node_name) == "False", what="no pressure")

    filler = small_state_fs / "filler"
    with filler.open("wb") as f:  # free space under 10 %
        f.write(b"\0" * int(STATE_FS_BYTES * 0.93))
    wait_for(
        lambda: _disk_pressure(master, agent.node_name) == "True",
        timeout_s=30,
        what="DiskPressure True on the master",
    )
    manifest = tmp_path / "web.json"
    manifest.write_text(json.dumps(pod_manifest("web", [sleeper()])))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def pending_message() -> str:
        pod: dict[str, Any] | None = master.pods().get("web")
        if pod is None:
            return ""
        conditions = pod["status"].get("conditions", [])
        return str(conditions[0].get("message", "")) if conditions else ""

    wait_for(pending_message, what="the pod's scheduling verdict")
    assert pending_message() == "0/1 nodes are available: 1 node(s) had disk pressure"
    assert not master.pods()["web"]["spec"].get("nodeName")

    filler.unlink()
    wait_for(
        lambda: _disk_pressure(master, agent.node_name) == "False",
        timeout_s=30,
        what="DiskPressure cleared",
    )
    wait_for(
        lambda: master.pods()["web"]["spec"].get("nodeName") == agent.node_name,
        timeout_s=30,
        what="the pod placed once the pressure cleared",
    )
