"""Reconnect storm after a master restart: how evenly a fleet comes back.

Run: ``.venv/bin/python bench/reconnect.py [--agents 500] [--cap-s 30] [--down-s 5]``

One master (open policy) on loopback and one Python process simulating ``--agents`` nodes. Each
node registers with its own P-256 key and CSR (as in ``bench/registration.py``), then runs a
lightweight link over mTLS with its issued certificate, shaped like the real agent's
(``agent/node/masterlink/link.py``): renew the lease, list its pods, then keep the pod watch open
and renew the lease every ``leaseRenewSeconds``. Any failure (refused, stream ended, 5xx) waits
with the agent's own policy, ``ReconnectBackoff(0.5, cap_s)`` (full jitter under a ceiling that
grows with the age of the outage), reset after a successful list. Once every node is connected
the master is stopped (SIGTERM), stays down ``--down-s`` seconds, and is started again on the
same data dir and port; t0 is the moment the new master accepts TCP connections (or the first
reconnect, if a node beat the probe). A node's reconnect time is when its first list after the
old master exited completed. Prints reconnects per bin from t0, the peak per second (the maximum
over sliding 1-s windows, which is >= the maximum of aligned 1-s bins, also printed), the jitter
window (first to last reconnect), the average rate over it (n / max(window, 1 s)) and the ratio
peak/average against the target ratio <= 3 (exit status 0 on PASS, 1 on FAIL). Only loopback is
used; every loop is bounded in count and time.

``--reset-before-connect`` resets the back-off at the start of each attempt instead, before any
request: what ``MasterLink.run`` did until the agent reset it only after a lease renewal
worked, so that no wait exceeded 0.5 s (kept to show what that bug costs the master).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.node.backoff import ReconnectBackoff
from bench.registration import bench_master, register_all
from tests.helpers import REPO_ROOT, MasterProcess

REQUEST_TIMEOUT_S = 30.0
BACKOFF_INITIAL_S = 0.5
CONNECT_ALL_TIMEOUT_S = 90.0
MASTER_START_TIMEOUT_S = 60.0
TARGET_RATIO = 3.0


class LinkLost(Exception):
    """The master answered with an error or ended the watch."""


FAILURES = (aiohttp.ClientError, TimeoutError, OSError, ValueError, LinkLost)


@dataclass(slots=True)
class Fleet:
    """What the simulated nodes share with the driver: the restart epoch and the results."""

    url: str
    cap_s: float
    reset_before_connect: bool
    restarted_at: float | None = None  # monotonic time the old master was told to stop
    down_at: float | None = None  # ... and the time it had exited
    connected: set[str] = field(default_factory=set)
    reconnect_at: dict[str, float] = field(default_factory=dict)
    reconnect_latency: list[float] = field(default_factory=list)
    attempts_after_stop: int = 0
    failures_after_stop: collections.Counter[str] = field(default_factory=collections.Counter)
    sleep_ceiling: dict[str, float] = field(default_factory=dict)  # of the wait in progress
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def _request(session: aiohttp.ClientSession, method: str, url: str) -> Any:
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    body: dict[str, Any] | None = {} if method == "PUT" else None
    async with session.request(method, url, json=body, timeout=timeout) as resp:
        data = await resp.json(content_type=None)
        if resp.status != 200:
            raise LinkLost(f"{method} {url}: {resp.status}")
        return data


async def _link(
    fleet: Fleet, name: str, session: aiohttp.ClientSession, backoff: ReconnectBackoff
) -> None:
    """One connection's life: lease, list, then watch + lease loop until something fails."""
    started = time.monotonic()
    lease = await _request(session, "PUT", f"{fleet.url}/v1/nodes/{name}/lease")
    renew_s = float(lease.get("leaseRenewSeconds", 10.0))
    listing = await _request(session, "GET", f"{fleet.url}/v1/nodes/{name}/pods")
    done = time.monotonic()
    backoff.reset()  # a successful list: the link is proven, the back-off starts over
    fleet.connected.add(name)
    if fleet.down_at is not None and name not in fleet.reconnect_at:
        fleet.reconnect_at[name] = done
        fleet.reconnect_latency.append(done - started)
    revision = int(listing["resourceVersion"])

    async def watch() -> None:
        url = f"{fleet.url}/v1/nodes/{name}/pods?watch=1&resourceVersion={revision}"
        async with session.get(url) as resp:
            if resp.status != 200:
                raise LinkLost(f"watch: {resp.status}")
            async for _line in resp.content:
                pass  # no pods are assigned in this bench; events would only be read
        raise LinkLost("watch ended")

    async def lease_loop() -> None:
        nonlocal renew_s
        while True:
            await asyncio.sleep(renew_s)
            answer = await _request(session, "PUT", f"{fleet.url}/v1/nodes/{name}/lease")
            renew_s = float(answer.get("leaseRenewSeconds", renew_s))

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(watch())
            group.create_task(lease_loop())
    finally:
        fleet.connected.discard(name)


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


