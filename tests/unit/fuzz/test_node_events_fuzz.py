"""Fuzz of the master's parser of the events a node reports (``agent.master.nodeevents``):
reports mutated from a valid one, and random JSON values. Only our BadRequestError or a parsed
report comes out, each event of which is bounded and names its node as the source."""

from __future__ import annotations

import random
from typing import Any

from agent.master.nodeevents import MAX_EVENTS_PER_REPORT, MAX_MESSAGE_CHARS, parse_report
from tests.unit.fuzz.inputs import holds, mutate_structure, random_structure, rng, sample

COUNT = 3000
VALID = {
    "items": [
        {
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "shop", "uid": "u-1"},
            "reason": "BackOff",
            "message": "back-off 10s restarting failed container=c",
            "type": "Warning",
            "firstTimestamp": "2026-12-03T10:00:00Z",
            "lastTimestamp": "2026-12-03T10:00:40Z",
            "count": 3,
        },
        {
            "involvedObject": {"kind": "Node", "name": "n1"},
            "reason": "Starting",
            "message": "started",
            "type": "Normal",
            "firstTimestamp": "2026-12-03T10:00:00Z",
            "lastTimestamp": "2026-12-03T10:00:00Z",
            "count": 1,
        },
    ]
}


def test_only_our_error_or_a_bounded_report_comes_out() -> None:
    def mutated(r: random.Random) -> Any:
        return mutate_structure(r, VALID)

    def random_value(r: random.Random) -> Any:
        return random_structure(r)

    parsed = 0

    def parse(body: Any) -> None:
        nonlocal parsed
        for item in parse_report(body, "n1"):
            assert item.event["source"] == {"component": "node-agent", "host": "n1"}
            assert len(item.event["message"]) <= MAX_MESSAGE_CHARS
        parsed += 1

    inputs = list(sample(rng("node-events"), [mutated, mutated, mutated, random_value], COUNT))
    refused = holds(parse, inputs)
    assert refused > 0 and parsed > 0  # both ways taken
    assert parsed + refused == COUNT
    assert len(parse_report(VALID, "n1")) == 2 <= MAX_EVENTS_PER_REPORT
