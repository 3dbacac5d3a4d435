"""agent.node.handlers: each handler action once, against loopback servers and the
FakeRuntime; time limits through a sleep the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from agent.node import handlers
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import FakeExecSession, FakeRuntime, Script
from agent.types import Container, ContainerPort
from tests.unit.node.asyncwait import until


class ManualSleep:
    """A sleep that ends only when the test says so (``release``)."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._gate = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._gate.wait()

    def release(self) -> None:
        self._gate.set()


async def never(_seconds: float) -> None:
    await asyncio.Event().wait()


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback HTTP server answering with the status in the path (``/status/503``)."""
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        requests.append(head)
        path = head.split(b" ", 2)[1].decode()
        code = int(path.rsplit("/", 1)[-1]) if path.startswith("/status/") else 200
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port, requests
    server.close()
    await server.wait_closed()


def test_bounded_text_is_one_bounded_line() -> None:
    assert handlers.bounded_text("a\nb\t c") == "a b c"
    assert handlers.bounded_text("red \x1b[31m\x00 \u2028 bell\x07") == (
        "red \\x1b[31m\\x00 bell\\x07"
    )
    assert handlers.bounded_text("café ✓") == "café ✓"
    long = handlers.bounded_text("x" * 1000, 10)
    assert len(long) == 10 and long.endswith("…")


def test_resolve_port_by_number_and_name() -> None:
    container = Container("c", "img", ports=(ContainerPort(8080, name="web"),))
    assert handlers.resolve_port(81, container) == 81
    assert handlers.resolve_port("web", container) == 8080
    assert handlers.resolve_port("db", container) is None
    assert handlers.resolve_port("web", None) is None


async def test_bounded_returns_the_result_or_times_out() -> None:
    async def answer() -> int:
        return 42

    assert await handlers.bounded(answer(), 5, never) == 42
    stuck = asyncio.Event()

    async def hang() -> int:
        await stuck.wait()
        return 0

    sleep = ManualSleep()
    task = asyncio.ensure_future(handlers.bounded(hang(), 3, sleep))
    await until(lambda: sleep.asked, "the time limit asked of the sleep")
    assert sleep.asked == [3]
    sleep.release()
    with pytest.raises(handlers.TimedOut):
        await task


async def test_tcp_socket_passes_on_a_listening_port_and_fails_on_a_closed_one() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert (await handlers.tcp_socket("127.0.0.1", port, 5, asyncio.sleep)).ok
    server.close()
    await server.wait_closed()
    result = await handlers.tcp_socket("127.0.0.1", port, 5, asyncio.sleep)
    assert not result.ok
    assert f"dial tcp 127.0.0.1:{port}" in result.message


async def test_tcp_socket_times_out_with_the_sleep_given() -> None:
    sleep = ManualSleep()
    sleep.release()  # the time limit is over at once: the connect never gets its answer
    # A non-routable address (TEST-NET-1) would hang; the bound ends the attempt either way.
    result = await handlers.tcp_socket("192.0.2.1", 9, 1, sleep)
    assert not result.ok
    assert "192.0.2.1:9" in result.message


async def test_http_get_passes_on_2xx_3xx_and_fails_otherwise(
    http_server: tuple[int, list[bytes]],
) -> None:
    port, requests = http_server
    for code, ok in ((200, True), (302, True), (399, True), (404, False), (503, False)):
        result = await handlers.http_get(
            "127.0.0.1", port, f"/status/{code}", timeout_s=5, sleep=asyncio.sleep
        )
        assert result.ok is ok, (code, result)
        if not ok:
            assert f"statuscode: {code}" in result.message
    await handlers.http_get(
        "127.0.0.1",
        port,
        "/h",
        headers=[("X-Probe", "yes"), ("Host", "svc.local")],
        timeout_s=5,
        sleep=asyncio.sleep,
    )
    last = requests[-1].decode()
    assert "X-Probe: yes\r\n" in last and "Host: svc.local\r\n" in last
    assert f"Host: 127.0.0.1:{port}" not in last


async def test_http_get_fails_on_a_refused_connection_and_a_malformed_answer() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOPE\r\n")
        await writer.drain()
        writer.close()

    bad = await asyncio.start_server(garbage, "127.0.0.1", 0)
    bad_port = bad.sockets[0].getsockname()[1]
    closed = await handlers.http_get("127.0.0.1", port, "/", timeout_s=5, sleep=asyncio.sleep)
    malformed = await handlers.http_get(
        "127.0.0.1", bad_port, "/", timeout_s=5, sleep=asyncio.sleep
    )
    for server_ in (server, bad):
        server_.close()
        await server_.wait_closed()
    assert not closed.ok and closed.message.startswith(f"Get http://127.0.0.1:{port}/")
    assert not malformed.ok and "malformed HTTP response" in malformed.message


async def _running(runtime: FakeRuntime) -> str:
    runtime.add_image("img")
    container_id = await runtime.create_container(ContainerSpec(name="c", image="img", labels={}))
    await runtime.start_container(container_id)
    return container_id


async def test_exec_in_passes_on_exit_0_and_reports_the_output_otherwise() -> None:
    runtime = FakeRuntime("n1")
    container_id = await _running(runtime)
    runtime.script_command(["true"], Script())
    runtime.script_command(["check"], Script(stdout=b"not yet\n", exit_code=3))
    assert (await handlers.exec_in(runtime, container_id, ["true"], timeout_s=1, sleep=never)).ok
    failed = await handlers.exec_in(runtime, container_id, ["check"], timeout_s=None, sleep=never)
    assert not failed.ok
    assert failed.message == "command 'check' exited with 3: not yet"
    missing = await handlers.exec_in(runtime, container_id, ["nope"], timeout_s=1, sleep=never)
    assert not missing.ok and "exited with 127" in missing.message


async def test_exec_in_a_stopped_container_is_a_failure_not_an_error() -> None:
    runtime = FakeRuntime("n1")
    container_id = await _running(runtime)
    await runtime.stop_container(container_id, 0)
    result = await handlers.exec_in(runtime, container_id, ["true"], timeout_s=1, sleep=never)
    assert not result.ok and "could not run" in result.message


class StuckExecRuntime(FakeRuntime):
    """An exec that never gets going (an engine that does not answer)."""

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> FakeExecSession:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_exec_in_times_out() -> None:
    runtime = StuckExecRuntime("n1")
    container_id = await _running(runtime)
    sleep = ManualSleep()
    task = asyncio.ensure_future(
        handlers.exec_in(runtime, container_id, ["cat"], timeout_s=2, sleep=sleep)
    )
    await until(lambda: sleep.asked, "the time limit asked of the sleep")
    sleep.release()
    result = await task
    assert not result.ok and result.message == "command 'cat' timed out after 2s"
