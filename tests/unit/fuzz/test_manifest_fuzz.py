"""Fuzz of the pod manifest parser (``agent.manifest``): YAML and JSON texts (mutated manifests,
random bytes, deep nesting, alias bombs) through ``parse_manifests``, and random or mutated
decoded structures through ``parse_pod``, as the master's API and the watch hand them over.
Only ``ManifestError`` or pods come out."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.manifest import parse_manifests, parse_pod
from tests.unit.fuzz.inputs import (
    deep,
    holds,
    mutate_structure,
    mutate_text,
    random_bytes,
    random_structure,
    rng,
    sample,
)
from tests.unit.test_manifest import FULL

COUNT = 3000
# PyYAML's pure-Python loader costs some 5 ms a manifest: fewer texts than structures.
TEXT_COUNT = 400
DEMO = (
    Path(__file__).resolve().parents[3] / "examples" / "manifests" / "demo-pod.yaml"
).read_text()
TEXTS = [FULL, DEMO, json.dumps(yaml.safe_load(FULL), default=str)]
DOCS: list[Any] = [yaml.safe_load(FULL), *yaml.safe_load_all(DEMO)]


def text_makers() -> list:
    def mutated(r: random.Random) -> str:
        return mutate_text(r, r.choice(TEXTS))

    def several(r: random.Random) -> str:
        return "\n---\n".join(mutate_text(r, r.choice(TEXTS)) for _ in range(r.randint(1, 3)))

    def as_list(r: random.Random) -> str:
        items = [mutate_structure(r, r.choice(DOCS)) for _ in range(r.randint(0, 3))]
        try:
            return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})
        except RecursionError:  # too deep for the YAML writer: a deep text instead
            return "items: " + "[" * 5000

    def garbage(r: random.Random) -> str:
        return random_bytes(r).decode("utf-8", errors="replace")

    return [mutated, mutated, mutated, several, as_list, garbage]


def test_texts_parse_or_are_manifest_errors() -> None:
    r = rng("manifest-texts")

    def parse(text: str) -> None:
        parse_manifests(text, source="fuzz.yaml", node_name=r.choice([None, "n1"]))

    holds(parse, sample(r, text_makers(), TEXT_COUNT))


def test_structures_parse_or_are_manifest_errors() -> None:
    r = rng("manifest-structures")

    def mutated(r: random.Random) -> Any:
        value = r.choice(DOCS)
        for _ in range(r.randint(1, 3)):
            value = mutate_structure(r, value)
        return value

    def parse(doc: Any) -> None:
        parse_pod(doc, source="api")

    holds(parse, sample(r, [mutated, mutated, mutated, random_structure], COUNT))


def test_a_deeply_nested_value_is_shown_in_the_error() -> None:
    """Found by this fuzz test: the message's repr of the value raised RecursionError."""
    holds(lambda doc: parse_pod(doc, source="api"), [{**DOCS[0], "apiVersion": deep(5000)}])


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "a: " * 50_000 + "b",
        "- " * 50_000 + "x",
        LAUGHS + "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: *i}\n",
        LAUGHS + "apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: *i}\nspec: {}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: x, args: ["
        + "1," * 20_000
        + "]}]}\n",
        "\x00",
        "\ufeffapiVersion: v1",
        "!!python/object:os.system {}",
        "date: 2024-13-01",
        "x: !!int abc",
        "{" + ", ".join(f'"k{i}": {i}' for i in range(10_000)) + "}",
    ],
)
def test_hostile_texts(text: str) -> None:
    # (PyYAML's pure-Python loader reads some 100 KB/s: these stay well inside the budget.)
    holds(lambda t: parse_manifests(t, source="fuzz.yaml"), [text])
