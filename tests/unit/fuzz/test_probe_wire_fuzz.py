"""Fuzz of the two parsers of what a container sends the agent (issue 15): sd_notify datagrams
(``agent.node.notify.wire.parse_datagram``: a message or None, never an exception, STATUS
escaped and bounded) and the gRPC health-check response (``agent.node.probes.grpc.
response_status``: a status or ProtocolViolation). Random and mutated valid inputs."""

from __future__ import annotations

import random

from agent.node.notify.wire import STATUS_MAX_CHARS, escape_status, parse_datagram
from agent.node.probes.grpc import response_status
from tests.unit.fuzz.inputs import holds, mutate_bytes, random_bytes, rng, sample

COUNT = 3000
_KEYS = (b"READY", b"STATUS", b"WATCHDOG", b"STOPPING", b"RELOADING", b"MAINPID", b"ERRNO")


def _datagram(r: random.Random) -> bytes:
    lines = [
        r.choice(_KEYS) + b"=" + r.choice([b"1", b"0", b"trigger", r.randbytes(r.randint(0, 300))])
        for _ in range(r.randint(0, 5))
    ]
    return b"\n".join(lines)


def _grpc(r: random.Random) -> bytes:
    body = b"\x08" + bytes([r.randrange(128)]) if r.random() < 0.7 else r.randbytes(8)
    return b"\x00" + len(body).to_bytes(4, "big") + body


def test_notify_datagrams_give_a_message_or_none() -> None:
    r = rng("notify-wire")

    def parse(data: bytes) -> None:
        message = parse_datagram(data)
        if message is not None and message.status is not None:
            shown = escape_status(message.status)
            assert len(shown) <= STATUS_MAX_CHARS + 4  # escaped, bounded (an ellipsis at most)
            assert all(ch.isprintable() for ch in shown)

    makers = [_datagram, lambda r: mutate_bytes(r, _datagram(r)), random_bytes]
    assert holds(parse, sample(r, makers, COUNT)) == 0  # parse_datagram refuses by None


def test_grpc_responses_give_a_status_or_our_error() -> None:
    r = rng("grpc-wire")
    makers = [_grpc, lambda r: mutate_bytes(r, _grpc(r)), random_bytes]
    refused = holds(response_status, sample(r, makers, COUNT))
    assert 0 < refused < COUNT  # both kinds of outcome were exercised
