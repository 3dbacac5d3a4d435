"""Fuzz of the request-target parser (``agent.proto.routes.RouteTable.match``), which every
request of both APIs crosses before anything else: paths, percent-encoding, query strings,
NUL and control characters, huge targets. Only our errors or a match come out, and a match
holds only validated parameters."""

from __future__ import annotations

import random

import pytest

from agent.proto.routes import MASTER_ROUTES, MAX_PARAM_CHARS, NODE_ROUTES, RouteTable
from tests.unit.fuzz.inputs import HUGE_CHARS, holds, mutate_text, rng, sample

TABLES = {"master": MASTER_ROUTES, "node": NODE_ROUTES}
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "", "get", "G\x00T"]
COUNT = 3000


def valid_targets(table: RouteTable) -> list[str]:
    """Every route's path with its parameters filled, and a query."""
    found = []
    for route in table.routes:
        segments = ["name-1" if s.startswith("{") else s for s in route.pattern]
        found.append("/" + "/".join(segments) + "?watch=1&resourceVersion=5")
    return found


def makers(table: RouteTable) -> list:
    seeds = valid_targets(table)

    def mutated(r: random.Random) -> str:
        return mutate_text(r, r.choice(seeds))

    def percent_encoded(r: random.Random) -> str:
        target = r.choice(seeds)
        i = r.randrange(len(target))
        return (
            target[:i]
            + "".join(f"%{r.randrange(256):02X}" for _ in range(r.randint(1, 6)))
            + target[i:]
        )

    def control(r: random.Random) -> str:
        target = r.choice(seeds)
        i = r.randrange(len(target))
        return target[:i] + chr(r.choice([0, 1, 9, 10, 13, 0x1F, 0x7F, 0x85, 0x2028])) + target[i:]

    def unicode(r: random.Random) -> str:
        return "/" + "".join(chr(r.randint(0, 0x10FFFF)) for _ in range(r.randint(0, 40)))

    def many_fields(r: random.Random) -> str:
        return (
            r.choice(seeds).split("?")[0]
            + "?"
            + "&".join(["a=1"] * r.choice([999, 1000, 1001, 5000]))
        )

    def long_param(r: random.Random) -> str:
        n = MAX_PARAM_CHARS + r.randint(-1, 1)
        return "/v1/nodes/" + "a" * n + "/lease"

    return [mutated, mutated, mutated, percent_encoded, control, unicode, many_fields, long_param]


@pytest.mark.parametrize("api", sorted(TABLES))
def test_only_our_errors_or_a_validated_match(api: str) -> None:
    table = TABLES[api]
    r = rng(f"routes-{api}")
    matched: list[int] = []

    def parse(item: tuple[str, str]) -> None:
        method, target = item
        match = table.match(method, target)
        matched.append(1)
        assert match.route.method == method
        for value in match.params.values():
            assert value and len(value) <= MAX_PARAM_CHARS and "/" not in value
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)

    inputs = (
        (r.choice(METHODS[:4]) if r.random() < 0.9 else r.choice(METHODS), t)
        for t in sample(r, makers(table), COUNT)
    )
    refused = holds(parse, inputs)
    # Both outcomes were exercised: the mutations are neither all fatal nor all harmless.
    assert refused > COUNT // 10 and len(matched) > COUNT // 20


@pytest.mark.parametrize(
    "target",
    [
        "/" + "a/" * (HUGE_CHARS // 2),
        "/v1/nodes/" + "%41" * HUGE_CHARS + "/lease",
        "/healthz?" + "x" * HUGE_CHARS,
        "/healthz?" + "&" * HUGE_CHARS,
        "/v1/nodes/%00/lease",
        "/v1/nodes/%C0%AF/lease",  # overlong UTF-8 for '/'
        "/v1/nodes/%ED%A0%80/lease",  # a surrogate
        "",
        "*",
        "http://example.com/healthz",
    ],
)
def test_hostile_targets(target: str) -> None:
    holds(lambda t: MASTER_ROUTES.match("GET", t), [target])