async def node_loop(fleet: Fleet, name: str, ctx: ssl.SSLContext, delay_s: float) -> None:
    backoff = ReconnectBackoff(min(BACKOFF_INITIAL_S, fleet.cap_s), fleet.cap_s)
    connector = aiohttp.TCPConnector(ssl=ctx, limit=2)  # the watch and one request
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.sleep(delay_s)
        while not fleet.stop.is_set():
            if fleet.reset_before_connect:
                backoff.reset()
            after_stop = fleet.restarted_at is not None
            if after_stop:
                fleet.attempts_after_stop += 1
            try:
                await _link(fleet, name, session, backoff)
            except* FAILURES as failed:
                if after_stop:
                    fleet.failures_after_stop[type(_leaf(failed)).__name__] += 1
            fleet.sleep_ceiling[name] = backoff.ceiling_s
            await asyncio.sleep(backoff.next_delay())


def spawn_master(master: MasterProcess) -> None:
    """``MasterProcess.start`` without its nodectl readiness poll (a Python process every
    0.1 s would compete with the storm for the two cores); readiness is probed by the caller."""
    with master.log_path.open("ab") as log:
        master.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli.node_master",
                "run",
                "--config",
                str(master.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), NODE_AGENT_BLOCKBUSTER="0"),
        )


async def wait_accepting(master: MasterProcess, deadline: float) -> float:
    """The monotonic time the master first accepted a TCP connection."""
    while time.monotonic() < deadline:
        assert master.proc is not None
        if master.proc.poll() is not None:
            raise RuntimeError(f"master exited with {master.proc.returncode}")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", master.port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        accepted = time.monotonic()
        writer.close()
        return accepted
    raise RuntimeError("master not accepting connections in time")


async def wait_until(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.05)
    return bool(condition())


def sliding_peak(times: list[float], width_s: float = 1.0) -> tuple[int, float]:
    """Most events in any window ``[t, t + width)``, and where it starts (times sorted)."""
    best, where = 0, times[0] if times else 0.0
    for i, start in enumerate(times):
        count = bisect.bisect_left(times, start + width_s, lo=i) - i
        if count > best:
            best, where = count, start
    return best, where


