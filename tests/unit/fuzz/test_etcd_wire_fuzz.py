"""Fuzz of the etcd store's parser of etcd's answers (``agent.master.store.etcd_wire``): an
etcd shared with others is a trust boundary. Answers mutated from valid ones (as structures and
as bytes) and random JSON values: only our StoreError (or CompactedError) or a parsed answer
comes out, and what is parsed is bounded and inside the prefix and range asked."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from agent.errors import CompactedError, StoreError
from agent.master.store.base import EventType
from agent.master.store.etcd_wire import (
    MAX_KEY_BYTES,
    MAX_VALUE_BYTES,
    KeyCodec,
    parse_delete,
    parse_put,
    parse_range,
    parse_txn,
    parse_watch_message,
    prefix_end,
)
from tests.unit.fuzz.inputs import (
    holds,
    mutate_bytes,
    mutate_structure,
    random_structure,
    rng,
    sample,
)

COUNT = 2000
CODEC = KeyCodec("/c1/")
HEADER = {"cluster_id": "1", "member_id": "2", "revision": "40", "raft_term": "2"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kv(key: str, value: bytes, create: int, mod: int) -> dict[str, Any]:
    return {
        "key": b64(CODEC.encode(key)),
        "create_revision": str(create),
        "mod_revision": str(mod),
        "version": "1",
        "value": b64(value),
    }


RANGE = {
    "header": HEADER,
    "kvs": [kv("/pods/a/1", b"x", 3, 7), kv("/pods/a/2", b"\x00\xff", 5, 5)],
    "more": True,
    "count": "3",
}
WATCH = {
    "result": {
        "header": HEADER,
        "events": [
            {"kv": kv("/pods/a/1", b"new", 3, 38)},
            {
                "type": "DELETE",
                "kv": {"key": b64(CODEC.encode("/pods/a/2")), "mod_revision": "39"},
                "prev_kv": kv("/pods/a/2", b"last", 5, 5),
            },
        ],
        "fragment": False,
    }
}
UNARY = {"header": HEADER, "succeeded": True, "deleted": "1"}


def test_valid_answers_parse_as_etcd_means_them() -> None:
    page = parse_range(json.dumps(RANGE).encode(), CODEC, "/pods/a/", None, "t")
    assert [(i.key, i.value, i.create_revision, i.mod_revision) for i in page.items] == [
        ("/pods/a/1", b"x", 3, 7),
        ("/pods/a/2", b"\x00\xff", 5, 5),
    ]
    assert (page.revision, page.more) == (40, True)
    message = parse_watch_message(json.dumps(WATCH).encode(), CODEC, "t")
    assert [(e.type, e.key, e.value, e.revision) for e in message.events] == [
        (EventType.PUT, "/pods/a/1", b"new", 38),
        (EventType.DELETE, "/pods/a/2", b"last", 39),
    ]
    assert parse_txn(json.dumps(UNARY).encode(), "t") == (40, True)
    assert parse_txn(json.dumps({"header": HEADER}).encode(), "t") == (40, False)
    assert parse_delete(json.dumps(UNARY).encode(), "t") == (40, 1)
    assert parse_put(json.dumps({"header": HEADER}).encode(), "t") == 40


@pytest.mark.parametrize(
    ("answer", "error", "match"),
    [
        (
            {"error": "x", "code": 11, "message": "mvcc: required revision has been compacted"},
            CompactedError,
            "compacted",
        ),
        ({"error": "etcdserver: request timed out", "code": 14}, StoreError, "timed out"),
        ({"header": {"revision": "-1"}}, StoreError, "revision"),
        ({"header": {"revision": "99999999999999999999"}}, StoreError, "revision"),
        ({"header": HEADER, "kvs": [kv("/pods/b/1", b"", 1, 1)]}, StoreError, "outside"),
        ({"header": HEADER, "kvs": [kv("/pods/a/1", b"", 1, 41)]}, StoreError, "newer"),
        ({"header": HEADER, "kvs": [kv("/pods/a/1", b"", 9, 8)]}, StoreError, "revisions"),
        (
            {"header": HEADER, "kvs": [kv("/pods/a/2", b"", 1, 1), kv("/pods/a/1", b"", 1, 1)]},
            StoreError,
            "order",
        ),
        ({"header": HEADER, "kvs": [{"key": b64(b"/other/pods/a/1")}]}, StoreError, "prefix"),
        ({"header": HEADER, "kvs": [{"key": "%%%"}]}, StoreError, "base64"),
    ],
)
def test_wrong_range_answers_are_our_errors_naming_what(
    answer: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        parse_range(json.dumps(answer).encode(), CODEC, "/pods/a/", None, "t")


def test_sizes_are_bounded() -> None:
    big_value = {"header": HEADER, "kvs": [kv("/pods/a/1", b"v" * (MAX_VALUE_BYTES + 1), 1, 1)]}
    with pytest.raises(StoreError, match="at most"):
        parse_range(json.dumps(big_value).encode(), CODEC, "/pods/a/", None, "t")
    too_long = CODEC.prefix + b"/pods/a/" + b"k" * MAX_KEY_BYTES
    long_key = {"header": HEADER, "kvs": [{**kv("/pods/a/k", b"", 1, 1), "key": b64(too_long)}]}
    with pytest.raises(StoreError, match="at most"):
        parse_range(json.dumps(long_key).encode(), CODEC, "/pods/a/", None, "t")
    with pytest.raises(StoreError, match="over"):
        parse_watch_message(b" " * (17 * 1024 * 1024), CODEC, "t")


def test_a_deletion_without_its_last_value_is_compacted() -> None:
    event = {"type": "DELETE", "kv": {"key": b64(CODEC.encode("/k")), "mod_revision": "3"}}
    with pytest.raises(CompactedError, match="compacted"):
        parse_watch_message(json.dumps({"result": {"events": [event]}}).encode(), CODEC, "t")


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"/a\xff\xff") == b"/b"
    assert prefix_end(b"\xff") == b"\0" == prefix_end(b"")


def test_only_our_error_or_a_bounded_answer_comes_out() -> None:
    valid = [RANGE, WATCH, UNARY]

    def mutated(r: random.Random) -> Any:
        try:
            return json.dumps(mutate_structure(r, r.choice(valid))).encode()
        except RecursionError:  # nested too deep for json.dumps: as deep as bytes then
            return b"[" * 100_000

    def mutated_bytes(r: random.Random) -> Any:
        return mutate_bytes(r, json.dumps(r.choice(valid)).encode())

    def random_value(r: random.Random) -> Any:
        return json.dumps(random_structure(r)).encode()

    parsed = 0

    def parse(body: bytes) -> None:
        nonlocal parsed
        for call in range(3):
            try:
                if call == 0:
                    page = parse_range(body, CODEC, "/pods/a/", None, "t")
                    assert all(i.key.startswith("/pods/a/") for i in page.items)
                    assert all(
                        1 <= i.create_revision <= i.mod_revision <= page.revision
                        for i in page.items
                    )
                elif call == 1:
                    message = parse_watch_message(body, CODEC, "t")
                    assert all(
                        len(e.value) <= MAX_VALUE_BYTES and e.revision >= 1 for e in message.events
                    )
                else:
                    revision, _ = parse_txn(body, "t")
                    assert revision >= 1
                parsed += 1
            except StoreError:
                if call == 2:
                    raise

    inputs = list(sample(rng("etcd-wire"), [mutated, mutated, mutated_bytes, random_value], COUNT))
    refused = holds(parse, inputs)
    assert refused > 0 and parsed > 0  # both ways taken
