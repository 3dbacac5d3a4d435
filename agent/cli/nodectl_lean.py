"""A cold ``nodectl exec POD -- CMD`` without asyncio, argparse or :mod:`agent.cli.nodectl`
(issue 20 item 4; BENCHMARKS.md, "a cold nodectl exec").

What a standalone exec spends beyond Docker's own work is the interpreter and its imports:
asyncio with concurrent.futures and logging, argparse and the whole CLI module. For the plain
form a script uses with sessions off — ``nodectl [--config F] [--no-session] exec [-n NS]
[-c C] POD -- CMD…``, no stdin, no terminal, not ``--direct``, a config naming one master —
this module runs the exec on the sans-IO :class:`agent.proto.h2mux.StreamMux` over a blocking
TLS socket: the same request, the same TLS context (the cluster CA only, the admin's
certificate, the master's mark checked in the handshake), the same output and exit status.

Anything else is not taken (:func:`run_exec` returns ``None`` having done nothing) and the full
client runs it, as it does when the exec did not start here: no connection, a refused
handshake, or an answer other than 200 (the full client then prints its own error for it). Once
the request went out, the command may have run: errors after that are reported here, never
retried. This module imports only built-in modules until it has decided to take the command.
"""

from __future__ import annotations

import os
import sys

from agent.errors import StreamResetError

TYPE_CHECKING = False  # typing's own costs an import on every nodectl command
if TYPE_CHECKING:
    import ssl

EXIT_ERROR = 1
EXIT_SIGPIPE = 128 + 13
# nodectl's defaults (agent.cli.nodectl, agent.cli.nodectl_servers, agent.aio.h2conn).
DEFAULT_PORT = 6443
HANDSHAKE_TIMEOUT_S = 10.0
PING_INTERVAL_S = 20.0
READ_BYTES = 1 << 20
CONFIG_KEYS = frozenset({"server", "ca", "client_cert", "client_key", "session_idle_timeout_s"})


class _NotTaken(Exception):
    """The command did not start here: the full client runs it."""


def parse(argv: list[str]) -> tuple[str | None, bool, str, str | None, str, list[str]] | None:
    """``(config, no_session, namespace, container, pod, command)`` for the plain exec form,
    ``None`` for anything else (other options, ``-i``/``-t``, combined short options, the
    legacy form without ``--``)."""
    config: str | None = None
    no_session = False
    i = 0
    while i < len(argv) and argv[i] != "exec":
        token = argv[i]
        if token == "--config" and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif token.startswith("--config="):
            config, i = token.partition("=")[2], i + 1
        elif token == "--no-session":
            no_session, i = True, i + 1
        else:
            return None
    i += 1
    namespace, container, pod = "default", None, None
    while i < len(argv) and argv[i] != "--":
        token = argv[i]
        if token in ("-n", "--namespace", "-c", "--container") and i + 1 < len(argv):
            value = argv[i + 1]
            if token in ("-n", "--namespace"):
                namespace = value
            else:
                container = value
            i += 2
        elif token.startswith("-") or pod is not None:
            return None
        else:
            pod, i = token, i + 1
    command = argv[i + 1 :]
    if pod is None or i >= len(argv) or not command or not command[0]:
        return None
    return config, no_session, namespace, container, pod, command


def run_exec(argv: list[str]) -> int | None:
    """The exit status of ``argv`` run here, or ``None`` when this path does not take it."""
    parsed = parse(argv)
    if parsed is None:
        return None
    explicit, no_session, namespace, container, pod, command = parsed
    try:
        server, ca, cert, key = _config(explicit, no_session)
        return _exec(server, ca, cert, key, namespace, container, pod, command)
    except _NotTaken:
        return None
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # no second error at the interpreter's exit
        os.dup2(devnull, 1)
        os.close(devnull)
        return EXIT_SIGPIPE


def _config(explicit: str | None, no_session: bool) -> tuple[str, str, str, str]:
    """The master's URL and the credentials, when the config is one this path serves: one
    master, the known keys only, and sessions off (by the config or ``--no-session``)."""
    import tomllib

    from agent.cli.nodectl_control import config_path

    try:
        with open(config_path(explicit), "rb") as f:
            raw = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, ValueError):
        raise _NotTaken from None  # the full client explains it
    fields = [raw.get(k) for k in ("server", "ca", "client_cert", "client_key")]
    idle = raw.get("session_idle_timeout_s")
    sessions_off = no_session or (idle == 0 and not isinstance(idle, bool))
    if not (set(raw) <= CONFIG_KEYS and all(isinstance(f, str) for f in fields) and sessions_off):
        raise _NotTaken
    server, ca, cert, key = (str(f) for f in fields)
    if "," in server or not server.startswith("https://"):
        raise _NotTaken
    if not hasattr(os, "memfd_create") or not os.path.isdir("/proc/self/fd"):
        raise _NotTaken  # the credentials' memory files are Linux's; elsewhere the full client
    return server, ca, cert, key


