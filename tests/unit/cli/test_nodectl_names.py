"""Every value ``nodectl`` prints that a server sent goes through ``agent.names.escape``: a name
with a newline cannot forge a row of ``get nodes``/``get pods``/``describe``, an escape sequence
cannot clear or recolour the terminal, an invisible right-to-left override cannot reorder what
the administrator reads. The master refuses such names (tests/integration/test_hostile_names.py);
this holds whatever a server (an older master, a fake one) answers."""

from __future__ import annotations

import io
import urllib.parse
from typing import Any

import pytest
import yaml

from agent.cli import nodectl, nodectl_stream
from agent.errors import CliError

# A forged row, a terminal escape (clear screen), a right-to-left override, a NUL, a tab.
HOSTILE = [
    "n1\nn2   Ready   Approved   auto   v9",
    "x\x1b[2J\x1b[31mred",
    "a\u202eb",
    "nul\x00l",
    "tab\tx",
    "back\\slash",
]


def _node(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready\nFake"}],
            "registration": {
                "phase": "Approved",
                "admittedBy": "auto\x1b[0m",
                **extra,
            },
            "nodeInfo": {"agentVersion": "1.0\r\n"},
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1\nfake"}],
        },
    }


def _pod(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns\nx"},
        "spec": {"containers": [{"name": "c"}], "nodeName": "n\x07"},
        "status": {"phase": "Running\n", "podIP": "10.1.0.1\x1b"},
    }


class StubClient:
    """The master's answers from memory: hostile values in every field a table shows."""

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        assert method == "GET", (method, path)
        if path == "/v1/nodes":
            return {"items": [_node(name) for name in HOSTILE]}
        if path.startswith("/v1/pods"):
            return {"items": [_pod(name) for name in HOSTILE]}
        if path.startswith("/v1/namespaces/"):
            return _pod("x")
        if path.startswith("/v1/nodes/"):
            return _node(
                "n1",
                replacement={
                    "fingerprint": "sha256:ab\nkey replacement waiting: sha256:forged",
                    "source": "10.0.0.9\x1b]0;title\x07",
                    "requestedAt": "2026-01-01T00:00:00Z",
                    "admittedBy": "approval",
                },
            )
        if path.startswith("/v1/events"):
            return {
                "items": [
                    {
                        "lastTimestamp": "2026-01-01T00:00:00Z",
                        "type": "Warning",
                        "reason": "Forged\n2026-01-01T00:00:01Z   Normal",
                        "message": "a\nb\x1b[2J",
                    }
                ]
            }
        raise AssertionError(f"unexpected call {method} {path}")


def run(*argv: str) -> None:
    args = nodectl.parse_args(list(argv))
    nodectl.COMMANDS[args.command](StubClient(), args)  # type: ignore[arg-type]


def assert_clean(out: str, lines: int) -> None:
    """``lines`` lines, none holding a control or invisible character."""
    assert out.endswith("\n")
    rows = out[:-1].split("\n")
    assert len(rows) == lines, out
    for row in rows:
        assert row.isprintable(), repr(row)


@pytest.mark.parametrize("wide", [[], ["-o", "wide"]])
def test_get_nodes_prints_one_row_per_node(
    capsys: pytest.CaptureFixture[str], wide: list[str]
) -> None:
    run("get", "nodes", *wide)
    out = capsys.readouterr().out
    assert_clean(out, 1 + len(HOSTILE))
    assert "n1\\nn2   Ready" in out  # shown escaped, on its own row
    assert "x\\x1b[2J\\x1b[31mred" in out
    assert "a\\u202eb" in out and "nul\\x00l" in out and "tab\\tx" in out
    assert "back\\\\slash" in out  # a backslash is escaped too: no escape is ambiguous


