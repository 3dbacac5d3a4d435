"""The strict loader of manifest texts (``agent.manifest_loader``): every hostile manifest of
issue 14 (the shared corpus, tests/hostile_manifests.py) through both paths into the parser, and
the loader's own rules — bounds, tags, aliases, duplicate keys, surrogates, JSON, messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.errors import ManifestError
from agent.manifest import parse_manifests, parse_pod, pod_documents
from agent.manifest_loader import (
    C_LOADER,
    MAX_DEPTH,
    MAX_NODES,
    load_json,
    load_yaml,
    short_path,
    shown,
)
from tests.hostile_manifests import BODIES, FILES, assert_clear, body_expectation
from tests.unit.fuzz.inputs import holds


@pytest.mark.parametrize("hostile", FILES, ids=lambda h: h.id)
def test_a_hostile_file_is_a_clear_manifest_error(hostile: Any) -> None:
    def parse(text: str) -> None:
        with pytest.raises(ManifestError) as info:
            parse_manifests(text, source="file:/etc/node-agent/pods/h.yaml", node_name="n1")
        assert info.value.source == "file:/etc/node-agent/pods/h.yaml"
        assert_clear(info.value, hostile.field, hostile.problem)

    holds(parse, [hostile.text])  # (and within the fuzz tests' hang detector)


@pytest.mark.parametrize("hostile", BODIES, ids=lambda h: h.id)
def test_a_hostile_body_is_a_clear_manifest_error(hostile: Any) -> None:
    """The master's path: the JSON body through the same loader's bounds, then the parser."""
    field, problem = body_expectation(hostile)

    def parse(body: bytes) -> None:
        with pytest.raises(ManifestError) as info:
            parse_pod(load_json(body, source="api"), source="api")
        assert_clear(info.value, field, problem)

    holds(parse, [hostile.body])


def test_the_c_loader_is_used_where_the_build_has_it() -> None:
    assert yaml.__with_libyaml__ == C_LOADER


# --- YAML ---------------------------------------------------------------------------------


def test_core_tags_and_plain_scalars() -> None:
    text = """
