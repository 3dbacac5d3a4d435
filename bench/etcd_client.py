"""Which etcd client for the master's etcd store: etcd's v3 JSON gateway over aiohttp (our
agent/master/store/etcd.py, no new dependency) vs the asyncio gRPC clients on PyPI (``aetcd``,
``etcd-client-py``), against one throwaway etcd (Debian's etcd-server), side by side in one run.

Per client: latency p50/p99 and CPU per call (the process's CPU time, every thread counted: the
gRPC clients' own threads too) of sequential put, get and compare-and-swap (a transaction on
mod_revision); throughput and CPU per call of 32 puts in flight; a watch's delivery (put, then
the event at the watcher); how many TCP connections 200 open watches take; what a watch from a
compacted revision does. What each client cannot do at all (TLS, revisions) is printed too.

The gRPC clients are not dependencies of the project: install them beside it to compare, e.g.
``.venv/bin/pip install --target /tmp/etcd-clients --no-deps aetcd etcd-client-py`` then
``PYTHONPATH=/tmp/etcd-clients .venv/bin/python bench/etcd_client.py``; a client that does not
import is skipped with a line saying so. ``--calls N`` (default 500) per measure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import psutil

# This file's name is the etcd-client-py package's (etcd_client): its directory off the path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

from agent.master.store.etcd import EtcdStore  # noqa: E402
from tests.etcd.server import EtcdServer  # noqa: E402

VALUE = b"v" * 200  # about a small pod record's size class
CONCURRENCY = 32
WATCHES = 200
COMPACTED_WAIT_S = 3.0


class Client(Protocol):
    name: str
    missing: str  # what it cannot do that the store needs ("" when nothing)

    async def put(self, key: bytes, value: bytes) -> int: ...
    async def get(self, key: bytes) -> int: ...  # the key's mod revision (0: absent)
    async def cas(self, key: bytes, value: bytes, expected: int) -> bool: ...
    async def watch_next(self, prefix: bytes, after: int) -> Callable[[], Awaitable[int]]: ...
    async def close(self) -> None: ...


class Gateway:
    name = "JSON gateway (aiohttp)"
    missing = ""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store

    @classmethod
    async def open(cls, endpoint: str) -> Gateway:
        return cls(await EtcdStore.open([endpoint], prefix="/gw", history=None))

    async def put(self, key: bytes, value: bytes) -> int:
        return await self.store.put(key.decode(), value)

    async def get(self, key: bytes) -> int:
        kv = await self.store.get(key.decode())
        return kv.mod_revision if kv else 0

    async def cas(self, key: bytes, value: bytes, expected: int) -> bool:
        return await self.store.compare_and_swap(key.decode(), value, expected) is not None

    async def watch_next(self, prefix: bytes, after: int) -> Callable[[], Awaitable[int]]:
        events = self.store.watch(prefix.decode(), after)

        async def next_revision() -> int:
            return (await anext(events)).revision

        return next_revision

    async def close(self) -> None:
        await self.store.close()


class Aetcd:
    name = "aetcd (gRPC)"
    missing = "TLS (only an insecure channel)"

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    async def open(cls, endpoint: str) -> Aetcd:
        import aetcd  # type: ignore[import-not-found]

        host, port = endpoint.removeprefix("http://").split(":")
        client = aetcd.Client(host=host, port=int(port))
        await client.connect()
        return cls(client)

    async def put(self, key: bytes, value: bytes) -> int:
        return int((await self.client.put(key, value)).header.revision)

    async def get(self, key: bytes) -> int:
        found = await self.client.get(key)
        return int(found.mod_revision) if found else 0

    async def cas(self, key: bytes, value: bytes, expected: int) -> bool:
        t = self.client.transactions
        ok, _ = await self.client.transaction(
            compare=[t.mod(key) == expected], success=[t.put(key, value)], failure=[]
        )
        return bool(ok)

    async def watch_next(self, prefix: bytes, after: int) -> Callable[[], Awaitable[int]]:
        watch = await self.client.watch_prefix(prefix, start_revision=after + 1, prev_kv=True)
        events = watch.__aiter__()

        async def next_revision() -> int:
            event = await anext(events)
            return int(event.kv.mod_revision)

        return next_revision

    async def close(self) -> None:
        await self.client.close()


class EtcdClientPy:
    name = "etcd-client-py (Rust gRPC)"
    missing = "TLS options; revisions of keys (get returns the value only)"

    def __init__(self, client: Any, comm: Any) -> None:
        self.client, self.comm = client, comm

    @classmethod
    async def open(cls, endpoint: str) -> EtcdClientPy:
        from etcd_client import Client  # type: ignore[import-not-found]

        client = Client([endpoint.removeprefix("http://")])
        comm = await client.connect().__aenter__()
        return cls(client, comm)

    async def put(self, key: bytes, value: bytes) -> int:
        await self.comm.put(key, value)
        return 0  # no revision in the answer

    async def get(self, key: bytes) -> int:
        await self.comm.get(key)
        return 0

    async def cas(self, key: bytes, value: bytes, expected: int) -> bool:
        from etcd_client import Compare, CompareOp, Txn, TxnOp

        txn = (
            Txn()
            .when([Compare.mod_revision(key, CompareOp.EQUAL, expected)])
            .and_then([TxnOp.put(key, value)])
            .or_else([])
        )
        return bool((await self.comm.txn(txn)).succeeded())

    async def watch_next(self, prefix: bytes, after: int) -> Callable[[], Awaitable[int]]:
        raise NotImplementedError("not measured: no revision to resume from in its answers")

    async def close(self) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


ETCD: list[psutil.Process] = []  # the etcd server, whose CPU per call is printed too


def etcd_cpu() -> float:
    times = ETCD[0].cpu_times()
    return float(times.user + times.system)


async def timed(
    calls: int, one: Callable[[int], Awaitable[object]]
) -> tuple[list[float], float, float]:
    """Latencies, and our CPU and etcd's per call."""
    latencies: list[float] = []
    cpu0, server0 = time.process_time(), etcd_cpu()
    for i in range(calls):
        t0 = time.perf_counter()
        await one(i)
        latencies.append(time.perf_counter() - t0)
    return latencies, (time.process_time() - cpu0) / calls, (etcd_cpu() - server0) / calls


