"""Registration throughput and lease-renewal latency of one master (open policy).

Run: ``.venv/bin/python bench/registration.py [--nodes 1000] [--lease-nodes 1000] [--lease-s 30]``

Phase 1: ``--nodes`` simulated nodes, each with its own P-256 key and CSR, register
concurrently over real TLS (a new connection each, as real nodes would); prints
registrations/s. Phase 2: ``--lease-nodes`` of them renew their lease every ``--renew-s`` over
mTLS with their issued certificates (one keep-alive connection each); prints p50/p99 latency and
the master's CPU. Only loopback is used; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.pki.core import NODE_CN_PREFIX, NODES_GROUP, build_csr, generate_key, key_to_pem
from tests.helpers import MasterProcess

CONCURRENCY = 64


async def register_all(
    master: MasterProcess, count: int, workdir: Path
) -> tuple[float, list[tuple[str, Path, Path]]]:
    ca = (master.root / "pki" / "ca.crt").read_bytes()
    keys = [generate_key() for _ in range(count)]  # key generation is the node's cost, not timed
    csrs = [
        build_csr(k, f"{NODE_CN_PREFIX}bench-{i}", [NODES_GROUP], [f"bench-{i}"])
        for i, k in enumerate(keys)
    ]
    slots = asyncio.Semaphore(CONCURRENCY)
    issued: list[tuple[str, Path, Path]] = []

    async def one(i: int) -> None:
        async with slots:
            ctx = ssl.create_default_context(cadata=ca.decode())
            connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                body = {
                    "nodeName": f"bench-{i}",
                    "csr": csrs[i].decode(),
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                }
                async with session.post(f"{master.url}/v1/registrations", json=body) as resp:
                    answer = await resp.json()
                    if resp.status != 200:
                        raise RuntimeError(f"registration {i}: {resp.status} {answer}")
        cert, key = workdir / f"{i}.crt", workdir / f"{i}.key"
        cert.write_text(answer["certificate"])
        key.write_bytes(key_to_pem(keys[i]))
        issued.append((f"bench-{i}", cert, key))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(count)))
    return time.monotonic() - start, issued


async def renew_leases(
    master: MasterProcess, nodes: list[tuple[str, Path, Path]], renew_s: float, duration_s: float
) -> tuple[list[float], list[float]]:
    """All renewal latencies, and those of the steady state: renewals that start after every
    node has connected once (the first renewal of each node carries its TLS handshake)."""
    ca = (master.root / "pki" / "ca.crt").read_bytes().decode()
    latencies: list[float] = []
    steady: list[float] = []
    # Each simulated node's TLS context is built before the clock starts: building 5,000 of
    # them inside the timed loop blocked the simulator's event loop for seconds.
    contexts = []
    for _, cert, key in nodes:
        ctx = ssl.create_default_context(cadata=ca)
        ctx.load_cert_chain(cert, key)
        contexts.append(ctx)
    start = time.monotonic()
    warmed_up = start + renew_s * 2
    deadline = start + duration_s

    async def node_loop(index: int, name: str, ctx: ssl.SSLContext) -> None:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=1)
        ) as session:
            # Spread the fleet over the renew interval, as real nodes are.
            await asyncio.sleep(renew_s * index / len(nodes))
            while time.monotonic() < deadline:
                started = time.monotonic()
                async with session.put(f"{master.url}/v1/nodes/{name}/lease", json={}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"lease {name}: {resp.status}")
                latencies.append(time.monotonic() - started)
                if started >= warmed_up:
                    steady.append(latencies[-1])
                await asyncio.sleep(max(0.0, renew_s - (time.monotonic() - started)))

    await asyncio.gather(
        *(
            node_loop(i, node[0], ctx)
            for i, (node, ctx) in enumerate(zip(nodes, contexts, strict=True))
        )
    )
    return latencies, steady


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-registration-") as tmp:
        root = Path(tmp)
        master = MasterProcess(
            root / "master", lease_renew_s=args.renew_s, lease_grace_s=args.renew_s * 4
        )
        master.start(blockbuster=False)
        assert master.proc is not None
        proc = psutil.Process(master.proc.pid)
        try:
            elapsed, issued = await register_all(master, args.nodes, root)
            print(
                f"registrations: {args.nodes} in {elapsed:.2f}s = {args.nodes / elapsed:.0f}/s "
                "(target: 1000 in <= 10 s)",
                flush=True,
            )
            subset = issued[: args.lease_nodes]
            cpu0 = proc.cpu_times()
            me0 = psutil.Process().cpu_times()
            t0 = time.monotonic()
            latencies, steady = await renew_leases(master, subset, args.renew_s, args.lease_s)
            cpu1 = proc.cpu_times()
            me1 = psutil.Process().cpu_times()
            wall = time.monotonic() - t0
            cpu_pct = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
            client_pct = 100 * ((me1.user - me0.user) + (me1.system - me0.system)) / wall
            q = statistics.quantiles(latencies, n=100)
            qs = statistics.quantiles(steady, n=100) if len(steady) > 1 else q
            print(
                f"lease renewals: {len(subset)} nodes every {args.renew_s:g}s "
                f"for {args.lease_s:g}s: "
                f"{len(latencies)} renewals, p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms "
                f"(steady state, after every node connected: p50 {qs[49] * 1000:.1f} ms, "
                f"p99 {qs[98] * 1000:.1f} ms), "
                f"master CPU {cpu_pct:.1f}% of a core, simulating client CPU {client_pct:.1f}% "
                f"(target at 5000 nodes: p99 < 100 ms, master CPU < 50%)",
                flush=True,
            )
        finally:
            master.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lease-nodes", type=int, default=1000)
    parser.add_argument("--renew-s", type=float, default=10.0)
    parser.add_argument("--lease-s", type=float, default=30.0)
    uvloop.run(main_async(parser.parse_args()))  # the simulator must not be the bottleneck
    return 0


if __name__ == "__main__":
    sys.exit(main())