a: !!str 1
b: !!int "5"
c: !!float "1.5"
d: !!bool "true"
e: !!null ""
f: !!map {x: 1}
g: !!seq [1]
h: 2024-01-01
i: 2024-01-01T10:00:00Z
j: =
"""
    assert load_yaml(text, source="t") == [
        {
            "a": "1",
            "b": 5,
            "c": 1.5,
            "d": True,
            "e": None,
            "f": {"x": 1},
            "g": [1],
            "h": "2024-01-01",  # Kubernetes has no date type: a date is its text
            "i": "2024-01-01T10:00:00Z",
            "j": "=",  # (PyYAML's `value` type, which no constructor knows)
        }
    ]


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("a: !!set {x}\n", "a", 'the tag "tag:yaml.org,2002:set" is not supported'),
        ("a: !!omap [x: 1]\n", "a", "is not supported"),
        ("a: !local x\n", "a", 'the tag "!local" is not supported'),
        ("a: ! 12\n", "a", 'the tag "!" is not supported'),  # YAML 1.1: 12, YAML 1.2: "12"
        ("a: ! [1]\n", "a", 'the tag "!" is not supported'),
        ("a: !!float x\n", "a", '"x" is not a valid float'),
        ("a: !!null x\n", "a", '"x" is not a valid null'),
        ("a: !!int 0x\n", "a", '"0x" is not a valid int'),
        ("a: !!merge x\n", "a", "is not supported"),
        ("a: 1" + ":1" * 60 + "\n", "a", "a number of 121 characters"),  # base 60: quadratic
        ("a: !!int " + "1" * 101 + "\n", "a", "a number of 101 characters"),
        ("a:\n  b: [1, {c: *x}]\n", "a.b[1].c", "the alias *x refers to no anchor before it"),
        ("a: &x [1, *x]\n", "a[1]", "the alias *x refers to a value that contains it"),
        ("a: &x\n  b: *x\n", "a.b", "refers to a value that contains it"),
        ("a: &x 1\n---\nb: *x\n", "b", "refers to no anchor before it"),  # anchors: per document
        ("a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH, "a[0][0]", "nested more than 100"),
        # libyaml gives up at 1,000 before it says a word; the path is found by the pure-Python
        # parser, read only to where the walk gives up (its look-ahead is quadratic in depth)
        ("a: " + "[" * 30_000, "a[0][0]", "exceeded maximum nesting depth"),
        ("a: [" + "1," * MAX_NODES + "]", "a[", f"more than {MAX_NODES} values in one text"),
        ("a: b\n\x01", "", "control characters are not allowed (character #x0001 at offset 5)"),
        ("a:\n  - 1\n  - [2\n", "a[1]", "invalid YAML (line 4, column 1)"),
        ("x: 1\n1: a\n01: b\n", "01", 'duplicate key 1 (equal to "1")'),
        # libyaml reads a flow collection to its end before it says a word of it: the path is
        # found by the pure-Python parser, which stops at the error
        ('a: [{b: 1, c: "\\udfff"}]\n', "a[0].c", "found invalid Unicode character escape"),
        # a surrogate in the text itself (libyaml cannot even take the text)
        ('x: 1\n---\na:\n  b: [1, "x\ud800"]\n', "a.b[1]", "the text holds a lone surrogate"),
    ],
)
def test_refused_yaml_names_path_and_line(text: str, field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_yaml(text, source="t.yaml")
    assert info.value.source.startswith("t.yaml")
    assert_field_and_problem(info.value, field, problem)


def assert_field_and_problem(error: ManifestError, field: str, problem: str) -> None:
    assert error.field.startswith(field), error.field
    assert problem in error.problem, error.problem


def test_a_later_document_is_named() -> None:
    with pytest.raises(ManifestError) as info:
        load_yaml("a: 1\n---\nb: 1\n---\nc:\n  d: 1\n  d: 2\n", source="t.yaml")
    assert str(info.value) == ('t.yaml (document 3): c.d: duplicate key "d" (line 7, column 3)')


def test_aliases_within_the_bound_and_merge_keys_work() -> None:
    text = "base: &b {image: 'x:1', args: &a [a, b]}\nc1: {<<: *b, name: c1}\nc2: {args: *a}\n"
    [doc] = load_yaml(text, source="t")
    assert doc["c1"] == {"image": "x:1", "args": ["a", "b"], "name": "c1"}
    assert doc["c2"] == {"args": ["a", "b"]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # PyYAML's order: keys written in the mapping win; of a list of sources the first wins;
        # of several `<<` keys the later one
        (
            "a: &a {x: 1, y: 1}\nb: &b {x: 2, z: 2}\nm: {<<: [*a, *b], y: 3}\n",
            {"x": 1, "y": 3, "z": 2},
        ),
        ("a: &a {x: 1}\nb: &b {x: 2}\nm: {<<: *a, <<: *b}\n", {"x": 2}),
        ("a: &a {x: 1}\nm: {x: 0, <<: *a}\n", {"x": 0}),
        ("m: {a: <<, '<<': b}\n", {"a": "<<", "<<": "b"}),  # a value, a quoted key: text
        ("m: {1: a, 1.5: b, null: c, false: d}\n", {1: "a", 1.5: "b", None: "c", False: "d"}),
        (
            "m: {a: 0x1F, b: 017, c: 1_000, d: .inf, e: ~, f: yes, g: '1', h: !!str 1}\n",
            {
                "a": 31,
                "b": 15,
                "c": 1000,
                "d": float("inf"),
                "e": None,
                "f": True,
                "g": "1",
                "h": "1",
            },
        ),
    ],
)
def test_yaml_1_1_as_pyyaml_reads_it(text: str, expected: dict[object, object]) -> None:
    [doc] = load_yaml(text, source="t")
    assert doc["m"] == expected


def test_an_alias_is_the_same_value_and_collections_are_not_keys() -> None:
    [doc] = load_yaml("a: &a [1]\nb: *a\n", source="t")
    assert doc["b"] is doc["a"]  # shared, as PyYAML shares it (and counted twice: the bound)
    with pytest.raises(ManifestError, match=r"^t: m: a key must be a scalar, not a collection"):
        load_yaml("m: {[1]: a}\n", source="t")
    with pytest.raises(ManifestError, match=r"<< merges a mapping or a list of mappings, not a"):
        load_yaml("m: {<<: [1]}\n", source="t")


def test_aliases_count_what_they_expand_to() -> None:
    """Each alias counts the full size of what it names: ten of a 100 KB value pass the 1 MiB
    bound, eleven do not (nor do nested ones that multiply: the billion laughs)."""
    big = "x" * 100_000
    assert load_yaml(f"s: &s {big}\nl: [{', '.join(['*s'] * 9)}]\n", source="t")
    with pytest.raises(ManifestError, match="expands to more than 1048576 characters"):
        load_yaml(f"s: &s {big}\nl: [{', '.join(['*s'] * 10)}]\n", source="t")
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    with pytest.raises(ManifestError, match="expands to more than"):
        load_yaml(laughs, source="t")


def test_the_size_bound_is_checked_first() -> None:
    with pytest.raises(ManifestError, match=r"^t: larger than 1048576 bytes$"):
        load_yaml("#" * (1 << 20) + "\n", source="t")


def test_pod_documents_expand_lists_and_name_where_each_is() -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": [{"kind": "Pod"}, {"kind": "Pod"}]}
    text = "kind: Pod\n---\n" + json.dumps(listed)
    assert pod_documents(text, source="t") == [
        ("document 1", {"kind": "Pod"}),
        ("document 2, items[0]", {"kind": "Pod"}),
        ("document 2, items[1]", {"kind": "Pod"}),
    ]


# --- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        (b'{"a": {"b": [1, {"c": 1, "c": 2}]}}', "a.b[1].c", 'duplicate key "c"'),
        (b'{"a": NaN}', "", "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "", "-Infinity is not a JSON number"),
        (b'{"a": [1, 2}', "", "invalid JSON at line 1, column 12"),
        (b'{"\\udc00": 1}', "", 'the key "\\udc00" holds a lone surrogate'),
        (b'{"a": ["\\ud800x"]}', "a[0]", '"\\ud800x" holds a lone surrogate'),
        (b'{"a": 1.' + b"5" * 100 + b"}", "a", "a number of 102 characters"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "[0]", "nested more than 100"),
        (b"[" * 100_000 + b"]" * 100_000, "[0][0]", "nested more than 100 levels deep"),
        # too deep for the decoder itself: the path is found by a scan of the text
        (b'{"a": [1, {"b\\"": ' + b"[" * 5000, 'a[1]["b\\""][0]', "nested more than 100"),
        (b"[" + b"1," * MAX_NODES + b"1]", "[", "more than 100000 values"),
        (b'{"a": "\xff"}', "", "not UTF-8 (at byte 7)"),
        (b" " * (1 << 20) + b"{}", "", "larger than 1048576 bytes"),
    ],
)
def test_refused_json_names_the_path(body: bytes, field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        load_json(body, source="api")
    assert info.value.source == "api"
    assert_field_and_problem(info.value, field, problem)


def test_json_surrogate_pairs_are_characters() -> None:
    assert load_json(b'{"a": "\\ud83d\\ude00", "b": 1e400}', source="api") == {
        "a": "\U0001f600",
        "b": float("inf"),
    }


# --- messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a", '"a"'),
        ("a\nb\ud800", '"a\\nb\\ud800"'),
        ("x" * 150, '"' + "x" * 100 + '"… (150 characters)'),
        (None, "null"),
        (True, "true"),
        (1, "1"),
        (10**400, "(an integer of some 400 digits)"),
        (float("nan"), "NaN"),
        ({"a": 1}, "(a value of type object)"),
        ([1], "(a value of type list)"),
        (b"x", "(a value of type value)"),
    ],
)
def test_values_are_shown_bounded_and_never_as_a_python_repr(value: object, text: str) -> None:
    assert shown(value) == text


def test_long_paths_keep_their_start_and_end() -> None:
    path = "spec.containers[0].args" + "[0]" * 200
    short = short_path(path)
    assert len(short) <= 101
    assert short.startswith("spec.containers[0].args[0]") and short.endswith("[0]")


def test_loader_messages_quoted_in_the_docs() -> None:
    """docs/manifests.md quotes these exact messages."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "manifests.md").read_text()
    top = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n"
    texts = [
        "apiVersion: v1\nkind: Pod\nkind: Pod\n",
        top + "  labels: {1: a, true: b}\n",
        top + "spec:\n  hostNetwork: !!bool maybe\n",
        top + "spec:\n  containers:\n  - {name: c, image: x, args: [*s]}\n",
    ]
    for text in texts:
        with pytest.raises(ManifestError) as info:
            parse_manifests(text, source="l.yaml")
        assert f"\n{info.value}\n" in docs
