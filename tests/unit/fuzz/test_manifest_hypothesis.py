"""Property test of every path into the pod manifest parser, driven by hypothesis (issue 14,
item 9): whatever the text or value, only a :class:`~agent.errors.ManifestError` or pods come
out of ``parse_manifests`` (static files, ``nodectl apply``), ``load_json`` + ``parse_pod`` (the
master's ``POST /v1/pods``) and ``parse_pod`` (decoded values), and every error is short and
encodable.

Four generators, 10,500 documents in all on every run (CI included; some 30-40 s here):
YAML texts assembled from the language's sharp pieces (tags, anchors, aliases, merge keys,
escapes, directives, indentation, flow punctuation); a valid manifest with such pieces spliced
in at any point; random values (lone surrogates, huge integers, odd keys, deep nesting) written
as YAML and as JSON; and a valid pod with one field anywhere replaced by a random value. A fifth
(1,500 more) holds the loader's reading to PyYAML's wherever both take a text.

The seed is fixed (``FUZZ_SEED``, as the other fuzz tests: another value explores further), so
a failure is reproduced by running the test again; hypothesis shrinks it to a small example.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from agent.errors import AgentError, ManifestError
from agent.manifest import parse_manifests, parse_pod
from agent.manifest_loader import load_json, load_yaml
from tests.unit.fuzz.inputs import SEED
from tests.unit.test_manifest import FULL

MESSAGE_MAX_CHARS = 1000  # as tests/hostile_manifests.py: bounded whatever the value

FUZZ = settings(
    deadline=None,  # a shared CI machine: the hang detector is the test's own timeout
    database=None,  # nothing remembered between runs: CI and a laptop see the same examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# The sharp pieces of YAML, and the pieces of a manifest they are mixed with.
_PIECES = [
    *["\n", "\n  ", "\n    ", "\n- ", "  ", "- ", ": ", ":", "? ", ", ", "{", "}", "[", "]"],
    *["&a ", "&b ", "*a", "*b", "<<: *a", "<<: ", "&a [", "*a, *a, *a"],
    *["!!int ", "!!str ", "!!float ", "!!bool ", "!!null ", "!!map ", "!!seq ", "! ", "!x "],
    *["!!timestamp ", "!!binary ", "!!set ", "!!omap ", "!!python/object:os.system ", "!<!> "],
    *['"', "'", '"\\ud800"', '"\\udfff"', '"\\x00"', '"\\U0010ffff"', "\\", "\ud800", "\x00"],
    *["|", "|-\n  ", ">", "#", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "\t"],
    *["~", "null", "true", "maybe", "yes", "0x", "0o7", "1:2:3", "1e999", ".nan", "-.inf", "="],
    *["2024-01-01", "2024-13-01", "9" * 120, "1" * 20, "a" * 120, "é", "\u2028", "\ufeff"],
    *["apiVersion: v1\n", "kind: Pod\n", "kind: List\nitems:\n", "metadata:\n", "  name: a\n"],
    *["spec:\n", "  containers:\n", "  - name: c\n", "    image: x\n", "    args: ", "memory: "],
    *["mountPath: //", "hostPort: ", "env: [{name: X, value: ", "labels: {", "annotations: "],
]
_piece = st.one_of(st.sampled_from(_PIECES), st.text(max_size=6))
_BASES = [FULL, json.dumps(yaml.safe_load(FULL), default=str)]
_POD: dict[str, Any] = json.loads(_BASES[1])

_surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
_text = st.text(st.one_of(st.characters(), _surrogates), max_size=20)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**19, max_value=10**400),
    st.floats(),
    _text,
    st.sampled_from(["", "/", "//", "//a", "1Gi", "500m", "9" * 200, "a" * 300, "default"]),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(_text, st.integers(), st.booleans()), inner, max_size=4),
    ),
    max_leaves=20,
)


def _parses_or_is_ours(parse: Any, *args: Any, **kwargs: Any) -> None:
    """``parse`` returns or raises our error, whose message is short and encodable."""
    try:
        parse(*args, **kwargs)
    except ManifestError as exc:
        message = str(exc)
        assert len(message) < MESSAGE_MAX_CHARS, message[:300]
        message.encode("utf-8")
    except AgentError as exc:  # pragma: no cover - the property's failure, named
        raise AssertionError(f"not a ManifestError: {type(exc).__name__}: {exc!s:.300}") from exc


def _as_json(value: Any) -> str:
    """``value`` as JSON text (lone surrogates escaped, keys as strings, NaN as JSON's
    ``NaN`` that ``load_json`` refuses)."""
    return json.dumps(value)


@seed(SEED)
@settings(FUZZ, max_examples=3000)
@given(st.lists(_piece, max_size=40).map("".join))
def test_yaml_pieces(text: str) -> None:
    _parses_or_is_ours(parse_manifests, text, source="fuzz.yaml", node_name="n1")


@seed(SEED)
@settings(FUZZ, max_examples=3000)
@given(
    st.sampled_from(_BASES),
    st.lists(st.tuples(st.floats(0, 1), st.lists(_piece, min_size=1, max_size=4)), max_size=4),
)
def test_a_manifest_with_pieces_spliced_in(
    base: str, splices: list[tuple[float, list[str]]]
) -> None:
    text = base
    for where, pieces in splices:
        at = int(where * len(text))
        text = text[:at] + "".join(pieces) + text[at:]
    _parses_or_is_ours(parse_manifests, text, source="fuzz.yaml", node_name="n1")


@seed(SEED)
@settings(FUZZ, max_examples=2000)
@given(_value)
def test_random_values_as_yaml_and_json(value: Any) -> None:
    text = _as_json(value)
    _parses_or_is_ours(parse_manifests, text, source="fuzz.yaml")
    body = text.encode()
    _parses_or_is_ours(lambda: parse_pod(load_json(body, source="api"), source="api"))
    _parses_or_is_ours(parse_pod, value, source="api")


def _replaced(doc: Any, path: list[int], value: Any) -> Any:
    """A copy of ``doc`` with the node that ``path`` picks (each step an index into the
    children of a list or object, modulo their number) replaced by ``value``."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    step, rest = path[0], path[1:]
    if isinstance(doc, list):
        i = step % len(doc)
        return [*doc[:i], _replaced(doc[i], rest, value), *doc[i + 1 :]]
    key = list(doc)[step % len(doc)]
    return {**doc, key: _replaced(doc[key], rest, value)}


