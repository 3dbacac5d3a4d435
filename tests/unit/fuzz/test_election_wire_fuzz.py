"""Fuzz of what the leader election and the shared renewals read from etcd (an etcd shared with
others is a trust boundary): etcd's answers to a lease grant, a keep-alive and a create-if-absent
(``agent.master.store.etcd_wire``), the leader key's value (``agent.master.leader.holder_of``)
and another master's renewal report (``agent.master.renewals.parse_report``). Mutated valid
answers and random JSON: only our StoreError or a parsed, bounded answer comes out."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from agent.errors import StoreError
from agent.master.leader import MAX_HOLDER_CHARS, holder_of
from agent.master.renewals import REPORT_MAX_NAMES, parse_report, report_value
from agent.master.store.etcd_wire import (
    KeyCodec,
    parse_create,
    parse_keepalive,
    parse_lease_grant,
)
from agent.names import is_node_name
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
KEY = "/election/leader"
HEADER = {"cluster_id": "1", "member_id": "2", "revision": "40", "raft_term": "2"}
LEASE = 7587867
GRANT = {"header": HEADER, "ID": str(LEASE), "TTL": "10"}
KEEPALIVE = {"result": {"header": HEADER, "ID": str(LEASE), "TTL": "10"}}
HOLDER = json.dumps({"identity": "m1:6443", "nonce": "ab"}).encode()
LOST = {
    "header": HEADER,
    "responses": [
        {
            "response_range": {
                "header": HEADER,
                "kvs": [
                    {
                        "key": base64.b64encode(CODEC.encode(KEY)).decode(),
                        "create_revision": "12",
                        "mod_revision": "12",
                        "version": "1",
                        "value": base64.b64encode(HOLDER).decode(),
                        "lease": "99",
                    }
                ],
                "count": "1",
            }
        }
    ],
}
WON = {"header": HEADER, "succeeded": True, "responses": [{"response_put": {"header": HEADER}}]}


def test_valid_answers_parse_as_etcd_means_them() -> None:
    assert parse_lease_grant(json.dumps(GRANT).encode(), "t") == (LEASE, 10)
    assert parse_keepalive(json.dumps(KEEPALIVE).encode(), LEASE, "t") == 10
    gone = {"result": {"header": HEADER, "ID": str(LEASE)}}  # etcd leaves out a TTL of 0
    assert parse_keepalive(json.dumps(gone).encode(), LEASE, "t") == 0
    assert parse_create(json.dumps(WON).encode(), CODEC, KEY, "t") == (True, None, 40)
    created, holder, revision = parse_create(json.dumps(LOST).encode(), CODEC, KEY, "t")
    assert not created and holder is not None and holder_of(holder.value) == "m1:6443"
    assert revision == 40  # the answer's, not the key's (12): watched from there
    vanished = {"header": HEADER, "responses": [{"response_range": {"header": HEADER}}]}
    assert parse_create(json.dumps(vanished).encode(), CODEC, KEY, "t") == (False, None, 40)
    assert parse_report(report_value(["a", "b-1"])) == ["a", "b-1"]


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"header": HEADER, "TTL": "10"}, "no lease granted"),
        ({"header": HEADER, "ID": "1"}, "no lease granted"),
        ({"error": "etcdserver: too many requests", "code": 8}, "too many requests"),
    ],
)
def test_wrong_grants_are_our_errors(body: dict[str, Any], match: str) -> None:
    with pytest.raises(StoreError, match=match):
        parse_lease_grant(json.dumps(body).encode(), "t")


def test_a_keepalive_of_another_lease_is_refused() -> None:
    other = {"result": {"header": HEADER, "ID": "5", "TTL": "10"}}
    with pytest.raises(StoreError, match="not 7587867"):
        parse_keepalive(json.dumps(other).encode(), LEASE, "t")
    with pytest.raises(StoreError, match="without a result"):
        parse_keepalive(b"{}", LEASE, "t")


def test_a_failed_create_that_reads_another_key_is_refused() -> None:
    wrong = json.loads(json.dumps(LOST))
    kv = wrong["responses"][0]["response_range"]["kvs"][0]
    kv["key"] = base64.b64encode(CODEC.encode("/election/other")).decode()
    with pytest.raises(StoreError, match="answered '/election/other'"):
        parse_create(json.dumps(wrong).encode(), CODEC, KEY, "t")


@pytest.mark.parametrize(
    "value",
    [b"", b"\xff", b"[]", b'{"identity": 5}', b'{"identity": ""}', b"{}", b"null"],
)
def test_a_leader_value_that_is_not_one_is_a_holder_without_a_name(value: bytes) -> None:
    assert holder_of(value) == "?"


def test_a_long_identity_is_cut() -> None:
    assert len(holder_of(json.dumps({"identity": "m" * 10_000}).encode())) == MAX_HOLDER_CHARS


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"[]",
        b'{"nodes": "a"}',
        b'{"nodes": [1]}',
        b'{"nodes": ["Not_A_Name"]}',
        b'{"nodes": ["a/b"]}',
        json.dumps({"nodes": ["n"] * (REPORT_MAX_NAMES + 1)}).encode(),
    ],
)
def test_a_report_that_is_not_one_is_refused(value: bytes) -> None:
    assert parse_report(value) is None


def test_only_our_error_or_a_bounded_answer_comes_out() -> None:
    valid: list[Any] = [GRANT, KEEPALIVE, LOST, WON, {"nodes": ["a", "b"]}]

    def mutated(r: random.Random) -> bytes:
        try:
            return json.dumps(mutate_structure(r, r.choice(valid))).encode()
        except RecursionError:
            return b"[" * 100_000

    def mutated_bytes(r: random.Random) -> bytes:
        return mutate_bytes(r, json.dumps(r.choice(valid)).encode())

    def random_value(r: random.Random) -> bytes:
        return json.dumps(random_structure(r)).encode()

    parsed = 0

    def parse(body: bytes) -> None:
        nonlocal parsed
        names = parse_report(body)
        assert names is None or (
            len(names) <= REPORT_MAX_NAMES and all(is_node_name(n) for n in names)
        )
        assert 1 <= len(holder_of(body)) <= MAX_HOLDER_CHARS
        for call in range(3):
            try:
                if call == 0:
                    lease, ttl = parse_lease_grant(body, "t")
                    assert lease > 0 and ttl > 0
                elif call == 1:
                    assert parse_keepalive(body, LEASE, "t") >= 0
                else:
                    created, holder, revision = parse_create(body, CODEC, KEY, "t")
                    assert holder is None or (not created and holder.key == KEY)
                    assert holder is None or holder.mod_revision <= revision
                parsed += 1
            except StoreError:
                if call == 2:
                    raise

    inputs = list(
        sample(rng("election-wire"), [mutated, mutated, mutated_bytes, random_value], COUNT)
    )
    refused = holds(parse, inputs)
    assert refused > 0 and parsed > 0