def row(name: str, latencies: list[float], cpu_per_call: float, etcd_per_call: float) -> str:
    return (
        f"    {name:<18} p50 {pct(latencies, 0.5) * 1e3:6.2f} ms"
        f"  p99 {pct(latencies, 0.99) * 1e3:6.2f} ms"
        f"  CPU {cpu_per_call * 1e6:5.0f} us/call, etcd's {etcd_per_call * 1e6:5.0f} us/call"
    )


def etcd_connections(port: int) -> int:
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def measure(client: Client, calls: int, tag: str, port: int) -> None:
    print(f"  {client.name}" + (f"  [cannot: {client.missing}]" if client.missing else ""))
    base = f"/bench/{tag}/".encode()
    lat, cpu, server = await timed(calls, lambda i: client.put(base + b"k%d" % (i % 50), VALUE))
    print(row("put", lat, cpu, server))
    lat, cpu, server = await timed(calls, lambda i: client.get(base + b"k%d" % (i % 50)))
    print(row("get", lat, cpu, server))
    revision = await client.put(base + b"cas", VALUE)

    async def cas(i: int) -> None:
        nonlocal revision
        assert await client.cas(base + b"cas", VALUE, revision) or not revision
        revision = revision and await client.get(base + b"cas")

    lat, cpu, server = await timed(calls // 2, cas)
    print(row("cas + get", lat, cpu, server))
    cpu0, server0, t0 = time.process_time(), etcd_cpu(), time.perf_counter()
    left = iter(range(calls))

    async def worker() -> None:
        for i in left:
            await client.put(base + b"c%d" % (i % 50), VALUE)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - t0
    print(
        f"    {CONCURRENCY} in flight        {calls / wall:6.0f} puts/s"
        f"  CPU {(time.process_time() - cpu0) / calls * 1e6:5.0f} us/call"
        f", etcd's {(etcd_cpu() - server0) / calls * 1e6:5.0f} us/call"
    )
    try:
        start = await client.put(base + b"w/start", VALUE)
        next_event = await client.watch_next(base + b"w/", start)
        delivery: list[float] = []
        for i in range(calls // 5):
            t0 = time.perf_counter()
            await client.put(base + b"w/%d" % (i % 10), VALUE)
            await asyncio.wait_for(next_event(), 10)
            delivery.append(time.perf_counter() - t0)
        print(row("put -> watch event", delivery, 0.0, 0.0).split("  CPU")[0])
        before = etcd_connections(port)
        nexts = [await client.watch_next(base + b"m/", start) for _ in range(WATCHES)]
        first = [asyncio.create_task(n()) for n in nexts]
        await client.put(base + b"m/x", VALUE)
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*first), 30)
        print(
            f"    {WATCHES} watches        {etcd_connections(port) - before:4d} more TCP"
            " connections"
            f"; one put reached all in {(time.perf_counter() - t0) * 1e3:.1f} ms"
        )
    except NotImplementedError as exc:
        print(f"    watch              {exc}")


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="etcd-bench-") as tmp:
        server = EtcdServer(Path(tmp), tls=False)
        server.start()
        assert server.process is not None
        ETCD.append(psutil.Process(server.process.pid))
        try:
            print(f"etcd {server.endpoint} (plain HTTP: the gRPC clients have no TLS to compare)")
            openers: list[tuple[str, Callable[[str], Awaitable[Client]]]] = [
                ("gateway", Gateway.open),
                ("aetcd", Aetcd.open),
                ("etcd-client-py", EtcdClientPy.open),
            ]
            clients: list[tuple[str, Client]] = []
            for tag, opener in openers:
                try:
                    clients.append((tag, await opener(server.endpoint)))
                except ImportError as exc:
                    print(f"  {tag}: skipped, does not import ({exc})")
            for tag, client in clients:
                await measure(client, args.calls, tag, server.client_port)
            gateway = clients[0][1]
            assert isinstance(gateway, Gateway)
            for tag, client in clients:
                prefix = f"/bench/{tag}-c/z/".encode()
                first = await gateway.put(prefix + b"a", VALUE)
                second = await gateway.put(prefix + b"a", VALUE)
                await _compact(gateway, second)
                print(
                    f"  {client.name}: a watch from a compacted revision "
                    + await _watch_from(client, prefix, first - 1)
                )
            for _, client in clients:
                await client.close()
        finally:
            server.stop()


async def _compact(gateway: Gateway, revision: int) -> None:
    store = gateway.store
    await store._call("/v3/kv/compaction", {"revision": str(revision)}, "compaction")


async def _watch_from(client: Client, prefix: bytes, after: int) -> str:
    try:
        next_event = await client.watch_next(prefix, after)
        await asyncio.wait_for(next_event(), COMPACTED_WAIT_S)
    except TimeoutError:
        return f"waits (nothing in {COMPACTED_WAIT_S:.0f} s): the caller cannot tell it must relist"
    except NotImplementedError:
        return "is not measured"
    except Exception as exc:
        return f"raises {exc.__class__.__name__}: {str(exc)[:90]}"
    return "yields an event (the compaction is not seen)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
