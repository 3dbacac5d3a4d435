"""``nodectl explain`` (agent.cli.nodectl_explain): its field list is the parser's table
(agent.manifest.SUBSET), each field described, and what it says of a field is what the parser
does with it (a default accepted, anything else refused); kubectl's layout and errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agent.cli import nodectl
from agent.cli.nodectl_explain import DESCRIPTIONS, FIELDS, explain, status
from agent.errors import ManifestError
from agent.manifest import SUBSET, parse_pod

BASE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "image": "busybox:1"}]},
}


def test_the_fields_are_the_parsers_and_every_supported_one_is_described() -> None:
    assert set(FIELDS) == set(SUBSET)
    for kind, subset in SUBSET.items():
        every = set(subset.supported) | set(subset.unsupported) | set(subset.dropped)
        assert set(FIELDS[kind]) == every, kind
        assert kind in DESCRIPTIONS
        for name in subset.supported:
            assert FIELDS[kind][name].description, f"{kind}.{name} has no description"


def test_every_object_of_the_table_is_reachable_from_pod() -> None:
    reached, todo = {"Pod"}, ["Pod"]
    while todo:
        for field in FIELDS[todo.pop()].values():
            if field.kind is not None and field.kind in FIELDS and field.kind not in reached:
                reached.add(field.kind)
                todo.append(field.kind)
    assert reached == set(FIELDS)


def parsed(section: str, name: str, value: object) -> bool:
    doc = copy.deepcopy(BASE)
    target = doc["spec"] if section == "PodSpec" else doc["spec"]["containers"][0]
    target[name] = value
    try:
        parse_pod(doc, source="test", warnings=[])
    except ManifestError:
        return False
    return True


@pytest.mark.parametrize("section", ["PodSpec", "Container"])
def test_what_explain_says_of_a_field_is_what_the_parser_does(section: str) -> None:
    subset = SUBSET[section]
    for name in FIELDS[section]:
        state = status(section, name)
        if state == "default":
            assert subset.defaults is not None
            assert parsed(section, name, subset.defaults[name]), name
        if state in ("default", "empty"):
            assert parsed(section, name, []), name
            assert not parsed(section, name, ["something"]), name
        if state == "unsupported":
            assert not parsed(section, name, "something"), name


def test_explain_a_field_as_kubectl_lays_it_out() -> None:
    text = explain("pod.spec.containers", recursive=False)
    assert text.startswith("KIND:       Pod\nVERSION:    v1\n\nFIELD: containers <[]Container>\n")
    assert "\nDESCRIPTION:\n    List of containers" in text
    assert "\nFIELDS:\n  args\t<[]string>\n    Arguments to the entrypoint" in text
    assert "  name\t<string> -required-\n" in text
    assert "  envFrom\t<[]EnvFromSource> [not supported]\n" in text
    assert "  tty\t<boolean> [default only]\n" in text
    dns = explain("pods.spec.dnsPolicy", recursive=False)
    assert 'accepted at its Kubernetes default ("ClusterFirst")' in dns
    assert "FIELDS:" not in dns
    assert "[read-only: accepted and dropped]" in explain("po.status", recursive=False)


def test_recursive_lists_the_supported_tree_by_name() -> None:
    text = explain("pod.spec.containers", recursive=True)
    assert "  env\t<[]EnvVar>\n    name\t<string> -required-\n" in text
    assert "      fieldRef\t<ObjectFieldSelector>\n        apiVersion\t<string>\n" in text
    assert "Arguments to the entrypoint" not in text
    whole = explain("pod", recursive=True)
    assert "      preStart\t<[]PreStartHook>\n" in whole


@pytest.mark.parametrize(
    ("path", "code", "message"),
    [
        ("node", 2, 'unknown resource type "node" (explain knows: pods (pod, po))'),
        ("pod.spec.nope", 1, 'field "nope" does not exist in PodSpec (fields: '),
        ("pod.spec.affinity.x", 1, "affinity <Affinity> has no fields to explain"),
        ("pod.metadata.name.x", 1, "name <string> has no fields to explain"),
    ],
)
def test_a_path_that_is_not_there(
    path: str, code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert nodectl.main(["explain", path]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
