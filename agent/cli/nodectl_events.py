"""``nodectl get events [--for pod/NAME|node/NAME]``: the master's events — its own and those
the nodes report about themselves and their pods, aggregated by reason with a count — in
kubectl's columns: LAST SEEN, TYPE, REASON, OBJECT, MESSAGE (NAMESPACE first with ``-A``),
oldest first by last occurrence, as ``kubectl get events`` sorts them.

The events are the master's memory (``agent.events.EventRecorder``): bounded, and gone when
the master restarts, as Kubernetes' events expire after an hour.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from agent.errors import CliError
from agent.names import escape, quote

EVENT_KINDS = ("events", "event", "ev")
FOR_KINDS = {"pod": "Pod", "pods": "Pod", "po": "Pod", "node": "Node", "nodes": "Node"}
EXIT_USAGE = 2


def _for(text: str) -> tuple[str, str]:
    """``--for pod/NAME`` as (the API's kind, name)."""
    what, sep, name = text.partition("/")
    if not sep or not name or what not in FOR_KINDS:
        raise CliError(
            f"--for {quote(text)}: expected pod/NAME or node/NAME (the object whose events "
            f"to show)",
            EXIT_USAGE,
        )
    return FOR_KINDS[what], name


def _visible(event: dict[str, Any], namespace: str | None) -> bool:
    """In namespace ``namespace`` (None: every one): a node's events are in ``default``, where
    Kubernetes files them."""
    involved = event.get("involvedObject") or {}
    if namespace is None:
        return True
    if involved.get("kind") == "Node":
        return namespace == "default"
    return involved.get("namespace") == namespace


def last_seen(event: dict[str, Any], now: float) -> str:
    """kubectl's LAST SEEN: ``5m``, or ``5m (x3 over 10m)`` for an event that repeated."""
    from agent.cli.nodectl import _age

    shown = _age(event.get("lastTimestamp"), now)
    count = event.get("count")
    if isinstance(count, int) and not isinstance(count, bool) and count > 1:
        shown += f" (x{count} over {_age(event.get('firstTimestamp'), now)})"
    return shown


def rows(events: list[dict[str, Any]], all_namespaces: bool, now: float) -> list[list[str]]:
    header = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    table = [header]
    for event in events:
        involved = event.get("involvedObject") or {}
        kind = str(involved.get("kind") or "").lower()
        row = [
            last_seen(event, now),
            escape(str(event.get("type") or "")),
            escape(str(event.get("reason") or "")),
            escape(f"{kind}/{involved.get('name') or ''}"),
            escape(str(event.get("message") or "")),
        ]
        if all_namespaces:
            row.insert(0, escape(str(involved.get("namespace") or "default")))
        table.append(row)
    return table


def run(client: Any, args: argparse.Namespace) -> None:
    from agent.cli import nodectl as ctl

    if args.names:
        raise CliError("get events takes no names: --for pod/NAME selects", EXIT_USAGE)
    query: dict[str, str] = {}
    if args.for_object:
        query["kind"], query["name"] = _for(args.for_object)
    path = "/v1/events" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    namespace = None if args.all_namespaces else args.namespace
    found = [e for e in client.call("GET", path)["items"] if _visible(e, namespace)]
    found.sort(key=lambda e: str(e.get("lastTimestamp") or ""))
    output = args.output
    if output in ("json", "yaml"):
        ctl._emit_documents(found, output, single=False)
        return
    if output == "name":
        for event in found:
            print(f"event/{escape(str((event.get('metadata') or {}).get('name') or ''))}")
        return
    if output not in (None, "wide"):
        raise CliError(f"-o {escape(output)} is not supported for events", EXIT_USAGE)
    if not found:
        where = f" in {escape(args.namespace)} namespace" if namespace is not None else ""
        print(f"No resources found{where}.", file=sys.stderr)
        return
    table = rows(found, args.all_namespaces, ctl._now(None))
    print(ctl._table(table[1:] if args.no_headers else table))
