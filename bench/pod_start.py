"""Pod start latency of the agent vs ``docker run``, and the agent's idle cost with 50 pods.

Run: ``make bench`` or ``.venv/bin/python bench/pod_start.py [--rounds 3] [--idle-s 30]``.

For N in (1, 30): our path is "manifests written → every app container running" (the agent
creates a sandbox and an app container per pod); the baseline is ``docker run -d`` of the same
N containers from a shell loop, as an operator would. Paths alternate A B A B ... and medians
are reported with the ratio. Then 50 pods are left running and the agent's RSS and CPU% are
sampled while idle. Only loopback and the local engine are used.
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
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    TEST_IMAGE,
    AgentProcess,
    clean_up_on_sigterm,
    ensure_test_image,
    node_containers,
    pod_manifest,
    remove_node_containers,
    sleeper,
    wait_for,
)

BASELINE_LABEL = "io.node-agent.bench"
POLL_S = 0.05


def running_apps(client: docker.DockerClient, node: str) -> int:
    return sum(
        1
        for c in client.containers.list(
            filters={"label": [f"io.node-agent.node={node}", "io.node-agent.kind=app"]}
        )
        if c.status == "running"
    )


def our_path(agent: AgentProcess, client: docker.DockerClient, n: int, tag: str) -> float:
    start = time.monotonic()
    for i in range(n):
        agent.write_manifest(f"{tag}-{i}.yaml", pod_manifest(f"{tag}-{i}", [sleeper()], grace_s=0))
    wait_for(
        lambda: running_apps(client, agent.node_name) >= n,
        timeout_s=300,
        interval_s=POLL_S,
        what=f"{n} pods",
    )
    elapsed = time.monotonic() - start
    for path in agent.manifest_dir.glob(f"{tag}-*.yaml"):
        path.unlink()
    wait_for(
        lambda: not node_containers(client, agent.node_name),
        timeout_s=300,
        interval_s=0.2,
        what="cleanup",
    )
    return elapsed


def baseline(client: docker.DockerClient, n: int, tag: str) -> float:
    start = time.monotonic()
    for i in range(n):
        subprocess.run(
            [
                "docker",
                "run",
                "-d",
                "--name",
                f"bench-{tag}-{i}",
                "--label",
                BASELINE_LABEL,
                TEST_IMAGE,
                "sh",
                "-c",
                "trap 'exit 0' TERM; sleep 3600 & wait",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    elapsed = time.monotonic() - start
    for c in client.containers.list(all=True, filters={"label": BASELINE_LABEL}):
        c.remove(force=True)
    return elapsed


def idle_cost(
    agent: AgentProcess, client: docker.DockerClient, pods: int, idle_s: float
) -> tuple[float, float]:
    for i in range(pods):
        agent.write_manifest(f"idle-{i}.yaml", pod_manifest(f"idle-{i}", [sleeper()], grace_s=0))
    wait_for(
        lambda: running_apps(client, agent.node_name) >= pods,
        timeout_s=600,
        interval_s=0.5,
        what="idle pods",
    )
    assert agent.proc is not None
    proc = psutil.Process(agent.proc.pid)
    time.sleep(5)  # let start-up work settle before sampling idle cost
    cpu0 = proc.cpu_times()
    t0 = time.monotonic()
    time.sleep(idle_s)
    cpu1 = proc.cpu_times()
    cpu_pct = (
        100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / (time.monotonic() - t0)
    )
    rss_mib = proc.memory_info().rss / (1024 * 1024)
    return cpu_pct, rss_mib


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,30")
    parser.add_argument("--idle-pods", type=int, default=50)
    parser.add_argument("--idle-s", type=float, default=30.0)
    args = parser.parse_args()
    clean_up_on_sigterm()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    client = docker.from_env()
    ensure_test_image(client)
    root = Path(tempfile.mkdtemp(prefix="bench-pod-start-"))
    node = f"bench-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(
        root, node, log_level="info", relist_interval_s=10.0, manifest_poll_interval_s=1.0
    )
    env_note = "blockbuster off"
    try:
        agent.start(blockbuster=False)
        results: dict[int, dict[str, list[float]]] = {}
        for n in [int(s) for s in args.sizes.split(",")]:
            results[n] = {"agent": [], "docker run": []}
            for r in range(args.rounds):
                results[n]["agent"].append(our_path(agent, client, n, f"r{r}n{n}"))
                results[n]["docker run"].append(baseline(client, n, f"r{r}n{n}"))
                print(
                    f"  round {r} n={n}: agent {results[n]['agent'][-1]:.2f}s "
                    f"docker run {results[n]['docker run'][-1]:.2f}s"
                )
        print(f"pod start ({args.rounds} rounds, alternating; {env_note})")
        print(f"{'pods':>5} {'agent median s':>15} {'docker run median s':>20} {'ratio':>7}")
        summary = {}
        for n, paths in results.items():
            ours = statistics.median(paths["agent"])
            theirs = statistics.median(paths["docker run"])
            summary[n] = {
                "agent_s": paths["agent"],
                "docker_run_s": paths["docker run"],
                "ratio": ours / theirs,
            }
            print(f"{n:>5} {ours:>15.2f} {theirs:>20.2f} {ours / theirs:>7.2f}")
        cpu_pct, rss_mib = idle_cost(agent, client, args.idle_pods, args.idle_s)
        print(
            f"idle with {args.idle_pods} pods over {args.idle_s:.0f}s: "
            f"CPU {cpu_pct:.2f}% of a core, RSS {rss_mib:.1f} MiB"
        )
        print(json.dumps({"start": summary, "idle_cpu_pct": cpu_pct, "idle_rss_mib": rss_mib}))
    finally:
        agent.stop()
        remove_node_containers(client, node)
        for c in client.containers.list(all=True, filters={"label": BASELINE_LABEL}):
            c.remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
