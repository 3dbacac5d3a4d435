"""``nodectl get … -o json|yaml`` prints what kubectl prints: a ``List`` for every list get (of
zero, one or several objects, and across kinds), the bare object only for ``get TYPE NAME``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from agent.cli import nodectl
from agent.errors import CliError


def _node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {}}


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running"},
    }


class StubClient:
    """The two list calls ``get`` makes, answered from memory."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.pods = pods

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        assert method == "GET"
        if path == "/v1/nodes":
            return {"kind": "NodeList", "items": self.nodes}
        assert path.startswith("/v1/pods")
        return {"kind": "PodList", "items": self.pods}


def _get(client: StubClient, kind: str, name: str | None, output: str | None) -> None:
    argv = ["get", kind, *([name] if name else []), *(["-o", output] if output else [])]
    nodectl.cmd_get(client, nodectl.parse_args(argv))  # type: ignore[arg-type]


def _parse(output: str, text: str) -> Any:
    return json.loads(text) if output == "json" else yaml.safe_load(text)


@pytest.mark.parametrize("output", ["json", "yaml"])
@pytest.mark.parametrize("count", [0, 1, 2])
def test_list_get_prints_a_list_whatever_the_count(
    output: str, count: int, capsys: pytest.CaptureFixture[str]
) -> None:
    nodes = [_node(f"n{i}") for i in range(count)]
    _get(StubClient(nodes, []), "nodes", None, output)
    document = _parse(output, capsys.readouterr().out)
    assert document["kind"] == "List"
    assert document["apiVersion"] == "v1"
    assert [n["metadata"]["name"] for n in document["items"]] == [f"n{i}" for i in range(count)]


@pytest.mark.parametrize("output", ["json", "yaml"])
@pytest.mark.parametrize("others", [0, 1, 2])
def test_get_type_name_prints_the_object(
    output: str, others: int, capsys: pytest.CaptureFixture[str]
) -> None:
    pods = [_pod("web")] + [_pod(f"other{i}") for i in range(others)]
    _get(StubClient([], pods), "pod", "web", output)
    document = _parse(output, capsys.readouterr().out)
    assert document["kind"] == "Pod"
    assert document["metadata"]["name"] == "web"


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_several_kinds_print_one_list(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    _get(StubClient([_node("n0")], [_pod("web")]), "nodes,pods", None, output)
    text = capsys.readouterr().out
    document = _parse(output, text)  # one document, not one per kind
    assert document["kind"] == "List"
    assert [item["kind"] for item in document["items"]] == ["Node", "Pod"]


def test_get_missing_name_is_not_found(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match=r'Error from server \(NotFound\): pods "nope" not found'):
        _get(StubClient([], [_pod("web")]), "pods", "nope", "json")
    assert capsys.readouterr().out == ""


def test_table_output_is_per_kind(capsys: pytest.CaptureFixture[str]) -> None:
    _get(StubClient([], [_pod("web")]), "pods", None, None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split() == ["web", "0/1", "Running", "0", "<unknown>"]
