"""Fuzz of the master's pod watch as the node reads it (``agent.node.masterlink.watch``): the
line decoder, the listing decoder, and the line splitter under any chunking. A line that is not
a watch event is ``MasterAnswerMalformedError`` (the link logs it and relists); nothing else may
come out, or the junk would end the link's task."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol

from agent.errors import MasterAnswerMalformedError
from agent.node.masterlink.watch import bounded_lines, decode_event, decode_listing
from tests.unit.fuzz.inputs import (
    deep,
    dumps,
    holds,
    mutate_bytes,
    mutate_structure,
    random_bytes,
    random_structure,
    rng,
    sample,
)

COUNT = 3000
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "a", "namespace": "default", "uid": "u", "annotations": {"x": "y"}},
    "spec": {"containers": [{"name": "main", "image": "busybox:1"}]},
    "status": {"phase": "Running"},
}
EVENTS: list[dict[str, Any]] = [
    {"type": "ADDED", "object": POD, "resourceVersion": 7},
    {"type": "MODIFIED", "object": POD, "resourceVersion": "8"},
    {"type": "DELETED", "object": POD},
    {"type": "ERROR", "object": {"error": {"code": 410, "message": "gone"}}},
]


def event_makers() -> list:
    lines = [json.dumps(e).encode() for e in EVENTS]

    def mutated_line(r: random.Random) -> bytes:
        return mutate_bytes(r, r.choice(lines))

    def mutated_event(r: random.Random) -> bytes:
        return dumps(mutate_structure(r, r.choice(EVENTS)))

    def random_json(r: random.Random) -> bytes:
        return dumps(random_structure(r))

    return [mutated_line, mutated_event, mutated_event, random_json, random_bytes]


def test_an_event_line_decodes_or_is_malformed() -> None:
    r = rng("watch-events")
    holds(decode_event, sample(r, event_makers(), COUNT))


def test_a_deeply_nested_revision_is_malformed() -> None:
    """Found by this fuzz test: the error message's repr of the value raised RecursionError."""
    with pytest.raises(MasterAnswerMalformedError):
        decode_listing({"items": [], "resourceVersion": deep(5000)})


def test_a_listing_decodes_or_is_malformed() -> None:
    r = rng("watch-listing")
    listing = {"kind": "PodList", "resourceVersion": 3, "items": [POD, POD]}

    def mutated(r: random.Random) -> Any:
        return mutate_structure(r, listing)

    def random_value(r: random.Random) -> Any:
        return random_structure(r)

    holds(decode_listing, sample(r, [mutated, mutated, random_value], COUNT))


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,  # found by this fuzz test: RecursionError escaped json.loads
        b'{"type": {"a": 1}, "object": {}}',  # found by this fuzz test: TypeError (unhashable)
        b'{"type": ' + b"[" * 900 + b"]" * 900 + b"}",  # the message's repr of the type
        b'{"type": "ADDED", "object": ' * 50_000,
        b'{"type": "ADDED", "object": ' + b'{"a": ' * 100_000,
        b"\xef\xbb\xbf{}",  # a byte-order mark
        b'{"type": "ADDED", "object": {}, "resourceVersion": 1e999}',
        b'{"type": "ADDED", "object": {}, "resourceVersion": "99999999999999999999999999"}',
    ],
)
def test_hostile_lines(line: bytes) -> None:
    with pytest.raises(MasterAnswerMalformedError):
        decode_event(line)


async def test_lines_are_split_whatever_the_chunking() -> None:
    """Random streams cut at random places: whole lines come out, or MasterAnswerMalformedError
    for one longer than the limit; never another error, never a line over the limit."""
    r = rng("watch-lines")
    limit = 64
    loop = asyncio.get_running_loop()
    for _ in range(300):
        data = b"".join(
            r.choice([random_bytes(r, 100), b"\n", b"\n" * 3, b"x" * limit + b"\n"])
            for _ in range(r.randint(0, 10))
        )
        reader = StreamReader(BaseProtocol(loop), 1 << 16, loop=loop)
        pos = 0
        while pos < len(data):
            step = r.randint(1, 40)
            reader.feed_data(data[pos : pos + step])
            pos += step
        reader.feed_eof()
        complete = data.split(b"\n")[:-1]
        got: list[bytes] = []
        try:
            async for line in bounded_lines(reader, limit):
                assert len(line) <= limit and b"\n" not in line
                got.append(line)
        except MasterAnswerMalformedError:
            assert any(len(c) > limit for c in complete) or len(data.rsplit(b"\n", 1)[-1]) > limit
            continue
        assert got == complete
