"""The events a node reports (``POST /v1/nodes/{node}/events``): the report's parser, a trust
boundary. A node may report about itself and the pods bound to it (the API checks the binding);
what the event says of its source is the master's to set, never the body's.

Bounded: at most MAX_EVENTS_PER_REPORT events a report, short reasons, messages cut to
MAX_MESSAGE_CHARS; anything else wrong is a 400 naming the field (``items[3].reason``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import BadRequestError
from agent.names import check_dns1123_label, check_dns1123_subdomain, check_node_name

MAX_EVENTS_PER_REPORT = 100
MAX_MESSAGE_CHARS = 1024  # kubelet's events carry a few hundred characters at most
MAX_COUNT = 1 << 31  # a count beyond this is not an event any node has seen
MAX_UID_CHARS = 128
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9]{0,127}")
_UID = re.compile(r"[A-Za-z0-9-]*")
_TYPES = ("Normal", "Warning")
_KINDS = ("Pod", "Node")
_STAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True, slots=True)
class ReportedEvent:
    """One event of a report: what it is about, and the event as the master files it."""

    kind: str
    namespace: str
    name: str
    event: dict[str, Any]


def _fail(field: str, problem: str) -> BadRequestError:
    return BadRequestError(f"{field}: {problem}")


def _string(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise _fail(f"{where}.{key}", "must be a string")
    return value


def _stamp(raw: dict[str, Any], key: str, where: str) -> str:
    value = _string(raw, key, where)
    try:
        datetime.strptime(value, _STAMP_FORMAT)
    except ValueError:
        raise _fail(f"{where}.{key}", "must be a UTC time as 2006-01-02T15:04:05Z") from None
    return value


def parse_report(body: object, node: str) -> list[ReportedEvent]:
    """The events of ``node``'s report ``{"items": [event, ...]}``; BadRequestError naming the
    first field that is wrong (nothing of a bad report is filed)."""
    if not isinstance(body, dict) or not isinstance(body.get("items"), list):
        raise _fail("items", "a report is an object with a list of events in items")
    items = body["items"]
    if len(items) > MAX_EVENTS_PER_REPORT:
        raise _fail("items", f"at most {MAX_EVENTS_PER_REPORT} events a report, got {len(items)}")
    return [_event(raw, f"items[{i}]", node) for i, raw in enumerate(items)]


def _event(raw: object, where: str, node: str) -> ReportedEvent:
    if not isinstance(raw, dict):
        raise _fail(where, "an event is an object")
    obj = raw.get("involvedObject")
    if not isinstance(obj, dict):
        raise _fail(f"{where}.involvedObject", "must be an object")
    at = f"{where}.involvedObject"
    kind = _string(obj, "kind", at)
    if kind not in _KINDS:
        raise _fail(f"{at}.kind", f"must be one of {', '.join(_KINDS)}")
    name = _string(obj, "name", at)
    namespace = str(obj.get("namespace") or "")
    uid = str(obj.get("uid") or "")
    if kind == "Node":
        check_node_name(name, f"{at}.name")
        namespace = ""
    else:
        check_dns1123_subdomain(name, f"{at}.name")
        check_dns1123_label(namespace, f"{at}.namespace")
    if len(uid) > MAX_UID_CHARS or not _UID.fullmatch(uid):
        raise _fail(f"{at}.uid", "must be letters, digits and '-', at most 128")
    reason = _string(raw, "reason", where)
    if not _REASON.fullmatch(reason):
        raise _fail(f"{where}.reason", "must be a word of letters and digits, at most 128")
    kind_of_event = _string(raw, "type", where)
    if kind_of_event not in _TYPES:
        raise _fail(f"{where}.type", f"must be one of {', '.join(_TYPES)}")
    message = _string(raw, "message", where)[:MAX_MESSAGE_CHARS]
    count = raw.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_COUNT:
        raise _fail(f"{where}.count", f"must be an integer from 1 to {MAX_COUNT}")
    first = _stamp(raw, "firstTimestamp", where)
    last = _stamp(raw, "lastTimestamp", where)
    event = {
        "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "uid": uid},
        "reason": reason,
        "message": message,
        "type": kind_of_event,
        # The source is the caller: a node cannot speak for another.
        "source": {"component": "node-agent", "host": node},
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
    }
    return ReportedEvent(kind, namespace, name, event)
