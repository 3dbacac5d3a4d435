"""``nodectl top``'s tables from metrics objects (agent.cli.nodectl_top): kubectl's units
(``250m``, ``64Mi``), a node's share of its capacity, ``<unknown>`` for a node without figures,
sums per pod or a row per container, sorting, and names escaped."""

from __future__ import annotations

from typing import Any

from agent.cli.nodectl_top import node_rows, percent, pod_rows


def node(name: str, cpu: str = "4", memory: str = "8Gi") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"capacity": {"cpu": cpu, "memory": memory}}}


def node_metrics(name: str, cpu: str, memory: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "usage": {"cpu": cpu, "memory": memory}}


def pod_metrics(
    name: str, *containers: tuple[str, str, str], ns: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "containers": [{"name": c, "usage": {"cpu": cpu, "memory": m}} for c, cpu, m in containers],
    }


def test_node_rows_as_kubectl() -> None:
    rows = node_rows(
        [node("b"), node("a", cpu="2", memory="4Gi"), node("c")],
        [node_metrics("a", "500m", "1048576Ki"), node_metrics("b", "250m", "2Gi")],
        None,
    )
    assert rows == [
        ["a", "500m", "25%", "1024Mi", "25%"],
        ["b", "250m", "6%", "2048Mi", "25%"],
        ["c", "<unknown>", "<unknown>", "<unknown>", "<unknown>"],
    ]
    by_cpu = node_rows(
        [node("a"), node("b")],
        [node_metrics("a", "1m", "1Mi"), node_metrics("b", "9m", "1Mi")],
        "cpu",
    )
    assert [r[0] for r in by_cpu] == ["b", "a"]


def test_a_capacity_missing_or_malformed_is_unknown_not_a_crash() -> None:
    assert percent(5, None) == "<unknown>" and percent(5, 0) == "<unknown>"
    [row] = node_rows([node("a", cpu="lots")], [node_metrics("a", "1m", "junk")], None)
    assert row == ["a", "<unknown>", "<unknown>", "<unknown>", "<unknown>"]


def test_pod_rows_sum_containers_or_show_each() -> None:
    metrics = [
        pod_metrics("web", ("main", "10m", "4Mi"), ("side", "5m", "2Mi")),
        pod_metrics("db", ("main", "100m", "64Mi"), ns="data"),
    ]
    assert pod_rows(metrics, containers=False, all_namespaces=False, sort_by=None) == [
        ["db", "100m", "64Mi"],
        ["web", "15m", "6Mi"],
    ]
    assert pod_rows(metrics, containers=True, all_namespaces=True, sort_by="memory") == [
        ["data", "db", "main", "100m", "64Mi"],
        ["default", "web", "main", "10m", "4Mi"],
        ["default", "web", "side", "5m", "2Mi"],
    ]


def test_names_from_the_server_are_escaped() -> None:
    [row] = pod_rows(
        [pod_metrics("x\x1b[2J", ("m", "1m", "1Mi"))],
        containers=False,
        all_namespaces=False,
        sort_by=None,
    )
    assert "\x1b" not in row[0] and row[0] == "x\\x1b[2J"
    [row] = node_rows([node("n\n1")], [], None)
    assert row[0] == "n\\n1"
