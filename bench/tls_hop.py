"""What one TLS hop costs a Python process per byte: the floor under every relay we run.

Run: ``.venv/bin/python bench/tls_hop.py [--mib 1024] [--rounds 3]``

A measured process receives (then, separately, sends) ``--mib`` MiB over TLS on loopback from a
blocking peer in a child process, and reports its own CPU time (user + system, so the kernel's
loopback copies count) per byte. Transports, alternating in each round:

* ``uvloop`` — uvloop's TLS transport and an ``asyncio.Protocol``, with glibc malloc tuned as
  node-agent and node-master tune it (``agent.aio.malloc``): the path every HTTP/2 connection
  of ours takes;
* ``uvloop, malloc untuned`` — the same with glibc's defaults;
* ``ssl socket`` — the baseline: a non-blocking ``ssl.SSLSocket`` (OpenSSL reads and writes the
  socket itself, no memory BIOs) driven by the same event loop's reader and writer callbacks.

The proxy through the master decrypts and re-encrypts every byte (one receive and one send per
direction), so its CPU per relayed byte is at least the sum of the two, before any HTTP/2.
Only loopback is used; every transfer is bounded by ``--mib``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK_BYTES = 256 << 10
PAYLOAD = bytes(CHUNK_BYTES)
STEP_TIMEOUT_S = 120  # a transfer that stalls ends the run instead of hanging it
TRANSPORTS = ("uvloop", "uvloop, malloc untuned", "ssl socket")


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"),
            *("-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def peer(port: int, cert: Path, total: int, measured_receives: bool) -> NoReturn:
    """Child: blocking TLS client doing the opposite of the measured side, then a 1-byte ack."""
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cert)
        raw = socket.create_connection(("127.0.0.1", port), timeout=STEP_TIMEOUT_S)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        if measured_receives:
            left = total
            while left:
                left -= tls.send(memoryview(PAYLOAD)[: min(CHUNK_BYTES, left)])
            tls.recv(1)
        else:
            buf = bytearray(CHUNK_BYTES)
            got = 0
            while got < total and (n := tls.recv_into(buf)):
                got += n
            tls.sendall(b"k")
    except BaseException:
        os._exit(1)
    os._exit(0)


async def with_uvloop(listener: socket.socket, ctx: ssl.SSLContext, total: int, recv: bool) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    class Measured(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.got = 0
            self.left = 0 if recv else total
            self.paused = False
            self.pump()

        def pump(self) -> None:
            while self.left and not self.paused:
                size = min(CHUNK_BYTES, self.left)
                self.transport.write(PAYLOAD if size == CHUNK_BYTES else PAYLOAD[:size])
                self.left -= size

        def pause_writing(self) -> None:
            self.paused = True

        def resume_writing(self) -> None:
            self.paused = False
            self.pump()

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if not recv or self.got >= total:
                if recv:
                    self.transport.write(b"k")
                    self.transport.close()  # after flushing the ack
                if not done.done():
                    done.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_exception(ConnectionError(f"the peer went away: {exc}"))

    server = await loop.create_server(Measured, sock=listener, ssl=ctx)
    await done
    server.close()


def with_ssl_socket(listener: socket.socket, ctx: ssl.SSLContext, total: int, recv: bool) -> None:
    loop = uvloop.new_event_loop()  # the same loop as the other variants
    raw, _ = listener.accept()
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tls = ctx.wrap_socket(raw, server_side=True)
    tls.setblocking(False)
    done: asyncio.Future[None] = loop.create_future()
    buf = bytearray(CHUNK_BYTES)
    state = {"got": 0, "left": 0 if recv else total}

    def on_readable() -> None:
        try:
            while n := tls.recv_into(buf):
                state["got"] += n
                if not recv or state["got"] >= total:
                    loop.remove_reader(tls.fileno())
                    done.set_result(None)
                    return
        except ssl.SSLWantReadError:
            pass

    def on_writable() -> None:
        try:
            while state["left"]:
                size = min(CHUNK_BYTES, state["left"])
                state["left"] -= tls.send(PAYLOAD if size == CHUNK_BYTES else PAYLOAD[:size])
        except (ssl.SSLWantWriteError, BlockingIOError):
            return
        loop.remove_writer(tls.fileno())

    loop.add_reader(tls.fileno(), on_readable)
    if not recv:
        loop.add_writer(tls.fileno(), on_writable)
    loop.run_until_complete(done)
    if recv:
        tls.setblocking(True)
        tls.sendall(b"k")
    tls.close()
    loop.close()


def measure(transport: str, recv: bool, cert: Path, key: Path, total: int) -> float:
    """CPU ns per byte of a fresh child (malloc settings cannot be undone in this one); the
    peer is forked first, from here, so that it is the same process in every variant."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    peer_pid = os.fork()
    if peer_pid == 0:
        listener.close()
        peer(port, cert, total, recv)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            signal.alarm(STEP_TIMEOUT_S)
            if transport != "uvloop, malloc untuned":
                from agent.aio.malloc import tune_malloc

                tune_malloc()
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            before = resource.getrusage(resource.RUSAGE_SELF)
            if transport == "ssl socket":
                with_ssl_socket(listener, ctx, total, recv)
            else:
                uvloop.run(with_uvloop(listener, ctx, total, recv))
            after = resource.getrusage(resource.RUSAGE_SELF)
            cpu_s = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            os.write(write_end, f"{cpu_s * 1e9 / total}".encode())
        except BaseException:
            os._exit(1)
        os._exit(0)
    os.close(write_end)
    listener.close()
    with os.fdopen(read_end) as result:
        value = result.read()
    _, measured_status = os.waitpid(pid, 0)
    _, peer_status = os.waitpid(peer_pid, 0)
    if not value or measured_status or peer_status:
        raise RuntimeError(f"{transport}: the transfer failed (or took over {STEP_TIMEOUT_S} s)")
    return float(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    total = args.mib << 20
    cert, key = make_cert(Path(tempfile.mkdtemp(prefix="bench-tls-hop-")))
    results: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.rounds):
        for transport in TRANSPORTS:
            for recv in (True, False):
                results.setdefault((transport, recv), []).append(
                    measure(transport, recv, cert, key, total)
                )
    print(f"CPU per byte of the measured process, median of {args.rounds} x {args.mib} MiB")
    base = {recv: statistics.median(results[("ssl socket", recv)]) for recv in (True, False)}
    for transport in TRANSPORTS:
        cells = []
        for recv in (True, False):
            ns = statistics.median(results[(transport, recv)])
            cells.append(
                f"{'receive' if recv else 'send':7s} {ns:5.2f} ns/B x{ns / base[recv]:.2f}"
            )
        print(f"  {transport:24s} " + "   ".join(cells))
    hop = sum(statistics.median(results[("uvloop", recv)]) for recv in (True, False))
    print(
        f"one TLS hop (receive + send, uvloop): {hop:.2f} ns/B = {100 * hop * 160e6 / 1e9:.0f} %"
        " of a core per direction at 160 MB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
