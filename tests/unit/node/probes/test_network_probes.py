"""httpGet, tcpSocket and grpc probes from the prober to servers on this host's loopback (the
pod IP of these tests), and the gRPC health-checking messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from agent.aio.h2conn import H2Stream, serve_factory
from agent.errors import ProtocolViolation
from agent.node.probes.grpc import request_message, response_status
from tests.unit.node.probes.proberrig import probed_pod, prober_rig


@asynccontextmanager
async def http_server(codes: list[int], seen: list[bytes]) -> AsyncIterator[int]:
    """Answers each request with the status ``codes[0]`` (changeable); ``seen`` gets the
    request heads."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % codes[0])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def grpc_server(statuses: list[int], seen: list[tuple[str, bytes]]) -> AsyncIterator[int]:
    """A grpc.health.v1 server on the project's HTTP/2 server side, answering ``statuses[0]``."""

    async def handle(stream: H2Stream) -> None:
        seen.append((stream.path, await stream.read_all(1024)))
        await stream.respond(200, [("content-type", "application/grpc")])
        await stream.write(b"\x00\x00\x00\x00\x02\x08" + bytes([statuses[0]]))
        await stream.end([("grpc-status", "0")])

    loop = asyncio.get_running_loop()
    server = await loop.create_server(serve_factory(handle, name="test-grpc"), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_http_get_probe_by_port_name_with_headers_both_ways() -> None:
    codes, seen = [200], list[bytes]()
    async with http_server(codes, seen) as port, prober_rig() as rig:
        pod = probed_pod(
            port=port,
            readinessProbe={
                "httpGet": {
                    "port": "http",
                    "path": "/healthz?full=1",
                    "httpHeaders": [{"name": "X-Probe", "value": "node-agent"}],
                },
                "failureThreshold": 1,
            },
        )
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        assert rig.state(pod, record).ready is True
        head = seen[0].decode()
        assert head.startswith("GET /healthz?full=1 HTTP/1.1\r\n")
        assert "X-Probe: node-agent\r\n" in head
        codes[0] = 503
        await rig.advance(10)
        assert rig.state(pod, record).ready is False
        assert "statuscode: 503" in rig.unhealthy()[0]
        codes[0] = 302  # 3xx passes, as kubelet's
        await rig.advance(10)
        assert rig.state(pod, record).ready is True


async def test_tcp_socket_probe_passes_while_something_listens() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with prober_rig() as rig:
        pod = probed_pod(livenessProbe={"tcpSocket": {"port": port}, "failureThreshold": 1})
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        assert rig.state(pod, record).failure is None
        assert rig.unhealthy() == []
        server.close()
        await server.wait_closed()
        await rig.advance(10)
        failure = rig.state(pod, record).failure
        assert failure is not None and f"dial tcp 127.0.0.1:{port}" in failure.message


async def test_probes_to_the_pod_ip_fail_while_the_pod_has_none() -> None:
    async with prober_rig() as rig:
        pod = probed_pod(readinessProbe={"tcpSocket": {"port": 1}})
        record = (await rig.run(pod, pod_ip=""))["c"]
        await rig.advance(0)
        assert rig.state(pod, record).ready is False
        assert rig.unhealthy() == ["Readiness probe failed: the pod has no IP address"]


async def test_grpc_probe_asks_the_standard_health_service() -> None:
    statuses, seen = [1], list[tuple[str, bytes]]()
    async with grpc_server(statuses, seen) as port, prober_rig() as rig:
        pod = probed_pod(
            readinessProbe={"grpc": {"port": port, "service": "db"}, "failureThreshold": 1}
        )
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        assert rig.state(pod, record).ready is True
        assert seen[0] == ("/grpc.health.v1.Health/Check", b"\x00\x00\x00\x00\x04\x0a\x02db")
        statuses[0] = 2  # NOT_SERVING
        await rig.advance(10)
        assert rig.state(pod, record).ready is False
        assert "service unhealthy (NOT_SERVING)" in rig.unhealthy()[0]


async def test_grpc_probe_to_nothing_fails_with_the_reason() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with prober_rig() as rig:
        pod = probed_pod(readinessProbe={"grpc": {"port": port}})
        await rig.run(pod)
        await rig.advance(0)
        assert rig.unhealthy()[0].startswith(
            f"Readiness probe failed: gRPC health check 127.0.0.1:{port}: "
        )


def test_health_check_messages() -> None:
    assert request_message("") == b"\x00\x00\x00\x00\x00"
    assert request_message("x" * 200)[5:8] == b"\x0a\xc8\x01"  # a two-byte varint length
    assert response_status(b"\x00\x00\x00\x00\x02\x08\x01") == 1
    assert response_status(b"\x00\x00\x00\x00\x00") == 0  # status absent: UNKNOWN
    # Unknown fields of every wire type are skipped.
    other = b"\x10\x05" + b"\x1a\x01z" + b"\x25abcd" + b"\x29" + bytes(8) + b"\x08\x02"
    assert response_status(b"\x00" + len(other).to_bytes(4, "big") + other) == 2


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x00\x00", "no gRPC message"),
        (b"\x01\x00\x00\x00\x00", "compressed"),
        (b"\x00\x00\x00\x00\x05\x08", "announced 5"),
        (b"\x00\x00\x00\x00\x01\x08", "truncated protobuf varint"),
        (b"\x00\x00\x00\x00\x02\x0a\x05", "truncated protobuf message"),
        (b"\x00\x00\x00\x00\x01\x0b", "wire type 3"),
    ],
)
def test_malformed_health_check_responses(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolViolation, match=problem):
        response_status(data)
