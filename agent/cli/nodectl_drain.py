"""``nodectl drain NODE``: kubectl's drain. Cordon the node, then evict its pods through the
master's eviction route (``POST …/pods/{pod}/eviction``) and wait until none is left on it.

What eviction does is the master's (``PodStore.evict``, docs/decisions.md): a pod the
scheduler placed is stopped on the node and created again as a new pod that the scheduler
places on another node (we have no ReplicaSets: the master is their analogue); a pod pinned by
its ``spec.nodeName`` cannot move and is deleted only with ``--force`` (kubectl's rule for pods
no controller re-creates); a finished pod is deleted; a static pod (its mirror on the master) is
never touched — it comes back from its manifest file — and, as kubectl's DaemonSet pods, needs
``--ignore-static`` (or kubectl's ``--ignore-daemonsets``) to be left running knowingly.

Every pod is checked first (the eviction's dry run): when one is refused, nothing is evicted
and the refusals are listed, as kubectl does; the node stays cordoned.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

from agent.cli.nodectl import EXIT_USAGE, Client, _segment, named
from agent.errors import CliError, ServerError
from agent.names import escape, quote

MIRROR_ANNOTATION = "node-agent.io/mirror"  # agent.master.pods (not imported: the CLI stays lean)
POLL_S = 0.5  # how often the pods left on the node are looked at while waiting


@dataclass(frozen=True, slots=True)
class Plan:
    """What a drain will do with the node's pods (each ``namespace/name``)."""

    evict: tuple[tuple[str, str, str], ...]  # (namespace, name, the master's action)
    terminating: tuple[tuple[str, str], ...]  # being deleted already: only waited for
    static: tuple[str, ...]
    refused: tuple[str, ...]  # pinned (without --force), or refused for another reason
    reasons: tuple[str, ...]  # the master's words for each refusal


