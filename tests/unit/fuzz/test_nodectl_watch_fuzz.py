"""Fuzz of ``nodectl get -w``'s reading of the master's watch (``agent.cli.nodectl_watch``):
a line decoded and then printed (a table row, as the watch prints it) lets nothing but our
errors out (``CliError``: a line that is not an event, or an object nodectl cannot show), for
pods and nodes, whatever the line holds."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import pytest

from agent.cli import nodectl_watch as nw
from agent.errors import CliError
from tests.unit.fuzz.inputs import (
    dumps,
    holds,
    mutate_bytes,
    mutate_structure,
    random_bytes,
    random_structure,
    rng,
    sample,
)

COUNT = 2000
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "a", "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"},
    "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
    "status": {
        "phase": "Running",
        "containerStatuses": [
            {"name": "c", "ready": True, "restartCount": 1, "state": {"running": {}}}
        ],
    },
}
NODE = {
    "metadata": {"name": "n1", "labels": {"a": "b"}},
    "spec": {"unschedulable": True},
    "status": {
        "conditions": [{"type": "Ready", "status": "True"}],
        "registration": {"phase": "Approved"},
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        "nodeInfo": {"agentVersion": "1"},
    },
}
BOOKMARK = {"metadata": {"resourceVersion": "5", "annotations": {nw.INITIAL_EVENTS_END: "true"}}}


def events(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "ADDED", "object": obj, "resourceVersion": 7},
        {"type": "MODIFIED", "object": obj, "resourceVersion": "8"},
        {"type": "DELETED", "object": obj},
        {"type": "BOOKMARK", "object": BOOKMARK, "resourceVersion": 5},
        {"type": "ERROR", "object": {"error": {"code": 410, "message": "gone"}}},
    ]


def makers(obj: dict[str, Any]) -> list[Any]:
    templates = events(obj)
    lines = [json.dumps(e).encode() for e in templates]

    def mutated_line(r: random.Random) -> bytes:
        return mutate_bytes(r, r.choice(lines))

    def mutated_event(r: random.Random) -> bytes:
        return dumps(mutate_structure(r, r.choice(templates)))

    def random_json(r: random.Random) -> bytes:
        return dumps(random_structure(r))

    return [mutated_line, mutated_event, mutated_event, mutated_event, random_json, random_bytes]


@pytest.mark.parametrize(("kind", "obj"), [("pods", POD), ("nodes", NODE)])
@pytest.mark.parametrize("output", ["wide", "name"])
def test_a_watch_line_is_printed_or_refused_with_our_error(
    kind: str, obj: dict[str, Any], output: str
) -> None:
    rendering = nw.Rendering(kind=kind, output=output, watch_events=True, show_labels=True)
    printer = nw.Printer(rendering, io.StringIO(), io.StringIO())

    def read_and_print(line: bytes) -> None:
        event = nw.decode_event(line, kind)
        if event.type != "BOOKMARK":
            printer.change(event.type, event.obj)

    holds(read_and_print, sample(rng(f"nodectl-watch-{kind}-{output}"), makers(obj), COUNT))


@pytest.mark.parametrize(
    "line",
    [
        b"[" * 100_000,
        b'{"type": {"a": 1}, "object": {}}',
        b'{"type": "ADDED", "object": ' + b'{"a": ' * 100_000,
        b'{"type": "ADDED", "object": {}, "resourceVersion": 1e999}',
        b'{"type": "MODIFIED", "object": {"metadata": {"name": "a", "namespace": "d"}, '
        b'"spec": {}, "status": {}}, "resourceVersion": "' + b"9" * 30 + b'"}',
        b'{"type": "ERROR", "object": {"error": {"code": 410.0}}}',
        b"\xef\xbb\xbf{}",
    ],
)
def test_hostile_lines(line: bytes) -> None:
    with pytest.raises(CliError):
        nw.decode_event(line, "pods")


def test_a_line_longer_than_the_limit_is_refused_unread() -> None:
    with pytest.raises(CliError, match="longer than"):
        nw.decode_event(b" " * (nw.MAX_LINE_BYTES + 1), "pods")
