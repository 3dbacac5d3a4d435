"""``nodectl top nodes|pods``: kubectl top's tables from the master's metrics routes
(``/v1/metrics/nodes``, ``/v1/metrics/pods``), which serve the usage each node samples and
sends with its lease (agent.node.usage, agent.master.usage).

As kubectl prints them: CPU in millicores (``250m``), memory in MiB (``64Mi``), and for nodes
the share of the node's capacity (``CPU(cores)   CPU(%)   MEMORY(bytes)   MEMORY(%)``); a node
without fresh figures shows ``<unknown>``. ``top pod NAME``, ``--containers``, ``-l``, ``-A``,
``--sort-by=cpu|memory``, ``--no-headers``. Every name the server sends is escaped.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from typing import Any

from agent.cli.nodectl import Client, _one_kind, _segment, _table, human_duration, named
from agent.errors import CliError, ManifestError, ServerError
from agent.names import escape, quote
from agent.quantity import parse_cpu_millis, parse_memory_bytes

_MIB = 1 << 20
UNKNOWN = "<unknown>"


def _cpu(text: object) -> int | None:
    try:
        return parse_cpu_millis(text, "cpu")
    except ManifestError:
        return None


def _memory(text: object) -> int | None:
    try:
        return parse_memory_bytes(text, "memory")
    except ManifestError:
        return None


def _usage(usage: object) -> tuple[int, int] | None:
    """(millicores, bytes) of a metrics ``usage`` object; None when malformed."""
    if not isinstance(usage, dict):
        return None
    cpu, memory = _cpu(usage.get("cpu")), _memory(usage.get("memory"))
    return None if cpu is None or memory is None else (cpu, memory)


def cpu_text(millis: int) -> str:
    return f"{millis}m"


def memory_text(size: int) -> str:
    return f"{size // _MIB}Mi"


def percent(part: int, whole: int | None) -> str:
    """kubectl's share: truncated to a whole percent; ``<unknown>`` without a capacity."""
    return f"{part * 100 // whole}%" if whole else UNKNOWN


def _selected(items: list[dict[str, Any]], selector: str | None) -> set[str] | None:
    """The names a ``-l`` selector keeps (None: no selector)."""
    if selector is None:
        return None
    from agent.cli import output

    return {
        str(item["metadata"]["name"])
        for item in output.select(items, output.parse_selector(selector))
    }


def node_rows(
    nodes: list[dict[str, Any]], metrics: list[dict[str, Any]], sort_by: str | None
) -> list[list[str]]:
    """The rows of ``top nodes`` (no header), nodes with figures first, as kubectl."""
    by_name = {str(m.get("metadata", {}).get("name")): _usage(m.get("usage")) for m in metrics}
    known: list[tuple[str, int, int, list[str]]] = []
    unknown: list[list[str]] = []
    for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        name = str(node["metadata"]["name"])
        usage = by_name.get(name)
        if usage is None:
            unknown.append([escape(name), UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN])
            continue
        capacity = node.get("status", {}).get("capacity") or {}
        cpu, memory = usage
        row = [
            escape(name),
            cpu_text(cpu),
            percent(cpu, _cpu(capacity.get("cpu"))),
            memory_text(memory),
            percent(memory, _memory(capacity.get("memory"))),
        ]
        known.append((name, cpu, memory, row))
    if sort_by is not None:
        known.sort(key=lambda k: k[1] if sort_by == "cpu" else k[2], reverse=True)
    return [k[3] for k in known] + unknown


