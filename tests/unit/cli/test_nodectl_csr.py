"""``nodectl get csr`` and ``nodectl certificate approve|deny NODE``: the serving names nodes
asked for beyond those the master verified, listed kubectl-like and decided by an
administrator; every value a node chose is escaped on the terminal."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from agent.cli import nodectl
from agent.errors import CliError

NOW = time.time()


def _stamp(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def _request(
    node: str, names: list[str], *, ago: float = 30, condition: str = "Pending"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServingNamesRequest",
        "metadata": {"name": node, "creationTimestamp": _stamp(ago)},
        "spec": {"node": node, "names": names, "source": "10.0.0.5"},
        "status": {"condition": condition, "pending": names, "approved": [], "denied": []},
    }


class StubClient:
    """The master's answers from memory; remembers the calls and their bodies."""

    def __init__(self, requests: list[dict[str, Any]]) -> None:
        self.requests = requests
        self.calls: list[tuple[str, str, object | None]] = []
        self.node: dict[str, Any] = {}

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        self.calls.append((method, path, body))
        if (method, path) == ("GET", "/v1/certificaterequests"):
            return {"kind": "ServingNamesRequestList", "items": self.requests}
        if path.endswith(("/servingnames/approve", "/servingnames/deny")):
            return {}
        if path.startswith("/v1/nodes/"):
            return self.node
        if path.startswith("/v1/events"):
            return {"items": []}
        if path == "/v1/pods":  # describe node: the pods on it
            return {"items": []}
        raise AssertionError(f"unexpected call {method} {path}")


def run(client: StubClient, *argv: str) -> None:
    args = nodectl.parse_args(list(argv))
    nodectl.COMMANDS[args.command](client, args)  # type: ignore[arg-type]


def test_get_csr_prints_kubectl_like_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(time, "time", lambda: NOW)  # the ages are of this instant
    client = StubClient(
        [
            _request("n1", ["127.0.0.1", "n1.example"], ago=30),
            _request("n2", ["10.0.0.9"], ago=4 * 3600, condition="Approved"),
            _request("n3", ["10.0.0.8"], ago=3 * 86400, condition="Denied"),
        ]
    )
    run(client, "get", "csr")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["NAME", "REQUESTED", "NAMES", "SOURCE", "AGE", "CONDITION"],
        ["n1", "127.0.0.1,n1.example", "10.0.0.5", "30s", "Pending"],
        ["n2", "10.0.0.9", "10.0.0.5", "4h", "Approved"],
        ["n3", "10.0.0.8", "10.0.0.5", "3d", "Denied"],
    ]
    assert client.calls == [("GET", "/v1/certificaterequests", None)]


def test_the_ages_of_kubectl() -> None:
    assert [nodectl._age(_stamp(s), NOW) for s in (0, 119, 120, 3 * 3600 - 1, 3 * 3600)] == [
        "0s",
        "119s",
        "2m",
        "179m",
        "3h",
    ]
    assert nodectl._age(None, NOW) == nodectl._age("yesterday", NOW) == "<unknown>"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (182, "3m2s"),
        (600, "10m"),
        (4 * 3600 + 5 * 60, "4h5m"),
        (4 * 3600, "4h"),
        (23 * 3600, "23h"),
        (2 * 86400, "2d"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (30 * 86400 + 5, "30d"),
        (2 * 365 * 86400 + 3 * 86400, "2y3d"),
        (9 * 365 * 86400, "9y"),
        (-0.5, "0s"),  # a clock a little behind the master's
        (-5, "<invalid>"),
    ],
)
def test_human_durations_as_kubectl(seconds: float, shown: str) -> None:
    assert nodectl.human_duration(seconds) == shown


def test_a_hostile_value_cannot_forge_a_row(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = _request("n1", ["a.example\nn9   evil   1.2.3.4   1s   Approved"])
    hostile["metadata"]["name"] = "n1\x1b[2J"
    run(StubClient([hostile]), "get", "csr")
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 2 and "\x1b" not in out
    assert "n1\\x1b[2J" in out and "a.example\\nn9" in out


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_get_csr_as_documents(output: str, capsys: pytest.CaptureFixture[str]) -> None:
    requests = [_request("n1", ["127.0.0.1"]), _request("n2", ["10.0.0.9"])]
    run(StubClient(requests), "get", "certificaterequests", "-o", output)
    text = capsys.readouterr().out
    document = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert document == {"apiVersion": "v1", "kind": "List", "items": requests}
    run(StubClient(requests), "get", "csr", "n2", "-o", output)
    text = capsys.readouterr().out
    single = json.loads(text) if output == "json" else yaml.safe_load(text)
    assert single == requests[1]


def test_get_csr_of_an_unknown_node_and_of_none(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match='certificaterequests "ghost" not found'):
        run(StubClient([_request("n1", ["127.0.0.1"])]), "get", "csr", "ghost")
    run(StubClient([]), "get", "csr")
    assert capsys.readouterr().err == "No csr found.\n"


def test_certificate_decides_on_exactly_the_names_listed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = StubClient([_request("n1", ["127.0.0.1", "n1.example"]), _request("a/b", ["x.y"])])
    run(client, "certificate", "approve", "n1")
    assert client.calls[-1] == (
        "POST",
        "/v1/nodes/n1/servingnames/approve",
        {"names": ["127.0.0.1", "n1.example"]},
    )
    assert capsys.readouterr().out == "certificaterequest/n1 approved: 127.0.0.1, n1.example\n"
    run(client, "certificate", "deny", "a/b")  # a node name is one path segment, whatever it is
    assert client.calls[-1] == ("POST", "/v1/nodes/a%2Fb/servingnames/deny", {"names": ["x.y"]})
    assert capsys.readouterr().out == "certificaterequest/a/b denied: x.y\n"


def test_certificate_for_a_node_with_nothing_waiting_sends_nothing() -> None:
    decided = _request("n1", [])
    client = StubClient([decided])
    for node in ("n1", "ghost\n"):
        with pytest.raises(CliError, match=r'node "(n1|ghost\\n)" has no serving names waiting'):
            run(client, "certificate", "approve", node)
    assert [method for method, _, _ in client.calls] == ["GET", "GET"]


def test_certificate_needs_a_verb_and_a_node() -> None:
    for argv in (["certificate"], ["certificate", "approve"], ["certificate", "sign", "n1"]):
        with pytest.raises(SystemExit) as exited:
            nodectl.parse_args(argv)
        assert exited.value.code == nodectl.EXIT_USAGE


def test_describe_node_shows_the_names_waiting(capsys: pytest.CaptureFixture[str]) -> None:
    client = StubClient([])
    pending = ["127.0.0.1", "a.example\nforged"]
    client.node = {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"registration": {"servingNames": {"verified": ["n1"], "pending": pending}}},
    }
    run(client, "describe", "node", "n1")
    out = capsys.readouterr().out
    assert "serving names waiting: 127.0.0.1, a.example\\nforged\n" in out
    assert "nodectl certificate approve n1 puts them on its next certificate" in out
    client.node["status"]["registration"]["servingNames"]["pending"] = []
    run(client, "describe", "node", "n1")
    assert "serving names waiting" not in capsys.readouterr().out
