"""``nodectl get -w`` (``agent.cli.nodectl_watch``) over a scripted transport: the table then a
line per change that shows something new, ``--output-watch-events``, ``--watch-only``, ``-o
json|name``, a selector's leavers as DELETED; and the resume logic — a dropped connection
retried with back-off (one stderr line per outage) and resumed at the last revision, a 410
relisted printing only what differs, node watches always relisted, a watch the master ends at
its bound reconnected at once."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent.cli import nodectl_watch as nw
from agent.errors import CliError, ServerError, WatchDroppedError, WatchGoneError


def pod(
    name: str, phase: str = "Pending", ip: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    statuses = [{"name": "c", "ready": phase == "Running", "restartCount": 0}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
        "status": {"phase": phase, "podIP": ip, "containerStatuses": statuses},
    }


def node(name: str, ready: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"unschedulable": False},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "registration": {"phase": "Approved", "admittedBy": "token"},
            "addresses": [],
        },
    }


def line(kind: str, obj: dict[str, Any], rv: int | None = None) -> bytes:
    event: dict[str, Any] = {"type": kind, "object": obj}
    if rv is not None:
        event["resourceVersion"] = rv
    return json.dumps(event).encode() + b"\n"


def end(rv: int) -> bytes:
    meta = {"resourceVersion": str(rv), "annotations": {nw.INITIAL_EVENTS_END: "true"}}
    return line("BOOKMARK", {"metadata": meta}, rv)


# One connection: lines, then optionally an exception (raised mid-stream), or an exception
# raised when connecting.
Script = list[bytes | BaseException] | BaseException


@dataclass
class ScriptedTransport:
    """A watch's connections, scripted: what each sends, in order; the paths asked recorded.
    Past the script, a connection interrupts the test (as Ctrl-C would)."""

    scripts: list[Script]
    paths: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def lines(self, path: str) -> Iterator[Iterator[bytes]]:
        self.paths.append(path)
        if not self.scripts:
            raise KeyboardInterrupt
        script = self.scripts.pop(0)
        if isinstance(script, BaseException):
            raise script

        def read() -> Iterator[bytes]:
            for item in script:
                if isinstance(item, BaseException):
                    raise item
                yield item

        yield read()


@dataclass
class Run:
    out: str
    err: str
    paths: list[str]
    sleeps: list[float]


def watch(
    scripts: list[Script], kind: str = "pods", watch_only: bool = False, **options: Any
) -> Run:
    transport = ScriptedTransport(scripts)
    out, err = io.StringIO(), io.StringIO()
    sleeps: list[float] = []
    clock = iter(range(0, 10_000, 2))  # every connection lasts 2 "seconds"
    rendering = nw.Rendering(kind=kind, output=options.pop("output", "table"), **options)
    watcher = nw.Watcher(
        transport,
        nw.Printer(rendering, out, err),
        "default" if kind == "pods" else None,
        watch_only,
        err=err,
        sleep=sleeps.append,
        clock=lambda: float(next(clock)),
    )
    with pytest.raises(KeyboardInterrupt):
        watcher.run()
    return Run(out.getvalue(), err.getvalue(), transport.paths, sleeps)


def cells(out: str) -> list[list[str]]:
    return [row.split() for row in out.splitlines()]


def test_the_table_then_a_line_per_change_that_shows_something() -> None:
    run = watch(
        [
            [
                line("ADDED", pod("a"), 3),
                end(5),
                line("MODIFIED", pod("a", "Running"), 6),
                line("MODIFIED", pod("a", "Running", ip="10.0.0.9"), 7),  # no column changes
                line("BOOKMARK", {"metadata": {"resourceVersion": "9"}}, 9),
                line("ADDED", pod("b"), 10),
                line("DELETED", pod("a", "Running"), 11),
            ]
        ]
    )
    rows = cells(run.out)
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [r[:3] for r in rows[1:]] == [
        ["a", "0/1", "Pending"],
        ["a", "1/1", "Running"],
        ["b", "0/1", "Pending"],
        ["a", "1/1", "Running"],
    ]
    assert run.paths[0] == "/v1/pods?watch=1&sendInitialEvents=true&namespace=default"
    assert run.err == ""
    # The columns line up with the header's.
    lines = run.out.splitlines()
    assert {ln.index("0/1") if "0/1" in ln else ln.index("1/1") for ln in lines[1:]} == {
        lines[0].index("READY")
    }


def test_watch_events_add_an_event_column_and_watch_only_skips_the_table() -> None:
    script: list[Script] = [[line("ADDED", pod("a"), 3), end(5), line("DELETED", pod("a"), 6)]]
    run = watch(list(script), watch_events=True)
    assert [r[:2] for r in cells(run.out)] == [["EVENT", "NAME"], ["ADDED", "a"], ["DELETED", "a"]]
    script = [[line("ADDED", pod("a"), 3), end(5), line("MODIFIED", pod("a", "Running"), 6)]]
    only = watch(script, watch_only=True)
    assert [r[:3] for r in cells(only.out)] == [
        ["NAME", "READY", "STATUS"],
        ["a", "1/1", "Running"],
    ]


def test_no_pods_says_so_and_the_first_change_brings_the_header() -> None:
    run = watch([[end(5), line("ADDED", pod("a"), 6)]], namespace="default")
    assert run.err == "No resources found in default namespace.\n"
    assert [r[0] for r in cells(run.out)] == ["NAME", "a"]


def test_json_prints_each_changed_object_and_name_each_name() -> None:
    script: list[Script] = [
        [line("ADDED", pod("a"), 3), end(5), line("MODIFIED", pod("a", "Running"), 6)]
    ]
    run = watch(list(script), output="json")
    decoder = json.JSONDecoder()
    text, objects = run.out, []
    while text.strip():
        obj, at = decoder.raw_decode(text.lstrip())
        objects.append(obj)
        text = text.lstrip()[at:]
    assert [o["status"]["phase"] for o in objects] == ["Pending", "Running"]
    assert watch(list(script), output="name").out == "pod/a\npod/a\n"


def test_a_pod_leaving_the_selection_is_deleted_from_the_view() -> None:
    from agent.cli import output as out

    run = watch(
        [
            [
                line("ADDED", pod("a", labels={"app": "web"}), 3),
                line("ADDED", pod("b"), 4),
                end(5),
                line("MODIFIED", pod("a", labels={"app": "db"}), 6),
                line("MODIFIED", pod("b", "Running"), 7),  # never in the view
            ]
        ],
        watch_events=True,
        selector=out.parse_selector("app=web"),
    )
    assert [r[:2] for r in cells(run.out)[1:]] == [["ADDED", "a"], ["DELETED", "a"]]


def test_a_dropped_watch_resumes_at_its_last_revision_with_one_message() -> None:
    run = watch(
        [
            [
                line("ADDED", pod("a"), 3),
                end(5),
                line("MODIFIED", pod("a", "Running"), 6),
                WatchDroppedError("the watch broke: IncompleteRead"),
            ],
            WatchDroppedError("cannot reach the master: connection refused"),
            WatchDroppedError("cannot reach the master: connection refused"),
            [line("DELETED", pod("a", "Running"), 8)],
        ]
    )
    assert run.paths[1:4] == ["/v1/pods?watch=1&resourceVersion=6&namespace=default"] * 3
    assert run.err.count("\n") == 1 and "reconnecting" in run.err
    assert run.sleeps == [0.5, 1.0, 2.0]
    assert [r[:3] for r in cells(run.out)[1:]] == [
        ["a", "0/1", "Pending"],
        ["a", "1/1", "Running"],
        ["a", "1/1", "Running"],
    ]


def test_a_new_outage_after_a_working_watch_says_so_again() -> None:
    drop = WatchDroppedError("the watch broke")
    run = watch(
        [
            [end(5), drop],
            [line("ADDED", pod("a"), 6), drop],
            [line("ADDED", pod("b"), 7)],
        ]
    )
    assert run.err.count("reconnecting") == 2
    assert run.sleeps == [0.5, 0.5]


def test_after_410_the_watch_relists_and_prints_only_the_differences() -> None:
    run = watch(
        [
            [line("ADDED", pod("a"), 3), line("ADDED", pod("b"), 4), end(5)],
            WatchGoneError("revision 5 is compacted"),
            [
                line("ADDED", pod("a"), 3),  # unchanged: nothing printed
                line("ADDED", pod("c"), 40),
                end(50),  # b is gone
                line("MODIFIED", pod("c", "Running"), 51),
            ],
        ],
        watch_events=True,
    )
    assert run.paths == [
        "/v1/pods?watch=1&sendInitialEvents=true&namespace=default",
        "/v1/pods?watch=1&resourceVersion=5&namespace=default",
        "/v1/pods?watch=1&sendInitialEvents=true&namespace=default",
        "/v1/pods?watch=1&resourceVersion=51&namespace=default",
    ]
    assert [r[:2] for r in cells(run.out)[1:]] == [
        ["ADDED", "a"],
        ["ADDED", "b"],
        ["ADDED", "c"],
        ["DELETED", "b"],
        ["MODIFIED", "c"],
    ]
    assert run.err == ""  # a relist is not an outage


def test_a_watch_ended_at_its_bound_is_reconnected_at_once_quietly() -> None:
    run = watch([[line("ADDED", pod("a"), 3), end(5)], []])
    assert run.sleeps == [] and run.err == ""
    assert run.paths[1] == "/v1/pods?watch=1&resourceVersion=5&namespace=default"


def test_a_node_watch_always_relists_and_shows_ready_flips() -> None:
    run = watch(
        [
            [line("ADDED", node("n1")), end(0), WatchDroppedError("the watch broke")],
            [line("ADDED", node("n1", "False")), end(0)],
        ],
        kind="nodes",
    )
    assert run.paths == ["/v1/nodes?watch=1&sendInitialEvents=true"] * 3
    assert [r[:2] for r in cells(run.out)] == [
        ["NAME", "STATUS"],
        ["n1", "Ready"],
        ["n1", "NotReady"],
    ]


def test_an_error_event_other_than_410_ends_the_watch_as_the_servers_error() -> None:
    bad = json.dumps({"type": "ERROR", "object": {"error": {"code": 403, "message": "no"}}})
    with pytest.raises(ServerError, match=r"Error from server \(Forbidden\): no"):
        watch([[bad.encode() + b"\n"]])


def test_giving_up_after_failing_for_long() -> None:
    drops: list[Script] = [WatchDroppedError("refused")] * 1000
    transport = ScriptedTransport(drops)
    clock = iter(range(0, 100_000, 10))
    watcher = nw.Watcher(
        transport,
        nw.Printer(nw.Rendering(kind="pods", output="table"), io.StringIO()),
        None,
        err=io.StringIO(),
        sleep=lambda s: None,
        clock=lambda: float(next(clock)),
    )
    with pytest.raises(CliError, match="gave up the watch"):
        watcher.run()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json\n",
        b"[]\n",
        b'{"type": "ADDED"}\n',
        b'{"type": "NOPE", "object": {}}\n',
        b'{"type": "ADDED", "object": {"metadata": {"name": "a"}}}\n',
        b'{"type": "ADDED", "object": {"metadata": {}, "spec": {}, "status": {}}}\n',
        b'{"type": "ERROR", "object": {"error": {"code": true}}}\n',
        b'{"type": "MODIFIED", "object": {"metadata": {"name": "a", "namespace": "d"},'
        b' "spec": {}, "status": {}}, "resourceVersion": "-1"}\n',
    ],
)
def test_a_line_that_is_not_an_event_is_an_error_naming_the_watch(raw: bytes) -> None:
    with pytest.raises(CliError, match="not an event"):
        nw.decode_event(raw, "pods")


@pytest.mark.parametrize(
    "args",
    [
        ["get", "pods,nodes", "-w"],
        ["get", "csr", "-w"],
        ["get", "pods", "-w", "-o", "custom-columns=N:.metadata.name"],
        ["get", "pods", "-w", "--field-selector", "spec.bogus=1"],
        ["get", "pods", "web", "-w", "-l", "app=web"],
        ["get", "events", "--for", "deployment/x"],
        ["get", "events", "web"],
        ["get", "pods", "--for", "pod/x"],
    ],
)
def test_bad_watch_and_events_arguments_are_errors_before_any_request(
    args: list[str], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import nodectl

    config = tmp_path / "config"
    config.write_text(
        'server = "https://127.0.0.1:1"\nca = "x"\nclient_cert = "x"\nclient_key = "x"\n'
    )
    code = nodectl.main(["--config", str(config), *args])
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("nodectl: ") and err.count("\n") == 1, err


def test_yaml_and_jsonpath_print_each_changed_object() -> None:
    script: list[Script] = [
        [line("ADDED", pod("a"), 3), end(5), line("MODIFIED", pod("a", "Running"), 6)]
    ]
    documents = watch(list(script), output="yaml").out
    assert documents.count("---\n") == 2 and "phase: Running" in documents
    template = "{.metadata.name}={.status.phase}{'\\n'}"
    assert watch(list(script), output="jsonpath", template=template).out == (
        "a=Pending\na=Running\n"
    )


def test_a_node_relisted_with_a_newer_heartbeat_is_no_change() -> None:
    beat = node("n1")
    later = node("n1")
    beat["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:00Z"
    later["status"]["conditions"][0]["lastHeartbeatTime"] = "2026-01-01T00:00:09Z"
    run = watch(
        [
            [line("ADDED", beat), end(0), WatchDroppedError("the watch broke")],
            [line("ADDED", later), end(0)],
        ],
        kind="nodes",
        output="name",
    )
    assert run.out == "node/n1\n"
