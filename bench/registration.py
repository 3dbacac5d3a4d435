"""Registration throughput and lease-renewal latency of one master (open policy).

Run: ``.venv/bin/python bench/registration.py [--nodes 1000] [--lease-nodes 1000] [--lease-s 30]``

Phase 1: ``--nodes`` simulated nodes, each with its own P-256 key and CSR, register
concurrently over real TLS (a new connection each, as real nodes would); prints
registrations/s. Phase 2: ``--lease-nodes`` of them renew their lease every ``--renew-s`` over
mTLS with their issued certificates (one keep-alive connection each), simulated by
``--sim-procs`` processes (default 2) so one client event loop's delays do not dominate the
tail; prints p50/p99 latency, the master's CPU, and the master's own view from its /metrics
(lease handling time, event-loop lag). Only loopback is used; every loop is bounded.

Connection errors do not end the run: each is counted by phase and kind (a registration is
tried up to ``REGISTER_ATTEMPTS`` times; a simulated node whose connection fails or is closed
reconnects at its next renewal) and all are printed at the end; the exit status is 1 when
there was any. The master runs with the registration rate limit lifted (5,000 nodes register
from one address here) and, unless ``--master-nofile`` asks otherwise, with the descriptor
limits the bench itself got: ``--master-nofile 1024`` starts it under a soft limit of 1,024,
as from a login shell on a stock machine. ``--ramp-s`` spreads the nodes' first renewals (each
a TLS handshake with a client certificate) over more than one interval, as nodes that have just
registered arrive at the registration rate; ``--nice`` runs the master and the simulators at
a higher priority on a machine shared with other work.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing
import os
import re
import resource
import ssl
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.pki.core import build_csr, generate_key, key_to_pem
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.helpers import MasterProcess

CONCURRENCY = 64
REGISTER_ATTEMPTS = 3
REQUEST_TIMEOUT_S = 30.0  # a renewal or registration that hangs longer is counted as an error
# What a connection can fail with, counted by kind instead of ending the run.
CONNECTION_ERRORS = (
    OSError,  # refused, reset, EMFILE, ssl.SSLError
    asyncio.IncompleteReadError,  # the master closed the connection mid-answer
    asyncio.LimitOverrunError,
    TimeoutError,
    aiohttp.ClientError,
)


class BadAnswer(Exception):
    """The master answered, with a status other than 200."""


def error_kind(phase: str, exc: BaseException) -> str:
    if isinstance(exc, BadAnswer):
        return f"{phase}: {exc}"
    return f"{phase}: {type(exc).__name__}"


def bench_master(root: Path, **settings: Any) -> MasterProcess:
    """A master with the open policy and no per-address registration rate limit: the simulated
    fleet registers from 127.0.0.1 (real fleets come from as many addresses as nodes)."""
    master = MasterProcess(root, **settings)
    master.configure(trust=["open"], registration_rate_per_s=1e6, registration_burst=1_000_000)
    return master


async def register_all(
    master: MasterProcess,
    count: int,
    workdir: Path,
    errors: collections.Counter[str] | None = None,
) -> tuple[float, list[tuple[str, Path, Path]]]:
    """Registers ``count`` nodes, ``CONCURRENCY`` at a time; each failure is counted in
    ``errors`` and retried (``REGISTER_ATTEMPTS`` in all). Returns the time taken and the nodes
    that got a certificate."""
    errors = errors if errors is not None else collections.Counter()
    ca = (master.root / "pki" / "ca.crt").read_bytes()
    keys = [generate_key() for _ in range(count)]  # key generation is the node's cost, not timed
    csrs = [
        build_csr(k, f"{NODE_CN_PREFIX}bench-{i}", [NODES_GROUP], [f"bench-{i}"])
        for i, k in enumerate(keys)
    ]
    slots = asyncio.Semaphore(CONCURRENCY)
    issued: list[tuple[str, Path, Path]] = []

    async def attempt(i: int) -> dict[str, Any]:
        ctx = ssl.create_default_context(cadata=ca.decode())
        connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            body = {
                "nodeName": f"bench-{i}",
                "csr": csrs[i].decode(),
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
            }
            async with session.post(f"{master.url}/v1/registrations", json=body) as resp:
                if resp.status != 200:
                    raise BadAnswer(f"HTTP {resp.status}")
                answer: dict[str, Any] = await resp.json()
                return answer

    async def one(i: int) -> None:
        async with slots:
            for _ in range(REGISTER_ATTEMPTS):
                try:
                    answer = await attempt(i)
                    break
                except (*CONNECTION_ERRORS, BadAnswer) as exc:
                    errors[error_kind("registration", exc)] += 1
            else:
                return
        cert, key = workdir / f"{i}.crt", workdir / f"{i}.key"
        cert.write_text(answer["certificate"])
        key.write_bytes(key_to_pem(keys[i]))
        issued.append((f"bench-{i}", cert, key))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - start, issued


async def renew_leases(
    url: str,
    ca: str,
    nodes: list[tuple[str, Path, Path]],
    renew_s: float,
    duration_s: float,
    *,
    first_index: int = 0,
    total: int | None = None,
    start_at: float | None = None,
    ramp_s: float | None = None,
) -> tuple[list[float], list[float], collections.Counter[str]]:
    """All renewal latencies, those of the steady state (renewals that start after every
    node has connected once: the first renewal of each node carries its TLS handshake), and
    the connection errors by kind (a node whose connection failed reconnects at its next
    renewal; ``lease connect`` is a failed connection, ``lease renewal`` one that failed or was
    closed by the master while in use: a dropped connection).
    ``nodes`` may be a slice (``first_index`` of ``total``) run by one of several simulator
    processes that share ``start_at`` (CLOCK_MONOTONIC is system-wide)."""
    total = total or len(nodes)
    latencies: list[float] = []
    steady: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    # Each simulated node's TLS context is built before the clock starts: building 5,000 of
    # them inside the timed loop blocked the simulator's event loop for seconds.
    contexts = []
    for _, cert, key in nodes:
        ctx = ssl.create_default_context(cadata=ca)
        ctx.load_cert_chain(cert, key)
        contexts.append(ctx)
    start = start_at if start_at is not None else time.monotonic()
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    ramp_s = renew_s if ramp_s is None else ramp_s
    warmed_up = start + max(ramp_s, renew_s) + renew_s
    deadline = start + duration_s

    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 443

    async def node_loop(index: int, name: str, ctx: ssl.SSLContext) -> None:
        # A bare HTTP/1.1 keep-alive client: one prebuilt request, a minimal response parser.
        # aiohttp's client cost the simulator as much CPU per renewal as the master spent
        # serving it, and on this 2-core machine that CPU came out of the master's latency.
        request = (
            f"PUT /v1/nodes/{name}/lease HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        ).encode()
        # Spread the fleet's first renewals over the ramp (by default one renew interval).
        await asyncio.sleep(max(0.0, start + ramp_s * index / total - time.monotonic()))
        writer: asyncio.StreamWriter | None = None
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                phase = "lease connect"
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        if writer is None:  # the first renewal carries the TLS handshake
                            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
                        phase = "lease renewal"
                        writer.write(request)
                        head = await reader.readuntil(b"\r\n\r\n")
                        length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
                        await reader.readexactly(int(length.group(1)) if length else 0)
                    if head[9:12] != b"200":
                        raise BadAnswer(f"HTTP {head[9:12].decode(errors='replace')}")
                except (*CONNECTION_ERRORS, BadAnswer) as exc:
                    errors[error_kind(phase, exc)] += 1
                    if writer is not None:
                        writer.close()
                    writer = None  # reconnect at the next renewal, as an agent would
                else:
                    latencies.append(time.monotonic() - started)
                    if started >= warmed_up:
                        steady.append(latencies[-1])
                await asyncio.sleep(max(0.0, renew_s - (time.monotonic() - started)))
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(
        *(
            node_loop(first_index + i, node[0], ctx)
            for i, (node, ctx) in enumerate(zip(nodes, contexts, strict=True))
        )
    )
    return latencies, steady, errors


def lease_worker(
    job: tuple[Any, ...],
) -> tuple[list[float], list[float], collections.Counter[str]]:
    """One simulator process: its slice of the fleet, on its own event loop."""
    url, ca, nodes, renew_s, duration_s, first, total, start_at, cpus, nice, ramp_s = job
    if cpus:
        os.sched_setaffinity(0, cpus)
    if nice:
        renice(os.getpid(), nice)
    return uvloop.run(
        renew_leases(
            url,
            ca,
            nodes,
            renew_s,
            duration_s,
            first_index=first,
            total=total,
            start_at=start_at,
            ramp_s=ramp_s,
        )
    )


def renew_in_processes(
    master: MasterProcess, nodes: list[tuple[str, Path, Path]], args: argparse.Namespace
) -> tuple[list[float], list[float], collections.Counter[str]]:
    ca = (master.root / "pki" / "ca.crt").read_bytes().decode()
    procs = max(1, args.sim_procs)
    size = -(-len(nodes) // procs)
    # Everyone starts on the same clock, a few seconds out so all workers are ready.
    start_at = time.monotonic() + 2.0 + 0.002 * len(nodes) / procs
    jobs = [
        (
            master.url,
            ca,
            nodes[i : i + size],
            args.renew_s,
            args.lease_s,
            i,
            len(nodes),
            start_at,
            simulator_cpus(args.pin),
            args.nice,
            args.ramp_s,
        )
        for i in range(0, len(nodes), size)
    ]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        results = pool.map(lease_worker, jobs)
    latencies = [x for r in results for x in r[0]]
    steady = [x for r in results for x in r[1]]
    errors: collections.Counter[str] = sum((r[2] for r in results), collections.Counter())
    return latencies, steady, errors


def simulator_cpus(pin: bool) -> set[int]:
    """With --pin, the master owns CPU 0 and the simulators share the rest: the nearest this
    one machine gets to a fleet on other hosts (the master's latency is then not the
    simulators' scheduling)."""
    return set(range(1, os.cpu_count() or 1)) if pin else set()


def renice(pid: int, nice: int) -> None:
    """Every thread of ``pid`` at ``nice`` (setpriority acts on one thread; threads started
    later inherit it). On a machine shared with other work, a negative value keeps the
    measured processes from queueing behind it (root only)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def pin_process(pid: int, cpus: set[int]) -> None:
    """sched_setaffinity acts on one thread: pin every thread the process has already started
    (threads started later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def raise_nofile() -> tuple[int, int]:
    """The simulators hold a descriptor per simulated node: soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, hard


def start_master(master: MasterProcess, nofile: int | None) -> None:
    """Starts ``master``, under a soft descriptor limit of ``nofile`` if given (inherited from
    this process, lowered for the moment of the start, as from a shell's ``ulimit -Sn``)."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    if nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, saved[1]))
    try:
        master.start(blockbuster=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def print_errors(errors: collections.Counter[str]) -> None:
    dropped = sum(n for kind, n in errors.items() if kind.startswith("lease renewal"))
    print(
        f"connection errors: {sum(errors.values())} "
        f"(dropped renewal connections: {dropped})"
        + "".join(f"\n  {n:6d}  {kind}" for kind, n in sorted(errors.items())),
        flush=True,
    )


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile()
    errors: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="bench-registration-") as tmp:
        root = Path(tmp)
        master = bench_master(
            root / "master", lease_renew_s=args.renew_s, lease_grace_s=args.renew_s * 4
        )
        start_master(master, args.master_nofile)
        assert master.proc is not None
        proc = psutil.Process(master.proc.pid)
        soft, hard = proc.rlimit(psutil.RLIMIT_NOFILE)
        print(f"master RLIMIT_NOFILE: soft {soft}, hard {hard}", flush=True)
        if args.pin:
            pin_process(master.proc.pid, {0})
        if args.nice:
            renice(master.proc.pid, args.nice)
            renice(os.getpid(), args.nice)
        try:
            reg0 = proc.cpu_times()
            elapsed, issued = await register_all(master, args.nodes, root, errors)
            reg1 = proc.cpu_times()
            reg_cpu = (reg1.user - reg0.user) + (reg1.system - reg0.system)
            print(
                f"registrations: {len(issued)} of {args.nodes} in {elapsed:.2f}s = "
                f"{len(issued) / elapsed:.0f}/s (target: 1000 in <= 10 s); master CPU "
                f"{100 * reg_cpu / elapsed:.0f}% of a core, "
                f"{1000 * reg_cpu / max(1, len(issued)):.2f} ms per registration",
                flush=True,
            )
            subset = issued[: args.lease_nodes]
            cpu0 = proc.cpu_times()
            me0 = psutil.Process().cpu_times()
            t0 = time.monotonic()
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            latencies, steady, lease_errors = await asyncio.to_thread(
                renew_in_processes, master, subset, args
            )
            errors.update(lease_errors)
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu1 = proc.cpu_times()
            me1 = psutil.Process().cpu_times()
            wall = time.monotonic() - t0
            cpu_pct = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
            client_pct = (
                100
                * (
                    (me1.user - me0.user)
                    + (me1.system - me0.system)
                    + (children1.ru_utime - children0.ru_utime)
                    + (children1.ru_stime - children0.ru_stime)
                )
                / wall
            )
            if len(latencies) < 2:
                print(f"lease renewals: {len(latencies)} succeeded", flush=True)
                return 1
            q = statistics.quantiles(latencies, n=100)
            qs = statistics.quantiles(steady, n=100) if len(steady) > 1 else q
            print(
                f"lease renewals: {len(subset)} nodes every {args.renew_s:g}s "
                f"for {args.lease_s:g}s: "
                f"{len(latencies)} renewals, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms "
                f"(steady state, after every node connected: p50 {qs[49] * 1000:.1f} ms, "
                f"p99 {qs[98] * 1000:.1f} ms), "
                f"master CPU {cpu_pct:.1f}% of a core, simulating client CPU {client_pct:.1f}% "
                f"in {args.sim_procs} process(es){', master pinned to CPU 0' if args.pin else ''} "
                f"(target at 5000 nodes: p99 < 100 ms, master CPU < 50%)",
                flush=True,
            )
            # The master's own view: time spent handling a renewal, and how late its event loop
            # ran timers (the queueing a request sees). Client-side latency adds the simulator's
            # own event-loop delays on this shared 2-core machine.
            with urllib.request.urlopen(  # noqa: ASYNC210 - the measurement is over
                master.url + "/metrics",
                context=ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt")),
                timeout=30,
            ) as resp:
                metrics = resp.read().decode()
            for metric in ("node_master_lease_handling_seconds", "node_master_loop_lag_seconds"):
                sample = rf'{metric}{{quantile="([0-9.]+)"}} ([0-9.eE+-]+|NaN)'
                found = dict(re.findall(sample, metrics))
                p50, p99, top = (float(found[q]) * 1000 for q in ("0.5", "0.99", "1"))
                print(f"master {metric}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {top:.1f} ms")
        finally:
            master.stop()
            print_errors(errors)
    return 1 if errors else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lease-nodes", type=int, default=1000)
    parser.add_argument("--renew-s", type=float, default=10.0)
    parser.add_argument("--lease-s", type=float, default=30.0)
    parser.add_argument("--sim-procs", type=int, default=2, help="simulator processes")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="master on CPU 0, simulators on the other CPUs (default with 2+ CPUs)",
    )
    parser.add_argument(
        "--ramp-s",
        type=float,
        default=None,
        help="spread the nodes' first renewals (their TLS handshakes) over this many seconds "
        "(default: one renewal interval, the whole fleet connecting at once)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the master, this process and the simulators at this nice value (root for < 0)",
    )
    parser.add_argument(
        "--master-nofile",
        type=int,
        default=None,
        help="start the master under this soft RLIMIT_NOFILE (default: the bench's own)",
    )
    return uvloop.run(main_async(parser.parse_args()))  # the simulator must not be the bottleneck


if __name__ == "__main__":
    sys.exit(main())
