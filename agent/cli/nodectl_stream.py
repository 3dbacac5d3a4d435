"""``nodectl exec``, ``port-forward`` and ``logs``: HTTP/2 streams to the node API.

Imported only by those commands (asyncio, h2 and our driver cost ~100 ms of start-up that the
other commands do not pay). The pod's node and its API endpoint come from the master; with
``--direct`` the streams go straight to the node, authenticated with the admin certificate,
and the node is authenticated by its certificate's identity (``system:node:<name>`` from the
cluster CA) rather than by an address, since nodes are often reached by an IP their
certificate does not name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import ssl
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from agent.aio import hops
from agent.aio.h2conn import H2Connection, H2Stream, connect
from agent.aio.splice import SocketSplice
from agent.errors import CliError, ConnectionClosedError, StreamingError, StreamRefusedError
from agent.names import escape, quote
from agent.proto import execframe
from agent.proto.execframe import Channel

READ_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Stdio:
    """The descriptors a session reads and writes: this process's own, or those a ``nodectl``
    invocation handed to a session holder (:mod:`agent.cli.nodectl_session`), which must not
    block its loop on them or change their flags (they are shared with the user's shell)."""

    stdin: int = 0
    stdout: int = 1
    stderr: int = 2
    threaded_writes: bool = False

    async def write(self, fd: int, data: bytes) -> None:
        if self.threaded_writes:
            await asyncio.to_thread(write_all, fd, data)
        else:
            write_all(fd, data)


LOCAL_STDIO = Stdio()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@dataclass(frozen=True, slots=True)
class NodeTarget:
    node: str
    host: str
    port: int


def resolve_node(call: Callable[[str, str], Any], namespace: str, pod: str) -> NodeTarget:
    """The node running ``namespace/pod`` and its API endpoint, asked of the master."""
    quoted = f"{urllib.parse.quote(namespace, safe='')}/pods/{urllib.parse.quote(pod, safe='')}"
    obj = call("GET", f"/v1/namespaces/{quoted}")
    node = str((obj.get("spec") or {}).get("nodeName") or "")
    if not node:
        raise CliError(f"pod {quote(namespace)}/{quote(pod)} is not bound to a node yet")
    node_obj = call("GET", f"/v1/nodes/{urllib.parse.quote(node, safe='')}")
    endpoint = ((node_obj.get("status") or {}).get("daemonEndpoints") or {}).get("nodeApi") or ""
    if not endpoint:
        raise CliError(f"node {quote(node)} has not reported its API endpoint yet")
    host, _, port = str(endpoint).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"node {quote(node)} reports a bad API endpoint {quote(str(endpoint))}")
    return NodeTarget(node, host.strip("[]"), int(port))


async def open_node(target: NodeTarget, ctx: ssl.SSLContext) -> H2Connection:
    conn = await connect(target.host, target.port, ctx, server_hostname="", name="nodectl")
    from agent.pki.names import NODE_CN_PREFIX

    want = NODE_CN_PREFIX + target.node
    got = conn.peer_common_name  # the chain was verified against the cluster CA
    if got != want:
        await conn.shutdown("wrong node")
        raise CliError(f"{escape(target.host)}:{target.port} is {quote(got)}, not {quote(want)}")
    return conn


async def _error_of(stream: H2Stream) -> str:
    body = await stream.read_all(1 << 20)
    import json

    # The node's words, escaped: a newline or an escape sequence cannot forge a line.
    with contextlib.suppress(ValueError, LookupError, TypeError):
        return escape(str(json.loads(body)["error"]["message"]))
    return escape(body.decode(errors="replace"))


async def _response(stream: H2Stream) -> None:
    await stream.response()
    if stream.status != 200:
        message = f"Error from node ({stream.status}): {await _error_of(stream)}"
        raise StreamRefusedError(stream.status, message)


# -- exec ---------------------------------------------------------------------------------