def pod_rows(
    metrics: list[dict[str, Any]],
    *,
    containers: bool,
    all_namespaces: bool,
    sort_by: str | None,
) -> list[list[str]]:
    """The rows of ``top pods`` (no header): a pod's containers summed, or one row each."""
    rows: list[tuple[tuple[str, str, str], int, int, list[str]]] = []
    for item in metrics:
        meta = item.get("metadata", {})
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        prefix = [escape(namespace)] if all_namespaces else []
        total_cpu = total_memory = 0
        for container in item.get("containers") or []:
            usage = _usage(container.get("usage"))
            if usage is None:
                continue
            cpu, memory = usage
            total_cpu += cpu
            total_memory += memory
            if containers:
                cname = str(container.get("name", ""))
                row = [*prefix, escape(name), escape(cname), cpu_text(cpu), memory_text(memory)]
                rows.append(((namespace, name, cname), cpu, memory, row))
        if not containers:
            row = [*prefix, escape(name), cpu_text(total_cpu), memory_text(total_memory)]
            rows.append(((namespace, name, ""), total_cpu, total_memory, row))
    rows.sort(key=lambda r: r[0])
    if sort_by is not None:
        rows.sort(key=lambda r: r[1] if sort_by == "cpu" else r[2], reverse=True)
    return [r[3] for r in rows]


def cmd_top(client: Client, args: argparse.Namespace) -> int | None:
    kind = _one_kind(args.kind, "top")
    if kind == "nodes":
        return _top_nodes(client, args)
    return _top_pods(client, args)


def _top_nodes(client: Client, args: argparse.Namespace) -> int | None:
    nodes = client.call("GET", "/v1/nodes")["items"]
    if args.name is not None:
        nodes = [n for n in nodes if n["metadata"]["name"] == args.name]
        if not nodes:
            raise ServerError(404, "NotFound", f"nodes {quote(args.name)} not found")
    keep = _selected(nodes, args.selector)
    if keep is not None:
        nodes = [n for n in nodes if n["metadata"]["name"] in keep]
    metrics = client.call("GET", "/v1/metrics/nodes")["items"]
    if not any(
        m.get("metadata", {}).get("name") in {n["metadata"]["name"] for n in nodes} for m in metrics
    ):
        if not nodes:
            print("No resources found", file=sys.stderr)
            return None
        raise CliError("metrics not available yet (nodes send them with their lease)")
    header = ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"]
    rows = node_rows(nodes, metrics, args.sort_by)
    print(_table(rows if args.no_headers else [header, *rows]))
    return None


def _top_pods(client: Client, args: argparse.Namespace) -> int | None:
    query = (
        "" if args.all_namespaces else "?namespace=" + urllib.parse.quote(args.namespace, safe="")
    )
    metrics = client.call("GET", "/v1/metrics/pods" + query)["items"]
    if args.name is not None:
        metrics = [m for m in metrics if m.get("metadata", {}).get("name") == args.name]
        if not metrics:
            path = f"/v1/namespaces/{_segment(args.namespace)}/pods/{_segment(args.name)}"
            with named("pods", args.name):
                pod = client.call("GET", path)
            raise CliError(_not_available(pod))
    if args.selector is not None:
        pods = client.call("GET", "/v1/pods" + query)["items"]
        keep = _selected(pods, args.selector) or set()
        metrics = [m for m in metrics if m.get("metadata", {}).get("name") in keep]
    if not metrics:
        where = "" if args.all_namespaces else f" in {escape(args.namespace)} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
        return None
    header = ["POD", "NAME"] if args.containers else ["NAME"]
    header = (["NAMESPACE"] if args.all_namespaces else []) + header
    header += ["CPU(cores)", "MEMORY(bytes)"]
    rows = pod_rows(
        metrics,
        containers=args.containers,
        all_namespaces=args.all_namespaces,
        sort_by=args.sort_by,
    )
    print(_table(rows if args.no_headers else [header, *rows]))
    return None


def _not_available(pod: dict[str, Any]) -> str:
    """kubectl's words for a pod that exists without figures (yet)."""
    import time

    from agent.cli.nodectl import _epoch

    meta = pod.get("metadata", {})
    name = escape(f"{meta.get('namespace', '')}/{meta.get('name', '')}")
    created = _epoch(str(meta.get("creationTimestamp") or ""))
    age = f", age: {human_duration(time.time() - created)}" if created is not None else ""
    return f"Metrics not available for pod {name}{age}"
