"""Head-of-line fairness: 100 concurrent streams on one HTTP/2 connection, one of which stops
reading. Does the stalled stream slow the other 99?

Run: ``.venv/bin/python bench/fairness.py [--streams 100] [--mib 16] [--rounds 3]``

A server process (our driver, ``agent.aio.h2conn``, over TLS on loopback, the code of the node
API and the master's proxy) answers every stream with ``--mib`` MiB. The client opens
``--streams`` streams on one connection and reads them all ("baseline"), then again with one
stream that never reads after its first chunk ("one stalled"); rounds alternate. Printed: the
time for the 99 readers to get all their bytes in both cases and the ratio. Target (streaming
issue): the stalled stream slows the others by at most 10 % (ratio >= 0.9). The stalled stream
can hold at most one stream window of the connection window, which is why the connection
window is many stream windows wide. 16 MiB per stream (more than one 4 MiB stream window) so
that stream credit flows, as in a long transfer, and each measurement lasts seconds rather
than a fraction of one on a noisy machine. Only loopback is used; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.aio.h2conn import H2Stream, connect, serve_factory
from agent.aio.malloc import tune_malloc
from agent.aio.tls import server_context
from tests.helpers import clean_up_on_sigterm, server_cert_files

CHUNK = b"d" * (256 << 10)


async def serve(directory: Path, size: int) -> None:
    async def handler(stream: H2Stream) -> None:
        await stream.respond(200)
        left = size
        while left:
            piece = CHUNK[: min(left, len(CHUNK))]
            await stream.write(piece)
            left -= len(piece)
        await stream.end()

    tls = server_context(directory / "s.crt", directory / "s.key", alpn=("h2",))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        serve_factory(handler, name="fairness"), "127.0.0.1", 0, ssl=tls
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)


async def one_round(port: int, ca: bytes, streams: int, size: int, stall: bool) -> float:
    ctx = ssl.create_default_context(cadata=ca.decode())
    conn = await connect("127.0.0.1", port, ctx, server_hostname="127.0.0.1")
    try:
        opened = [await conn.request("GET", "/", end_stream=True) for _ in range(streams)]
        start = time.monotonic()

        async def drain(stream: H2Stream) -> None:
            got = 0
            while chunk := await stream.read():
                got += len(chunk)
            assert got == size, got

        async def stalled(stream: H2Stream) -> None:
            await stream.read()  # one chunk, then never again (its credit never comes back)
            await asyncio.sleep(3600)

        readers = opened[1:] if stall else opened
        tasks = [asyncio.create_task(drain(s)) for s in readers]
        blocker = asyncio.create_task(stalled(opened[0])) if stall else None
        async with asyncio.timeout(300):
            await asyncio.gather(*tasks)
        elapsed = time.monotonic() - start
        if blocker is not None:
            blocker.cancel()
            opened[0].reset()
        return elapsed
    finally:
        await conn.shutdown(grace_s=0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    clean_up_on_sigterm()
    tune_malloc()
    size = args.mib << 20
    if args.serve:
        uvloop.run(serve(Path(args.serve), size))
        return 0
    directory = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    ca = server_cert_files(directory)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(directory), "--mib", str(args.mib)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base, stalled = [], []
        for i in range(args.rounds):
            # A B B A ...: neither case always runs first.
            for stall in (False, True) if i % 2 == 0 else (True, False):
                took = uvloop.run(one_round(port, ca, args.streams, size, stall))
                (stalled if stall else base).append(took)
        b, s = statistics.median(base), statistics.median(stalled)
        readers = args.streams - 1
        print(f"{args.streams} streams x {args.mib} MiB on one connection, median of {args.rounds}")
        print(f"  all reading:        {b:.2f}s  ({args.streams * size / b / 1e6:.0f} MB/s)")
        print(f"  one stalled:        {s:.2f}s  ({readers * size / s / 1e6:.0f} MB/s, {readers})")
        # Time per reading stream's MiB, stalled case against baseline (1.0: no slow-down).
        per_stream_ratio = (b / args.streams) / (s / readers)
        print(
            f"  per-stream throughput, stalled vs baseline: {per_stream_ratio:.2f} (target >= 0.9)"
        )
        return 0 if per_stream_ratio >= 0.9 else 1
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