@contextlib.contextmanager
def raw_terminal(enabled: bool, fd: int = 0) -> Iterator[None]:
    """Raw mode on the terminal ``fd`` for ``-t``; restored on every way out."""
    if not enabled or not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def exec_session(
    conn: H2Connection,
    namespace: str,
    pod: str,
    container: str | None,
    command: list[str],
    *,
    stdin: bool,
    tty: bool,
    stdio: Stdio = LOCAL_STDIO,
    resized: asyncio.Event | None = None,
) -> int:
    """One exec session; the remote exit code. ``resized`` is set when the terminal's size
    changed (a session holder hears it from its client); without it, SIGWINCH is watched."""
    query: list[tuple[str, str]] = [("command", c) for c in command]
    if container:
        query.append(("container", container))
    if stdin:
        query.append(("stdin", "1"))
    if tty:
        query.append(("tty", "1"))
    path = (
        f"/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(pod)}/exec?"
        + urllib.parse.urlencode(query)
    )
    stream = await conn.request("POST", path, end_stream=not (stdin or tty))
    loop = asyncio.get_running_loop()
    feeders: list[asyncio.Task[None]] = []
    watch_signal = tty and resized is None
    if tty:
        if resized is None:
            resized = asyncio.Event()
            loop.add_signal_handler(signal.SIGWINCH, resized.set)
        await _send_size(stream, stdio.stdin)
        feeders.append(loop.create_task(_follow_size(stream, stdio.stdin, resized)))
    if stdin:
        feeders.append(loop.create_task(_pump_stdin(stream, stdio.stdin)))
    elif tty:
        feeders.append(loop.create_task(_end_after_response(stream)))
    try:
        await _response(stream)
        if stdio.threaded_writes:  # a session holder: the user's descriptors may block
            decoder = execframe.FrameDecoder(frozenset({Channel.STDOUT, Channel.STDERR}))
            while chunk := await stream.read():
                for frame in decoder.feed(chunk):
                    target = stdio.stderr if frame.channel is Channel.STDERR else stdio.stdout
                    await stdio.write(target, frame.payload)
        else:
            output = OutputWriter(stream, stdio)
            stream.attach(output)
            await output.done
    finally:
        if watch_signal:
            loop.remove_signal_handler(signal.SIGWINCH)
        for task in feeders:
            task.cancel()
    trailers = dict(stream.trailers or ())
    if "error" in trailers:
        await stdio.write(stdio.stderr, f"nodectl: {trailers['error']}\n".encode())
    try:
        return int(trailers.get("exit-code", "1"))
    except ValueError:
        return 1