@pytest.mark.parametrize("flags", [[], ["-A"], ["-A", "-o", "wide"]])
def test_get_pods_prints_one_row_per_pod(
    capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    run("get", "pods", *flags)
    assert_clean(capsys.readouterr().out, 1 + len(HOSTILE))


def test_describe_escapes_the_evidence_and_the_events(capsys: pytest.CaptureFixture[str]) -> None:
    run("describe", "node", "n1")
    out = capsys.readouterr().out
    # Every value the node or the master chose is escaped on its own line of the layout:
    assert "  Admitted By:  auto\\x1b[0m\n" in out
    assert "  InternalIP:  10.0.0.1\\nfake\n" in out
    assert "Node Agent Version:  1.0\\r\\n\n" in out
    # and the line nodectl writes itself is the only one that starts like it.
    evidence = [line for line in out.splitlines() if line.startswith("key replacement")]
    assert evidence == [
        "key replacement waiting: sha256:ab\\nkey replacement waiting: sha256:forged from "
        "10.0.0.9\\x1b]0;title\\x07 at 2026-01-01T00:00:00Z (rule approval)"
    ]
    events = out[out.index("Events:") :]
    assert_clean(events, 4)  # "Events:", the header, its underline, one event
    assert "Forged\\n2026" in events and "a\\nb\\x1b[2J" in events
    assert all(line.isprintable() for line in out.splitlines())


def test_describe_pod_escapes_every_value(capsys: pytest.CaptureFixture[str]) -> None:
    run("describe", "pod", "x")
    out = capsys.readouterr().out
    assert "Status:       Running\\n\n" in out and "IP:           10.1.0.1\\x1b\n" in out
    assert all(line.isprintable() for line in out.splitlines())


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = io.BytesIO(body)

    def read(self) -> bytes:
        return self._body.read()


class _Connection:
    """What ``http.client.HTTPSConnection`` gives ``Client.call``: one canned answer."""

    def __init__(self, status: int, body: bytes) -> None:
        self.answer = _Answer(status, body)

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        assert headers == ({"Content-Type": "application/json"} if body else {})

    def getresponse(self) -> _Answer:
        return self.answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"code": 400, "message": "nodeName: \\"a\\nb\\" \\u001b[2J"}}',
        b"not json\nError from server (200): fine\x1b[2J",
        b'{"error": "a string\\n"}',
    ],
)
def test_a_server_error_message_is_one_escaped_line(body: bytes) -> None:
    client = nodectl.Client(nodectl.ClientConfig("https://127.0.0.1:6443", "ca", "cert", "key"))
    client._conn = _Connection(400, body)
    with pytest.raises(CliError) as caught:
        client.call("POST", "/v1/registrations", {"nodeName": "x"})
    message = caught.value.message
    assert message.startswith("Error from server (BadRequest): ")
    assert message.isprintable(), repr(message)


@pytest.mark.parametrize("output", ["yaml", "json"])
def test_documents_hold_hostile_values_escaped_and_intact(
    capsys: pytest.CaptureFixture[str], output: str
) -> None:
    run("get", "nodes", "-o", output)
    out = capsys.readouterr().out
    assert all(line.isprintable() for line in out.splitlines()), out
    document = yaml.safe_load(out)  # JSON is YAML: one reader for both
    assert [n["metadata"]["name"] for n in document["items"]] == HOSTILE


def _resolver(node: str, endpoint: object) -> Any:
    def call(method: str, path: str) -> Any:
        if path.startswith("/v1/namespaces/"):
            return {"spec": {"nodeName": node}}
        assert path == "/v1/nodes/" + urllib.parse.quote(node, safe=""), path
        return {"status": {"daemonEndpoints": {"nodeApi": endpoint}}}

    return call


@pytest.mark.parametrize(
    ("node", "endpoint", "words"),
    [
        ("n\x1b[2J", "", "has not reported its API endpoint"),
        ("a/b\nforged", "", "has not reported"),
        ("n1", "10.0.0.1:http\n", "bad API endpoint"),
        ("n1", "no-port", "bad API endpoint"),
        ("n1", "10.0.0.1:99999", "bad API endpoint"),
        ("n1", 7, "bad API endpoint"),
    ],
)
def test_exec_direct_escapes_what_the_master_says_of_the_node(
    node: str, endpoint: object, words: str
) -> None:
    with pytest.raises(CliError) as caught:
        nodectl_stream.resolve_node(_resolver(node, endpoint), "default", "web")
    assert words in caught.value.message
    assert caught.value.message.isprintable(), caught.value.message
    target = nodectl_stream.resolve_node(_resolver("n1", "[::1]:10250"), "default", "web")
    assert (target.node, target.host, target.port) == ("n1", "::1", 10250)


class _Stream:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read_all(self, limit: int) -> bytes:
        return self.body


@pytest.mark.parametrize(
    "body",
    [
        b'{"error": {"message": "a\\nb\\u001b[2J"}}',
        b'{"error": "no object"}',
        b"plain\nError from node (200): ok\x1b[31m",
        b"\xff\xfe",
    ],
)
async def test_a_nodes_error_is_one_escaped_line(body: bytes) -> None:
    message = await nodectl_stream._error_of(_Stream(body))  # type: ignore[arg-type]
    assert message.isprintable(), message
