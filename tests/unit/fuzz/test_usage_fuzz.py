"""Fuzz of the master's parser of the usage a node's lease carries (``agent.master.usage``,
``nodectl top``'s figures): reports mutated from a valid one, and random JSON values. Only our
BadRequestError or a bounded report comes out."""

from __future__ import annotations

import random
from typing import Any

from agent.master.usage import MAX_CONTAINERS, MAX_PODS, parse_usage
from agent.quantity import INT64_MAX
from tests.unit.fuzz.inputs import holds, mutate_structure, random_structure, rng, sample

COUNT = 3000
VALID = {
    "window": 5.0,
    "node": {"cpuMillis": 250, "memoryBytes": 1 << 30},
    "pods": [
        {
            "namespace": "default",
            "name": "web",
            "containers": [
                {"name": "main", "cpuMillis": 12, "memoryBytes": 5 << 20},
                {"name": "side", "cpuMillis": 0, "memoryBytes": 1 << 20},
            ],
        }
    ],
}


def test_only_our_error_or_a_bounded_report_comes_out() -> None:
    def mutated(r: random.Random) -> Any:
        return mutate_structure(r, VALID)

    def random_value(r: random.Random) -> Any:
        return random_structure(r)

    parsed = 0

    def parse(body: Any) -> None:
        nonlocal parsed
        usage = parse_usage(body)
        assert len(usage.pods) <= MAX_PODS
        for pod in usage.pods:
            assert len(pod.containers) <= MAX_CONTAINERS
            for _, figures in pod.containers:
                assert 0 <= figures.cpu_millis <= INT64_MAX
                assert 0 <= figures.memory_bytes <= INT64_MAX
        parsed += 1

    inputs = list(sample(rng("usage"), [mutated, mutated, mutated, random_value], COUNT))
    refused = holds(parse, inputs)
    assert refused > 0 and parsed > 0  # both ways taken
    assert parsed + refused == COUNT
