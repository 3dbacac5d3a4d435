"""``agent.proto.jsonbody``: the content type a JSON route reads, and the nesting bound checked
on the raw bytes before the decoder runs (exact for any JSON, whatever its strings hold;
linear and recursion-free for any bytes). Over the wire, on both protocols:
tests/unit/aio/test_edge.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from agent.errors import BadRequestError, UnsupportedMediaTypeError
from agent.proto.jsonbody import (
    MAX_JSON_DEPTH,
    check_content_type,
    decode_object,
    nests_deeper,
)
from tests.unit.fuzz.inputs import SEED


def depth(value: object) -> int:
    """The nesting of a decoded value, the slow obvious way."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


# Strings made of what could fool a byte-level count: brackets, quotes, backslashes.
TRICKY = st.text(alphabet='[]{}"\\ \n\u00e9\u202ea', max_size=8)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=40,
)


@seed(SEED)
@settings(max_examples=400, deadline=None, database=None)
@given(value=VALUES, slack=st.integers(-2, 2), ascii_only=st.booleans())
def test_the_byte_count_is_the_decoded_depth(value: Any, slack: int, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    limit = max(depth(value) + slack, 0)
    assert nests_deeper(body, limit) == (depth(value) > limit)


def test_deep_chains_either_side_of_the_bound() -> None:
    for n in (MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 5000):
        body = ('{"k": ' * n + '"[{"' + "}" * n).encode()
        assert nests_deeper(body, MAX_JSON_DEPTH) == (n > MAX_JSON_DEPTH)
    assert nests_deeper(b"[" * 1_000_000, MAX_JSON_DEPTH)  # unclosed: open all the same
    assert not nests_deeper(b"[]" * 500_000, MAX_JSON_DEPTH)  # wide is not deep
    assert not nests_deeper(b'"' + b"[" * 1000 + b'"', 0)  # all inside a string
    assert not nests_deeper(b'"\\\\\\"[[[[' + b'"', 0)  # an escaped quote does not close it
    assert nests_deeper(b'["\\\\", [[', 2)  # an escaped backslash does not escape the quote


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"", "empty"),
        (b"\xff", "not UTF-8 at byte 0"),
        (b"{", "not JSON: Expecting property name"),
        (b"[1]", "must be a JSON object"),
        (b'"x"', "must be a JSON object"),
        (b'{"a": Infinity}', "Infinity is not a JSON number"),
        (b'{"a": -Infinity}', "Infinity is not a JSON number"),
        (b"[" * 100_000, f"more than {MAX_JSON_DEPTH} deep"),
        # json.loads raises a bare ValueError past Python's integer-conversion limit.
        (b'{"a": ' + b"1" * 5000 + b"}", "integer over 4300 digits"),
    ],
)
def test_decoding_refusals_are_400_naming_the_problem(body: bytes, problem: str) -> None:
    with pytest.raises(BadRequestError, match=problem) as caught:
        decode_object(body)
    assert len(caught.value.message) < 200  # nothing of the body echoed


def test_decoding_an_object() -> None:
    assert decode_object('{"ä": [1, {"b": null}]}'.encode()) == {"ä": [1, {"b": None}]}
    assert decode_object(b'{"a": [[1]]}', max_depth=3) == {"a": [[1]]}
    with pytest.raises(BadRequestError, match="more than 2 deep"):
        decode_object(b'{"a": [[1]]}', max_depth=2)


@pytest.mark.parametrize(
    "value",
    [
        "application/json",
        "APPLICATION/json",
        "application/json;charset=utf-8",
        'application/json; charset="UTF-8"',
        "application/json; charset=utf8;",
    ],
)
def test_json_in_utf8_is_read(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (None, "without a Content-Type"),
        ("", 'of type ""'),
        ("text/plain", 'of type "text/plain"'),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("application/json-patch+json", "json-patch"),
        ("application/json; charset=utf-16", "charset=utf-8"),
        ("application/json; q=1", "takes no parameter"),
        ("text/\x1b[2Jplain", "\\x1b[2J"),  # escaped, not a terminal's instruction
    ],
)
def test_anything_else_is_415(value: str | None, problem: str) -> None:
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        check_content_type(value)
    assert problem in caught.value.message
    assert caught.value.http_status == 415
    assert caught.value.message.isprintable()


def test_a_decoder_recursion_past_a_raised_bound_is_still_a_400() -> None:
    # With the bound lifted past what the C decoder follows, its RecursionError is ours too.
    with pytest.raises(BadRequestError, match="nested too deeply"):
        decode_object(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", max_depth=10**6)
