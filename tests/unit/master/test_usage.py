"""The usage a node's lease carries, on the master (``agent.master.usage``): each malformed
field refused naming it, figures served as the metrics API's quantities, stale ones not."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import BadRequestError
from agent.master.usage import MAX_PODS, STALE_S, Figures, UsageBook, parse_usage, window
from tests.unit.node.pods.fakeclock import FakeClock


def pod(name: str, *containers: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    return {"namespace": namespace, "name": name, "containers": list(containers)}


def figures(name: str = "main", cpu: Any = 1, memory: Any = 2) -> dict[str, Any]:
    return {"name": name, "cpuMillis": cpu, "memoryBytes": memory}


def test_a_valid_report() -> None:
    usage = parse_usage(
        {
            "window": 5,
            "node": {"cpuMillis": 250, "memoryBytes": 3 << 20},
            "pods": [pod("web", figures())],
        }
    )
    assert usage.node == Figures(250, 3 << 20)
    assert usage.node.usage() == {"cpu": "250m", "memory": "3072Ki"}
    assert usage.pods[0].containers == (("main", Figures(1, 2)),)
    assert window(usage) == "5s"
    assert parse_usage({}).pods == () and parse_usage({}).node is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "usage"),
        ({"window": -1}, "usage.window"),
        ({"window": float("nan")}, "usage.window"),
        ({"window": True}, "usage.window"),
        ({"node": {"cpuMillis": -1, "memoryBytes": 0}}, "usage.node.cpuMillis"),
        ({"node": {"cpuMillis": 1, "memoryBytes": 2**63}}, "usage.node.memoryBytes"),
        ({"node": {"cpuMillis": True, "memoryBytes": 0}}, "usage.node.cpuMillis"),
        ({"pods": {}}, "usage.pods"),
        ({"pods": [pod("Web", figures())]}, "usage.pods[0].name"),
        ({"pods": [pod("web", figures(), namespace="a.b")]}, "usage.pods[0].namespace"),
        ({"pods": [pod("web", figures("a\x1b[2J"))]}, "usage.pods[0].containers[0].name"),
        ({"pods": [pod("web", figures(cpu="1"))]}, "usage.pods[0].containers[0].cpuMillis"),
        ({"pods": [pod("web", figures(), figures())]}, "usage.pods[0].containers[1]"),
        ({"pods": [pod("web", figures()), pod("web", figures())]}, "usage.pods[1]"),
        ({"pods": [pod(f"p{i}", figures()) for i in range(MAX_PODS + 1)]}, "usage.pods"),
    ],
)
def test_malformed_reports_are_refused_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        parse_usage(raw)
    assert str(caught.value).startswith(field), caught.value


def test_stale_figures_are_not_served() -> None:
    clock = FakeClock()
    book = UsageBook(clock)
    book.put("n1", parse_usage({"node": {"cpuMillis": 1, "memoryBytes": 1}}))
    found = book.get("n1")
    assert found is not None and found[0].endswith("Z")
    clock.advance(STALE_S + 1)
    assert book.get("n1") is None
    book.put("n1", parse_usage({}))
    book.forget("n1")
    assert book.get("n1") is None
