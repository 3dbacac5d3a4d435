"""Agent restart with the master unreachable: time until every pod is back under management.

Run: ``.venv/bin/python bench/agent_restart.py [--pods 30] [--rounds 5]``

An agent joined to a master runs ``--pods`` pods (half from the master, half static). The master
is stopped, then each round kills the agent with SIGKILL and starts it again; the figure is
"process started → /healthz ok", which the agent answers only after the first reconcile of every
checkpointed pod (containers adopted, none restarted). For scale, the same round measures
``docker restart`` of one of the pod's containers (the operator's alternative for "get it back",
which restarts the process) and ``docker ps`` of the node's containers (the floor: one listing of
what the agent has to adopt). Target (coasting issue): all pods back under management within
2 s. Only loopback and the local engine are used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    AgentProcess,
    MasterProcess,
    clean_up_on_sigterm,
    ensure_test_image,
    node_containers,
    node_ready,
    pod_manifest,
    remove_node_containers,
    running_phase,
    sleeper,
    wait_for,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    clean_up_on_sigterm()
    client = docker.from_env()
    ensure_test_image(client)
    root = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    master = MasterProcess(root / "master").start(blockbuster=False)
    node = f"bench-restart-{uuid.uuid4().hex[:6]}"
    agent = AgentProcess(
        root / "agent", node, master=master.url, ca_cert_hash=[master.pin], log_level="info"
    )
    names = [f"r{i}" for i in range(args.pods)]
    try:
        for name in names[: args.pods // 2]:
            agent.write_manifest(f"{name}.json", pod_manifest(name, [sleeper()], grace_s=0))
        agent.start(blockbuster=False)
        wait_for(lambda: node_ready(master, node), what="node Ready")
        for name in names[args.pods // 2 :]:
            path = root / f"{name}.json"
            path.write_text(json.dumps(pod_manifest(name, [sleeper()], grace_s=0, nodeName=node)))
            assert master.nodectl("apply", "-f", str(path)).returncode == 0
        for name in names:
            wait_for(lambda n=name: running_phase(agent, n), timeout_s=300, what=f"{name} Running")
        before = {c.id for c in node_containers(client, node)}
        master.stop()

        ours, restart, listing = [], [], []
        one = next(
            c for c in node_containers(client, node) if c.labels.get("io.node-agent.kind") == "app"
        )
        for _ in range(args.rounds):
            agent.kill9()
            started = time.monotonic()
            agent.start(blockbuster=False)  # returns once /healthz says ok
            ours.append(time.monotonic() - started)
            started = time.monotonic()
            subprocess.run(
                ["docker", "ps", "-q", "--filter", f"label=io.node-agent.node={node}"],
                check=True,
                capture_output=True,
            )
            listing.append(time.monotonic() - started)
            started = time.monotonic()
            subprocess.run(
                ["docker", "restart", "-t", "0", one.id], check=True, capture_output=True
            )
            restart.append(time.monotonic() - started)
            # The agent sees the restart as a crash of that container: wait it out, so every
            # round starts from the same settled state.
            wait_for(
                lambda: all(running_phase(agent, n) for n in names), timeout_s=120, what="settled"
            )
        after = {c.id for c in node_containers(client, node)}
        assert before <= after, "the agent replaced containers it should have adopted"
        med = statistics.median(ours)
        print(
            f"pods: {args.pods} ({args.pods // 2} static, "
            f"{args.pods - args.pods // 2} from the master, master down)"
        )
        print(
            f"agent kill -9 -> all pods under management: median {med:.2f}s "
            f"(runs: {', '.join(f'{t:.2f}' for t in ours)})"
        )
        print(
            f"docker restart of one container: median {statistics.median(restart):.2f}s "
            f"(ratio agent/docker-restart {med / statistics.median(restart):.2f})"
        )
        print(
            f"docker ps of the node's containers: median {statistics.median(listing) * 1000:.0f} ms"
        )
        print(f"target <= 2 s: {'met' if med <= 2.0 else 'NOT met'}")
        return 0 if med <= 2.0 else 1
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill9()
        master.stop()
        remove_node_containers(client, node)


if __name__ == "__main__":
    sys.exit(main())