def _exec(
    server: str,
    ca: str,
    cert: str,
    key: str,
    namespace: str,
    container: str | None,
    pod: str,
    command: list[str],
) -> int:
    import time
    import urllib.parse

    from agent.errors import ProtocolViolation
    from agent.proto import execframe
    from agent.proto.h2mux import (
        CLIENT_LIMITS,
        ConnectionEnded,
        DataReceived,
        ResponseReceived,
        StreamEnded,
        StreamMux,
        StreamReset,
        TrailersReceived,
        header,
    )

    try:
        parts = urllib.parse.urlsplit(server)
        host, port = parts.hostname or "", parts.port or DEFAULT_PORT
    except ValueError:
        raise _NotTaken from None
    if not host or parts.path.strip("/") or parts.query or parts.username:
        raise _NotTaken
    query = [("command", c) for c in command]
    if container:
        query.append(("container", container))
    path = (
        f"/v1/namespaces/{urllib.parse.quote(namespace)}/pods/{urllib.parse.quote(pod)}/exec?"
        + urllib.parse.urlencode(query)
    )
    try:
        tls = _connect(host, port, _context(server, ca, cert, key))
    except (OSError, ValueError):  # NotTheMasterError is an OSError; ssl.SSLError too
        raise _NotTaken from None
    with tls:
        mux = StreamMux(client_side=True, limits=CLIENT_LIMITS)
        mux.initiate()
        request = (
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", host),
            (":path", path),
        )
        stream_id = mux.open_stream(request, end_stream=True)
        try:
            tls.sendall(mux.data_to_send())
        except OSError:
            raise _NotTaken from None  # nothing reached the master whole
        decoder = execframe.FrameDecoder(
            frozenset({execframe.Channel.STDOUT, execframe.Channel.STDERR})
        )
        trailers: dict[str, str] = {}
        ping_sent = False
        tls.settimeout(PING_INTERVAL_S)
        while True:
            try:
                data = tls.recv(READ_BYTES)
            except TimeoutError:
                if ping_sent:  # as the full client: an unanswered PING ends the connection
                    return _error("keepalive PING unanswered")
                ping_sent = True
                mux.ping(os.urandom(8))
                tls.sendall(mux.data_to_send())
                continue
            except OSError as exc:
                return _error(f"connection closed: {exc}")
            if not data:
                return _error("connection closed: by peer")
            ping_sent = False
            try:
                events = mux.receive_data(data, time.monotonic())
            except ProtocolViolation as exc:
                return _error(str(exc))
            for event in events:
                if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                    if header(event.headers, ":status") != "200":
                        raise _NotTaken  # refused: the full client asks again and explains
                elif isinstance(event, DataReceived):
                    for frame in decoder.feed(event.data):
                        fd = 2 if frame.channel is execframe.Channel.STDERR else 1
                        _write_all(fd, frame.payload)
                    mux.consumed(event.stream_id, event.flow_controlled_length)
                elif isinstance(event, TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, StreamEnded) and event.stream_id == stream_id:
                    mux.close(0, "done")
                    _send_quietly(tls, mux.data_to_send())
                    if "error" in trailers:
                        _write_all(2, f"nodectl: {trailers['error']}\n".encode())
                    try:
                        return int(trailers.get("exit-code", "1"))
                    except ValueError:
                        return 1
                elif isinstance(event, StreamReset):
                    error = StreamResetError(event.stream_id, event.error_code, event.remote)
                    return _error(str(error))
                elif isinstance(event, ConnectionEnded):
                    last = event.last_stream_id
                    if not event.error_code and last is not None and last < stream_id:
                        raise _NotTaken  # the master never took the request (a GOAWAY)
                    return _error(f"GOAWAY (error code {event.error_code})")
            pending = mux.data_to_send()  # SETTINGS ACK, PING ACK, WINDOW_UPDATE
            if pending:
                tls.sendall(pending)


def _context(server: str, ca: str, cert: str, key: str) -> ssl.SSLContext:
    """The full client's ``master_context``: the cluster CA only, the admin's certificate
    (from anonymous memory files, never on disk), the master's mark checked in the handshake."""
    import ssl

    from agent.aio.tls import with_peer_check
    from agent.pki.names import master_mark_check

    ctx = ssl.create_default_context(cadata=ca)
    fds = []
    try:
        for data in (cert, key):
            fd = os.memfd_create("nodectl-credential", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data.encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    ctx.set_alpn_protocols(["h2"])
    return with_peer_check(ctx, master_mark_check(server))


def _connect(host: str, port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    import socket

    sock = socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT_S)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = ctx.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    if tls.selected_alpn_protocol() != "h2":
        tls.close()
        raise OSError("the master does not speak HTTP/2 (ALPN)")
    return tls


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _send_quietly(tls: ssl.SSLSocket, data: bytes) -> None:
    try:  # noqa: SIM105  (contextlib: an import this path does without)
        tls.sendall(data)
    except OSError:
        pass


def _error(message: str) -> int:
    sys.stderr.write(f"nodectl: {message}\n")
    return EXIT_ERROR