class OutputWriter:
    """The exec's output written to this process's stdout and stderr in the HTTP/2
    connection's read callback (``H2Stream.attach``), as it arrives: no task woken per piece
    of output (issue 20). The writes are the blocking ones the task made too (our own
    descriptors), so the credit goes back at once. ``done`` resolves at the stream's end
    and fails with its error, a malformed frame (the stream is then reset) or a failed
    write."""

    def __init__(self, stream: H2Stream, stdio: Stdio) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stream = stream
        self._stdio = stdio
        self._decoder = execframe.FrameDecoder(frozenset({Channel.STDOUT, Channel.STDERR}))

    def stream_data(self, data: bytes, length: int) -> None:
        self._stream.ack(length)  # written below, in this callback (or dropped: failed)
        if not self.done.done():
            try:
                for frame in self._decoder.feed(data):
                    target = (
                        self._stdio.stderr
                        if frame.channel is Channel.STDERR
                        else self._stdio.stdout
                    )
                    write_all(target, frame.payload)
            except (StreamingError, OSError) as exc:
                self.done.set_exception(exc)
                if not self._stream.failed:
                    self._stream.reset()

    def stream_ended(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def stream_failed(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


async def _end_after_response(stream: H2Stream) -> None:
    # A TTY without -i: keep the stream open only for resizes until the process exits.
    await stream.response()


async def _follow_size(stream: H2Stream, fd: int, resized: asyncio.Event) -> None:
    while True:
        await resized.wait()
        resized.clear()
        await _send_size(stream, fd)


async def _send_size(stream: H2Stream, fd: int) -> None:
    # The terminal's own size, not shutil's: $COLUMNS/$LINES would pin it at start-up values.
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return
    with contextlib.suppress(StreamingError):
        await stream.write(execframe.encode_resize(size.columns, size.lines))


async def _pump_stdin(stream: H2Stream, fd: int) -> None:
    """``fd`` to the stream as stdin frames until EOF (then the stream's end: stdin EOF for
    the remote process). In the loop's callbacks (:class:`StdinPump`); a descriptor the loop
    cannot poll (a regular file, /dev/null) is read in a thread, where it never blocks."""
    pump = StdinPump(stream, fd)
    try:
        pump.start()
    except (PermissionError, ValueError):  # not pollable
        while data := await asyncio.to_thread(os.read, fd, READ_CHUNK_BYTES):
            await stream.write(execframe.encode(Channel.STDIN, data))
        await stream.end()
        return
    try:
        await pump.done
    finally:
        pump.stop()


class StdinPump:
    """A session's stdin read in one reader callback registered for the session and written
    to the stream in the same callback: no reader added and removed per read, no task woken
    per keystroke (issue 20: each cost a loop iteration on the keystroke echo's path).

    O_NONBLOCK is not set: the descriptor's flags are shared with whoever else holds it (the
    user's shell, on a terminal), so it is read only when the loop says it is readable, and
    nothing reads it once the session ended (a pending read would steal the shell's next
    keystrokes). The reader is unregistered while the stream takes no more
    (``write_nowait`` said so) and registered again on its ``on_writable``, so flow control
    holds end to end; ``registrations`` counts those registrations (1 unless the stream
    pushed back). ``done`` resolves at EOF (the stream ended) or when the stream failed, and
    fails with the read's error (a hung-up terminal)."""

    def __init__(self, stream: H2Stream, fd: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.registrations = 0
        self._stream = stream
        self._fd = fd
        self._registered = False

    def start(self) -> None:
        """Raises PermissionError (or ValueError) when the loop cannot poll the descriptor."""
        self._register()
        self._stream.on_writable(self._resume)

    def stop(self) -> None:
        self._unregister()

    def _register(self) -> None:
        self._loop.add_reader(self._fd, self._readable)
        self._registered = True
        self.registrations += 1

    def _unregister(self) -> None:
        if self._registered:
            self._registered = False
            self._loop.remove_reader(self._fd)

    def _resume(self) -> None:
        if not self._registered and not self.done.done():
            self._register()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK_BYTES)
        except BlockingIOError:  # somebody else read it first
            return
        except OSError as exc:
            self._finish(exc)
            return
        try:
            if not data:
                self._stream.end_nowait()  # stdin EOF for the remote process
                self._finish(None)
            elif not self._stream.write_nowait(execframe.encode(Channel.STDIN, data)):
                self._unregister()  # until on_writable
        except StreamingError:
            self._finish(None)  # the session's reader sees the stream's failure

    def _finish(self, error: OSError | None) -> None:
        self._unregister()
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


# -- logs ---------------------------------------------------------------------------------


async def logs_session(
    conn: H2Connection,
    namespace: str,
    pod: str,
    query: dict[str, str],
    stdio: Stdio = LOCAL_STDIO,
) -> None:
    path = (
        f"/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(pod)}/logs?"
        + urllib.parse.urlencode(query)
    )
    stream = await conn.request("GET", path, end_stream=True)
    await _response(stream)
    while chunk := await stream.read():
        await stdio.write(stdio.stdout, chunk)


# -- exec or logs, as parsed -------------------------------------------------------------


def logs_query(args: argparse.Namespace) -> dict[str, str]:
    query = {"follow": "1" if args.follow else "0"}
    if args.tail is not None:
        query["tailLines"] = str(args.tail)
    if args.timestamps:
        query["timestamps"] = "1"
    if args.previous:
        query["previous"] = "1"
    if getattr(args, "since", None) is not None:
        query["sinceSeconds"] = str(args.since)
    if getattr(args, "since_time", None) is not None:
        query["sinceTime"] = args.since_time
    if args.container:
        query["container"] = args.container
    return query


# kubectl's words for ``exec POD CMD…`` without ``--`` (accepted, with this on stderr).
EXEC_DEPRECATED = (
    b"nodectl exec [POD] [COMMAND] is DEPRECATED and will be removed in a future version. "
    b"Use nodectl exec [POD] -- [COMMAND] instead.\n"
)
NO_TTY_MESSAGE = b"Unable to use a TTY - input is not a terminal or the right kind of file\n"


async def exec_or_logs(
    conn: H2Connection,
    args: argparse.Namespace,
    stdio: Stdio = LOCAL_STDIO,
    resized: asyncio.Event | None = None,
) -> int:
    """``nodectl exec`` (the remote exit code) or ``nodectl logs`` (0), from parsed arguments:
    run by the invocation itself or by a session holder for it."""
    if args.command == "exec":
        if getattr(args, "exec_hint", False):  # exec POD CMD… without --
            await stdio.write(stdio.stderr, EXEC_DEPRECATED)
        tty = args.tty
        if tty and not os.isatty(stdio.stdin):
            # kubectl's words; then on without a terminal, so piped input ends the command
            # (a remote TTY would wait for input that the pipe's end never reaches).
            await stdio.write(stdio.stderr, NO_TTY_MESSAGE)
            tty = False
        return await exec_session(
            conn,
            args.namespace,
            args.pod,
            args.container,
            list(args.cmd),
            stdin=args.stdin,
            tty=tty,
            stdio=stdio,
            resized=resized,
        )
    await logs_session(conn, args.namespace, args.pod, logs_query(args), stdio)
    return 0


# -- port-forward -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortPair:
    local: int
    remote: int


def parse_ports(specs: list[str]) -> list[PortPair]:
    pairs = []
    for spec in specs:
        local, _, remote = spec.rpartition(":")
        try:
            remote_port = int(remote)
            local_port = int(local) if local else remote_port
        except ValueError:
            raise CliError(f"port {spec!r}: expected [LOCAL:]REMOTE", 2) from None
        if not (0 <= local_port <= 65535 and 1 <= remote_port <= 65535):
            raise CliError(f"port {spec!r}: out of range", 2)
        pairs.append(PortPair(local_port, remote_port))
    return pairs


async def port_forward_session(
    conn: H2Connection,
    namespace: str,
    pod: str,
    pairs: list[PortPair],
    address: str,
    ready: Callable[[list[tuple[int, int]]], None] | None = None,
    open_stream: Callable[[str], Awaitable[H2Stream]] | None = None,
) -> None:
    """Listen locally; every accepted connection is a new stream on ``conn`` (or one from
    ``open_stream``, given the request's path: the ticket path, agent.cli.nodectl_tickets). One
    failing connection is reported and the session goes on; Ctrl-C or the connection ending
    stops it."""
    base = f"/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(pod)}"

    active: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()

    async def forward(splice: SocketSplice, remote: int) -> None:
        try:
            path = f"{base}/portforward?port={remote}"
            if open_stream is None:
                stream = await conn.request("POST", path)
            else:
                stream = await open_stream(path)
            # The client may speak first: its bytes go out before the response is known.
            splice.send_from_socket(stream)
            await _response(stream)
            splice.deliver_to_socket()
            await splice.done
        except (CliError, StreamingError, OSError) as exc:
            print(f"nodectl: error forwarding port {remote}: {exc}", file=sys.stderr)
        except asyncio.CancelledError:
            pass  # the session is shutting down (Ctrl-C): nothing to report
        finally:
            splice.close()

    def accepted(remote: int) -> Callable[[], SocketSplice]:
        def make() -> SocketSplice:
            # Each local connection: both directions in the loop's callbacks, no task
            # hand-offs (agent/aio/splice.py); one task only opens the stream and waits.
            splice = SocketSplice(
                read_point=hops.Point.LOCAL_READ, write_point=hops.Point.LOCAL_WRITE
            )
            task = loop.create_task(forward(splice, remote))
            active.add(task)
            task.add_done_callback(active.discard)
            return splice

        return make

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    bound: list[tuple[int, int]] = []
    try:
        for pair in pairs:
            try:
                server = await loop.create_server(accepted(pair.remote), address, pair.local)
            except OSError as exc:  # busy port, an address not of this host: kubectl's words
                raise CliError(
                    f"Unable to listen on port {pair.local}: {exc.strerror or exc}"
                ) from None
            servers.append(server)
            port = server.sockets[0].getsockname()[1]
            bound.append((port, pair.remote))
            print(f"Forwarding from {address}:{port} -> {pair.remote}", flush=True)
        if ready is not None:
            ready(bound)
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({stopping, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set():
            raise CliError("lost the connection to the node")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        for server in servers:
            server.close()
        for task in list(active):
            task.cancel()
        await asyncio.gather(*active, return_exceptions=True)


# -- entry ---------------------------------------------------------------------------------


async def open_master(server_url: str, ctx: ssl.SSLContext) -> H2Connection:
    url = urllib.parse.urlsplit(server_url)
    host = url.hostname or ""
    return await connect(host, url.port or 6443, ctx, server_hostname=host, name="nodectl")


def run(
    coro_factory: Callable[[H2Connection], Any],
    opener: Callable[[], Any],
    *,
    raw_tty: bool = False,
    bulk: bool = False,
) -> Any:
    """Run one session. ``bulk`` (port-forward) runs on uvloop: its TLS and socket paths cost
    about half the CPU per byte of asyncio's, worth its ~10 ms of import for a long session
    but not for a short exec."""

    async def main() -> Any:
        conn = await opener()
        try:
            return await coro_factory(conn)
        finally:
            await conn.shutdown("done", grace_s=1.0)

    runner: Callable[[Any], Any] = asyncio.run
    if bulk:
        from agent.aio.malloc import tune_malloc  # ctypes: not for a short exec

        tune_malloc()
        import uvloop

        runner = uvloop.run
    with raw_terminal(raw_tty, LOCAL_STDIO.stdin):
        try:
            return runner(main())
        except ConnectionClosedError as exc:
            raise CliError(str(exc)) from exc
        except StreamingError as exc:
            raise CliError(str(exc)) from exc
