"""The grpc probe against a real gRPC server: grpcio's own ``grpc.health.v1`` servicer
(grpcio-health-checking, test-only) on this host's loopback, the pod IP of these tests. Our
client is our HTTP/2 stack (no grpcio in the agent); this proves its wire format — preface,
headers (``te: trailers``, content type, path), the length-prefixed message and the answer's
trailers — against the reference implementation, for a named service and the server's
overall health, both ways, and for a service the server does not know."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.unit.node.probes.proberrig import probed_pod, prober_rig

SERVER_THREADS = 2
STOP_GRACE_S = 1.0


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    """grpcio's server in its own threads (not on the test's loop), on a free loopback port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(STOP_GRACE_S).wait()


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_named_service_both_ways(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("db", SERVING)
    async with prober_rig() as rig:
        pod = probed_pod(
            readinessProbe={"grpc": {"port": port, "service": "db"}, "failureThreshold": 1}
        )
        record = (await rig.run(pod))["c"]
        await rig.advance(0)
        assert rig.state(pod, record).ready is True, rig.unhealthy()
        servicer.set("db", NOT_SERVING)
        await rig.advance(10)
        assert rig.state(pod, record).ready is False
        assert "service unhealthy (NOT_SERVING)" in rig.unhealthy()[0]
        servicer.set("db", SERVING)
        await rig.advance(10)
        assert rig.state(pod, record).ready is True


async def test_the_servers_overall_health_and_an_unknown_service(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    port, _ = health_server  # grpcio's servicer answers SERVING for "" out of the box
    async with prober_rig() as rig:
        overall = probed_pod(readinessProbe={"grpc": {"port": port}, "failureThreshold": 1})
        record = (await rig.run(overall))["c"]
        await rig.advance(0)
        assert rig.state(overall, record).ready is True, rig.unhealthy()

    async with prober_rig() as rig:
        unknown = probed_pod(
            readinessProbe={"grpc": {"port": port, "service": "nope"}, "failureThreshold": 1}
        )
        record = (await rig.run(unknown))["c"]
        await rig.advance(0)
        assert rig.state(unknown, record).ready is False
        # grpcio answers NOT_FOUND (grpc-status 5), trailers only, as the protocol says.
        assert rig.unhealthy() == [
            f"Readiness probe failed: gRPC health check 127.0.0.1:{port}: grpc-status 5 (NOT_FOUND)"
        ]