def parse_timeout(text: str) -> float:
    """kubectl's ``--timeout``: ``0`` (no limit), seconds, or a duration (``90s``, ``5m``,
    ``1h30m``)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    try:
        return _duration(text.strip(), units)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not a duration (0, 90, 90s, 5m, 1h30m)"
        ) from None


def _duration(text: str, units: dict[str, float]) -> float:
    if not text:
        raise ValueError(text)
    if text.replace(".", "", 1).isdigit():
        return float(text)
    total, number = 0.0, ""
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise ValueError(text)
    if number:
        raise ValueError(text)
    return total


def _pod_path(namespace: str, name: str) -> str:
    return f"/v1/namespaces/{_segment(namespace)}/pods/{_segment(name)}"


def plan(client: Client, node: str, pods: list[dict[str, Any]], body: dict[str, Any]) -> Plan:
    """The node's pods sorted into what happens to them, by the master's dry run of each
    eviction (it alone knows which pods the scheduler placed)."""
    evict: list[tuple[str, str, str]] = []
    terminating: list[tuple[str, str]] = []
    static, refused, reasons = [], [], []
    for pod in pods:
        meta = pod.get("metadata", {})
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        full = f"{namespace}/{name}"
        if (meta.get("annotations") or {}).get(MIRROR_ANNOTATION) == "true":
            static.append(full)
            continue
        if meta.get("deletionTimestamp"):
            terminating.append((namespace, name))
            continue
        try:
            answer = client.call("POST", _pod_path(namespace, name) + "/eviction?dryRun=All", body)
        except ServerError as exc:
            if exc.status == 404:
                continue  # gone meanwhile: nothing to drain
            if exc.status != 409:
                raise
            refused.append(full)
            reasons.append(str(exc).partition(": ")[2] or str(exc))
            continue
        evict.append((namespace, name, str(answer.get("action", ""))))
    return Plan(tuple(evict), tuple(terminating), tuple(static), tuple(refused), tuple(reasons))


def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    try:
        timeout_s = parse_timeout(args.timeout)
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"--timeout: {exc}", EXIT_USAGE) from None
    node = args.name
    shown = escape(node)
    dry = args.dry_run != "none"
    suffix = " (dry run)" if dry else ""
    with named("nodes", node):
        obj = client.call("GET", f"/v1/nodes/{_segment(node)}")
        if obj.get("spec", {}).get("unschedulable"):
            print(f"node/{shown} already cordoned{suffix}")
        else:
            if not dry:
                client.call("POST", f"/v1/nodes/{_segment(node)}/cordon")
            print(f"node/{shown} cordoned{suffix}")
    listed = client.call("GET", "/v1/pods")["items"]
    on_node = [p for p in listed if p.get("spec", {}).get("nodeName") == node]
    body: dict[str, Any] = {"force": args.force}
    grace = getattr(args, "grace_period", -1)
    if grace >= 0:  # kubectl's: negative is the pod's own; 0 is 1 here (a SIGTERM first)
        body["gracePeriodSeconds"] = max(grace, 1)
    found = plan(client, node, on_node, body)
    problems = []
    if found.refused:
        pods = ", ".join(escape(p) for p in found.refused)
        problems.append(f"cannot evict Pods that cannot move (use --force to override): {pods}")
    if found.static and not args.ignore_static:
        pods = ", ".join(escape(p) for p in found.static)
        problems.append(
            f"cannot delete static Pods (they come back from their manifest files on the node; "
            f"use --ignore-static to ignore): {pods}"
        )
    if problems:
        print(
            f"error: unable to drain node {quote(node)} due to error: {'; '.join(problems)}",
            file=sys.stderr,
        )
        for reason in found.reasons:
            print(f"  {reason}", file=sys.stderr)  # the master's words, escaped by the client
        print(
            f"node/{shown} stays cordoned; nodectl uncordon {shown} makes it schedulable again",
            file=sys.stderr,
        )
        return 1
    if found.static:
        pods = ", ".join(escape(p) for p in found.static)
        print(
            f"Warning: ignoring static Pods (never deleted: they come back from their manifest "
            f"files on the node): {pods}",
            file=sys.stderr,
        )
    for namespace, name, action in found.evict:
        what = "placed again by the scheduler" if action == "moved" else "deleted"
        print(f"evicting pod {escape(namespace)}/{escape(name)} ({what}){suffix}")
        if not dry:
            try:
                client.call("POST", _pod_path(namespace, name) + "/eviction", body)
            except ServerError as exc:
                if exc.status != 404:  # gone meanwhile is drained too
                    raise
    if dry:
        print(f"node/{shown} drained{suffix}")
        return 0
    waiting = [(ns, n) for ns, n, _ in found.evict] + list(found.terminating)
    _wait_gone(client, node, waiting, timeout_s)
    print(f"node/{shown} drained")
    return 0


def _wait_gone(client: Client, node: str, pods: list[tuple[str, str]], timeout_s: float) -> None:
    """Until each pod is gone from ``node``: deleted, or a new pod not on it (placed again)."""
    deadline = time.monotonic() + timeout_s if timeout_s > 0 else None
    left = list(pods)
    while left:
        still = []
        for namespace, name in left:
            try:
                pod = client.call("GET", _pod_path(namespace, name))
            except ServerError as exc:
                if exc.status != 404:
                    raise
                print(f"pod/{escape(name)} evicted")
                continue
            meta, spec = pod.get("metadata", {}), pod.get("spec", {})
            if meta.get("deletionTimestamp") or spec.get("nodeName") == node:
                still.append((namespace, name))
                continue
            where = spec.get("nodeName")
            print(f"pod/{escape(name)} evicted" + (f" (now on {escape(where)})" if where else ""))
        left = still
        if left and deadline is not None and time.monotonic() >= deadline:
            pending = ", ".join(escape(f"{ns}/{n}") for ns, n in left)
            raise CliError(
                f"unable to drain node {quote(node)}: timed out after {timeout_s:g}s waiting "
                f"for {pending} (the node stays cordoned)"
            )
        if left:
            time.sleep(POLL_S)
