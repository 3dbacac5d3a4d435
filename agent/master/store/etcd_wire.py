"""etcd's v3 JSON gateway, both ways, without I/O: the request bodies the etcd store sends and
the parsing of what etcd answers.

An etcd may be shared with other clusters and other programs, so what it answers crosses a
trust boundary: every answer is parsed here into our types, bounded (body, key and value sizes,
revisions as int64), checked against what was asked (keys inside the prefix and the range
asked, in order) and refused with :class:`EtcdAnswerError` (a ``StoreError``: the request fails
with 503) naming what is wrong, never a ``KeyError`` or a ``binascii.Error``. The gateway's
encoding (etcd 3.4, ``/v3/``): bytes in base64, int64 as decimal strings, fields left out when
zero or false (an event without ``type`` is a PUT).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from agent.errors import CompactedError, StoreError
from agent.master.store.base import EventType, KeyValue, WatchEvent

MAX_ANSWER_BYTES = 32 * 1024 * 1024  # one answer of a unary call (a range page at most)
MAX_WATCH_MESSAGE_BYTES = 16 * 1024 * 1024  # one watch message (fragments are ~1.5 MiB)
MAX_KEY_BYTES = 4096  # ours are a prefix and a pod's namespace/name: well under 1 KiB
MAX_VALUE_BYTES = 8 * 1024 * 1024  # etcd refuses requests over 1.5 MiB unless told otherwise
MAX_EVENTS_PER_MESSAGE = 10_000
_MAX_INT64 = 2**63 - 1
COMPACTED_CODE = 11  # gRPC OUT_OF_RANGE: "mvcc: required revision has been compacted"


class EtcdAnswerError(StoreError):
    """etcd answered something this store cannot take (malformed, too large, out of range)."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """etcd's ``range_end`` for every key starting with ``prefix``: the prefix with its last
    byte below 0xff incremented (b"\\0", all keys, for a prefix of only 0xff bytes or none)."""
    stem = prefix.rstrip(b"\xff")
    if not stem:
        return b"\0"
    return stem[:-1] + bytes([stem[-1] + 1])


# -- requests ---------------------------------------------------------------------------------


def range_request(
    key: bytes, end: bytes | None = None, *, limit: int = 0, revision: int = 0
) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key)}
    if end is not None:
        body["range_end"] = b64(end)
    if limit:
        body["limit"] = str(limit)
    if revision:
        body["revision"] = str(revision)
    return body


def put_request(key: bytes, value: bytes) -> dict[str, Any]:
    return {"key": b64(key), "value": b64(value)}


def txn_on_mod_revision(key: bytes, expected: int, success: dict[str, Any]) -> dict[str, Any]:
    """One operation, only if ``key``'s mod revision is ``expected`` (0: absent)."""
    return {
        "compare": [
            {"target": "MOD", "key": b64(key), "mod_revision": str(expected), "result": "EQUAL"}
        ],
        "success": [success],
    }


def create_request(key: bytes, value: bytes, lease: int) -> dict[str, Any]:
    """Create ``key`` bound to ``lease`` only if it does not exist (create revision 0);
    otherwise read it back (the holder of an election key: agent.master.leader)."""
    return {
        "compare": [
            {"target": "CREATE", "key": b64(key), "create_revision": "0", "result": "EQUAL"}
        ],
        "success": [{"request_put": {**put_request(key, value), "lease": str(lease)}}],
        "failure": [{"request_range": range_request(key)}],
    }


def watch_request(key: bytes, end: bytes, start_revision: int) -> dict[str, Any]:
    # prev_kv: a deletion carries the last value (the Store contract); fragment: etcd splits a
    # large batch of events into messages under its request size limit.
    return {
        "create_request": {
            "key": b64(key),
            "range_end": b64(end),
            "start_revision": str(start_revision),
            "prev_kv": True,
            "fragment": True,
        }
    }


# -- answers ----------------------------------------------------------------------------------


def _fail(what: str, problem: str) -> EtcdAnswerError:
    return EtcdAnswerError(f"etcd answer: {what}: {problem}")


