"""The node's streaming API (``agent.node.streaming.api``) through the real node API server
(``server.py``: TLS on loopback, ALPN, the edge) on the FakeRuntime and the real pod manager:
exec, logs and port-forward over HTTP/2 with our own client (``agent.aio.h2conn``), the
HTTP/1.1 side of the server, certificate reload, and stop() with streams open."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from agent.aio.h2conn import H2Connection, H2Stream, connect
from agent.aio.tls import client_context
from agent.errors import ConnectionClosedError, RuntimeOperationError, StreamingError
from agent.node.runtime.fake import FakeExecSession, Script
from agent.node.streaming import server
from agent.node.streaming.api import EXEC_CONTENT_TYPE
from agent.pki.names import MASTERS_GROUP, VIEWERS_GROUP
from agent.proto import execframe
from agent.proto.execframe import Channel
from tests.unit.node.asyncwait import until
from tests.unit.node.pods.managerrig import IMAGE, static_pod
from tests.unit.node.pods.rig import NODE
from tests.unit.node.streaming.rig import (
    DONE,
    DUO,
    HOST,
    WEB,
    Pki,
    StreamingRig,
    path,
    reply_of,
    streaming_rig,
)

pytestmark = pytest.mark.usefixtures("blockbuster")

DEADLINE_S = 10.0
ECHO = ["cat"]
SH = ["sh", "-c", "work"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.make(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def rig(tmp_path: Path, pki: Pki) -> AsyncIterator[StreamingRig]:
    async with streaming_rig(tmp_path / "state", pki) as made:
        made.runtime.script_command(ECHO, Script(echo_stdin=True, exit_code=0))
        made.runtime.script_command(SH, Script(stdout=b"out\n", stderr=b"err\n", exit_code=3))
        yield made


def audit(caplog: pytest.LogCaptureFixture, msg: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage() == msg]  # type: ignore[attr-defined]


def stdin(data: bytes) -> bytes:
    return execframe.encode(Channel.STDIN, data)


async def read_until(stream: H2Stream, wanted: bytes) -> bytes:
    """Body bytes until they contain ``wanted``."""
    got = b""
    async with asyncio.timeout(DEADLINE_S):
        while wanted not in got:
            chunk = await stream.read()
            assert chunk, f"stream ended before {wanted!r}; got {got!r}"
            got += chunk
    return got


async def frames_until(stream: H2Stream, wanted: bytes) -> bytes:
    """Exec output (every channel's payload) until it contains ``wanted``."""
    decoder = execframe.FrameDecoder()
    got = b""
    async with asyncio.timeout(DEADLINE_S):
        while wanted not in got:
            chunk = await stream.read()
            assert chunk, f"stream ended before {wanted!r}; got {got!r}"
            got += b"".join(f.payload for f in decoder.feed(chunk))
    return got


# -- exec -------------------------------------------------------------------------------------


async def test_exec_separates_stdout_and_stderr_and_ends_with_the_exit_code(
    rig: StreamingRig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        reply = await rig.call(path("web", "exec", command=SH))
    assert reply.status == 200 and reply.headers["content-type"] == EXEC_CONTENT_TYPE
    assert reply.output(Channel.STDOUT) == b"out\n"
    assert reply.output(Channel.STDERR) == b"err\n"
    assert reply.trailers == {"exit-code": "3"}
    (entry,) = audit(caplog, "exec session")
    assert entry["who"] == "admin" and entry["pod"] == "default/web"
    assert (entry["container"], entry["command"], entry["exit_code"]) == ("main", "sh -c work", 3)
    assert entry["error"] == ""


async def test_exec_passes_stdin_and_its_end_is_the_processs_eof(rig: StreamingRig) -> None:
    stream = await rig.open(path("web", "exec", command=ECHO, stdin=1), end=False)
    await stream.write(stdin(b"hello\n"))
    assert await frames_until(stream, b"hello\n") == b"hello\n"
    await stream.write(stdin(b"again\n"))
    await frames_until(stream, b"again\n")
    await stream.end()  # stdin EOF: cat exits
    reply = await reply_of(stream)
    assert reply.status == 200 and reply.trailers == {"exit-code": "0"}
    (session,) = rig.runtime.sessions_of(rig.app(WEB))
    assert bytes(session.command_stdin) == b"hello\nagain\n"


async def test_a_client_that_does_not_read_pauses_the_output_then_all_arrives(
    rig: StreamingRig,
) -> None:
    # The output goes onto the stream in callbacks (ExecOutput): past the client's window
    # and the node's send buffer the process's output is paused, not buffered without end.
    stream = await rig.open(path("web", "exec", command=ECHO, stdin=1), end=False)
    chunk = bytes(range(256)) * 1024  # 256 KiB
    total = 0
    await until(lambda: rig.runtime.sessions_of(rig.app(WEB)), "the exec session")
    (session,) = rig.runtime.sessions_of(rig.app(WEB))
    async with asyncio.timeout(DEADLINE_S * 3):
        while not session.output_paused:
            await stream.write(stdin(chunk))
            total += len(chunk)
            await asyncio.sleep(0)  # let the node take it (a yield, not a wait for time)
    await stream.end()
    decoder = execframe.FrameDecoder()
    got = 0
    async with asyncio.timeout(DEADLINE_S * 3):
        while data := await stream.read():
            got += sum(len(f.payload) for f in decoder.feed(data))
    assert got == total and total > (4 << 20)
    assert stream.trailers is not None and dict(stream.trailers) == {"exit-code": "0"}


async def test_exec_with_a_tty_merges_output_and_passes_resizes(rig: StreamingRig) -> None:
    rig.runtime.script_command(["top"], Script(stdout=b"o", stderr=b"e", echo_stdin=True))
    stream = await rig.open(path("web", "exec", command="top", stdin=1, tty="true"), end=False)
    await stream.write(execframe.encode_resize(120, 40) + stdin(b"q"))
    await stream.end()
    reply = await reply_of(stream)
    assert {c for c, _ in reply.frames()} == {Channel.STDOUT}  # a TTY has one output
    assert reply.output(Channel.STDOUT) == b"oeq"
    (session,) = rig.runtime.sessions_of(rig.app(WEB))
    assert session.resizes == [(120, 40)]


async def test_exec_without_stdin_ignores_input_but_not_resizes(rig: StreamingRig) -> None:
    stream = await rig.open(path("web", "exec", command=SH), end=False)
    await stream.write(stdin(b"ignored") + execframe.encode_resize(80, 24))
    await stream.end()
    reply = await reply_of(stream)
    assert reply.trailers == {"exit-code": "3"}
    (session,) = rig.runtime.sessions_of(rig.app(WEB))
    assert session.command_stdin == b""


async def test_exec_of_a_missing_command_runs_and_exits_127(rig: StreamingRig) -> None:
    reply = await rig.call(path("web", "exec", command="nope"))
    assert reply.status == 200 and reply.trailers == {"exit-code": "127"}
    assert b"executable file not found" in reply.output(Channel.STDERR)


async def test_exec_whose_exit_code_the_runtime_cannot_tell(
    rig: StreamingRig, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unknown(self: FakeExecSession, wait_s: float) -> int | None:
        return None

    monkeypatch.setattr(FakeExecSession, "exit_code", unknown)
    reply = await rig.call(path("web", "exec", command=SH))
    assert reply.trailers == {"exit-code": "-1", "error": "exit code unknown"}


@pytest.mark.parametrize(
    ("target", "status", "message"),
    [
        (path("ghost", "exec", command="true"), 404, "pod default/ghost not found"),
        (path("web", "exec"), 400, "exec needs at least one command="),
        (path("web", "exec", command=""), 400, "exec needs at least one command="),
        (path("web", "exec", command="x", stdin="yes"), 400, "stdin='yes'"),
        (path("web", "exec", command="x", container="nope"), 404, "container 'nope' not found"),
        (path("duo", "exec", command="x"), 400, "several containers"),
        (path("done", "exec", command="x"), 409, "is not running"),
        (path("duo", "exec", command="x", container="b", tty=2), 400, "tty='2'"),
    ],
)
async def test_exec_refusals_are_json_errors_before_any_output(
    rig: StreamingRig, target: str, status: int, message: str
) -> None:
    reply = await rig.call(target)
    assert reply.status == status, reply.body
    assert message in reply.error["message"]
    assert rig.runtime.calls["exec_start"] == 0


async def test_a_malformed_exec_frame_ends_the_session(
    rig: StreamingRig, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that breaks the exec framing does not leave the process waiting for stdin
    that will never come: the session ends (stream reset) and is audited with the error."""
    stream = await rig.open(path("web", "exec", command=ECHO, stdin=1), end=False)
    await stream.write(stdin(b"hi"))
    await frames_until(stream, b"hi")
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        await stream.write(execframe.encode(Channel.STDOUT, b"not a client's channel"))
        with pytest.raises(StreamingError):
            async with asyncio.timeout(DEADLINE_S):
                while await stream.read():
                    pass
        await until(lambda: audit(caplog, "exec session"), "the session audited")
    (entry,) = audit(caplog, "exec session")
    assert "unexpected channel" in entry["error"]


async def test_a_client_that_resets_its_exec_ends_the_session(
    rig: StreamingRig, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await rig.open(path("web", "exec", command=ECHO, stdin=1), end=False)
    await stream.write(stdin(b"hi"))
    await frames_until(stream, b"hi")
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        stream.reset()
        await until(lambda: audit(caplog, "exec session"), "the session audited")
    (entry,) = audit(caplog, "exec session")
    assert entry["exit_code"] is None and entry["error"]


async def test_a_viewer_may_not_exec_and_another_node_may_not_either(rig: StreamingRig) -> None:
    for who, status in ((rig.pki.viewer, 403), (rig.pki.other_node, 403)):
        conn = await rig.connect(who)
        reply = await reply_of(await rig.open(path("web", "exec", command=SH), conn=conn))
        assert reply.status == status
    assert rig.runtime.calls["exec_start"] == 0


async def test_through_the_masters_proxy_the_user_it_names_is_authorized_and_audited(
    rig: StreamingRig, caplog: pytest.LogCaptureFixture
) -> None:
    conn = await rig.connect(rig.pki.proxy)
    as_viewer = {"node-agent-user": "alice", "node-agent-groups": VIEWERS_GROUP}
    as_admin = {"node-agent-user": "root", "node-agent-groups": MASTERS_GROUP}
    exec_path = path("web", "exec", command=SH)
    refused = await reply_of(await rig.open(exec_path, conn=conn, headers=as_viewer))
    assert refused.status == 403
    logs = await rig.open(path("web", "logs"), method="GET", conn=conn, headers=as_viewer)
    assert (await reply_of(logs)).status == 200
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        allowed = await reply_of(await rig.open(exec_path, conn=conn, headers=as_admin))
    assert allowed.trailers == {"exit-code": "3"}
    (entry,) = audit(caplog, "exec session")
    assert entry["who"] == "root (via system:node-proxy)"


async def test_a_static_pod_answers_to_its_mirror_pods_name(
    rig: StreamingRig, caplog: pytest.LogCaptureFixture
) -> None:
    """``nodectl get pods`` shows a static pod as its mirror ``<name>-<node>``, and the master's
    proxy relays that name unchanged: the node finds the static pod under it, and only a static
    pod of its own node (a pod of the exact name comes first)."""
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        reply = await rig.call(path(f"web-{NODE}", "exec", command=SH))
    assert reply.status == 200 and reply.trailers == {"exit-code": "3"}
    (entry,) = audit(caplog, "exec session")
    assert entry["pod"] == "default/web"
    logs = await rig.call(path(f"done-{NODE}", "logs"), method="GET")
    assert logs.status == 200 and logs.body == b"finished\n"
    for absent in ("web-n2", f"web-{NODE}-{NODE}", f"api-{NODE}"):
        missing = await rig.call(path(absent, "exec", command=SH))
        assert missing.status == 404, absent
        assert f"pod default/{absent} not found on this node" in missing.error["message"]
    # A pod from the master holds the mirror name of a static pod: that name is the pod's.
    taken = static_pod(f"web-{NODE}", {"name": "main", "image": IMAGE, "command": ["finish"]})
    api_pod = static_pod("api", {"name": "main", "image": IMAGE, "command": ["finish"]})
    await rig.pods.apply(replace(taken, source="api"), replace(api_pod, source="api"), prefix="api")
    taken_logs = await rig.call(path(f"web-{NODE}", "logs"), method="GET")
    assert taken_logs.status == 200 and taken_logs.body == b"finished\n"
    assert (await rig.call(path(f"api-{NODE}", "logs"), method="GET")).status == 404


# -- logs -------------------------------------------------------------------------------------


async def test_logs_whole_tail_timestamps_and_since(rig: StreamingRig) -> None:
    cid = rig.app(WEB)
    rig.runtime.write_log(cid, b"one\ntwo\n")
    rig.pods.clock.advance(100.0)
    rig.runtime.write_log(cid, b"three\n")

    async def logs(**query: Any) -> bytes:
        reply = await rig.call(path("web", "logs", **query), method="GET")
        assert reply.status == 200, reply.body
        assert reply.headers["content-type"].startswith("text/plain")
        return reply.body

    assert await logs() == b"one\ntwo\nthree\n"
    assert await logs(tailLines=2) == b"two\nthree\n"
    assert await logs(tailLines=0) == b""
    assert await logs(sinceSeconds=50) == b"three\n"
    from datetime import UTC, datetime

    def rfc3339(seconds: float) -> str:
        return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")

    now = rig.pods.clock.time()
    assert await logs(sinceTime=rfc3339(now - 50)) == b"three\n"
    assert await logs(sinceTime=rfc3339(now - 500)) == b"one\ntwo\nthree\n"
    assert await logs(sinceTime=rfc3339(now + 50)) == b""  # a time to come: nothing yet
    stamped = (await logs(timestamps=1, tailLines=1)).decode()
    assert stamped.endswith("Z three\n") and stamped.startswith("20")
    rig.runtime.write_log(rig.app(DUO, "b"), b"from b\n")
    duo = await rig.call(path("duo", "logs", container="b"), method="GET")
    assert (duo.status, duo.body) == (200, b"from b\n")


async def test_an_init_containers_logs_by_name_and_the_app_by_default(rig: StreamingRig) -> None:
    """As kubectl: ``logs -c <init>`` reads an init container (finished or not); without
    ``container=`` the pod's one app container is meant, init containers do not count."""
    rig.pods.runtime.script_command(["setup"], Script(stdout=b"set up\n", exit_code=0))
    inited = static_pod(
        "inited",
        {"name": "main", "image": IMAGE, "command": ["serve"]},
        initContainers=[{"name": "setup", "image": IMAGE, "command": ["setup"]}],
    )
    await rig.pods.apply(WEB, DUO, DONE, inited)  # the file source's whole set, plus one
    # No runtime watcher in this rig: the init container's exit wakes the worker by hand.
    await until(
        lambda: any(
            r.container_name == "setup" and not r.running for r in rig.runtime.now(inited.uid)
        ),
        "the init container to finish",
    )
    rig.pods.pods.wake(inited.uid)
    await until(
        lambda: any(r.container_name == "main" and r.running for r in rig.runtime.now(inited.uid)),
        "the app container to run",
    )
    setup = await rig.call(path("inited", "logs", container="setup"), method="GET")
    assert (setup.status, setup.body) == (200, b"set up\n")
    rig.runtime.write_log(rig.app(inited), b"app\n")
    app = await rig.call(path("inited", "logs"), method="GET")
    assert (app.status, app.body) == (200, b"app\n")
    ghost = await rig.call(path("inited", "logs", container="ghost"), method="GET")
    assert ghost.status == 404
    assert "init containers: ['setup']" in ghost.error["message"]
    # exec into it: it has finished, so it is not running.
    done = await rig.call(path("inited", "exec", command="true", container="setup"))
    assert done.status == 409 and "is not running" in done.error["message"]


async def test_logs_follow_until_the_container_ends(rig: StreamingRig) -> None:
    cid = rig.app(WEB)
    rig.runtime.write_log(cid, b"before\n")
    stream = await rig.open(path("web", "logs", follow="true"), method="GET")
    assert await read_until(stream, b"before\n") == b"before\n"
    rig.runtime.write_log(cid, b"during\n")
    assert await read_until(stream, b"during\n") == b"during\n"
    rig.runtime.exit_container(cid, 0)
    async with asyncio.timeout(DEADLINE_S):
        assert await stream.read() == b""  # the follow ended with the container


async def test_logs_of_the_previous_container(rig: StreamingRig) -> None:
    missing = await rig.call(path("web", "logs", previous=1), method="GET")
    assert missing.status == 404
    assert "no previous terminated container 'main'" in missing.error["message"]
    first = rig.app(WEB)
    rig.runtime.write_log(first, b"first life\n")
    rig.runtime.exit_container(first, 1)
    worker = rig.pods.pods.workers[WEB.uid]
    worker.wake()
    await until(lambda: "main" in worker.book.restarts, "the exit seen")
    rig.pods.clock.advance(10.0)  # the back-off
    await until(lambda: rig.app(WEB) != first, "restarted")
    rig.runtime.write_log(rig.app(WEB), b"second life\n")
    previous = await rig.call(path("web", "logs", previous=1, follow=1), method="GET")
    assert previous.body == b"first life\n"  # previous never follows
    current = await rig.call(path("web", "logs"), method="GET")
    assert current.body == b"second life\n"


async def test_logs_of_a_container_that_ended_and_bad_parameters(rig: StreamingRig) -> None:
    done = await rig.call(path("done", "logs"), method="GET")
    assert (done.status, done.body) == (200, b"finished\n")
    for query, message in (
        ({"tailLines": "x"}, "is not an integer"),
        ({"tailLines": -1}, "outside 0.."),
        ({"sinceSeconds": 0}, "outside 1.."),
        ({"sinceTime": "yesterday"}, "not an RFC 3339 time"),
        ({"sinceTime": "2026-12-03T10:00:00"}, "not an RFC 3339 time"),  # no zone
        ({"sinceTime": "2026-12-03T10:00:00Z", "sinceSeconds": 5}, "at most one of"),
        ({"follow": "maybe"}, "follow='maybe'"),
    ):
        reply = await rig.call(path("web", "logs", **query), method="GET")
        assert reply.status == 400 and message in reply.error["message"], query


async def test_a_viewer_reads_logs(rig: StreamingRig) -> None:
    rig.runtime.write_log(rig.app(WEB), b"visible\n")
    conn = await rig.connect(rig.pki.viewer)
    reply = await reply_of(await rig.open(path("web", "logs"), method="GET", conn=conn))
    assert (reply.status, reply.body) == (200, b"visible\n")


# -- port-forward -----------------------------------------------------------------------------


class EchoServer:
    """A loopback TCP server that echoes, and on EOF writes ``bye`` and closes."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.peers_closed = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"bye")
        await writer.drain()
        writer.close()
        self.peers_closed += 1

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoServer, int]]:
    server = EchoServer()
    port = await server.start()
    yield server, port
    await server.stop()


async def free_port() -> int:
    """A loopback port nothing listens on."""
    server = await asyncio.start_server(lambda r, w: None, HOST, 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def test_port_forward_both_ways_and_half_close(
    rig: StreamingRig, echo: tuple[EchoServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    server, port = echo
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        stream = await rig.open(path("web", "portforward", port=port), body=b"ping", end=False)
        assert await stream.response() and stream.status == 200
        assert await read_until(stream, b"ping") == b"ping"
        big = bytes(range(256)) * 4096  # 1 MiB, more than one read
        await stream.write(big)
        got = await read_until(stream, big[-256:])
        await stream.end()  # half-close towards the pod: it answers, then closes
        rest = await stream.read_all(4 << 20)
        assert got + rest == big + b"bye"
        await until(lambda: audit(caplog, "port-forward session"), "audited")
    assert rig.connector.pids == [rig.runtime.process_pid]
    (entry,) = audit(caplog, "port-forward session")
    assert (entry["port"], entry["bytes_in"], entry["bytes_out"]) == (
        port,
        4 + len(big),
        4 + len(big) + 3,
    )
    assert server.peers_closed == 1
    (sock,) = rig.connector.sockets
    assert sock.nodelay_at_close == 1  # closed once the session ended; small writes not delayed


async def test_a_refused_port_fails_its_stream_only(
    rig: StreamingRig, echo: tuple[EchoServer, int]
) -> None:
    _, port = echo
    conn = await rig.connect()
    working = await rig.open(path("web", "portforward", port=port), end=False, conn=conn)
    await working.write(b"a")
    assert await read_until(working, b"a") == b"a"
    refused = await reply_of(
        await rig.open(path("web", "portforward", port=await free_port()), conn=conn)
    )
    assert refused.status == 502
    assert "cannot connect to 127.0.0.1:" in refused.error["message"]
    await working.write(b"b")  # the other stream on the same connection goes on
    assert await read_until(working, b"b") == b"b"
    await working.end()
    assert await working.read_all(1024) == b"bye"


async def test_many_concurrent_port_forward_streams(
    rig: StreamingRig, echo: tuple[EchoServer, int]
) -> None:
    server, port = echo
    conn = await rig.connect()

    async def one(i: int) -> bytes:
        payload = f"stream {i} ".encode() * 100
        stream = await rig.open(path("web", "portforward", port=port), body=payload, conn=conn)
        return await stream.read_all(1 << 20)

    results = await asyncio.gather(*(one(i) for i in range(64)))
    assert results == [f"stream {i} ".encode() * 100 + b"bye" for i in range(64)]
    await until(lambda: server.peers_closed == 64, "every connection closed")


async def test_a_client_that_resets_its_port_forward_closes_the_connection(
    rig: StreamingRig, echo: tuple[EchoServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    server, port = echo
    stream = await rig.open(path("web", "portforward", port=port), body=b"a", end=False)
    assert await read_until(stream, b"a") == b"a"
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        stream.reset()
        await until(lambda: audit(caplog, "port-forward session"), "audited")
    (entry,) = audit(caplog, "port-forward session")
    assert "reset" in entry["error"]
    await until(lambda: server.peers_closed == 1, "the pod side closed")
    (sock,) = rig.connector.sockets
    assert sock.nodelay_at_close == 1  # the reset closed the pod side's socket


async def test_port_forward_refusals(rig: StreamingRig) -> None:
    for query, status, message in (
        ({}, 400, "port-forward needs port="),
        ({"port": 0}, 400, "outside 1..65535"),
        ({"port": "http"}, 400, "is not an integer"),
    ):
        reply = await rig.call(path("web", "portforward", **query))
        assert reply.status == status and message in reply.error["message"], query
    sandbox = rig.runtime.one(DUO.uid, "POD")
    await rig.runtime.stop_container(sandbox.id, 0)
    reply = await rig.call(path("duo", "portforward", port=80))
    assert reply.status == 409 and "has no running sandbox" in reply.error["message"]
    assert rig.connector.pids == []


# -- the server: HTTP/1.1, certificates, stop ---------------------------------------------------


async def test_http1_serves_the_json_routes_and_refuses_the_stream_routes(
    rig: StreamingRig,
) -> None:
    tls = await rig.tls(rig.pki.admin, alpn=("http/1.1",))
    url = f"https://{HOST}:{rig.port}"
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(ssl=tls)) as http:
        async with http.get("/healthz") as resp:
            assert (resp.status, await resp.text()) == (200, "ok")
        async with http.get("/v1/pods") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["kind"] == "PodList"
        names = {i["metadata"]["name"] for i in body["items"]}
        assert names == {"web", "duo", "done"}
        async with http.post(path("web", "exec", command="ls")) as resp:
            assert resp.status == 426 and resp.headers["upgrade"] == "HTTP/2.0"
            assert "streams over HTTP/2" in json.loads(await resp.text())["error"]["message"]


async def test_the_json_routes_over_http2_too(rig: StreamingRig) -> None:
    reply = await rig.call("/v1/pods", method="GET")
    assert reply.status == 200
    assert {i["metadata"]["name"] for i in json.loads(reply.body)["items"]} == {
        "web",
        "duo",
        "done",
    }


async def test_a_reloaded_certificate_serves_new_connections(
    rig: StreamingRig, tmp_path: Path
) -> None:
    def served_der(conn: H2Connection) -> bytes:
        assert conn.transport is not None
        ssl_object = conn.transport.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return der

    before = served_der(await rig.connect())
    rotated = await rig.pods.bridge.run(Pki.make, tmp_path / "rotated")
    await rig.pods.bridge.run(rig.api.reload_cert, rotated.node.cert, rotated.node.key)
    # The rotated certificate comes from another CA here, so that a client trusting only the
    # old CA can tell which one it was served.
    old_ca_only = await rig.tls(rig.pki.admin)
    with pytest.raises(ConnectionClosedError):
        await connect(HOST, rig.port, old_ca_only)

    def both_cas() -> ssl.SSLContext:
        return client_context(
            rig.pki.ca_pem + rotated.ca_pem,
            cert_file=rig.pki.admin.cert,
            key_file=rig.pki.admin.key,
            alpn=("h2",),
        )

    conn = await connect(HOST, rig.port, await rig.pods.bridge.run(both_cas))
    try:
        after = served_der(conn)
    finally:
        await conn.shutdown("test over", grace_s=0.5)
    pem = await rig.pods.bridge.run(rotated.node.cert.read_bytes)
    assert after != before
    assert after == x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def test_stop_sends_goaway_then_ends_a_session_that_outlives_the_grace(
    rig: StreamingRig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """(That a session may still finish within the grace is not tested: h2 refuses any frame
    on a connection once GOAWAY was sent or received, python-hyper/h2#1181; see the report.)"""
    monkeypatch.setattr(server, "H2_SHUTDOWN_GRACE_S", 0.2)
    conn = await rig.connect()
    stream = await rig.open(path("web", "exec", command=ECHO, stdin=1), end=False, conn=conn)
    await stream.write(stdin(b"x"))
    await frames_until(stream, b"x")
    with caplog.at_level(logging.INFO, logger="agent.node.streaming.api"):
        stopping = asyncio.get_running_loop().create_task(rig.api.stop())
        await until(lambda: conn.mux.closed, "GOAWAY received")
        assert not stopping.done()  # the grace runs
        with pytest.raises(StreamingError):
            async with asyncio.timeout(DEADLINE_S):
                while await stream.read():
                    pass
        await stopping
    assert not rig.api.running
    (entry,) = audit(caplog, "exec session")
    assert entry["exit_code"] is None
    (session,) = rig.runtime.sessions_of(rig.app(WEB))
    with pytest.raises(RuntimeOperationError, match="stdin is closed"):
        await session.write(b"late")  # the session was closed
