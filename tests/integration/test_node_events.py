"""Node events where an operator reads them: a crash-looping container's BackOff warnings go
from the node to the master with its status reports and show in ``nodectl describe pod`` as
one event with a count (kubectl's "(x2 over 30s)"), from the node-agent on that node."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, wait_for

pytestmark = pytest.mark.docker


def test_describe_pod_shows_the_nodes_back_off_event_with_its_count(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    crasher = {"name": "main", "command": ["sh", "-c", "exit 3"]}
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(json.dumps(pod_manifest("crasher", [crasher])))
    done = master.nodectl("apply", "-f", str(manifest))
    assert done.returncode == 0, done.stderr

    def back_off_row() -> str | None:
        out = master.nodectl("describe", "pod", "crasher").stdout
        for line in out[out.find("Events:") :].splitlines():
            counted = re.search(r"\(x(\d+) over ", line)
            if " BackOff " in line and counted and int(counted.group(1)) >= 2:
                return line
        return None

    # Back-off 10 s, then 20 s: the second exit comes some 10 s after the first.
    row = wait_for(back_off_row, timeout_s=90, what="a BackOff event counted twice")
    assert row.split()[0] == "Warning"
    # kubectl's describe layout, the container's state from the node's status report.
    out = master.nodectl("describe", "pod", "crasher").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["Name:", "crasher"] and lines[1].split() == [
        "Namespace:",
        "default",
    ]
    assert re.search(rf"^Node: +{re.escape(agent.node_name)}/", out, re.MULTILINE)
    main = lines[lines.index("Containers:") + 1 :]
    assert main[0] == "  main:" and main[1].split()[:2] == ["Container", "ID:"]
    assert re.search(
        r"^    Last State: +Terminated\n      Reason: +Error\n      Exit Code: +3$",
        out,
        re.MULTILINE,
    )
    assert re.search(r"^    Restart Count: +[1-9]", out, re.MULTILINE)
    assert re.search(r"^  PodScheduled +True$", out, re.MULTILINE)
    assert f"node-agent, {agent.node_name}" in row
    assert "Back-off restarting failed container main in pod crasher" in row
