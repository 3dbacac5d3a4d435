"""``nodectl get``'s output for scripts and its selections, as kubectl's (issue 17 item 2):
``-o name``, ``-o jsonpath=…``, ``-o custom-columns=…``, ``--no-headers``, ``--show-labels``,
``-l`` (equality, set-based, existence), ``--field-selector``, ``TYPE/NAME``, ``get all``, the
AGE and wide columns, NodeLost from the nodes' readiness."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.cli import nodectl, output
from agent.errors import CliError

CREATED = "2026-01-01T00:00:00Z"


def _node(name: str, ready: str = "True", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "creationTimestamp": CREATED},
        "spec": {"unschedulable": False},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "registration": {"phase": "Approved", "admittedBy": "open"},
            "nodeInfo": {"agentVersion": "0.1.0"},
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
        },
    }


def _pod(name: str, node: str = "n1", phase: str = "Running", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": labels,
            "creationTimestamp": CREATED,
        },
        "spec": {"containers": [{"name": "c"}], "nodeName": node},
        "status": {
            "phase": phase,
            "podIP": "172.17.0.2",
            "containerStatuses": [
                {
                    "name": "c",
                    "ready": phase == "Running",
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
                    if phase == "Succeeded"
                    else {"running": {"startedAt": CREATED}},
                }
            ],
        },
    }


NODES = [_node("n1", zone="a"), _node("n2", ready="False", zone="b")]
NODES[0]["status"]["master"] = "https://10.0.0.9:6443"
PODS = [
    _pod("web", app="web", tier="front"),
    _pod("db", node="n2", app="db"),
    _pod("job", phase="Succeeded", app="batch"),
    _pod("plain", node=""),
]


class StubClient:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        assert method == "GET"
        self.calls.append(path)
        if path == "/v1/nodes":
            return {"items": NODES}
        assert path.startswith("/v1/pods"), path
        return {"items": PODS}


def get(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    nodectl.cmd_get(StubClient(), nodectl.parse_args(["get", *argv]))  # type: ignore[arg-type]
    return capsys.readouterr().out


def test_o_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert get(capsys, "pods", "-o", "name") == "pod/web\npod/db\npod/job\npod/plain\n"
    assert get(capsys, "all", "-o", "name").splitlines()[:3] == ["node/n1", "node/n2", "pod/web"]
    assert get(capsys, "pod/db", "node/n1", "-o", "name") == "pod/db\nnode/n1\n"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.items[*].metadata.name}", "web db job plain"),
        ("{.items[0].metadata.name}", "web"),
        ('{range .items[*]}{.metadata.name}{"\\t"}{.spec.nodeName}{"\\n"}{end}', None),
        ('{.items[?(@.status.phase=="Succeeded")].metadata.name}', "job"),
        ("{.kind}", "List"),
    ],
)
def test_o_jsonpath(
    capsys: pytest.CaptureFixture[str], template: str, expected: str | None
) -> None:
    out = get(capsys, "pods", f"-o=jsonpath={template}")  # kubectl users' -o=…; -o … too
    assert get(capsys, "pods", "-o", f"jsonpath={template}") == out
    if expected is None:
        assert out == "web\tn1\ndb\tn2\njob\tn1\nplain\t\n"
    else:
        assert out == expected  # as kubectl: no newline added


def test_o_jsonpath_of_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert get(capsys, "pod", "web", "-o", "jsonpath={.metadata.labels.tier}") == "front"


def test_a_bad_jsonpath_is_an_error_not_a_traceback() -> None:
    with pytest.raises(CliError, match="error parsing jsonpath") as caught:
        nodectl.cmd_get(StubClient(), nodectl.parse_args(["get", "pods", "-o", "jsonpath={.a["]))  # type: ignore[arg-type]
    assert caught.value.code == 1


def test_o_custom_columns(capsys: pytest.CaptureFixture[str]) -> None:
    out = get(
        capsys, "pods", "-o", "custom-columns=NAME:.metadata.name,NODE:{.spec.nodeName},X:.nope"
    )
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "NODE", "X"],
        ["web", "n1", "<none>"],
        ["db", "n2", "<none>"],
        ["job", "n1", "<none>"],
        ["plain", "<none>"],
    ]
    out = get(capsys, "pods", "--no-headers", "-o", "custom-columns=N:.metadata.name")
    assert out.split() == ["web", "db", "job", "plain"]


@pytest.mark.parametrize("bad", ["custom-columns=NAME", "custom-columns=:.a", "yml", "jsonpath="])
def test_bad_output_formats(bad: str) -> None:
    with pytest.raises(CliError):
        nodectl.cmd_get(StubClient(), nodectl.parse_args(["get", "pods", "-o", bad]))  # type: ignore[arg-type]


def test_tables_have_age_and_node_lost(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [line.split() for line in get(capsys, "pods").splitlines()]
    assert rows[0] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert rows[1][:3] == ["web", "1/1", "Running"]
    assert rows[2][:3] == ["db", "1/1", "NodeLost"]  # n2 is NotReady
    assert rows[3][:3] == ["job", "0/1", "Completed"]
    assert all(row[4].endswith(("d", "y", "h", "m", "s")) for row in rows[1:])


def test_wide_columns(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [line.split() for line in get(capsys, "pods", "-o", "wide").splitlines()]
    assert rows[0][-2:] == ["IP", "NODE"]
    assert rows[1][-2:] == ["172.17.0.2", "n1"]
    rows = [line.split() for line in get(capsys, "nodes", "-o", "wide").splitlines()]
    assert rows[0] == [
        "NAME",
        "STATUS",
        "REGISTRATION",
        "TRUST",
        "AGE",
        "VERSION",
        "INTERNAL-IP",
        "CONTAINER-RUNTIME",
        "CERT-EXPIRY",
        "MASTER",
    ]
    assert rows[2][:2] == ["n2", "NotReady"]
    assert rows[1][6:8] == ["10.0.0.1", "docker"]
    assert rows[1][-1] == "https://10.0.0.9:6443"  # status.master: the node's master
    assert rows[2][-1] == "-"  # a node that has not said (an older agent)


def test_no_headers_and_show_labels(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [line.split() for line in get(capsys, "pods", "--show-labels").splitlines()]
    assert rows[0][-1] == "LABELS"
    assert rows[1][-1] == "app=web,tier=front"
    assert rows[4][-1] == "<none>"
    rows = [line.split() for line in get(capsys, "nodes", "--no-headers").splitlines()]
    assert [row[0] for row in rows] == ["n1", "n2"]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("app=web", ["web"]),
        ("app==web", ["web"]),
        ("app!=web", ["db", "job", "plain"]),
        ("app in (web,db)", ["web", "db"]),
        ("app notin (web, db)", ["job", "plain"]),
        ("tier", ["web"]),
        ("!tier", ["db", "job", "plain"]),
        ("app,!tier", ["db", "job"]),
        ("app in (web,db),tier=front", ["web"]),
        ("", ["web", "db", "job", "plain"]),
    ],
)
def test_label_selectors(
    capsys: pytest.CaptureFixture[str], selector: str, names: list[str]
) -> None:
    assert get(capsys, "pods", "-l", selector, "-o", "name").split() == [f"pod/{n}" for n in names]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("spec.nodeName=n1", ["web", "job"]),
        ("spec.nodeName!=n1", ["db", "plain"]),
        ("status.phase=Running,spec.nodeName==n2", ["db"]),
        ("metadata.name=web", ["web"]),
    ],
)
def test_field_selectors(
    capsys: pytest.CaptureFixture[str], selector: str, names: list[str]
) -> None:
    assert get(capsys, "pods", "--field-selector", selector, "-o", "name").split() == [
        f"pod/{n}" for n in names
    ]


@pytest.mark.parametrize(
    "argv",
    [
        ["pods", "-l", "app in (web"],
        ["pods", "-l", "a b"],
        ["pods", "--selector=-bad-key=x"],
        ["pods", "-l", "app=-bad-value-"],
        ["pods", "-l", "app in ()"],
        ["pods", "--field-selector", "spec.image=x"],
        ["pods", "--field-selector", "nonsense"],
        ["pods", "web", "-l", "app=web"],
        ["pods,nodes", "web"],
        ["pod/"],
        ["pod/web", "nodes"],
        ["all/x"],
        ["deployments"],
    ],
)
def test_bad_selections_are_errors(argv: list[str]) -> None:
    with pytest.raises(CliError):
        nodectl.cmd_get(StubClient(), nodectl.parse_args(["get", *argv]))  # type: ignore[arg-type]


def test_get_all_prints_each_kind_with_its_type(capsys: pytest.CaptureFixture[str]) -> None:
    out = get(capsys, "all")
    nodes, pods = out.split("\n\n")
    assert nodes.splitlines()[1].startswith("node/n1 ")
    assert pods.splitlines()[1].startswith("pod/web ")


@pytest.mark.parametrize("count", [0, 1, 2])
def test_json_is_a_list_whatever_the_count(capsys: pytest.CaptureFixture[str], count: int) -> None:
    names = ["web", "db"][:count]
    argv = ["pods", *names] if count else ["pods", "-l", "app=nothing"]
    document = json.loads(get(capsys, *argv, "-o", "json"))
    if count == 1:
        assert document["kind"] == "Pod"  # get TYPE NAME: the object
    else:
        assert document["kind"] == "List" and len(document["items"]) == count


def test_type_slash_name_is_the_object_and_pod_names_keep_their_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert json.loads(get(capsys, "pod/db", "-o", "json"))["metadata"]["name"] == "db"
    assert get(capsys, "pods", "db", "web", "-o", "name") == "pod/db\npod/web\n"


def test_an_empty_list_says_so_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    get(capsys, "pods", "-l", "app=nothing")
    assert capsys.readouterr().err == ""
    nodectl.cmd_get(StubClient(), nodectl.parse_args(["get", "pods", "-l", "app=nothing"]))  # type: ignore[arg-type]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "No resources found in default namespace.\n"


def test_selector_parsing_is_kubectls() -> None:
    [req] = output.parse_selector("example.com/app notin (a,b)")
    assert (req.key, req.operator, req.values) == ("example.com/app", "notin", {"a", "b"})
    assert output.parse_selector("  ") == ()


@pytest.mark.parametrize(
    ("stamp", "epoch"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2000-02-29T12:34:56Z", 951827696),
        ("2026-01-01T00:00:00Z", 1767225600),
        ("1969-12-31T23:59:59Z", -1),
        ("2026-13-01T00:00:00Z", None),
        ("2026-01-01 00:00:00Z", None),
        ("2026-01-01T00:00:00.5Z", None),
        ("\uff12\uff10\uff12\uff16-01-01T00:00:00Z", None),  # fullwidth digits
        ("", None),
    ],
)
def test_api_timestamps_are_read_without_strptime(stamp: str, epoch: int | None) -> None:
    assert nodectl._epoch(stamp) == epoch


def test_node_status_names_failing_conditions_by_their_polarity() -> None:
    node = _node("n1")
    node["status"]["conditions"] += [
        {"type": "DockerReady", "status": "False", "reason": "DockerUnreachable"},
        {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure"},
    ]
    # DiskPressure False is healthy (Kubernetes' polarity); DockerReady False is not.
    assert nodectl._node_row(node, wide=False)[1] == "Ready,DockerUnreachable"
    node["status"]["conditions"][2] = {
        "type": "DiskPressure",
        "status": "True",
        "reason": "KubeletHasDiskPressure",
    }
    assert nodectl._node_row(node, wide=False)[1] == (
        "Ready,DockerUnreachable,KubeletHasDiskPressure"
    )
