"""The lean Engine client (agent/node/runtime/engine.py) against a scripted Unix-socket server:
framing (Content-Length, chunked, to EOF), keep-alive reuse and a stale idle connection, the
upgrade hand-over with bytes past the head, status translation, bounds, and a fuzz in which
nothing but our own errors may escape whatever the "engine" answers."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.errors import (
    AgentError,
    ContainerConflictError,
    NotFoundError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.runtime.engine import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    EngineClient,
    judge,
    parse_head,
    unix_socket_path,
)

FUZZ_CASES = 400
FUZZ_SEED = 20261203

Answerer = Callable[[bytes], bytes | None]  # request head+body -> raw answer (None: say nothing)


class ScriptedEngine:
    """Answers each request on a connection with ``answer(request)``; closes after it when
    ``close_after`` says so. Counts connections and requests."""

    def __init__(self, path: Path, answer: Answerer, *, close_after: bool = False) -> None:
        self.path = path
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ScriptedEngine:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                raw = self.answer(request)
                if raw is None:
                    await asyncio.Event().wait()  # never answers
                writer.write(raw or b"")
                await writer.drain()
                if self.close_after:
                    return
        finally:
            self._handlers.discard(task)
            writer.close()


def ok_json(body: bytes, *, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body
    )


@contextlib.asynccontextmanager
async def engine(
    tmp_path: Path, answer: Answerer, *, close_after: bool = False, timeout_s: float = 5.0
) -> AsyncIterator[tuple[ScriptedEngine, EngineClient]]:
    path = tmp_path / "docker.sock"
    async with ScriptedEngine(path, answer, close_after=close_after) as server:
        client = EngineClient(str(path), timeout_s=timeout_s)
        try:
            yield server, client
        finally:
            await client.close()


def test_unix_socket_path() -> None:
    assert unix_socket_path(None, None) == "/var/run/docker.sock"
    assert unix_socket_path("unix:///run/d.sock", "tcp://x:1") == "/run/d.sock"
    assert unix_socket_path(None, "unix:///env.sock") == "/env.sock"
    assert unix_socket_path("tcp://127.0.0.1:2375", None) is None
    assert unix_socket_path("ssh://host", None) is None
    assert unix_socket_path("unix://relative.sock", None) is None


async def test_content_length_and_keep_alive_reuse(tmp_path: Path) -> None:
    async with engine(tmp_path, lambda _: ok_json(b'{"Id":"x"}')) as (server, client):
        for _ in range(3):
            answer = await client.call("create", "POST", "/containers/c/exec", {"Cmd": ["true"]})
            assert (answer.status, answer.body) == (200, b'{"Id":"x"}')
        assert server.connections == 1  # one keep-alive connection for the three calls
        assert server.requests[0].startswith(b"POST /containers/c/exec HTTP/1.1\r\n")
        assert server.requests[0].endswith(b'{"Cmd": ["true"]}')


async def test_chunked_body_with_trailers(tmp_path: Path) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"a"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    async with engine(tmp_path, lambda _: raw) as (server, client):
        answer = await client.call("inspect", "GET", "/exec/e/json")
        assert answer.body == b'{"a":1}'
        assert judge("inspect", answer, conflict=RuntimeOperationError) == {"a": 1}
        await client.call("inspect", "GET", "/exec/e/json")
        assert server.connections == 1


async def test_a_body_without_length_is_read_to_eof_and_not_reused(tmp_path: Path) -> None:
    raw = b"HTTP/1.1 200 OK\r\n\r\n{}"
    async with engine(tmp_path, lambda _: raw, close_after=True) as (server, client):
        assert (await client.call("x", "GET", "/a")).body == b"{}"
        assert (await client.call("x", "GET", "/a")).body == b"{}"
        assert server.connections == 2


async def test_an_idle_connection_the_engine_closed_is_replaced(tmp_path: Path) -> None:
    # Answers framed for keep-alive, but the engine hangs up after each: the second call
    # finds the idle connection dead and goes again on a fresh one, without an error.
    async with engine(tmp_path, lambda _: ok_json(b"{}"), close_after=True) as (server, client):
        await client.call("x", "GET", "/a")
        await client.call("x", "GET", "/a")
        assert server.connections == 2
        assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("status", "error", "text"),
    [
        ("404 Not Found", NotFoundError, "what: not found"),
        ("409 Conflict", ContainerConflictError, "what: container c is not running"),
        ("500 Internal Server Error", RuntimeOperationError, "what: docker answered 500: "),
    ],
)
async def test_statuses_become_our_errors(
    tmp_path: Path, status: str, error: type[AgentError], text: str
) -> None:
    body = b'{"message":"container c is not running"}'
    async with engine(tmp_path, lambda _: ok_json(body, status=status)) as (_, client):
        answer = await client.call("what", "POST", "/x", {})
        with pytest.raises(error) as caught:
            judge("what", answer, conflict=ContainerConflictError)
        assert str(caught.value).startswith(text)


async def test_upgrade_hands_over_the_socket_with_bytes_past_the_head(tmp_path: Path) -> None:
    raw = b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nstream-start"
    async with engine(tmp_path, lambda _: raw) as (server, client):
        status, body, sock, rest = await client.upgrade("start", "/exec/e/start", {"Tty": False})
        try:
            assert (status, body, rest) == (101, b"", b"stream-start")
            assert b"Upgrade: tcp" in server.requests[0]
            assert sock.type == socket.SOCK_STREAM
        finally:
            sock.close()


async def test_upgrade_refused_returns_the_error_body(tmp_path: Path) -> None:
    async with engine(tmp_path, lambda _: ok_json(b'{"message":"gone"}', status="404 NF")) as (
        _,
        client,
    ):
        status, body, sock, rest = await client.upgrade("start", "/exec/e/start", {})
        assert (status, body, rest) == (404, b'{"message":"gone"}', b"")
        assert sock.fileno() == -1  # closed: nothing to hand over


async def test_no_engine_is_unavailable(tmp_path: Path) -> None:
    client = EngineClient(str(tmp_path / "absent.sock"), timeout_s=5.0)
    with pytest.raises(RuntimeUnavailableError, match="docker engine unreachable at unix://"):
        await client.call("ping", "GET", "/_ping")
    with pytest.raises(RuntimeUnavailableError):
        await client.upgrade("start", "/exec/e/start", {})


async def test_an_engine_that_never_answers_is_unavailable(tmp_path: Path) -> None:
    async with engine(tmp_path, lambda _: None, timeout_s=0.2) as (_, client):
        with pytest.raises(RuntimeUnavailableError, match=r"did not answer within 0\.2s"):
            await client.call("inspect", "GET", "/exec/e/json")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"SPDY/3 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 700 Odd\r\n\r\n", "status 700"),
        (b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "ended inside its body"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES, "head over"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: " + str(MAX_BODY_BYTES + 1).encode() + b"\r\n\r\n",
            "over",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Le", "ended inside its head"),
    ],
)
async def test_malformed_answers_name_the_call(tmp_path: Path, raw: bytes, match: str) -> None:
    async with engine(tmp_path, lambda _: raw, close_after=True) as (_, client):
        with pytest.raises(RuntimeOperationError, match=match) as caught:
            await client.call("inspect exec e", "GET", "/exec/e/json")
        assert str(caught.value).startswith("inspect exec e: ")


def test_parse_head_reads_status_and_lowercases_names() -> None:
    status, headers = parse_head(b"HTTP/1.1 201 Created\r\nContent-Type: a/b\r\nX-Y:  z ")
    assert status == 201
    assert headers == {"content-type": "a/b", "x-y": "z"}


def _mutations(rng: random.Random) -> bytes:
    seeds = [
        ok_json(b'{"Id":"abc"}'),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 101 UPGRADED\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ]
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            data[pos:pos] = rng.choice([b"\r\n", b":", b" ", b"0", b"ffffffff", b"\r\n\r\n"])
        else:
            data = data[:pos]
    return bytes(data)


async def test_fuzz_nothing_but_our_errors_escape(tmp_path: Path) -> None:
    rng = random.Random(FUZZ_SEED)
    answers = [_mutations(rng) for _ in range(FUZZ_CASES)]
    outcomes: dict[str, int] = {}

    def next_answer(_: bytes) -> bytes:
        # A stale-connection retry may take one more answer than there are calls.
        return answers.pop() if answers else ok_json(b"{}")

    async with engine(tmp_path, next_answer, close_after=True) as (_, client):
        for _ in range(FUZZ_CASES):
            try:
                answer = await client.call("fuzz", "GET", "/exec/e/json")
                judge("fuzz", answer, conflict=RuntimeOperationError)
                outcome = "ok"
            except AgentError as exc:
                assert str(exc).startswith("fuzz: "), str(exc)
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert sum(outcomes.values()) == FUZZ_CASES
    assert outcomes.get("RuntimeOperationError", 0) > 0 and outcomes.get("ok", 0) > 0
