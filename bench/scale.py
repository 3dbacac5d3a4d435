"""A fleet against three masters on etcd and against one master on SQLite, in one run.

Run: ``.venv/bin/python bench/scale.py [--nodes 1000] [--duration-s 60] [--ramp-s 20]
[--clusters etcd,sqlite]``

For each cluster in turn (``--clusters``): a throwaway etcd (Debian's ``etcd``, TLS with client
certificates, its own data directory, loopback: ``tests/etcd/server.py``) with three masters
sharing one key prefix (the second and third started from a copy of the first's CA, as
docs/operations.md describes a replica), or one master on its SQLite file. ``--nodes`` simulated
nodes register (their own P-256 key and CSR, over TLS, through the first master), then each,
as the agent does (``agent/node/masterlink``), holds two mTLS keep-alive connections to its
master, the first of the masters in its rendezvous order (``preference``): one renews its lease
every ``--renew-s`` (and lists its pods once, for the revision), the other keeps its pod watch
open (``GET /v1/nodes/NAME/pods?watch=1``, bookmarks read and dropped). The nodes' first
connections are spread over ``--ramp-s``, so the TLS handshakes of the whole fleet are not
what is measured (``bench/registration.py`` and ``bench/reconnect.py`` measure those bursts).

Printed per cluster: lease-renewal latency at the client (p50/p99 of every renewal and of the
steady window, from one renewal interval after the ramp to the end), each master's CPU (share of
a core over the steady window) and RSS at the end, etcd's CPU and RSS, and its request rate
(gRPC requests handled per second over the steady window, from its ``/metrics``, which the JSON
gateway the masters use also goes through), and every connection error by kind (a node whose
connection failed reconnects at its next renewal; a watch that ends early is counted and
reopened). Bounded in count (``--nodes`` at most ``MAX_NODES``) and time (every request has a
time-out; each cluster runs ``--duration-s`` after the ramp). Everything started is stopped,
and the temporary directory (data directories included) removed, whatever happens. Needs the
``etcd`` binary (``apt-get install etcd-server``). Not pinned: five servers share the cores;
``--nice -10`` (root) keeps the measured processes from queueing behind other work on a shared
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import re
import shutil
import ssl
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.node.masterlink.endpoints import preference
from bench.registration import (
    CONNECTION_ERRORS,
    REQUEST_TIMEOUT_S,
    BadAnswer,
    bench_master,
    error_kind,
    print_errors,
    raise_nofile,
    register_all,
    renice,
)
from tests.etcd.server import EtcdServer
from tests.helpers import MasterProcess

MAX_NODES = 20_000
ETCD_MASTERS = 3
READ_CHUNK_BYTES = 65_536
ETCD_PREFIX = "/bench-scale/"


@dataclass(slots=True)
class Servers:
    """What one cluster runs, for the figures and the clean-up."""

    name: str
    masters: list[MasterProcess]
    etcd: EtcdServer | None = None
    procs: dict[str, psutil.Process] = field(default_factory=dict)


# -- the simulated nodes (in simulator processes) ---------------------------------------------


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    body = await reader.readexactly(int(length.group(1)) if length else 0)
    if head[9:12] != b"200":
        raise BadAnswer(f"HTTP {head[9:12].decode(errors='replace')}")
    return head, body


def _request(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def simulate(job: tuple[Any, ...]) -> dict[str, Any]:
    """One simulator process's slice of the fleet: each node's lease loop and pod watch."""
    nodes, ca, renew_s, start_at, ramp_s, steady_from, deadline, first, total, nice = job
    if nice:
        renice(os.getpid(), nice)
    contexts = []
    for _, _, cert, key in nodes:  # built before the clock starts (milliseconds each)
        ctx = ssl.create_default_context(cadata=ca)
        ctx.load_cert_chain(cert, key)
        contexts.append(ctx)
    latencies: list[float] = []
    steady: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    watches_open = 0
    watches_held = 0

    async def lease_loop(
        name: str, url: str, ctx: ssl.SSLContext, listed: asyncio.Future[int]
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 443
        renewal = _request("PUT", f"/v1/nodes/{name}/lease", f"{host}:{port}", b"{}")
        listing = _request("GET", f"/v1/nodes/{name}/pods", f"{host}:{port}")
        writer: asyncio.StreamWriter | None = None
        try:
            while time.monotonic() < deadline:
                started = time.monotonic()
                phase = "lease connect"
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        if writer is None:
                            reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
                        phase = "lease renewal"
                        writer.write(renewal)
                        await _read_answer(reader)
                        done = time.monotonic()
                        if not listed.done():  # once: the revision the watch starts from
                            phase = "pod list"
                            writer.write(listing)
                            _, body = await _read_answer(reader)
                            listed.set_result(int(json.loads(body)["resourceVersion"]))
                except (*CONNECTION_ERRORS, BadAnswer, ValueError, KeyError) as exc:
                    errors[error_kind(phase, exc)] += 1
                    if writer is not None:
                        writer.close()
                    writer = None
                else:
                    latencies.append(done - started)
                    if started >= steady_from:
                        steady.append(done - started)
                await asyncio.sleep(max(0.0, renew_s - (time.monotonic() - started)))
        finally:
            if writer is not None:
                writer.close()
            if not listed.done():
                listed.set_result(-1)  # never listed: no watch either

    async def watch_loop(
        name: str, url: str, ctx: ssl.SSLContext, listed: asyncio.Future[int]
    ) -> None:
        nonlocal watches_open, watches_held
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 443
        revision = await listed
        while revision >= 0 and time.monotonic() < deadline:
            started = time.monotonic()
            writer: asyncio.StreamWriter | None = None
            phase = "watch connect"
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
                    phase = "watch start"
                    path = f"/v1/nodes/{name}/pods?watch=1&resourceVersion={revision}"
                    writer.write(_request("GET", path, f"{host}:{port}"))
                    head = await reader.readuntil(b"\r\n\r\n")
                if head[9:12] != b"200":
                    raise BadAnswer(f"HTTP {head[9:12].decode(errors='replace')}")
                watches_open += 1
                phase = "watch stream"
                async with asyncio.timeout_at(
                    asyncio.get_running_loop().time() + deadline - time.monotonic()
                ):
                    while await reader.read(READ_CHUNK_BYTES):
                        pass  # bookmarks (no pod is bound to a simulated node)
                errors["watch stream: ended by the master"] += 1
            except TimeoutError:
                if phase != "watch stream":
                    errors[error_kind(phase, TimeoutError())] += 1
                else:
                    watches_held += 1  # open until the end of the run
            except (*CONNECTION_ERRORS, BadAnswer) as exc:
                errors[error_kind(phase, exc)] += 1
            finally:
                if writer is not None:
                    writer.close()
            # A failed watch is reopened after a pause, as the agent does (bounded by the deadline).
            await asyncio.sleep(
                max(0.0, min(renew_s - (time.monotonic() - started), deadline - time.monotonic()))
            )

    async def node(index: int, name: str, url: str, ctx: ssl.SSLContext) -> None:
        await asyncio.sleep(max(0.0, start_at + ramp_s * index / total - time.monotonic()))
        listed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await asyncio.gather(lease_loop(name, url, ctx, listed), watch_loop(name, url, ctx, listed))

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    await asyncio.gather(
        *(
            node(first + i, name, url, ctx)
            for i, ((name, url, _, _), ctx) in enumerate(zip(nodes, contexts, strict=True))
        )
    )
    return {
        "latencies": latencies,
        "steady": steady,
        "errors": errors,
        "watches_open": watches_open,
        "watches_held": watches_held,
    }


def simulator(job: tuple[Any, ...]) -> dict[str, Any]:
    return uvloop.run(simulate(job))


# -- the servers ----------------------------------------------------------------------------


def replica_of(first: MasterProcess, root: Path, **settings: Any) -> MasterProcess:
    """Another master of the same cluster: its own port and data dir, the first's CA and
    serving certificate (a copy of the data dir with only ``listen`` changed)."""
    other = bench_master(root, **settings)
    shutil.rmtree(root / "pki")
    shutil.copytree(first.root / "pki", root / "pki")
    other.admin_conf.write_text(first.admin_conf.read_text().replace(first.url, other.url))
    other.admin_conf.chmod(0o600)
    other.pin = first.pin
    return other


def on_etcd(master: MasterProcess, etcd: EtcdServer) -> None:
    """The master's ``[store]`` table: the bench's etcd, its client certificate, one prefix."""
    assert etcd.tls is not None
    with master.config_path.open("a") as out:
        out.write(
            "\n[store]\n"
            'backend = "etcd"\n'
            f"endpoints = {json.dumps([etcd.endpoint])}\n"
            f'ca_file = "{etcd.tls.ca_file}"\n'
            f'cert_file = "{etcd.tls.cert_file}"\n'
            f'key_file = "{etcd.tls.key_file}"\n'
            f'prefix = "{ETCD_PREFIX}"\n'
        )


def etcd_requests(etcd: EtcdServer) -> float:
    """gRPC requests etcd has handled (a counter), from its /metrics."""
    with urllib.request.urlopen(
        etcd.endpoint + "/metrics", timeout=30, context=etcd.ssl_context()
    ) as resp:
        text = resp.read().decode()
    return sum(
        float(v) for v in re.findall(r"^grpc_server_handled_total\{[^}]*\} (\S+)$", text, re.M)
    )


def start_cluster(kind: str, root: Path, renew_s: float, servers: Servers) -> None:
    settings = {"lease_renew_s": renew_s, "lease_grace_s": renew_s * 4}
    if kind == "sqlite":
        servers.masters.append(bench_master(root / "m0", **settings))
    else:
        servers.etcd = EtcdServer(root / "etcd")
        servers.etcd.start()
        assert servers.etcd.process is not None
        servers.procs["etcd"] = psutil.Process(servers.etcd.process.pid)
        first = bench_master(root / "m0", **settings)
        servers.masters.append(first)
        for i in range(1, ETCD_MASTERS):
            servers.masters.append(replica_of(first, root / f"m{i}", **settings))
        for master in servers.masters:
            on_etcd(master, servers.etcd)
    for i, master in enumerate(servers.masters):
        master.start(blockbuster=False)
        assert master.proc is not None
        servers.procs[f"master {i}"] = psutil.Process(master.proc.pid)


def stop_cluster(servers: Servers) -> None:
    for master in servers.masters:
        try:
            master.stop()
        except Exception as exc:  # the others are stopped all the same
            print(f"  stopping a master: {type(exc).__name__}: {exc}", flush=True)
    if servers.etcd is not None:
        servers.etcd.stop()


# -- one cluster's run ----------------------------------------------------------------------


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out = {}
    for name, proc in procs.items():
        times = proc.cpu_times()
        out[name] = times.user + times.system + times.children_user + times.children_system
    return out


def quantiles_ms(samples: list[float]) -> str:
    if len(samples) < 2:
        return "n/a"
    q = statistics.quantiles(samples, n=100)
    return f"{q[49] * 1000:.1f} / {q[98] * 1000:.1f} ms"


async def run_cluster(kind: str, root: Path, args: argparse.Namespace) -> collections.Counter[str]:
    servers = Servers(kind, [])
    label = f"{ETCD_MASTERS} masters on etcd" if kind == "etcd" else "1 master on SQLite"
    print(f"== {label}: {args.nodes} nodes", flush=True)
    errors: collections.Counter[str] = collections.Counter()
    try:
        start_cluster(kind, root, args.renew_s, servers)
        if args.nice:
            for proc in servers.procs.values():
                renice(proc.pid, args.nice)
        (root / "nodes").mkdir()
        elapsed, issued = await register_all(servers.masters[0], args.nodes, root / "nodes", errors)
        print(
            f"  registrations: {len(issued)} of {args.nodes} in {elapsed:.1f} s "
            f"({len(issued) / elapsed:.0f}/s, through one master)",
            flush=True,
        )
        urls = [m.url for m in servers.masters]
        fleet = [(name, preference(urls, name)[0], cert, key) for name, cert, key in issued]
        per_master = collections.Counter(url for _, url, _, _ in fleet)
        ca = (servers.masters[0].root / "pki" / "ca.crt").read_text()
        procs = max(1, args.sim_procs)
        size = -(-len(fleet) // procs)
        start_at = time.monotonic() + 2.0 + 0.002 * size  # every simulator ready by then
        steady_from = start_at + args.ramp_s + args.renew_s
        deadline = start_at + args.ramp_s + args.duration_s
        jobs = [
            (
                fleet[i : i + size],
                ca,
                args.renew_s,
                start_at,
                args.ramp_s,
                steady_from,
                deadline,
                i,
                len(fleet),
                args.nice,
            )
            for i in range(0, len(fleet), size)
        ]
        with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
            pending = pool.map_async(simulator, jobs)
            await asyncio.sleep(max(0.0, steady_from - time.monotonic()))
            cpu0, t0 = cpu_seconds(servers.procs), time.monotonic()
            etcd0 = await asyncio.to_thread(etcd_requests, servers.etcd) if servers.etcd else 0.0
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            cpu1, t1 = cpu_seconds(servers.procs), time.monotonic()
            etcd1 = await asyncio.to_thread(etcd_requests, servers.etcd) if servers.etcd else 0.0
            rss = {name: proc.memory_info().rss for name, proc in servers.procs.items()}
            fds = {name: proc.num_fds() for name, proc in servers.procs.items()}
            results = await asyncio.to_thread(pending.get, REQUEST_TIMEOUT_S * 3 + args.renew_s)
        window = t1 - t0
        latencies = [x for r in results for x in r["latencies"]]
        steady = [x for r in results for x in r["steady"]]
        for r in results:
            errors.update(r["errors"])
        print(
            f"  lease renewals every {args.renew_s:g} s: {len(latencies)}; "
            f"p50 / p99 all {quantiles_ms(latencies)}; "
            f"steady ({window:.0f} s from {args.ramp_s + args.renew_s:g} s after the first node) "
            f"{quantiles_ms(steady)}",
            flush=True,
        )
        print(
            f"  pod watches: {sum(r['watches_open'] for r in results)} opened, "
            f"{sum(r['watches_held'] for r in results)} open at the end",
            flush=True,
        )
        for i, master in enumerate(servers.masters):
            name = f"master {i}"
            print(
                f"  {name}: {per_master[master.url]} nodes, "
                f"CPU {100 * (cpu1[name] - cpu0[name]) / window:.1f} % of a core, "
                f"RSS {rss[name] / 2**20:.0f} MiB, {fds[name]} descriptors",
                flush=True,
            )
        if servers.etcd is not None:
            print(
                f"  etcd: CPU {100 * (cpu1['etcd'] - cpu0['etcd']) / window:.1f} % of a core, "
                f"RSS {rss['etcd'] / 2**20:.0f} MiB, {(etcd1 - etcd0) / window:.0f} requests/s "
                f"({fds['etcd']} descriptors)",
                flush=True,
            )
    except BaseException:
        for i, master in enumerate(servers.masters):
            if master.log_path.exists():
                tail = master.log_path.read_text(errors="replace")[-1500:]
                print(f"  master {i}'s log ends:\n{tail}", flush=True)
        raise
    finally:
        stop_cluster(servers)
        if args.keep_logs is not None:  # the servers' logs, to read why
            for i, master in enumerate(servers.masters):
                if master.log_path.exists():
                    shutil.copy(master.log_path, args.keep_logs / f"{kind}-master-{i}.log")
            if servers.etcd is not None and servers.etcd.log_path.exists():
                shutil.copy(servers.etcd.log_path, args.keep_logs / f"{kind}-etcd.log")
    print_errors(errors)
    return errors


async def main_async(args: argparse.Namespace) -> int:
    raise_nofile()
    if args.nice:
        renice(os.getpid(), args.nice)
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        for kind in args.clusters:
            root = Path(tmp) / kind
            root.mkdir()
            failed = bool(await run_cluster(kind, root, args)) or failed
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--renew-s", type=float, default=10.0)
    parser.add_argument(
        "--ramp-s", type=float, default=20.0, help="the fleet's first connections spread over this"
    )
    parser.add_argument(
        "--duration-s", type=float, default=60.0, help="each cluster's run after the ramp"
    )
    parser.add_argument("--sim-procs", type=int, default=2, help="simulator processes")
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy the servers' logs into this directory"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="servers, simulators and this process at this nice value (root for < 0): on a "
        "machine shared with other work, the measured processes do not queue behind it",
    )
    parser.add_argument(
        "--clusters",
        type=lambda s: [c for c in s.split(",") if c],
        default=["etcd", "sqlite"],
        help="which, in this order: etcd (3 masters), sqlite (1 master)",
    )
    args = parser.parse_args()
    if not 1 <= args.nodes <= MAX_NODES:
        parser.error(f"--nodes: 1 to {MAX_NODES}")
    if any(c not in ("etcd", "sqlite") for c in args.clusters):
        parser.error("--clusters: etcd and/or sqlite")
    if args.duration_s <= args.renew_s * 2:
        parser.error(
            "--duration-s: more than two renewal intervals (the steady window starts after one)"
        )
    if "etcd" in args.clusters and not EtcdServer.available():
        parser.error("no etcd binary: apt-get install etcd-server")
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
