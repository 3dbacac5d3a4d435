"""The cost of probes: 100 pods, each with an exec readiness probe and an httpGet liveness
probe every 10 s, for 2 minutes — the agent's CPU and dockerd's, side by side with the same
number of ``docker exec`` calls made by a shell loop in the same run (the floor a user would
otherwise pay for the exec probes).

Run: ``.venv/bin/python bench/probes.py [--pods 100] [--window-s 120] [--period-s 10]``.

Phase 1: the agent runs the pods and probes them; over the window we sample the CPU time of
the agent, of dockerd and of containerd with its shims (an exec goes through all three), and
count the exec probes the agent ran as pods * window / period (each probe runs on a fixed
schedule).
Phase 2: the agent is stopped (SIGTERM leaves the pods running and unprobed) and a shell loop
``docker exec <container> true``-s the same containers at the same rate for the same window;
the same CPU counters are sampled. Targets (issue 15, not asserts): the agent ≤ 3 % of a core;
dockerd's CPU per exec probe at most 1.0 times its CPU per ``docker exec`` of the loop.
"""

from __future__ import annotations

import argparse
import json
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
    AgentProcess,
    clean_up_on_sigterm,
    ensure_test_image,
    pod_manifest,
    remove_node_containers,
    wait_for,
)

HTTPD = "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"


def cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def engine_processes() -> dict[str, list[psutil.Process]]:
    found: dict[str, list[psutil.Process]] = {"dockerd": [], "containerd+shims": []}
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        if name == "dockerd":
            found["dockerd"].append(proc)
        elif name.startswith("containerd"):
            found["containerd+shims"].append(proc)
    return found


def sample(agent: psutil.Process | None) -> dict[str, float]:
    engine = engine_processes()
    values = {name: cpu_s(procs) for name, procs in engine.items()}
    values["agent"] = cpu_s([agent]) if agent is not None else 0.0
    values["t"] = time.monotonic()
    return values


def ready_pods(agent: AgentProcess) -> int:
    return sum(
        1
        for pod in agent.pods().values()
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod["status"].get("conditions", [])
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--period-s", type=int, default=10)
    args = parser.parse_args()
    clean_up_on_sigterm()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    client = docker.from_env()
    image = ensure_test_image(client)
    root = Path(tempfile.mkdtemp(prefix="bench-probes-"))
    node = f"bench-{uuid.uuid4().hex[:8]}"
    agent = AgentProcess(
        root, node, log_level="info", relist_interval_s=10.0, manifest_poll_interval_s=1.0
    )
    try:
        agent.start(blockbuster=False)
        for i in range(args.pods):
            main_container = {
                "name": "main",
                "image": image,
                "command": ["sh", "-c", HTTPD],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": args.period_s},
                "livenessProbe": {
                    "httpGet": {"port": "http", "path": "/healthz"},
                    "periodSeconds": args.period_s,
                },
            }
            agent.write_manifest(f"p{i}.yaml", pod_manifest(f"p{i}", [main_container]))
        wait_for(
            lambda: ready_pods(agent) >= args.pods,
            timeout_s=900,
            interval_s=1.0,
            what=f"{args.pods} pods Ready",
        )
        # One more period so that every pod's probes run on their steady schedule.
        time.sleep(args.period_s)
        assert agent.proc is not None
        me = psutil.Process(agent.proc.pid)
        before = sample(me)
        time.sleep(args.window_s)
        after = sample(me)
        probes = args.pods * int(args.window_s // args.period_s)
        ids = [
            pod["status"]["containerStatuses"][0]["containerID"].removeprefix("docker://")
            for pod in agent.pods().values()
        ]
        agent.stop()  # the pods keep running, unprobed
        print(
            "agent phase: "
            + json.dumps(
                {
                    key: round(after[key] - before[key], 3)
                    for key in ("agent", "dockerd", "containerd+shims", "t")
                }
            )
        )

        # The same number of execs from a shell loop, at the same rate.
        rounds = int(args.window_s // args.period_s)
        script = (
            f"for r in $(seq {rounds}); do start=$(date +%s); "
            f"for c in {' '.join(ids)}; do docker exec $c true; done; "
            f"left=$(( {args.period_s} - ($(date +%s) - start) )); "
            'if [ "$left" -gt 0 ]; then sleep "$left"; fi; done'
        )
        loop_before = sample(None)
        subprocess.run(["sh", "-c", script], check=True)
        loop_after = sample(None)
        loop_execs = rounds * len(ids)

        window = after["t"] - before["t"]
        loop_window = loop_after["t"] - loop_before["t"]

        def delta(a: dict[str, float], b: dict[str, float], key: str) -> float:
            return b[key] - a[key]

        agent_pct = 100 * delta(before, after, "agent") / window
        result = {
            "pods": args.pods,
            "window_s": round(window, 1),
            "exec_probes": probes,
            "agent_cpu_pct": round(agent_pct, 2),
            "dockerd_cpu_pct_probing": round(100 * delta(before, after, "dockerd") / window, 2),
            "dockerd_ms_per_exec_probe": round(1000 * delta(before, after, "dockerd") / probes, 3),
            "containerd_ms_per_exec_probe": round(
                1000 * delta(before, after, "containerd+shims") / probes, 3
            ),
            "loop_window_s": round(loop_window, 1),
            "loop_execs": loop_execs,
            "dockerd_ms_per_docker_exec": round(
                1000 * delta(loop_before, loop_after, "dockerd") / loop_execs, 3
            ),
            "containerd_ms_per_docker_exec": round(
                1000 * delta(loop_before, loop_after, "containerd+shims") / loop_execs, 3
            ),
        }
        result["dockerd_ratio"] = round(
            result["dockerd_ms_per_exec_probe"] / result["dockerd_ms_per_docker_exec"], 2
        )
        print(
            f"{args.pods} pods, exec readiness + httpGet liveness every {args.period_s}s, "
            f"{window:.0f}s window"
        )
        print(f"{'':28} {'agent probes':>14} {'shell docker exec':>18}")
        print(f"{'exec calls':28} {probes:>14} {loop_execs:>18}")
        print(
            f"{'dockerd ms CPU per exec':28} {result['dockerd_ms_per_exec_probe']:>14} "
            f"{result['dockerd_ms_per_docker_exec']:>18}"
        )
        print(
            f"{'containerd+shims ms per exec':28} {result['containerd_ms_per_exec_probe']:>14} "
            f"{result['containerd_ms_per_docker_exec']:>18}"
        )
        print(f"agent CPU while probing: {agent_pct:.2f}% of a core (target <= 3%)")
        print(f"dockerd per exec, agent / loop: {result['dockerd_ratio']} (target <= 1.0)")
        print(json.dumps(result))
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
        remove_node_containers(client, node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
