"""nodectl's JSONPath (agent/cli/jsonpath.py): kubectl's subset on the documents ``get`` prints,
and a fuzz over templates built of its sharp pieces: every template either parses and runs or
is a CliError of one bounded line — never another exception, never a hang."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from agent.cli import jsonpath
from agent.errors import CliError
from tests.unit.fuzz.inputs import SEED

DOC: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "metadata": {"name": "web", "labels": {"app": "web", "k8s.io/x": "y"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "restarts": 3, "ready": True},
        },
        {
            "metadata": {"name": "db"},
            "spec": {"nodeName": "n2", "containers": [{"name": "c"}]},
            "status": {"phase": "Pending", "restarts": 0, "ready": False},
        },
    ],
}


def run(template: str, document: object = DOC) -> str:
    return jsonpath.render(jsonpath.parse(template), document)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.kind}", "List"),
        ("{$.kind}", "List"),
        ("kind: {.kind}!", "kind: List!"),
        ("{.items[*].metadata.name}", "web db"),
        ("{.items[0].metadata.name}", "web"),
        ("{.items[-1].metadata.name}", "db"),
        ("{.items[5].metadata.name}", ""),
        ("{.items[0:1].metadata.name}", "web"),
        ("{.items[::-1].metadata.name}", "db web"),
        ("{.items[0,1].spec.nodeName}", "n1 n2"),
        ("{.items[*].spec.containers[*].name}", "a b c"),
        ("{..nodeName}", "n1 n2"),
        ("{.items[0].metadata.labels['k8s.io/x']}", "y"),
        ("{.items[0].metadata['name','labels']}", 'web {"app":"web","k8s.io/x":"y"}'),
        ("{.items[0].status.restarts}", "3"),
        ("{.items[0].status.ready}", "true"),
        ("{.items[0].metadata.labels.*}", "web y"),
        ("{.items[*].nope}", ""),
        ('{.items[?(@.status.phase=="Running")].metadata.name}', "web"),
        ("{.items[?(@.status.phase!='Running')].metadata.name}", "db"),
        ("{.items[?(@.status.restarts>1)].metadata.name}", "web"),
        ("{.items[?(@.status.restarts<=0)].metadata.name}", "db"),
        ("{.items[?(@.status.ready==true)].metadata.name}", "web"),
        ("{.items[?(@.metadata.labels)].metadata.name}", "web"),
        ('{.items[?(@.metadata.name>"dz")].metadata.name}', "web"),
        ('{range .items[*]}{.metadata.name}{"\\t"}{.status.phase}{"\\n"}{end}', None),
        ("{range .items[*]}[{range .spec.containers[*]}{.name},{end}]{end}", "[a,b,][c,]"),
        ("{range .items[*]}{$.kind}:{.metadata.name} {end}", "List:web List:db "),
        ('{"{}"}', "{}"),
    ],
)
def test_kubectl_templates(template: str, expected: str | None) -> None:
    if expected is None:
        expected = "web\tRunning\ndb\tPending\n"
    assert run(template) == expected


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("{", "unclosed '{'"),
        ("{.items[*}", "unclosed '['"),
        ("}", "unexpected '}'"),
        ("{}", "empty expression"),
        ("{range .items[*]}{.a}", "{range} without {end}"),
        ("{.a}{end}", "{end} without {range}"),
        ("{.a b}", "unexpected ' '"),
        ("{.items[x]}", "is not an index"),
        ("{.items[1:2:0]}", "step cannot be 0"),
        ("{.items[?(@.a ~ 1)]}", "unknown operator"),
        ("{.items[?(.a==1)]}", "starts with @"),
        ("{.items[?(@.a==nope)]}", "is not a string, number"),
        ("{.items[?(@.a==1e999)]}", "not a finite number"),
        ('{"abc}', "unterminated string"),
        ("{.}", "a field name was expected"),
        ("{..}", "a field name was expected"),
        ("{.a{.b}}", "'{' inside an expression"),
        ("x" * (jsonpath.MAX_TEMPLATE_CHARS + 1), "longer than"),
        ("{range .a}" * (jsonpath.MAX_RANGE_DEPTH + 1), "nested deeper"),
    ],
)
def test_bad_templates_are_errors_naming_the_problem(template: str, problem: str) -> None:
    with pytest.raises(CliError) as caught:
        jsonpath.parse(template)
    message = str(caught.value)
    assert problem in message and message.startswith(("error parsing jsonpath", "jsonpath"))
    assert caught.value.code == 1
    assert message.isprintable() and len(message) < 300


def test_output_is_bounded() -> None:
    wide = {"a": list(range(1000)), "s": "x" * 100_000}
    template = "{range .a[*]}{range $.a[*]}{$.s}{end}{end}"
    with pytest.raises(CliError, match="output larger than"):
        run(template, wide)


def test_a_deep_document_does_not_exhaust_the_stack() -> None:
    deep: dict[str, Any] = {"name": "bottom"}
    for _ in range(50_000):
        deep = {"x": deep}
    assert run("{..name}", deep) == "bottom"


FUZZ = settings(
    deadline=None,
    database=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow],
)
_PIECES = [
    *["{", "}", "[", "]", "(", ")", ".", "..", "*", "@", "$", "?", ",", ":", "-", " "],
    *["'", '"', "\\", "==", "!=", "<", ">=", "range ", "end", "{range .items[*]}", "{end}"],
    *["items", "metadata", "name", "0", "-1", "1:", "::-1", "9" * 12, "true", "null", "1e9"],
    *['"x"', "'k8s.io/x'", "{.items[*].metadata.name}", "?(@.status.phase=='Running')"],
    *["\x00", "\ud800", "é", "\n", "\t"],
]


@seed(SEED)
@FUZZ
@given(st.lists(st.sampled_from(_PIECES), max_size=24))
def test_fuzzed_templates_parse_and_run_or_are_one_clean_error(pieces: list[str]) -> None:
    template = "".join(pieces)
    try:
        nodes = jsonpath.parse(template)
    except CliError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    try:
        jsonpath.render(nodes, DOC)
    except CliError as exc:  # only the output bound may refuse a parsed template
        assert "output larger than" in str(exc)
