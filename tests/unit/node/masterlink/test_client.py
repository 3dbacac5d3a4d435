"""The master link's HTTP edge: whatever the master answers, only our errors come out."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.aio.bridge import ThreadBridge
from agent.errors import (
    BadRequestError,
    ConflictError,
    IdentityRejectedError,
    MasterAnswerMalformedError,
    MasterUnavailableError,
    NotFoundError,
)
from agent.node.masterlink import client
from agent.node.masterlink.client import MasterSession

DEEP = b"[" * 100_000 + b"]" * 100_000


async def _answer(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    bodies = {
        "ok": (200, b'{"a": 1}'),
        "empty": (200, b""),
        "garbled": (200, b"\xff{not json"),
        "deep": (200, DEEP),
        "deep-large": (200, b"[" * (client.PARSE_ON_LOOP_MAX_BYTES + 1)),
        "huge": (200, b'"' + b"x" * 2048 + b'"'),
        "large": (200, b'["' + b"x" * (4 << 20) + b'"]'),
        "404": (404, b'{"error": {"code": 404, "message": "no such pod"}}'),
        "409": (409, b"plain text conflict"),
        "422": (422, DEEP),
        "401": (401, b"{}"),
        "503": (503, b"busy"),
    }
    status, body = bodies[kind]
    return web.Response(status=status, body=body)


@pytest.fixture
async def session() -> AsyncIterator[MasterSession]:
    app = web.Application()
    app.router.add_route("*", "/{kind}", _answer)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    bridge = ThreadBridge(1, name="client-test")
    async with aiohttp.ClientSession() as http:
        yield MasterSession(str(server.make_url("")).rstrip("/"), http, bridge)
    bridge.close()
    await server.close()


async def test_a_json_answer(session: MasterSession) -> None:
    assert await session.call("GET", "/ok") == {"a": 1}
    assert await session.call("DELETE", "/empty") is None


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("garbled", MasterAnswerMalformedError),
        ("deep", MasterAnswerMalformedError),
        ("404", NotFoundError),
        ("409", ConflictError),
        ("422", BadRequestError),
        ("401", IdentityRejectedError),
        ("503", MasterUnavailableError),
    ],
)
async def test_every_bad_answer_is_one_of_ours(
    session: MasterSession, kind: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        await session.call("GET", f"/{kind}")
    assert f"GET /{kind}" in str(info.value)
    assert len(str(info.value)) < 400  # an excerpt of a hostile body, never all of it


async def test_a_large_answer_is_read_whole(session: MasterSession) -> None:
    # More than one read's worth: the answer must not be cut at what happened to be buffered.
    [text] = await session.call("GET", "/large")
    assert len(text) == 4 << 20


async def test_an_answer_over_the_bound_is_refused(
    session: MasterSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "MAX_ANSWER_BYTES", 1024)
    with pytest.raises(MasterAnswerMalformedError, match="over 1024 bytes"):
        await session.call("GET", "/huge")


async def test_an_unreachable_master(session: MasterSession) -> None:
    gone = MasterSession("http://127.0.0.1:9", session.http, session._bridge)
    with pytest.raises(MasterUnavailableError):
        await gone.call("GET", "/ok")


async def test_an_exchange_keeps_the_statuses_the_caller_tells_apart(
    session: MasterSession,
) -> None:
    assert await session.exchange("GET", "/404", keep=(404,)) == (
        404,
        {"error": {"code": 404, "message": "no such pod"}},
    )
    assert await session.exchange("GET", "/422", keep=(422,)) == (422, None)  # not JSON: None
    with pytest.raises(MasterAnswerMalformedError):
        await session.exchange("GET", "/deep", keep=(200,))  # a 2xx must be JSON
    with pytest.raises(NotFoundError):
        await session.exchange("GET", "/404", keep=(409,))


async def test_a_raw_request_is_bounded_too(session: MasterSession) -> None:
    answer = await session.request("GET", "/409")
    assert (answer.status, answer.raw) == (409, b"plain text conflict")
    with pytest.raises(MasterAnswerMalformedError, match="over 100 bytes"):
        await session.request("GET", "/huge", limit_bytes=100)


async def test_a_large_answer_is_parsed_off_the_loop(
    session: MasterSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed_in: list[str] = []
    decode = client.decode_answer

    def spy(raw: bytes, what: str) -> object:
        parsed_in.append(threading.current_thread().name)
        return decode(raw, what)

    monkeypatch.setattr(client, "decode_answer", spy)
    loop_thread = threading.current_thread().name
    assert await session.call("GET", "/ok") == {"a": 1}
    [text] = await session.call("GET", "/large")
    assert len(text) == 4 << 20
    with pytest.raises(MasterAnswerMalformedError):  # its errors come back the same
        await session.call("GET", "/deep-large")
    assert parsed_in[0] == loop_thread  # a small answer is not worth a thread hop
    assert parsed_in[1].startswith("client-test")
    assert parsed_in[2].startswith("client-test")
