"""Kubernetes handler actions, run once: ``exec`` in a running container, ``httpGet`` and
``tcpSocket`` from the agent, ``sleep``.

One implementation for every user of a handler: lifecycle hooks (:mod:`agent.node.hooks`:
postStart, preStop, the preStart preconditions' tcpSocket and httpGet) and probes. Each call
returns a :class:`HandlerResult`, never raises for what the target did (refused, timed out, a
500, exit code 1): those are failures with a message; only the runtime's own unavailability
(RuntimeUnavailableError) escapes, so that the caller retries the whole sync.

Time limits go through an injected ``sleep`` (see :func:`bounded`) so that a unit test drives
them with a fake clock; network waits (connect, read) are bounded the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.errors import AgentError, RuntimeUnavailableError
from agent.node.runtime.base import OutputChannel, Runtime
from agent.types import Container

Sleep = Callable[[float], Awaitable[None]]
T = TypeVar("T")

MESSAGE_MAX_CHARS = 256  # a failure's message as shown in events and status (escaped later)
EXEC_OUTPUT_KEPT_BYTES = 1024  # of an exec's output, for its failure message
EXEC_EXIT_WAIT_S = 5.0  # for the exit code after the output ended
HTTP_STATUS_LINE_MAX_BYTES = 8192
HTTP_OK_MIN = 200
HTTP_OK_MAX = 399  # kubelet: 2xx and 3xx are success


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What one run of a handler gave: ``ok``, and why not in ``message`` (bounded)."""

    ok: bool
    message: str = ""

    @classmethod
    def failed(cls, message: str) -> HandlerResult:
        return cls(False, bounded_text(message))


PASSED = HandlerResult(True)


def bounded_text(text: str, limit: int = MESSAGE_MAX_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters, any other character that does not
    print written as an escape (``\\x1b``): what events and status carry comes from a
    container's output, and must not drive a terminal that shows it raw. (Printers escape
    again for their own medium.)"""
    flat = "".join(_printable(ch) for ch in " ".join(text.split()))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _printable(ch: str) -> str:
    if ch.isprintable():
        return ch
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TimedOut(Exception):
    """:func:`bounded`'s time ran out (callers turn it into a failed result)."""


async def bounded(awaitable: Coroutine[Any, Any, T], seconds: float, sleep: Sleep) -> T:
    """``awaitable``'s result, or TimedOut (the awaitable cancelled) after ``seconds`` of
    ``sleep`` — a fake clock's in tests, asyncio's in the agent."""
    work = asyncio.ensure_future(awaitable)
    timer = asyncio.ensure_future(sleep(max(0.0, seconds)))
    try:
        await asyncio.wait((work, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
    if work.cancelled():
        raise TimedOut
    return work.result()


def resolve_port(port: int | str, container: Container | None) -> int | None:
    """A handler's port: a number, or the name of one of ``container``'s ports (None if no
    port has that name)."""
    if isinstance(port, int):
        return port
    for declared in container.ports if container is not None else ():
        if declared.name == port:
            return declared.container_port
    return None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def tcp_socket(host: str, port: int, timeout_s: float, sleep: Sleep) -> HandlerResult:
    """Passed when a TCP connection to ``host:port`` opens within ``timeout_s`` (it is closed
    at once, as kubelet's)."""
    where = _host_port(host, port)
    try:
        _, writer = await bounded(asyncio.open_connection(host, port), timeout_s, sleep)
    except TimedOut:
        return HandlerResult.failed(f"dial tcp {where}: i/o timeout after {timeout_s:g}s")
    except OSError as exc:
        return HandlerResult.failed(f"dial tcp {where}: {exc.strerror or exc}")
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return PASSED


async def http_get(
    host: str,
    port: int,
    path: str,
    *,
    scheme: str = "HTTP",
    headers: Sequence[tuple[str, str]] = (),
    timeout_s: float,
    sleep: Sleep,
) -> HandlerResult:
    """Passed when ``GET path`` answers 2xx or 3xx within ``timeout_s`` (HTTPS without
    certificate verification, as kubelet). The connection is closed after the status line."""
    url = f"{scheme.lower()}://{_host_port(host, port)}{path}"
    try:
        code = await bounded(_http_status(host, port, path, scheme, headers), timeout_s, sleep)
    except TimedOut:
        return HandlerResult.failed(f"Get {url}: timeout after {timeout_s:g}s")
    except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return HandlerResult.failed(f"Get {url}: {getattr(exc, 'strerror', None) or exc}")
    if HTTP_OK_MIN <= code <= HTTP_OK_MAX:
        return PASSED
    return HandlerResult.failed(f"HTTP probe failed with statuscode: {code} ({url})")


def _insecure_context() -> ssl.SSLContext:
    # Not create_default_context(): it reads the system's CA files, on the loop, for nothing.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _http_status(
    host: str, port: int, path: str, scheme: str, headers: Sequence[tuple[str, str]]
) -> int:
    tls = _insecure_context() if scheme.upper() == "HTTPS" else None
    reader, writer = await asyncio.open_connection(
        host, port, ssl=tls, limit=HTTP_STATUS_LINE_MAX_BYTES
    )
    try:
        given = {name.lower() for name, _ in headers}
        lines = [f"GET {path or '/'} HTTP/1.1"]
        if "host" not in given:
            lines.append(f"Host: {_host_port(host, port)}")
        if "user-agent" not in given:
            lines.append("User-Agent: node-agent")
        if "accept" not in given:
            lines.append("Accept: */*")
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
        await writer.drain()
        status = await reader.readuntil(b"\r\n")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    parts = status.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ValueError(f"malformed HTTP response {bounded_text(status.decode('latin-1'), 60)}")
    return int(parts[1])


async def exec_in(
    runtime: Runtime,
    container_id: str,
    command: Sequence[str],
    *,
    timeout_s: float | None,
    sleep: Sleep,
) -> HandlerResult:
    """Run ``command`` in the running container ``container_id`` through the Runtime's exec;
    passed on exit code 0. The output is read (and at most EXEC_OUTPUT_KEPT_BYTES kept for the
    message); ``timeout_s`` None waits for the process as long as it runs."""

    async def run() -> HandlerResult:
        session = await runtime.exec_start(container_id, list(command), stdin=False, tty=False)
        kept = bytearray()
        try:
            while True:
                _channel, data = await session.read()
                if not data and _channel is OutputChannel.STDOUT:
                    break
                if len(kept) < EXEC_OUTPUT_KEPT_BYTES:
                    kept.extend(data[: EXEC_OUTPUT_KEPT_BYTES - len(kept)])
            code = await session.exit_code(EXEC_EXIT_WAIT_S)
        finally:
            await session.close()
        if code == 0:
            return PASSED
        output = kept.decode("utf-8", "replace").strip()
        what = "did not report an exit code" if code is None else f"exited with {code}"
        return HandlerResult.failed(
            f"command {' '.join(command)!r} {what}" + (f": {output}" if output else "")
        )

    try:
        if timeout_s is None:
            return await run()
        return await bounded(run(), timeout_s, sleep)
    except TimedOut:
        return HandlerResult.failed(f"command {' '.join(command)!r} timed out after {timeout_s:g}s")
    except RuntimeUnavailableError:
        raise
    except AgentError as exc:
        return HandlerResult.failed(f"command {' '.join(command)!r} could not run: {exc}")