def load_json(body: bytes, what: str, limit: int = MAX_ANSWER_BYTES) -> dict[str, Any]:
    if len(body) > limit:
        raise _fail(what, f"over {limit} bytes")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _fail(what, f"not JSON ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise _fail(what, "not a JSON object")
    return data


def _object(data: dict[str, Any], name: str, what: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise _fail(what, f"{name} is not an object")
    return value


def _int64(data: dict[str, Any], name: str, what: str) -> int:
    value = data.get(name, "0")
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        number = int(value)
    else:
        raise _fail(what, f"{name} is not a revision: {str(value)[:40]!r}")
    if not 0 <= number <= _MAX_INT64:
        raise _fail(what, f"{name} {number} is out of range")
    return number


def _bool(data: dict[str, Any], name: str, what: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise _fail(what, f"{name} is not a boolean")
    return value


def _bytes(data: dict[str, Any], name: str, what: str, limit: int) -> bytes:
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > (limit + 2) // 3 * 4:
        raise _fail(what, f"{name} is not base64 of at most {limit} bytes")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _fail(what, f"{name} is not base64") from None
    if len(decoded) > limit:
        raise _fail(what, f"{name} is not base64 of at most {limit} bytes")
    return decoded


def check_error(data: dict[str, Any], what: str) -> None:
    """An error answer of the gateway (``{"error", "code", "message"}``) as our exception."""
    if "error" not in data and "code" not in data:
        return
    code = data.get("code")
    message = str(data.get("message") or data.get("error") or "")[:500]
    if code == COMPACTED_CODE or "compacted" in message:
        raise CompactedError(f"{what}: the revision asked is compacted; relist ({message})")
    raise StoreError(f"{what}: etcd refused: {message} (code {code!r})")


def header_revision(data: dict[str, Any], what: str) -> int:
    revision = _int64(_object(data, "header", what), "revision", what)
    if revision < 1:
        raise _fail(what, "header.revision is missing")
    return revision


class KeyCodec:
    """Our keys (strings) as etcd keys (bytes): the cluster's prefix, then the key in UTF-8,
    whose byte order is the code point order the Store contract sorts by."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode("utf-8")

    def encode(self, key: str) -> bytes:
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise StoreError(f"key {key[:80]!r} is not encodable as UTF-8") from None
        if len(raw) > MAX_KEY_BYTES:
            raise StoreError(f"key {key[:80]!r}... is over {MAX_KEY_BYTES} bytes")
        return self.prefix + raw

    def decode(self, raw: bytes, what: str) -> str:
        if not raw.startswith(self.prefix):
            raise _fail(what, f"key {raw[:80]!r} is outside the prefix {self.prefix!r}")
        try:
            return raw[len(self.prefix) :].decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(what, f"key {raw[:80]!r} is not UTF-8") from None


def parse_kv(raw: object, codec: KeyCodec, what: str) -> KeyValue:
    if not isinstance(raw, dict):
        raise _fail(what, "a kv is not an object")
    key = codec.decode(_bytes(raw, "key", what, MAX_KEY_BYTES + len(codec.prefix)), what)
    value = _bytes(raw, "value", what, MAX_VALUE_BYTES)
    create = _int64(raw, "create_revision", what)
    mod = _int64(raw, "mod_revision", what)
    if not 1 <= create <= mod:
        raise _fail(what, f"key {key[:80]!r}: revisions {create}/{mod} are not 1 <= create <= mod")
    return KeyValue(key, value, create, mod)


@dataclass(frozen=True, slots=True)
class RangePage:
    items: list[KeyValue]
    revision: int
    more: bool


def parse_range(
    body: bytes, codec: KeyCodec, prefix: str, after: str | None, what: str
) -> RangePage:
    """A range answer: its keys must start with ``prefix`` and come after ``after`` (the last
    key of the previous page), strictly ascending, none newer than the answer."""
    data = load_json(body, what)
    check_error(data, what)
    revision = header_revision(data, what)
    kvs = data.get("kvs", [])
    if not isinstance(kvs, list):
        raise _fail(what, "kvs is not a list")
    items = [parse_kv(raw, codec, what) for raw in kvs]
    previous = after
    for item in items:
        if not item.key.startswith(prefix):
            raise _fail(what, f"key {item.key[:80]!r} is outside the range asked")
        if previous is not None and item.key <= previous:
            raise _fail(what, "keys are not in ascending order")
        if item.mod_revision > revision:
            raise _fail(what, f"key {item.key[:80]!r} is newer than the answer's revision")
        previous = item.key
    return RangePage(items, revision, _bool(data, "more", what))


def parse_put(body: bytes, what: str) -> int:
    data = load_json(body, what)
    check_error(data, what)
    return header_revision(data, what)


def parse_delete(body: bytes, what: str) -> tuple[int, int]:
    """(revision, keys deleted)."""
    data = load_json(body, what)
    check_error(data, what)
    return header_revision(data, what), _int64(data, "deleted", what)


def parse_txn(body: bytes, what: str) -> tuple[int, bool]:
    """(revision, succeeded)."""
    data = load_json(body, what)
    check_error(data, what)
    return header_revision(data, what), _bool(data, "succeeded", what)


def parse_lease_grant(body: bytes, what: str) -> tuple[int, int]:
    """(lease ID, TTL in seconds granted: etcd may raise a TTL below its minimum)."""
    data = load_json(body, what)
    check_error(data, what)
    header_revision(data, what)
    lease, ttl = _int64(data, "ID", what), _int64(data, "TTL", what)
    if lease == 0 or ttl == 0:
        raise _fail(what, "no lease granted (ID or TTL missing)")
    return lease, ttl


def parse_keepalive(body: bytes, lease: int, what: str) -> int:
    """The TTL a keep-alive renewed ``lease`` to, in seconds; 0 when the lease is gone
    (expired or revoked: etcd answers without a TTL)."""
    data = load_json(body, what)
    check_error(data, what)
    result = _object(data, "result", what)
    if not result:
        raise _fail(what, "a keep-alive answer without a result")
    answered = _int64(result, "ID", what)
    if answered != lease:
        raise _fail(what, f"the keep-alive answered lease {answered}, not {lease}")
    return _int64(result, "TTL", what)


def parse_create(
    body: bytes, codec: KeyCodec, key: str, what: str
) -> tuple[bool, KeyValue | None, int]:
    """The answer to :func:`create_request`: (created, the key as it stands when not created
    (None if it went meanwhile), the revision of the answer: a watch of the key from there
    misses nothing, however old the key's own revision)."""
    data = load_json(body, what)
    check_error(data, what)
    revision = header_revision(data, what)
    if _bool(data, "succeeded", what):
        return True, None, revision
    responses = data.get("responses", [])
    if not isinstance(responses, list) or len(responses) != 1:
        raise _fail(what, "a failed create without its one read")
    response = responses[0] if isinstance(responses[0], dict) else {}
    kvs = _object(response, "response_range", what).get("kvs", [])
    if not isinstance(kvs, list) or len(kvs) > 1:
        raise _fail(what, "the read of a failed create is not one key at most")
    if not kvs:
        return False, None, revision
    item = parse_kv(kvs[0], codec, what)
    if item.key != key or item.mod_revision > revision:
        raise _fail(what, f"the read of a failed create answered {item.key[:80]!r}")
    return False, item, revision


@dataclass(frozen=True, slots=True)
class WatchMessage:
    events: list[WatchEvent]
    fragment: bool  # more events of the same batch follow in the next message
    created: bool
    canceled: bool
    compact_revision: int
    reason: str


def parse_watch_message(line: bytes, codec: KeyCodec, what: str) -> WatchMessage:
    """One line of the gateway's watch stream (``{"result": WatchResponse}``, or an error)."""
    data = load_json(line, what, MAX_WATCH_MESSAGE_BYTES)
    if "result" not in data:
        # A stream's error: {"error": {"grpc_code", "http_code", "message", ...}}.
        error = data.get("error")
        if isinstance(error, dict):
            check_error({"code": error.get("grpc_code"), "message": error.get("message")}, what)
        check_error(data, what)
        raise _fail(what, "a watch message without a result")
    result = _object(data, "result", what)
    raw_events = result.get("events", [])
    if not isinstance(raw_events, list) or len(raw_events) > MAX_EVENTS_PER_MESSAGE:
        raise _fail(what, f"events is not a list of at most {MAX_EVENTS_PER_MESSAGE}")
    events: list[WatchEvent] = []
    for raw in raw_events:
        if not isinstance(raw, dict):
            raise _fail(what, "an event is not an object")
        kind = raw.get("type", "PUT")
        if kind not in ("PUT", "DELETE"):
            raise _fail(what, f"event type {str(kind)[:20]!r} is neither PUT nor DELETE")
        kv = _object(raw, "kv", what)
        key = codec.decode(_bytes(kv, "key", what, MAX_KEY_BYTES + len(codec.prefix)), what)
        revision = _int64(kv, "mod_revision", what)
        if revision < 1:
            raise _fail(what, f"event of {key[:80]!r} has no revision")
        if kind == "PUT":
            value = _bytes(kv, "value", what, MAX_VALUE_BYTES)
        elif "prev_kv" in raw:
            value = _bytes(_object(raw, "prev_kv", what), "value", what, MAX_VALUE_BYTES)
        else:
            # etcd could not read the deleted value back (compacted meanwhile).
            raise CompactedError(f"{what}: the last value of deleted {key[:80]!r} is compacted")
        if events and revision < events[-1].revision:
            raise _fail(what, "events are not in revision order")
        events.append(WatchEvent(EventType(kind), key, value, revision))
    return WatchMessage(
        events=events,
        fragment=_bool(result, "fragment", what),
        created=_bool(result, "created", what),
        canceled=_bool(result, "canceled", what),
        compact_revision=_int64(result, "compact_revision", what),
        reason=str(result.get("cancel_reason", ""))[:500],
    )
