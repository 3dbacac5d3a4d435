"""A lean asyncio client for the Docker Engine API calls on the exec path (a private helper of
the Docker adapter): exec create, exec start upgraded to the raw attach stream, exec inspect
and exec resize — HTTP/1.1 on the Engine's Unix socket, straight on the event loop. Image
removal takes it too (image GC deletes many images at once).

Why not docker-py: an exec probe is three Engine calls, and through the SDK each one is a
thread-bridge hop plus requests/urllib3 machinery, about 7 ms of the agent's CPU per probe
(BENCHMARKS.md, "probes"). Here a call is a few syscalls and a small parse. Only ``unix://``
engine addresses are served this way; any other ``docker_host`` (tcp, ssh, TLS) keeps the SDK
path (docs/runtime.md).

The Engine is local and trusted, but its answers are still bounded (head and body sizes) and
parsed defensively: anything malformed is a RuntimeOperationError naming the call, never a
foreign exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.errors import (
    AgentError,
    NotFoundError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)

MAX_HEAD_BYTES = 64 * 1024  # status line + headers of one answer
MAX_BODY_BYTES = 4 * 1024 * 1024  # an exec create/inspect answer is well under 4 KiB
MAX_ERROR_MESSAGE_CHARS = 500  # of Docker's {"message": ...} quoted in our errors
READ_CHUNK_BYTES = 64 * 1024
IDLE_CONNECTIONS_KEPT = 4  # keep-alive connections held for the next JSON call
DEFAULT_SOCKET = "/var/run/docker.sock"


def unix_socket_path(docker_host: str | None, environ_host: str | None) -> str | None:
    """The Engine's Unix socket path for ``docker_host`` (else ``$DOCKER_HOST``, else the
    default socket); None when the engine is reached some other way (tcp, ssh)."""
    address = docker_host or environ_host or f"unix://{DEFAULT_SOCKET}"
    if not address.startswith("unix://"):
        return None
    path = address[len("unix://") :]
    return path if path.startswith("/") else None


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class _Buffered:
    """A connected non-blocking socket with the bytes read past what was consumed."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    async def fill(self) -> bool:
        """Read once more; False at EOF."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, READ_CHUNK_BYTES)
        if not data:
            return False
        self.buffer += data
        return True

    def take(self, count: int) -> bytes:
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        return data


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Status and lower-cased headers of an answer's head (without the blank line).

    Raises RuntimeOperationError for anything that is not an HTTP/1.x status line followed by
    ``name: value`` lines."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes every byte
        raise RuntimeOperationError("malformed docker answer: undecodable head") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise RuntimeOperationError(f"malformed docker answer: status line {lines[0][:80]!r}")
    status = int(parts[1])
    if not 100 <= status <= 599:
        raise RuntimeOperationError(f"malformed docker answer: status {status}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise RuntimeOperationError(f"malformed docker answer: header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return status, headers


class EngineClient:
    """HTTP/1.1 on the Engine's Unix socket, on the loop. JSON calls reuse a few keep-alive
    connections; an upgrade takes a fresh one and hands its socket over."""

    def __init__(self, path: str, *, timeout_s: float) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._idle: deque[_Buffered] = deque()
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.popleft().sock.close()

    # -- calls ---------------------------------------------------------------------------------

    async def call(self, what: str, method: str, target: str, body: Any = None) -> Answer:
        """One request; an answer of any status (the caller judges it). Raises
        RuntimeUnavailableError when the engine does not answer (in time),
        RuntimeOperationError for a malformed answer."""
        payload = b"" if body is None else json.dumps(body).encode()
        request = self._request(method, target, payload, keep_alive=True)
        reused = self._take_idle()
        try:
            if reused is not None:
                try:
                    return await self._exchange(what, reused, request, method)
                except _StaleConnection:
                    reused.sock.close()  # closed by the engine while idle: once more, fresh
            conn = await self._connect(what)
            try:
                return await self._exchange(what, conn, request, method)
            except _StaleConnection as exc:
                conn.sock.close()
                raise RuntimeUnavailableError(f"{what}: docker closed the connection") from exc
        except TimeoutError as exc:
            raise RuntimeUnavailableError(
                f"{what}: docker engine did not answer within {self._timeout_s:g}s"
            ) from exc
        except OSError as exc:
            raise RuntimeUnavailableError(f"{what}: docker connection failed: {exc}") from exc

    async def upgrade(
        self, what: str, target: str, body: Any
    ) -> tuple[int, bytes, socket.socket, bytes]:
        """POST asking for the raw stream (``Upgrade: tcp``). Returns (status, error body,
        socket, bytes already read past the head): on 101/200 the socket is the stream and
        the caller owns it; on any other status the socket is closed and the body returned."""
        payload = json.dumps(body).encode()
        request = self._request(
            "POST",
            target,
            payload,
            keep_alive=False,
            extra="Connection: Upgrade\r\nUpgrade: tcp\r\n",
        )
        conn = await self._connect(what)
        handed_over = False
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.get_running_loop().sock_sendall(conn.sock, request)
                status, headers = await self._read_head(what, conn)
                if status in (101, 200):
                    handed_over = True
                    return status, b"", conn.sock, conn.take(len(conn.buffer))
                answer = await self._read_body(what, conn, status, headers, "POST")
                return status, answer.body, conn.sock, b""
        except TimeoutError as exc:
            raise RuntimeUnavailableError(
                f"{what}: docker engine did not answer within {self._timeout_s:g}s"
            ) from exc
        except (_StaleConnection, OSError) as exc:
            raise RuntimeUnavailableError(f"{what}: docker connection failed: {exc}") from exc
        finally:
            if not handed_over:
                conn.sock.close()

    # -- internals -----------------------------------------------------------------------------

    @staticmethod
    def _request(
        method: str, target: str, payload: bytes, *, keep_alive: bool, extra: str = ""
    ) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: node-agent\r\n"
        if not keep_alive and not extra:
            head += "Connection: close\r\n"
        head += extra
        if payload or method == "POST":
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        return head.encode("ascii") + b"\r\n" + payload

    def _take_idle(self) -> _Buffered | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.buffer:  # unread bytes on an idle connection: out of step, drop it
                return conn
            conn.sock.close()
        return None

    async def _connect(self, what: str) -> _Buffered:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(self._timeout_s):
                await asyncio.get_running_loop().sock_connect(sock, self.path)
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise RuntimeUnavailableError(
                f"{what}: docker engine unreachable at unix://{self.path}: {exc}"
            ) from exc
        return _Buffered(sock)

    async def _exchange(self, what: str, conn: _Buffered, request: bytes, method: str) -> Answer:
        try:
            async with asyncio.timeout(self._timeout_s):
                try:
                    await asyncio.get_running_loop().sock_sendall(conn.sock, request)
                except OSError as exc:  # EPIPE/ECONNRESET: closed by the engine
                    raise _StaleConnection(str(exc)) from exc
                status, headers = await self._read_head(what, conn)
                answer = await self._read_body(what, conn, status, headers, method)
        except BaseException:
            conn.sock.close()
            raise
        reusable = (
            headers.get("connection", "").lower() != "close"
            and ("content-length" in headers or "chunked" in headers.get("transfer-encoding", ""))
            and not conn.buffer
        )
        if reusable and not self._closed and len(self._idle) < IDLE_CONNECTIONS_KEPT:
            self._idle.append(conn)
        else:
            conn.sock.close()
        return answer

    async def _read_head(self, what: str, conn: _Buffered) -> tuple[int, dict[str, str]]:
        while True:
            end = conn.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = conn.take(end)
                conn.take(4)
                try:
                    status, headers = parse_head(head)
                except RuntimeOperationError as exc:
                    raise RuntimeOperationError(f"{what}: {exc}") from None
                if 100 <= status < 200 and status != 101:
                    continue  # an interim answer (100 Continue): the real one follows
                return status, headers
            if len(conn.buffer) > MAX_HEAD_BYTES:
                raise RuntimeOperationError(
                    f"{what}: malformed docker answer: head over {MAX_HEAD_BYTES} bytes"
                )
            try:
                more = await conn.fill()
            except OSError as exc:
                raise _StaleConnection(str(exc)) from exc
            if not more:
                if conn.buffer:
                    raise RuntimeOperationError(f"{what}: docker answer ended inside its head")
                raise _StaleConnection("EOF before an answer")

    async def _read_body(
        self, what: str, conn: _Buffered, status: int, headers: dict[str, str], method: str
    ) -> Answer:
        if method == "HEAD" or status in (204, 304):
            return Answer(status, headers, b"")
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = await self._read_chunked(what, conn)
            elif "content-length" in headers:
                length_text = headers["content-length"]
                if not length_text.isdigit() or len(length_text) > 12:
                    raise RuntimeOperationError(
                        f"{what}: malformed docker answer: Content-Length {length_text[:20]!r}"
                    )
                body = await self._read_exactly(what, conn, int(length_text))
            else:
                body = await self._read_to_eof(what, conn)
        except OSError as exc:
            raise RuntimeUnavailableError(f"{what}: docker connection failed: {exc}") from exc
        return Answer(status, headers, body)

    async def _read_exactly(self, what: str, conn: _Buffered, length: int) -> bytes:
        if length > MAX_BODY_BYTES:
            raise RuntimeOperationError(f"{what}: docker answer over {MAX_BODY_BYTES} bytes")
        while len(conn.buffer) < length:
            if not await conn.fill():
                raise RuntimeOperationError(f"{what}: docker answer ended inside its body")
        return conn.take(length)

    async def _read_to_eof(self, what: str, conn: _Buffered) -> bytes:
        while await conn.fill():
            if len(conn.buffer) > MAX_BODY_BYTES:
                raise RuntimeOperationError(f"{what}: docker answer over {MAX_BODY_BYTES} bytes")
        return conn.take(len(conn.buffer))

    async def _read_chunked(self, what: str, conn: _Buffered) -> bytes:
        body = bytearray()
        while True:
            line = await self._read_line(what, conn)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16) if size_text and len(size_text) <= 8 else -1
            except ValueError:
                size = -1
            if size < 0:
                raise RuntimeOperationError(
                    f"{what}: malformed docker answer: chunk size {size_text[:20]!r}"
                )
            if size == 0:
                while await self._read_line(what, conn):  # trailers, up to the blank line
                    pass
                return bytes(body)
            if len(body) + size > MAX_BODY_BYTES:
                raise RuntimeOperationError(f"{what}: docker answer over {MAX_BODY_BYTES} bytes")
            body += await self._read_exactly(what, conn, size)
            if await self._read_line(what, conn):
                raise RuntimeOperationError(f"{what}: malformed docker answer: chunk framing")

    async def _read_line(self, what: str, conn: _Buffered) -> bytes:
        while True:
            end = conn.buffer.find(b"\r\n")
            if end >= 0:
                line = conn.take(end)
                conn.take(2)
                return line
            if len(conn.buffer) > MAX_HEAD_BYTES:
                raise RuntimeOperationError(f"{what}: malformed docker answer: line too long")
            if not await conn.fill():
                raise RuntimeOperationError(f"{what}: docker answer ended inside a chunk")


class _StaleConnection(Exception):
    """The engine closed the connection before answering (an idle keep-alive one, usually).
    Private: always turned into one of our errors before it leaves this module."""


def judge(
    what: str,
    answer: Answer,
    *,
    conflict: type[AgentError],
    ok: tuple[int, ...] = (200, 201, 204),
) -> Any:
    """The JSON of a successful answer (None for an empty body), else our error for its
    status: 404 NotFoundError, 409 ``conflict``, anything else RuntimeOperationError."""
    if answer.status in ok:
        if not answer.body:
            return None
        return decode_json(what, answer.body)
    message = error_message(answer.body)
    if answer.status == 404:
        raise NotFoundError(f"{what}: not found")
    if answer.status == 409:
        raise conflict(f"{what}: {message}")
    raise RuntimeOperationError(f"{what}: docker answered {answer.status}: {message}")


def decode_json(what: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RuntimeOperationError(f"{what}: malformed docker answer: {exc}") from None


def error_message(body: bytes) -> str:
    """Docker's ``{"message": ...}``, else the body's text; bounded and on one line."""
    text = body.decode("utf-8", "replace")
    with contextlib.suppress(ValueError, RecursionError):
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            text = data["message"]
    text = " ".join(text.split())
    return text[:MAX_ERROR_MESSAGE_CHARS] or "(no message)"
