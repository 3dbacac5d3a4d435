"""The cost of one usage sample for ``nodectl top`` (agent/node/usage.py) with N running
containers: our path (one container list, then each container's cgroup files read directly,
its pid known from an earlier inspect) against Docker's stats call per container (the
``one-shot`` form, and the default that waits for a second sample), A B A B.

    .venv/bin/python bench/usage.py --containers 20 --rounds 5

Prints the median wall time of one whole sample and the CPU it cost this process and dockerd
(and containerd) together, per path. What limits the figure: the Docker API round trips (one
per container for the baseline, one list for ours) and, on this host, a loaded CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.node.usage import read_cgroup_usage
from tests.helpers import TEST_IMAGE, ensure_test_image

LABEL = "node-agent.bench=usage"


def daemons() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] in ("dockerd", "containerd"):
            found.append(proc)
    return found


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def measure(sample: Callable[[], None], procs: list[psutil.Process]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the daemons) of one sample."""
    cpu0, wall0, own0 = cpu_s(procs), time.perf_counter(), time.process_time()
    sample()
    wall = time.perf_counter() - wall0
    return wall, (time.process_time() - own0) + (cpu_s(procs) - cpu0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    client = docker.from_env()
    api = docker.APIClient()
    ensure_test_image(client)
    started = [
        client.containers.run(
            TEST_IMAGE, ["sleep", "600"], detach=True, labels={"node-agent.bench": "usage"}
        )
        for _ in range(opts.containers)
    ]
    try:
        ids = [c.id for c in started]
        pids = {cid: int(api.inspect_container(cid)["State"]["Pid"]) for cid in ids}

        def ours() -> None:
            api.containers(filters={"label": LABEL})  # the sampler's one list
            for cid in ids:
                read_cgroup_usage(pids[cid])

        def one_shot() -> None:
            for cid in ids:
                api.stats(cid, stream=False, one_shot=True)

        def two_samples() -> None:
            for cid in ids:
                api.stats(cid, stream=False)

        procs = daemons()
        paths: dict[str, Callable[[], None]] = {
            "ours (list + cgroup files)": ours,
            "docker stats one-shot": one_shot,
            "docker stats (default)": two_samples,
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
        for _ in range(opts.rounds):
            for name, sample in paths.items():
                results[name].append(measure(sample, procs))
        print(f"one usage sample of {opts.containers} running containers, {opts.rounds} rounds:")
        base = statistics.median(w for w, _ in results["ours (list + cgroup files)"])
        for name, runs in results.items():
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(
                f"  {name:28} wall {wall * 1000:9.1f} ms  CPU {cpu * 1000:8.1f} ms"
                f"  ({wall / base:6.1f}x ours)"
            )
    finally:
        for container in started:
            container.remove(force=True)


if __name__ == "__main__":
    main()
