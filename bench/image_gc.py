"""Image GC (issue 16): planning time on FakeRuntime, and deleting 50 images on a real engine,
our GC against ``docker image prune -a -f`` on the same kind of set, alternating.

1. Planning: ``plan_gc`` (with ``refresh_usage``) over 1,000 images and 500 containers of a
   FakeRuntime (records listed from it each round, as the manager does), median of --plan-runs.
   Target < 100 ms.
2. Deletion: a second dockerd of the bench's own (data root a tmpfs, own socket, no bridge: the
   machine's engine is untouched) gets 50 fresh images (busybox + 256 KiB random each) per
   round; three contenders take turns, each deleting its round's set: our GC (the manager
   in-process on the Docker adapter, thresholds 0 %: every unused image is a candidate,
   minimum age 0; one runtime and one manager for all its rounds, connected first, as in a
   running agent), ``docker image prune -a -f`` (the command, its process start included: the
   target's yardstick) and the same prune as one API call (the engine's own time, no CLI).
   Target: ours <= 1.2x the command (prune ignores LRU, age and pins; ours lists images and
   containers, measures the disk before and after, persists the last-used record and
   re-checks reservations under the lock).

Run as root: ``.venv/bin/python bench/image_gc.py`` (BENCHMARKS.md has the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker
from prometheus_client import CollectorRegistry

from agent.aio.bridge import ThreadBridge
from agent.aio.clock import SystemClock
from agent.aio.tasks import Supervisor
from agent.node.imagegc.lastused import LastUsedStore
from agent.node.imagegc.manager import GCSettings, ImageGC
from agent.node.imagegc.metrics import ImageGCMetrics
from agent.node.imagegc.planner import FsUsage, GCPolicy, Usage, plan_gc, refresh_usage
from agent.node.imagegc.reservations import ImageReservations
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.docker import DockerRuntime
from agent.node.runtime.fake import FakeRuntime
from agent.types import LABEL_CONTAINER, LABEL_NODE, LABEL_POD_UID

IMAGES = 1000
CONTAINERS = 500
PAD_BYTES = 256 * 1024


async def bench_planning(runs: int) -> list[float]:
    fake = FakeRuntime("bench")
    refs = [f"bench/app{i}:1" for i in range(IMAGES)]
    for ref in refs:
        fake.add_image(ref, size_bytes=10_000_000)
    for i in range(CONTAINERS):
        spec = ContainerSpec(
            name=f"c{i}",
            image=refs[i * 2],
            labels={LABEL_NODE: "bench", LABEL_POD_UID: f"p{i}", LABEL_CONTAINER: "c"},
        )
        await fake.create_container(spec)
    policy = GCPolicy(minimum_age_s=120, pinned_images=("bench/app9*",), sandbox_image="pause:1")
    now = time.time()
    usage: dict[str, Usage] = {}
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        images = await fake.list_images()
        in_use = await fake.image_ids_in_use()
        usage = refresh_usage(usage, images, in_use, now - 3600)
        plan = plan_gc(
            images=images,
            in_use=in_use,
            reserved={},
            usage=usage,
            fs=FsUsage(IMAGES * 10_000_000, int(IMAGES * 10_000_000 * 0.9)),
            now=now,
            policy=policy,
        )
        times.append(time.perf_counter() - started)
        assert plan.deletions
    return times


def busybox_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        pad = os.urandom(PAD_BYTES)
        info = tarfile.TarInfo("pad")
        info.size = len(pad)
        tar.addfile(info, io.BytesIO(pad))
    return buf.getvalue()


class Engine:
    def __init__(self) -> None:
        self.root = Path(f"/tmp/gcbench-{uuid.uuid4().hex[:8]}")
        (self.root / "data").mkdir(parents=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(self.root / "data")], check=True
        )
        self.sock = self.root / "docker.sock"
        ns = self.ns = f"gcbench-{self.root.name}"
        # Its own network namespace: with --bridge=none dockerd deletes the docker0 it finds,
        # the machine's engine's bridge in the host's namespace.
        subprocess.run(["ip", "netns", "add", ns], check=True)
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{ns}", "dockerd",
             "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
             "--pidfile", str(self.root / "docker.pid"),
             "-H", f"unix://{self.sock}", "--bridge=none", "--iptables=false",
             "--ip-masq=false", "--containerd-namespace", ns,
             "--containerd-plugins-namespace", f"{ns}-plugins"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = docker.DockerClient(base_url=f"unix://{self.sock}", version="1.41")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.ping()
                break
            except Exception:  # requests' ConnectionError until the socket exists
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    def fill(self, count: int, round_no: int) -> None:
        for i in range(count):
            self.client.api.import_image_from_data(
                busybox_tar(), repository=f"gcbench/r{round_no}-{i}", tag="1"
            )

    def count(self) -> int:
        return len(self.client.images.list())

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        for _ in range(40):
            done = subprocess.run(
                ["umount", str(self.root / "data")], check=False, capture_output=True
            )
            if done.returncode == 0:
                break
            time.sleep(0.25)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", self.ns], check=False)


async def deletions(engine: Engine, state_dir: Path, rounds: int, count: int) -> Timings:
    """``rounds`` turns of each contender, alternating; each turn deletes a fresh set."""
    timings = Timings([], [], [])
    bridge = ThreadBridge(8, name="bench-gc")
    runtime = DockerRuntime(bridge, "bench", docker_host=engine.host, timeout_s=120, pool_size=8)
    try:
        await runtime.ping()  # the agent's runtime gate does this before GC starts
        async with Supervisor() as supervisor:
            gc = ImageGC(
                runtime=runtime,
                reservations=ImageReservations(),
                store=LastUsedStore(state_dir / "image-usage.json"),
                bridge=bridge,
                settings=GCSettings(
                    policy=GCPolicy(high_percent=0.0, low_percent=0.0, minimum_age_s=0.0)
                ),
                clock=SystemClock(),
                metrics=ImageGCMetrics(CollectorRegistry()),
                tasks=supervisor.scope("gc"),
                state_dir=state_dir,
            )
            for round_no in range(rounds * 3):
                await asyncio.to_thread(engine.fill, count, round_no)
                assert engine.count() == count
                turn = round_no % 3
                if turn == 0:
                    started = time.perf_counter()
                    report = await gc.collect(force=True)
                    timings.ours.append(time.perf_counter() - started)
                    deleted = sum(1 for r in report.results.values() if r == "deleted")
                    assert deleted >= count, report.results
                elif turn == 1:
                    timings.prune_cli.append(await asyncio.to_thread(prune_cli, engine))
                else:
                    timings.prune_api.append(await asyncio.to_thread(prune_api, engine))
                assert engine.count() == 0, engine.count()
    finally:
        await runtime.close()
        bridge.close()
    return timings


@dataclass(frozen=True, slots=True)
class Timings:
    ours: list[float]
    prune_cli: list[float]
    prune_api: list[float]


def prune_cli(engine: Engine) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["docker", "-H", engine.host, "image", "prune", "-a", "-f"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def prune_api(engine: Engine) -> float:
    started = time.perf_counter()
    engine.client.api.prune_images(filters={"dangling": False})
    return time.perf_counter() - started


def cli_start(engine: Engine) -> float:
    """The command's fixed cost: ``docker image ls -q`` on the emptied engine."""
    started = time.perf_counter()
    subprocess.run(
        ["docker", "-H", engine.host, "image", "ls", "-q"], check=True, capture_output=True
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="deletion rounds of each")
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()

    plans = asyncio.run(bench_planning(args.plan_runs))
    print(
        f"planning {IMAGES} images / {CONTAINERS} containers: median "
        f"{statistics.median(plans) * 1000:.1f} ms, max {max(plans) * 1000:.1f} ms "
        f"({args.plan_runs} runs; target < 100 ms)"
    )
    if os.geteuid() != 0:
        print("deletion: skipped (needs root for its own dockerd)")
        return 0
    engine = Engine()
    try:
        with tempfile.TemporaryDirectory() as state:
            t = asyncio.run(deletions(engine, Path(state), args.rounds, args.images))
        fixed = statistics.median(cli_start(engine) for _ in range(5))
    finally:
        engine.close()
    ours_m = statistics.median(t.ours)
    print(f"deleting {args.images} images, median of {args.rounds} each, alternating:")
    for label, runs in (
        ("our GC", t.ours),
        ("docker image prune -a -f", t.prune_cli),
        ("prune, one API call", t.prune_api),
    ):
        print(
            f"  {label:<25} {statistics.median(runs):.3f} s  "
            f"(runs: {', '.join(f'{x:.3f}' for x in runs)})"
        )
    print(f"  the docker command's fixed cost (image ls on the empty engine): {fixed:.3f} s")
    print(f"  ratio to the command {ours_m / statistics.median(t.prune_cli):.2f}x (target <= 1.2x)")
    print(f"  ratio to the API call {ours_m / statistics.median(t.prune_api):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
