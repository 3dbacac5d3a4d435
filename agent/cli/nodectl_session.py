"""The ``nodectl session`` holder: one process per nodectl config that keeps the HTTP/2
connection to the master open and runs ``exec`` and ``logs`` for later ``nodectl`` invocations
(the client half and the wire format are in :mod:`agent.cli.nodectl_control`).

Started detached by ``nodectl session start`` (like ``ssh -fNM``), or by an ``exec`` or
``logs`` that found none (like ssh's ControlPersist; :func:`start_wanted` decides). It serves
only its own user (the socket lives in a 0700 directory and every peer's uid is checked), and
ends after its idle timeout without a command, on ``nodectl session stop``, on SIGTERM or
SIGINT, or when its config file changes — credentials replaced on disk must not go on being
used from memory.

Start-up, in this order so that a client never finds a socket nobody will answer: an exclusive
lock on ``session-*.lock`` for the holder's lifetime (a second holder for the config gives up,
and only the lock's owner may replace a stale socket), the connection to the master, then the
socket. A start that fails leaves ``session-*.attempt`` behind (written by whoever started it):
automatic starts wait :data:`START_RETRY_S` after one before trying again, so that a holder
that cannot run is not started by every command.
Commands it cannot run as the invocation would (``--direct``, port-forward, usage errors) are
handed back, and the invocation runs them itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import io
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from agent.aio.h2conn import H2Connection
from agent.cli import nodectl, nodectl_control, nodectl_servers
from agent.cli import nodectl_stream as ns
from agent.errors import CliError, ConnectionClosedError, SessionUnavailableError, StreamingError

IDLE_CHECK_S = 1.0
STDIO_FDS = 3
# After a failed start, automatic starts wait this long; after a failed connection to the
# master, commands are handed back at once for this long instead of each waiting for it.
START_RETRY_S = 60.0
MASTER_RETRY_S = 30.0


@dataclass(frozen=True, slots=True)
class FileStamp:
    inode: int
    size: int
    mtime_ns: int


def file_stamp(path: str) -> FileStamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)


def ensure_runtime_dir() -> str:
    """The 0700 directory for session sockets, created if missing."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(nodectl_control.runtime_dir_path(), 0o700)
    try:
        return nodectl_control.runtime_dir()  # refuses a directory somebody else made
    except SessionUnavailableError as exc:
        raise CliError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class SessionFiles:
    socket: str
    lock: str
    attempt: str

    @classmethod
    def of(cls, config_file: str) -> SessionFiles:
        path = nodectl_control.socket_path(ensure_runtime_dir(), config_file)
        stem = path.removesuffix(".sock")
        return cls(path, f"{stem}.lock", f"{stem}.attempt")


