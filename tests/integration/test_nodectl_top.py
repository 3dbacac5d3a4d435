"""``nodectl top`` with a real master and agent (issue 17 item 5): the figures the node samples
(its own from psutil, its containers' from their cgroups) reach the master with the lease and
show as kubectl top prints them. A busybox pod spinning under a 200m CPU limit shows about
200m, a sleeping one next to nothing, both a few MiB of memory; the node shows its share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import AgentProcess, MasterProcess, node_ready, pod_manifest, sleeper, wait_for

pytestmark = pytest.mark.docker

WAIT_S = 60.0
ROW = re.compile(r"^(\S+)\s+(\d+)m\s+(\d+)Mi$")


def test_top_nodes_and_pods_show_plausible_figures(
    make_master: Callable[..., MasterProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    master = make_master().start()
    agent = make_agent(
        master=master.url, ca_cert_hash=[master.pin], master_backoff_max_s=1.0
    ).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")
    spinner = {
        "name": "spin",
        "command": ["sh", "-c", "while :; do :; done"],
        "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}},
    }
    manifests = [
        pod_manifest("spinner", [spinner]),
        pod_manifest("idle", [sleeper(), sleeper("side")]),
    ]
    manifests[0]["metadata"]["labels"] = {"app": "spin"}
    for manifest in manifests:
        path = tmp_path / f"{manifest['metadata']['name']}.json"
        path.write_text(json.dumps(manifest))
        done = master.nodectl("apply", "-f", str(path))
        assert done.returncode == 0, done.stderr

    def figures() -> dict[str, tuple[int, int]] | None:
        done = master.nodectl("top", "pods", "--no-headers")
        found = {}
        for line in done.stdout.splitlines():
            match = ROW.match(line)
            if match:
                found[match[1]] = (int(match[2]), int(match[3]))
        # Rates over the last few seconds: a container's first sample is its average since it
        # started, the shell's start-up included; the sleeping pod's settles near 0.
        if not {"spinner", "idle"} <= set(found):
            return None
        return found if found["spinner"][0] >= 100 and found["idle"][0] <= 20 else None

    shown = wait_for(figures, timeout_s=WAIT_S, what="top pods with both pods")
    spin_cpu, spin_memory = shown["spinner"]
    idle_memory = shown["idle"][1]
    assert spin_cpu <= 300, shown  # the 200m limit (CFS quota), on a busy machine
    assert 0 <= spin_memory < 64 and 0 <= idle_memory < 64, shown

    pods = master.nodectl("top", "pods")
    assert pods.stdout.splitlines()[0].split() == ["NAME", "CPU(cores)", "MEMORY(bytes)"]
    per_container = master.nodectl("top", "pod", "idle", "--containers").stdout.splitlines()
    assert per_container[0].split() == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"]
    assert sorted(line.split()[1] for line in per_container[1:]) == ["main", "side"]
    selected = master.nodectl("top", "pods", "-l", "app=spin", "--no-headers").stdout
    assert [line.split()[0] for line in selected.splitlines()] == ["spinner"]
    wide = master.nodectl("top", "pods", "-A", "--sort-by", "cpu").stdout.splitlines()
    assert wide[0].split()[0] == "NAMESPACE" and wide[1].split()[:2] == ["default", "spinner"]

    nodes = master.nodectl("top", "nodes")
    assert nodes.returncode == 0, nodes.stderr
    header, row = nodes.stdout.splitlines()
    assert header.split() == ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    name, cpu, cpu_pct, memory, memory_pct = row.split()
    assert name == agent.node_name
    assert re.fullmatch(r"\d+m", cpu) and int(cpu[:-1]) >= 100  # the spinner runs there
    assert re.fullmatch(r"\d+%", cpu_pct) and re.fullmatch(r"\d+%", memory_pct)
    assert int(memory[:-2]) > 0 and memory.endswith("Mi") and 0 < int(memory_pct[:-1]) <= 100

    missing = master.nodectl("top", "pod", "ghost")
    assert missing.returncode == 1
    assert missing.stderr.strip() == 'Error from server (NotFound): pods "ghost" not found'
    for done in (pods, nodes, missing, master.nodectl("top", "services")):
        assert "Traceback" not in done.stderr