def histogram(offsets: list[float], bin_s: float, width: int = 50) -> list[str]:
    bins = collections.Counter(int(t // bin_s) for t in offsets)
    last = max(bins) if bins else 0
    top = max(bins.values()) if bins else 1
    lines = []
    for b in range(last + 1):
        n = bins.get(b, 0)
        bar = "#" * round(width * n / top)
        lines.append(f"  +{b * bin_s:6.1f}s {n:5d} {bar}")
    return lines


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-reconnect-") as tmp:
        root = Path(tmp)
        master = bench_master(
            root / "master", lease_renew_s=args.renew_s, lease_grace_s=args.renew_s * 4
        )
        master.start(blockbuster=False)
        tasks: list[asyncio.Task[None]] = []
        try:
            elapsed, issued = await register_all(master, args.agents, root)
            print(f"registered {args.agents} agents in {elapsed:.1f}s", flush=True)
            ca = (master.root / "pki" / "ca.crt").read_bytes().decode()
            contexts = []
            for _, cert, key in issued:
                ctx = ssl.create_default_context(cadata=ca)
                ctx.load_cert_chain(cert, key)
                contexts.append(ctx)
            fleet = Fleet(master.url, args.cap_s, args.reset_before_connect)
            n = len(issued)
            tasks = [
                asyncio.create_task(node_loop(fleet, name, ctx, args.spread_s * i / n))
                for i, ((name, _, _), ctx) in enumerate(zip(issued, contexts, strict=True))
            ]
            t_start = time.monotonic()
            if not await wait_until(lambda: len(fleet.connected) == n, CONNECT_ALL_TIMEOUT_S):
                print(f"only {len(fleet.connected)}/{n} agents connected; giving up", flush=True)
                return 2
            print(f"all {n} agents connected in {time.monotonic() - t_start:.1f}s", flush=True)
            await asyncio.sleep(args.settle_s)

            fleet.restarted_at = time.monotonic()
            await asyncio.to_thread(master.stop)
            t_down = fleet.down_at = time.monotonic()
            print(
                f"master stopped in {t_down - fleet.restarted_at:.2f}s; "
                f"{len(fleet.connected)} agents still connected; down for {args.down_s:g}s",
                flush=True,
            )
            await asyncio.sleep(args.down_s)
            attempts_down = fleet.attempts_after_stop
            down_wall = time.monotonic() - fleet.restarted_at
            await asyncio.to_thread(spawn_master, master)
            t0 = await wait_accepting(master, time.monotonic() + MASTER_START_TIMEOUT_S)
            assert master.proc is not None
            proc = psutil.Process(master.proc.pid)
            ceilings = collections.Counter(round(c) for c in fleet.sleep_ceiling.values())
            cpu0 = proc.cpu_times()
            print(
                f"master accepting {t0 - t_down:.2f}s after the stop "
                f"(process start {t0 - t_down - args.down_s:.2f}s)",
                flush=True,
            )
            complete = await wait_until(lambda: len(fleet.reconnect_at) == n, args.wait_s)
            cpu1 = proc.cpu_times()
            t_end = time.monotonic()
            fleet.stop.set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            master.stop()

        times = sorted(fleet.reconnect_at.values())
        if not times:
            print("no agent reconnected", flush=True)
            return 1
        t0 = min(t0, times[0])  # a node may have won the race against the probe
        offsets = [t - t0 for t in times]
        window = offsets[-1] - offsets[0]
        peak, peak_at = sliding_peak(offsets)
        bin_peak = max(collections.Counter(int(t) for t in offsets).values())
        average = len(offsets) / max(window, 1.0)
        ratio = peak / average
        cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        q = statistics.quantiles(fleet.reconnect_latency, n=100)
        # Not the target, for context: the same ratio with the window cut at the 95th
        # percentile of reconnects, so a few stragglers do not stretch it.
        p95 = offsets[max(0, round(0.95 * len(offsets)) - 1)]
        average95 = (round(0.95 * len(offsets))) / max(p95 - offsets[0], 1.0)
        sleeping = ", ".join(f"~{c:g}s: {k}" for c, k in sorted(ceilings.items()))
        bin_s = 1.0 if window >= 5.0 else 0.1
        print(f"reconnects per {bin_s:g} s from t0 (new master accepting):")
        print("\n".join(histogram(offsets, bin_s)))
        failures = ", ".join(f"{k} {v}" for k, v in fleet.failures_after_stop.most_common())
        print(
            f"reconnected: {len(offsets)}/{n}"
            f"{'' if complete else f' (gave up after {args.wait_s:g}s)'}\n"
            f"attempts from the stop to the start: {attempts_down} in {down_wall:.1f}s "
            f"({attempts_down / down_wall:.0f}/s); attempts after the stop: "
            f"{fleet.attempts_after_stop} (failures: {failures or 'none'})\n"
            f"jitter window: {offsets[0]:.2f}s .. {offsets[-1]:.2f}s = {window:.2f}s\n"
            f"peak: {peak}/s (max over sliding 1-s windows, at +{peak_at:.2f}s); "
            f"max per aligned 1-s bin: {bin_peak}\n"
            f"average over the window: {average:.1f}/s (n / max(window, 1 s))\n"
            f"peak/average: {ratio:.2f} (target <= {TARGET_RATIO:g}): "
            f"{'PASS' if ratio <= TARGET_RATIO and complete else 'FAIL'}\n"
            f"(for context, window to the 95th percentile, +{p95:.2f}s: average "
            f"{average95:.1f}/s, peak/average {peak / average95:.2f})\n"
            f"agents' back-off ceiling of the wait in progress at t0 (ceiling: agents): "
            f"{sleeping}\n"
            f"reconnect attempt latency (TLS + lease + list) p50 {q[49] * 1000:.1f} ms, "
            f"p99 {q[98] * 1000:.1f} ms; master CPU from t0 to the end "
            f"{100 * cpu_s / (t_end - t0):.1f}% of a core",
            flush=True,
        )
        return 0 if ratio <= TARGET_RATIO and complete else 1


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=500)
    parser.add_argument("--cap-s", type=float, default=30.0, help="reconnect back-off cap")
    parser.add_argument("--down-s", type=float, default=5.0, help="master down before start")
    parser.add_argument("--renew-s", type=float, default=10.0, help="lease renew interval")
    parser.add_argument("--spread-s", type=float, default=5.0, help="initial connects spread")
    parser.add_argument("--settle-s", type=float, default=2.0, help="connected before restart")
    parser.add_argument("--wait-s", type=float, default=120.0, help="bound on the reconnect")
    parser.add_argument("--reset-before-connect", action="store_true")
    # the simulator must not be the bottleneck
    return uvloop.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