def lock_session(files: SessionFiles) -> int | None:
    """The lock only one holder per config has (its descriptor); None if another has it."""
    fd = os.open(files.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def start_wanted(config_file: str) -> bool:
    """Whether an automatic start makes sense now: no holder runs or starts for the config,
    no start failed in the last :data:`START_RETRY_S`, and the runtime directory is private.
    If so, the attempt is recorded (the holder removes the record once it serves)."""
    try:
        files = SessionFiles.of(config_file)
    except CliError:
        return False  # a directory somebody else controls: a holder would refuse it too
    fd = lock_session(files)
    if fd is None:
        return False
    os.close(fd)  # released: the holder takes it
    with contextlib.suppress(FileNotFoundError):
        if time.time() - os.stat(files.attempt).st_mtime < START_RETRY_S:
            return False
    with open(files.attempt, "w") as attempt:
        attempt.write(f"{time.time():.0f}\n")
    return True


def session_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """``argv`` parsed as nodectl would, if a session runs it as the invocation would."""
    quiet_out, quiet_err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(quiet_out), contextlib.redirect_stderr(quiet_err):
            args = nodectl.parse_args(argv)
    except SystemExit:  # usage errors and --help: the invocation prints them
        return None
    if args.command not in nodectl_control.SESSION_COMMANDS or args.direct or args.server:
        return None
    if args.command == "exec" and not args.cmd:
        return None
    return args


async def receive_request(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors attached to it (closed on exec)."""
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(
                sock, nodectl_control.MESSAGE_MAX_BYTES, STDIO_FDS, socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            await ns.wait_readable(sock.fileno())
            continue
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            return b"", []
        return data, fds


class SessionHolder:
    def __init__(
        self,
        config_file: str,
        config: nodectl.ClientConfig,
        idle_s: float = nodectl_control.SESSION_IDLE_S,
    ) -> None:
        self.config_file = config_file
        self.config = config
        self.code = nodectl_control.code_identity()
        self.stamp = file_stamp(config_file)
        self.idle_s = idle_s
        self.context: ssl.SSLContext = nodectl.master_context(config)
        # The config's masters: a new connection goes to the first that accepts it.
        self.servers = nodectl_servers.Servers(nodectl_servers.config_servers(config))
        self.conn: H2Connection | None = None
        self.served = 0
        self.started = time.time()
        self.last_used = time.monotonic()
        self.commands: set[asyncio.Task[int]] = set()
        self.clients: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Lock()
        self._failed_at: float | None = None
        self.stopping = asyncio.Event()  # stop now (session stop, SIGTERM)
        self.retiring = False  # stop once the running commands are done (config changed)

    async def master(self) -> H2Connection:
        async with self._connecting:
            if self.conn is None or self.conn.closed.done():
                # A master that just failed us (down, or blackholed: a full handshake timeout
                # each time) is not retried for every command: they run on their own meanwhile.
                failed_at = self._failed_at
                if failed_at is not None and time.monotonic() - failed_at < MASTER_RETRY_S:
                    raise ConnectionClosedError("the master was unreachable a moment ago")
                try:
                    self.conn = await self.servers.open_master(self.context)
                except Exception:  # not a cancelled command: that says nothing of the master
                    self._failed_at = time.monotonic()
                    raise
                self._failed_at = None
            return self.conn

    def config_changed(self) -> bool:
        """Whether the config file differs from the one loaded; if so the session retires."""
        if not self.retiring and file_stamp(self.config_file) != self.stamp:
            self.retiring = True
        return self.retiring

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        accepting: asyncio.Task[tuple[socket.socket, object]] | None = None
        try:
            while not self.stopping.is_set():
                # Only commands count as use: ``session status`` must not keep it alive.
                idle = time.monotonic() - self.last_used > self.idle_s
                if not self.commands and (idle or self.config_changed()):
                    return
                if accepting is None:
                    accepting = loop.create_task(loop.sock_accept(listener))
                stop = loop.create_task(self.stopping.wait())
                await asyncio.wait(
                    {accepting, stop}, timeout=IDLE_CHECK_S, return_when=asyncio.FIRST_COMPLETED
                )
                stop.cancel()
                if accepting.done():
                    sock, _ = accepting.result()
                    accepting = None
                    task = loop.create_task(self._client(sock))
                    self.clients.add(task)
                    task.add_done_callback(self._client_done)
        finally:
            if accepting is not None:
                accepting.cancel()
            for task in list(self.clients):
                task.cancel()
            await asyncio.gather(*self.clients, return_exceptions=True)
            if self.conn is not None:
                await self.conn.shutdown("session ended", grace_s=1.0)

    def _client_done(self, task: asyncio.Task[None]) -> None:
        self.clients.discard(task)

    async def _client(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        fds: list[int] = []
        try:
            if nodectl_control.peer_uid(sock) != os.getuid():
                return
            message, fds = await receive_request(sock)
            kind, body = message[:1], message[1:]
            if kind == b"I":
                await loop.sock_sendall(sock, b"I" + self.status().encode())
            elif kind == b"S":
                self.stopping.set()
                await loop.sock_sendall(sock, b"X0")
            elif kind == b"R":
                fields = nodectl_control.decode_fields(body)
                code = None
                if len(fds) == STDIO_FDS and len(fields) >= 2:
                    code = await self._request(sock, fields[0], fields[1], fields[2:], fds)
                if code is not None:
                    self.served += 1
                await loop.sock_sendall(sock, b"F" if code is None else b"X%d" % code)
        except (ConnectionError, BrokenPipeError):
            pass  # the invocation is gone; its command was cancelled with it
        finally:
            for fd in fds:
                os.close(fd)
            sock.close()

    async def _request(
        self, sock: socket.socket, code: str, config_file: str, argv: list[str], fds: list[int]
    ) -> int | None:
        """The command's exit code, or None to hand it back to the invocation."""
        if code != self.code:
            # nodectl was upgraded (or reinstalled) since this session started: the new code
            # runs it, and this session ends once its own commands are done.
            self.retiring = True
            return None
        if config_file != self.config_file:
            return None
        if self.config_changed():
            # New credentials on disk: no new commands; those running finish, then it ends.
            return None
        args = session_args(argv)
        if args is None:
            return None
        try:
            conn = await self.master()
        except (OSError, ssl.SSLError, StreamingError, ConnectionClosedError, TimeoutError):
            return None  # the invocation reports it as it always does
        loop = asyncio.get_running_loop()
        stdio = ns.Stdio(fds[0], fds[1], fds[2], threaded_writes=True)
        resized = asyncio.Event()
        command = loop.create_task(self._command(conn, args, stdio, resized))
        self.commands.add(command)
        listener = loop.create_task(_listen(sock, resized))
        try:
            await asyncio.wait({command, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listener.cancel()
            self.commands.discard(command)
            self.last_used = time.monotonic()
            if not command.done():  # the invocation went away (Ctrl-C): so does its command
                command.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await command
        if command.cancelled():
            raise ConnectionResetError("the invocation hung up")
        return command.result()

    async def _command(
        self,
        conn: H2Connection,
        args: argparse.Namespace,
        stdio: ns.Stdio,
        resized: asyncio.Event,
    ) -> int:
        try:
            with ns.raw_terminal(args.command == "exec" and args.tty, stdio.stdin):
                # Refused with a 5xx: on the next master, as the invocation would do.
                again = args.command == "logs" or not (args.stdin or args.tty)
                return await self.servers.stream(
                    conn,
                    self.context,
                    lambda c: ns.exec_or_logs(c, args, stdio, resized),
                    again=again,
                )
        except CliError as exc:
            await stdio.write(stdio.stderr, f"nodectl: {exc}\n".encode())
            return exc.code
        except (ConnectionClosedError, StreamingError) as exc:
            await stdio.write(stdio.stderr, f"nodectl: {exc}\n".encode())
            return nodectl.EXIT_ERROR
        except BrokenPipeError:  # the invocation's output was closed (``| head``): quietly,
            return nodectl.EXIT_SIGPIPE  # with the status of a local run (and of coreutils)
        except OSError:
            return nodectl.EXIT_ERROR

    def status(self) -> str:
        connected = self.conn is not None and not self.conn.closed.done()
        return (
            f"pid: {os.getpid()}\n"
            f"version: {self.code.partition(':')[0]}\n"
            f"config: {self.config_file}\n"
            f"master: {self.servers.current} ({'connected' if connected else 'not connected'})\n"
            f"started: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.started))}\n"
            f"commands served: {self.served}, running: {len(self.commands)}\n"
            f"idle timeout: {self.idle_s:g}s\n"
        )


async def _listen(sock: socket.socket, resized: asyncio.Event) -> None:
    """The invocation's messages while its command runs; returns when it hangs up."""
    loop = asyncio.get_running_loop()
    while message := await loop.sock_recv(sock, nodectl_control.MESSAGE_MAX_BYTES):
        if message == b"W":
            resized.set()


def bind(path: str) -> socket.socket:
    """The listening socket at ``path``; the caller holds the session lock, so a socket
    already there was left by a holder that is gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        listener.bind(path)
        listener.listen(64)
    except OSError:
        listener.close()
        raise
    return listener


async def hold(config_file: str, idle_s: float, ready_fd: int) -> int:
    """Run the session; start-up (or the reason it failed) is reported on ``ready_fd``."""
    try:
        holder = SessionHolder(config_file, nodectl.load_config(config_file), idle_s)
        files = SessionFiles.of(config_file)
        lock = lock_session(files)
    except (CliError, OSError, ssl.SSLError) as exc:
        return _failed(ready_fd, exc)
    if lock is None:
        return _failed(ready_fd, CliError(f"a session is already running ({files.socket})"))
    try:
        try:
            await holder.master()
        except (OSError, ssl.SSLError, StreamingError, ConnectionClosedError) as exc:
            return _failed(ready_fd, CliError(f"cannot reach the master: {exc}"))
        try:
            listener = bind(files.socket)
        except OSError as exc:
            return _failed(ready_fd, CliError(f"{files.socket}: {exc.strerror}"))
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(files.attempt)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, holder.stopping.set)
            _report(ready_fd, f"session started (pid {os.getpid()}, {files.socket})")
            await holder.serve(listener)
            return 0
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):  # ours: nobody else binds it
                os.unlink(files.socket)
    finally:
        os.close(lock)


def _failed(ready_fd: int, exc: Exception) -> int:
    _report(ready_fd, f"nodectl: cannot start the session: {exc}")
    return exc.code if isinstance(exc, CliError) else nodectl.EXIT_ERROR


def _report(ready_fd: int, line: str) -> None:
    os.write(ready_fd, f"{line}\n".encode())
    if ready_fd > 2:  # the starter reads until EOF; stdio stays open (a socket must not get 2)
        os.close(ready_fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodectl-session", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the nodectl config, an absolute path")
    parser.add_argument(
        "--idle-timeout", type=float, default=nodectl_control.SESSION_IDLE_S, metavar="SECONDS"
    )
    parser.add_argument(
        "--ready-fd", type=int, default=2, help="report start-up here (default: stderr)"
    )
    args = parser.parse_args(argv)
    if not os.path.isabs(args.config):
        parser.error(f"--config {args.config!r} is not an absolute path")
    os.chdir("/")  # started with cwd "/" and -P already; this covers a start by hand
    return asyncio.run(hold(args.config, args.idle_timeout, args.ready_fd))


if __name__ == "__main__":
    sys.exit(main())
