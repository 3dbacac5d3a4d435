"""Where the node leases of several masters live (issue 19 item 2), measured at the rate 5,000
nodes renewing every 10 s imply, against one throwaway etcd (Debian's etcd-server, TLS with a
client certificate, as the masters use it):

* ``store``: every renewal is a put of the node's lease key (``--nodes / --renew-s`` puts a
  second, paced every 10 ms), and each of ``--masters`` masters watches the leases and parses
  every event (what each master would do to judge readiness from them);
* ``reports`` (what agent/master/renewals.py does): each master puts, once a second, the names
  of the nodes renewed at it since its last report (``--nodes / --renew-s / --masters`` names a
  report), and each master watches the reports and parses them.

Rounds alternate (reports, store, reports, store, ...; ``--rounds``, ``--seconds`` each) on the
same etcd; the medians are printed: puts a second achieved, put latency p50/p99, etcd's CPU and
this process's CPU (writers and watchers: the masters' share) in % of one core, etcd revisions a
second (how fast the history window of ``store_history_revisions`` = 10,000 passes), and how
late a renewal reaches the watchers (p99, from the put's start to the event parsed). On a loaded
machine these are upper bounds; CPU is what the two processes took, whatever else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.master.renewals import REPORT_EVERY_S, parse_report, report_value
from agent.master.store.etcd import EtcdStore
from tests.etcd.server import EtcdServer

TICK_S = 0.01  # the store mode's pacing: this many seconds' worth of puts at once
MAX_IN_FLIGHT = 256  # the store mode's puts at once (each master's store has 32 connections)


@dataclass
class Round:
    mode: str
    puts_per_s: float
    p50_ms: float
    p99_ms: float
    etcd_cpu_pct: float
    our_cpu_pct: float
    revisions_per_s: float
    late_p99_ms: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_round(server: EtcdServer, mode: str, args: argparse.Namespace, index: int) -> Round:
    prefix = f"/bench/{index}-{mode}/"
    ctx = server.ssl_context()
    stores = [
        await EtcdStore.open([server.endpoint], prefix=prefix, tls=ctx, history=None)
        for _ in range(args.masters)
    ]
    watched = "/leases/" if mode == "store" else "/renewals/"
    sent_at: dict[str, float] = {}  # key -> when its latest put started (for the lateness)
    late: list[float] = []
    latencies: list[float] = []
    stop = asyncio.Event()

    async def watcher(store: EtcdStore) -> None:
        after = await store.revision()
        async for event in store.watch(watched, after):
            if mode == "store":
                json.loads(event.value)
            else:
                parse_report(event.value)
            started = sent_at.get(event.key)
            if started is not None:
                late.append(time.perf_counter() - started)

    async def put(store: EtcdStore, key: str, value: bytes) -> None:
        started = time.perf_counter()
        sent_at[key] = started
        await store.put(key, value)
        latencies.append(time.perf_counter() - started)

    async def store_writer() -> None:
        # Open loop: each tick starts its share of puts without waiting for the last tick's
        # (renewals do not wait for each other); at most MAX_IN_FLIGHT at once.
        per_tick = args.nodes / args.renew_s * TICK_S
        owed = 0.0
        node = 0
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        flying: set[asyncio.Task[None]] = set()
        while not stop.is_set():
            owed += per_tick
            while owed >= 1:
                owed -= 1
                name = f"node-{node % args.nodes}"
                node += 1
                value = json.dumps({"node": name, "renewedAt": time.time()}).encode()
                if len(flying) >= MAX_IN_FLIGHT:
                    await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(
                    put(stores[node % args.masters], "/leases/" + name, value)
                )
                flying.add(task)
                task.add_done_callback(flying.discard)
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
        if flying:
            await asyncio.wait(flying)

    async def report_writer(i: int) -> None:
        names_per_report = round(args.nodes / args.renew_s / args.masters * REPORT_EVERY_S)
        names = [f"node-{i}-{n}" for n in range(names_per_report)]
        while not stop.is_set():
            await put(stores[i], f"/renewals/master-{i}", report_value(names))
            await asyncio.sleep(REPORT_EVERY_S)

    etcd = psutil.Process(server.process.pid)  # type: ignore[union-attr]
    me = psutil.Process()
    watchers = [asyncio.create_task(watcher(s)) for s in stores]
    await asyncio.sleep(0.5)  # watches set up
    rev0 = await stores[0].revision()
    etcd0, me0, t0 = sum(etcd.cpu_times()[:2]), sum(me.cpu_times()[:2]), time.perf_counter()
    writers = (
        [asyncio.create_task(store_writer())]
        if mode == "store"
        else [asyncio.create_task(report_writer(i)) for i in range(args.masters)]
    )
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*writers)
    elapsed = time.perf_counter() - t0
    etcd_cpu = sum(etcd.cpu_times()[:2]) - etcd0
    our_cpu = sum(me.cpu_times()[:2]) - me0
    revisions = await stores[0].revision() - rev0
    for task in watchers:
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    for store in stores:
        await store.close()
    return Round(
        mode,
        len(latencies) / elapsed,
        pct(latencies, 0.5) * 1000,
        pct(latencies, 0.99) * 1000,
        etcd_cpu / elapsed * 100,
        our_cpu / elapsed * 100,
        revisions / elapsed,
        pct(late, 0.99) * 1000,
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="lease-sharing-") as tmp:
        server = EtcdServer(Path(tmp))
        server.start()
        try:
            rounds: list[Round] = []
            for i in range(args.rounds):
                for mode in ("reports", "store"):
                    done = await run_round(server, mode, args, i)
                    rounds.append(done)
                    print(
                        f"round {i} {mode:8} {done.puts_per_s:7.1f} puts/s  p50 "
                        f"{done.p50_ms:6.2f} ms  p99 {done.p99_ms:7.2f} ms  etcd "
                        f"{done.etcd_cpu_pct:5.1f} %  us {done.our_cpu_pct:5.1f} %  "
                        f"{done.revisions_per_s:6.1f} rev/s  late p99 {done.late_p99_ms:7.1f} ms",
                        flush=True,
                    )
        finally:
            server.stop()
    print(
        f"\nmedians of {args.rounds} rounds, {args.nodes} nodes renewing every {args.renew_s:g} s, "
        f"{args.masters} masters, {args.seconds:g} s a round:"
    )
    for mode in ("store", "reports"):
        of = [r for r in rounds if r.mode == mode]

        def med(field: str, of: list[Round] = of) -> float:
            return statistics.median(getattr(r, field) for r in of)

        window_s = 10_000 / med("revisions_per_s")
        print(
            f"  {mode:8} {med('puts_per_s'):7.1f} puts/s, put p50 {med('p50_ms'):.2f} ms p99 "
            f"{med('p99_ms'):.2f} ms, etcd {med('etcd_cpu_pct'):.1f} % of a core, masters "
            f"{med('our_cpu_pct'):.1f} %, {med('revisions_per_s'):.1f} revisions/s (10,000 kept "
            f"= {window_s:,.0f} s of history), a renewal seen by the masters p99 "
            f"{med('late_p99_ms'):.1f} ms after its put began"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--renew-s", type=float, default=10.0)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