@seed(SEED)
@settings(FUZZ, max_examples=2500)
@given(st.lists(st.integers(0, 50), max_size=6), _value)
def test_a_pod_with_one_field_replaced(path: list[int], value: Any) -> None:
    doc = _replaced(_POD, path, value)
    _parses_or_is_ours(parse_pod, doc, source="api")
    body = _as_json(doc).encode()
    _parses_or_is_ours(lambda: parse_pod(load_json(body, source="api"), source="api"))


class _Reference(yaml.SafeLoader):
    """PyYAML's safe loader as ours reads YAML: dates and ``=`` stay strings."""


_Reference.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if not tag.endswith(("timestamp", "value"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _canonical(value: Any) -> Any:
    """``value`` comparable across loaders: NaN equal to itself, mappings in key order."""
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return sorted((repr(key), _canonical(item)) for key, item in value.items())
    return (type(value).__name__, value)


@seed(SEED)
@settings(FUZZ, max_examples=1500)
@given(
    st.sampled_from([*_BASES, "base: &b {x: 1, y: [2]}\nm: {<<: *b, x: 3}\n"]),
    st.lists(st.tuples(st.floats(0, 1), st.lists(_piece, min_size=1, max_size=3)), max_size=3),
)
def test_what_the_loader_takes_it_reads_as_pyyaml(
    base: str, splices: list[tuple[float, list[str]]]
) -> None:
    """Ours builds the data from the parser's events (no composing, no PyYAML constructors):
    wherever both loaders take a text, they read the same values."""
    text = base
    for where, pieces in splices:
        at = int(where * len(text))
        text = text[:at] + "".join(pieces) + text[at:]
    try:
        ours = load_yaml(text, source="fuzz.yaml")
    except ManifestError:
        return
    try:
        theirs = [d for d in yaml.load_all(text, Loader=_Reference) if d is not None]
    except (yaml.YAMLError, TypeError, ValueError, KeyError, IndexError, AttributeError):
        return  # (PyYAML's own crashes on what it should refuse: issue 14)
    assert _canonical(ours) == _canonical(theirs)
