"""Which names a node's certificate may carry: only names the master verified.

A node's certificate is valid for server use (its API serves the master's proxy and nodectl
``--direct``, which authenticate it by identity, not by name), so the names on it must not be
the node's to choose: a node naming the master's address could otherwise pass for it to any
client that checks only the CA and the host name. The names on a node's certificate are:

* its node name, as a DNS name (never as an IP address, even when it looks like one);
* the source address the master saw its registration (or latest rotation) come from;
* names an administrator approved (``nodectl certificate approve <node>``).

Anything else the node asks for — its CSR's names, the ``addresses`` and ``hostname`` of its
registration body — becomes a serving-names request on its record (names, source address,
time), listed by ``nodectl get csr`` and approved or denied by an administrator. Approved names
appear on the node's next certificate (a rotation); denied ones never, nor are they asked for
again. A renewal adds no name without this check. Wildcards, URIs and anything that is neither
an IP address nor a DNS name are never requested, hence never issued.

The state lives in the node's record under ``servingNames``::

    {"source": "10.0.0.5", "requested": ["node1.example"], "requestedAt": "…",
     "approved": [], "denied": [], "decision": ""}

Sans-IO: functions of a record (a JSON object) that the registry stores.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from agent.errors import BadRequestError, ConflictError, PkiError
from agent.names import quote
from agent.pki.core import certifiable, csr_sans, load_csr

STATE = "servingNames"
MAX_REQUESTED_NAMES = 32  # a host has a handful of addresses and names; more is not a request
PENDING = "Pending"
APPROVED = "Approved"
DENIED = "Denied"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def asked_names(csr_pem: str, *others: str) -> list[str]:
    """The names a node asks for: its CSR's (a CSR that cannot be read asks for none: the
    registry refuses it anyway) and ``others`` (its registration's addresses and host name),
    keeping only those a certificate may hold (no wildcard), de-duplicated, at most
    ``MAX_REQUESTED_NAMES``."""
    try:
        from_csr = csr_sans(load_csr(csr_pem.encode()))
    except (PkiError, UnicodeEncodeError):  # a lone surrogate, which a JSON escape can carry
        from_csr = []
    names = [n for n in dict.fromkeys([*from_csr, *others]) if n and certifiable(n)]
    return names[:MAX_REQUESTED_NAMES]


def _fresh() -> dict[str, Any]:
    return {"source": "", "requested": [], "requestedAt": "", "approved": [], "denied": []}


def _state(record: dict[str, Any]) -> dict[str, Any]:
    """The record's state, created when missing (for the functions that change it)."""
    state = record.get(STATE)
    if not isinstance(state, dict):
        state = _fresh()
        record[STATE] = state
    return state


def _read(record: dict[str, Any]) -> dict[str, Any]:
    """The record's state without writing to the record (the registry's shared records, a
    record written before this state existed)."""
    state = record.get(STATE)
    return state if isinstance(state, dict) else _fresh()


def _automatic(record: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The names verified without an administrator: the node name, the source address."""
    names = []
    if not _is_ip(record["name"]) and certifiable(record["name"]):
        names.append(record["name"])
    if state.get("source") and certifiable(state["source"]):
        names.append(state["source"])
    return names


def certificate_names(record: dict[str, Any]) -> list[str]:
    """The names the node's next certificate carries: the node name (a DNS name), the source
    address of its latest registration or rotation, and the names an administrator approved."""
    state = _read(record)
    return list(dict.fromkeys([*_automatic(record, state), *state.get("approved", [])]))


def note(
    record: dict[str, Any],
    asked: Iterable[str],
    source: str | None,
    now: str,
    *,
    keep_request: bool = False,
) -> None:
    """A registration (or, ``keep_request``, a rotation) from ``source`` (None: unknown, the
    address seen before stands) asking for ``asked``: the source becomes the verified address;
    names beyond the verified ones become the request (a rotation asking for nothing keeps the
    request it had)."""
    state = _state(record)
    if source is not None:
        state["source"] = source if certifiable(source) else ""
    asked = list(asked)
    if keep_request and not asked:
        return
    beyond = [n for n in asked if n not in _automatic(record, state)]
    if beyond != state.get("requested"):
        state["requested"] = beyond
        state["requestedAt"] = now


def pending(record: dict[str, Any]) -> list[str]:
    """Requested names an administrator has not decided on yet."""
    state = _read(record)
    decided = {*certificate_names(record), *state.get("denied", [])}
    return [n for n in state.get("requested", []) if n not in decided]


def decide(
    record: dict[str, Any], *, approve: bool, names: Iterable[str] | None = None
) -> list[str]:
    """An administrator's decision on the pending names (approved: they join the verified
    names; denied: never issued, never asked for again); returns those names. ``names``: the
    ones the administrator saw (``nodectl`` sends those it listed), decided on exactly, so a
    request the node changed meanwhile is never approved unseen: a name among them that is no
    longer pending is ConflictError. Nothing pending is BadRequestError."""
    waiting = pending(record)
    if not waiting:
        raise BadRequestError(
            f"node {quote(record['name'])} has no serving names waiting for a decision"
        )
    if names is not None:
        seen = list(dict.fromkeys(names))
        gone = [n for n in seen if n not in waiting]
        if gone or not seen:
            raise ConflictError(
                f"node {quote(record['name'])} does not ask for "
                f"{', '.join(quote(n) for n in gone) or 'nothing'} now (its request changed): "
                "look at `nodectl get csr` again"
            )
        waiting = [n for n in waiting if n in seen]
    state = _state(record)
    key = "approved" if approve else "denied"
    state[key] = [*state.get(key, []), *waiting]
    state["decision"] = APPROVED if approve else DENIED
    return waiting


def shown(record: dict[str, Any]) -> dict[str, Any]:
    """What ``nodectl describe node`` shows: the names its next certificate carries, and those
    waiting for an administrator."""
    return {"verified": certificate_names(record), "pending": pending(record)}


def request_object(record: dict[str, Any]) -> dict[str, Any] | None:
    """The node's serving-names request as the API lists it (None: it never asked for a name
    beyond those verified)."""
    state = record.get(STATE)
    if not isinstance(state, dict) or not state.get("requested"):
        return None
    waiting = pending(record)
    return {
        "apiVersion": "v1",
        "kind": "ServingNamesRequest",
        "metadata": {"name": record["name"], "creationTimestamp": state.get("requestedAt")},
        "spec": {
            "node": record["name"],
            "names": list(state["requested"]),
            "source": state.get("source", ""),
        },
        "status": {
            "condition": PENDING if waiting else state.get("decision") or APPROVED,
            "pending": waiting,
            "approved": [n for n in state["requested"] if n in state.get("approved", [])],
            "denied": [n for n in state["requested"] if n in state.get("denied", [])],
        },
    }
