"""The gRPC probe: ``grpc.health.v1.Health/Check`` over plain-text HTTP/2, without grpcio.

One call on a fresh connection (kubelet does the same: a probe is rare, a pooled connection
would be state to keep right across container restarts). The request and the response are
the two tiny protobuf messages of the standard health-checking protocol, written and read by
hand: ``HealthCheckRequest {string service = 1}``, ``HealthCheckResponse {enum status = 1}``.
The HTTP/2 client is the project's own (:mod:`agent.aio.h2conn`, on h2).
"""

from __future__ import annotations

import asyncio

from agent.aio.h2conn import H2Connection
from agent.errors import ProtocolViolation, StreamingError
from agent.node.handlers import PASSED, HandlerResult, Sleep, TimedOut, bounded
from agent.proto.h2mux import CLIENT_LIMITS, header

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
RESPONSE_MAX_BYTES = 64 << 10  # a HealthCheckResponse is a few bytes
SERVING = 1
_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_MESSAGE_PREFIX_BYTES = 5  # compressed flag, 4-byte big-endian length

# The status codes of the gRPC protocol (grpc/doc/statuscodes.md), for messages: a health
# server answers NOT_FOUND (5) for a service it does not know.
GRPC_CODE_NAMES = {
    str(code): name
    for code, name in enumerate(
        (
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        )
    )
}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def request_message(service: str) -> bytes:
    """The length-prefixed gRPC message of ``HealthCheckRequest{service}``."""
    encoded = service.encode()
    body = b"\x0a" + _varint(len(encoded)) + encoded if encoded else b""
    return b"\x00" + len(body).to_bytes(4, "big") + body


def response_status(data: bytes) -> int:
    """The ``status`` of a length-prefixed ``HealthCheckResponse`` (0, UNKNOWN, if absent).

    Raises ProtocolViolation (ours) for anything that is not one uncompressed message."""
    if len(data) < _MESSAGE_PREFIX_BYTES:
        raise ProtocolViolation("no gRPC message in the response")
    if data[0] != 0:
        raise ProtocolViolation("compressed gRPC message (not asked for)")
    length = int.from_bytes(data[1:5], "big")
    body = data[_MESSAGE_PREFIX_BYTES:]
    if len(body) != length:
        raise ProtocolViolation(f"gRPC message of {len(body)} bytes, announced {length}")
    status, i = 0, 0
    while i < len(body):
        key, i = _read_varint(body, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(body, i)
            if field == 1:
                status = value
        elif wire == 2:
            size, i = _read_varint(body, i)
            i += size
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ProtocolViolation(f"unexpected protobuf wire type {wire}")
    if i > len(body):
        raise ProtocolViolation("truncated protobuf message")
    return status


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data) or shift > 63:
            raise ProtocolViolation("truncated protobuf varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


async def health_check(
    host: str, port: int, service: str, *, timeout_s: float, sleep: Sleep
) -> HandlerResult:
    """Passed when the server answers SERVING within ``timeout_s``."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        status = await bounded(_check(host, port, where, service), timeout_s, sleep)
    except TimedOut:
        return HandlerResult.failed(f"gRPC health check {where}: timeout after {timeout_s:g}s")
    except (OSError, ValueError, StreamingError) as exc:
        return HandlerResult.failed(
            f"gRPC health check {where}: {getattr(exc, 'strerror', None) or exc}"
        )
    if status == SERVING:
        return PASSED
    name = _STATUS_NAMES.get(status, str(status))
    return HandlerResult.failed(f"gRPC health check {where}: service unhealthy ({name})")


async def _check(host: str, port: int, where: str, service: str) -> int:
    loop = asyncio.get_running_loop()
    transport, conn = await loop.create_connection(
        lambda: H2Connection(client_side=True, limits=CLIENT_LIMITS, name="grpc-probe"),
        host,
        port,
    )
    try:
        stream = await conn.request(
            "POST",
            HEALTH_CHECK_PATH,
            [("content-type", "application/grpc"), ("te", "trailers")],
            authority=where,
            scheme="http",
        )
        await stream.write(request_message(service))
        await stream.end()
        headers = await stream.response()
        if stream.status != 200:
            raise ValueError(f"HTTP status {stream.status}")
        body = await stream.read_all(RESPONSE_MAX_BYTES)
        # A refusal comes as "trailers only": grpc-status in the headers, no body.
        trailers = stream.trailers or headers
        code = header(trailers, "grpc-status")
        if code is None:
            raise ValueError("no grpc-status in the response")
        if code != "0":
            message = header(trailers, "grpc-message") or ""
            name = GRPC_CODE_NAMES.get(code)
            shown = f"grpc-status {code} ({name})" if name else f"grpc-status {code}"
            raise ValueError(f"{shown} {message}".strip())
        return response_status(body)
    finally:
        transport.close()
