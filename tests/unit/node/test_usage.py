"""The node's usage sampler (``nodectl top``'s figures, agent.node.usage): cgroup v1 and v2
trees read as the kernel lays them out, CPU as a rate between samples (the first since the
container started), the pause container and ended containers left out, at most one sample per
USAGE_SAMPLE_S, and the runtime asked for a container's process once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import FakeRuntime
from agent.node.usage import (
    USAGE_SAMPLE_S,
    CgroupUsage,
    UsageSampler,
    cgroup_paths,
    read_cgroup_usage,
)
from agent.types import (
    KIND_APP,
    KIND_SANDBOX,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
)

pytestmark = pytest.mark.usefixtures("blockbuster")

ID = "0123456789ab" * 5 + "cdef"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_as_docker_lays_it_out(tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    write(
        proc / "42" / "cgroup",
        f"4:memory:/docker/{ID}\n2:cpuacct:/docker/{ID}\n1:cpu:/docker/{ID}\n"
        f"0::/docker/{ID}\n9:name=systemd:/docker/{ID}\n",
    )
    write(root / "cpuacct" / "docker" / ID / "cpuacct.usage", "2500000000\n")
    write(root / "memory" / "docker" / ID / "memory.usage_in_bytes", "10485760\n")
    write(
        root / "memory" / "docker" / ID / "memory.stat",
        "cache 100\ntotal_inactive_file 4194304\ntotal_rss 1\n",
    )
    assert cgroup_paths(42, proc)["cpuacct"] == f"/docker/{ID}"
    assert read_cgroup_usage(42, proc, root) == CgroupUsage(2_500_000_000, 6 * 1024 * 1024)


def test_cgroup_v2(tmp_path: Path) -> None:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    write(proc / "7" / "cgroup", f"0::/system.slice/docker-{ID}.scope\n")
    group = root / "system.slice" / f"docker-{ID}.scope"
    write(group / "cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n")
    write(group / "memory.current", "8388608\n")
    write(group / "memory.stat", "anon 1\ninactive_file 1048576\n")
    assert read_cgroup_usage(7, proc, root) == CgroupUsage(1_500_000_000, 7 * 1024 * 1024)


@pytest.mark.parametrize(
    "cgroup",
    ["0::/../../etc\n", "3:cpuset:/docker/x\n", "garbage\n"],
)
def test_unusable_cgroups_are_errors_not_reads_elsewhere(tmp_path: Path, cgroup: str) -> None:
    proc = tmp_path / "proc"
    write(proc / "1" / "cgroup", cgroup)
    with pytest.raises((ValueError, OSError)):
        read_cgroup_usage(1, proc, tmp_path / "cgroup")


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def time(self) -> float:
        return self.now


@pytest.fixture
async def bridge() -> AsyncIterator[ThreadBridge]:
    bridge = ThreadBridge(1, name="usage-test")
    yield bridge
    bridge.close()


async def container(runtime: FakeRuntime, pod: str, name: str, kind: str = KIND_APP) -> str:
    labels = {
        LABEL_NODE: runtime.node_name,
        LABEL_POD_NAMESPACE: "default",
        LABEL_POD_NAME: pod,
        LABEL_CONTAINER: name,
        LABEL_KIND: kind,
    }
    cid = await runtime.create_container(ContainerSpec(f"{pod}-{name}", "img", labels))
    await runtime.start_container(cid)
    return cid


async def test_the_sampler_reports_rates_per_pod_at_most_every_interval(
    bridge: ThreadBridge,
) -> None:
    clock = Clock()
    runtime = FakeRuntime(clock=clock)
    runtime.add_image("img")
    web = await container(runtime, "web", "main")
    side = await container(runtime, "web", "side")
    await container(runtime, "web", "POD", KIND_SANDBOX)  # the pause container: not counted
    cpu_ns = {web: 0, side: 0}
    # FakeRuntime gives every container the test's pid: the reader tells them apart by call.
    order: list[str] = []

    def read_cgroup(pid: int) -> CgroupUsage:
        cid = web if len(order) % 2 == 0 else side
        order.append(cid)
        return CgroupUsage(cpu_ns[cid], 5 << 20)

    node = [100.0]

    def read_node() -> tuple[float, int, float]:
        return node[0], 1 << 30, clock.now - 1000.0

    sampler = UsageSampler(
        bridge, runtime, clock=clock.time, read_node=read_node, read_cgroup=read_cgroup
    )
    first = await sampler.report()
    assert first is not None
    assert first["node"] == {"cpuMillis": 100, "memoryBytes": 1 << 30}  # 100 s busy in 1000 s
    [pod] = first["pods"]
    assert (pod["namespace"], pod["name"]) == ("default", "web")
    assert sorted(c["name"] for c in pod["containers"]) == ["main", "side"]
    calls = runtime.calls["container_pid"]

    clock.now += USAGE_SAMPLE_S / 2
    assert await sampler.report() is None  # not due: nothing new to send
    clock.now += USAGE_SAMPLE_S / 2
    cpu_ns[web] += int(USAGE_SAMPLE_S * 0.25e9)  # a quarter of a core over the interval
    node[0] += USAGE_SAMPLE_S * 1.5
    second = await sampler.report()
    assert second is not None
    assert second["window"] == USAGE_SAMPLE_S
    assert second["node"]["cpuMillis"] == 1500
    figures = {c["name"]: c for c in second["pods"][0]["containers"]}
    assert figures["main"] == {"name": "main", "cpuMillis": 250, "memoryBytes": 5 << 20}
    assert figures["side"]["cpuMillis"] == 0
    assert runtime.calls["container_pid"] == calls  # the pids were kept

    runtime.exit_container(side, 0)
    clock.now += USAGE_SAMPLE_S
    third = await sampler.report()
    assert third is not None
    assert [c["name"] for c in third["pods"][0]["containers"]] == ["main"]


async def test_a_runtime_outage_still_reports_the_node(bridge: ThreadBridge) -> None:
    runtime = FakeRuntime()
    runtime.set_down()
    sampler = UsageSampler(bridge, runtime)
    report = await asyncio.wait_for(sampler.report(), 10)
    assert report is not None and "pods" not in report
    assert report["node"]["memoryBytes"] > 0  # psutil's figures, from this host
