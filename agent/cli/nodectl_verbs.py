"""``nodectl run``, ``delete`` (several names, ``-f``, ``--wait``, ``--grace-period``),
``apply -f DIR [-R]``, and the argument types of ``logs --since/--since-time``: kubectl's
verbs as kubectl users type them (issue 17, item 5).

Imported only by those commands (and by the parser for the argument types, which import
nothing). ``run -i/-t`` is not kubectl's attach: the node API has no attach to a container's
main process, so the pod's container runs a keeper (a shell that sleeps and exits on SIGTERM)
and the session is an exec of the command in it — docs/decisions.md, "nodectl run -it".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.nodectl import (
    EXIT_ERROR,
    EXIT_USAGE,
    Client,
    _documents,
    _invalid,
    _pod_status,
    _print_applied,
    _segment,
    _targets,
    cmd_apply,
    named,
)
from agent.errors import CliError, ServerError
from agent.names import escape, quote

POLL_S = 0.5  # how often a pod is looked at while waiting for it to run or to be gone
WAIT_MARGIN_S = 30.0  # delete --wait's default bound: the longest grace period plus this
RUNNING_TIMEOUT_S = 60.0  # run -i: kubectl's --pod-running-timeout default (1m)
MANIFEST_SUFFIXES = (".json", ".yaml", ".yml")  # what kubectl reads of a directory
MANIFEST_FILES_MAX = 10_000  # files of one -f DIR (each an apply or delete request)

# -- argument types ----------------------------------------------------------------------------

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
MAX_DURATION_S = 290 * 365 * 86400.0  # about Go's time.Duration range (292 years)


def go_duration(text: str) -> float:
    """Seconds of a Go duration (``5m``, ``1h30m``, ``1.5h``, ``300ms``, ``0``), as kubectl's
    duration flags take them; ValueError with Go's words otherwise."""
    shown = quote(text)
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {shown}")
    total = 0.0
    while rest:
        number = ""
        while rest and ((rest[0].isdigit() and rest[0].isascii()) or rest[0] == "."):
            number, rest = number + rest[0], rest[1:]
        if number in ("", ".") or number.count(".") > 1:
            raise ValueError(f"time: invalid duration {shown}")
        unit = ""
        while rest and not (rest[0].isdigit() and rest[0].isascii()) and rest[0] != ".":
            unit, rest = unit + rest[0], rest[1:]
        if not unit:
            raise ValueError(f"time: missing unit in duration {shown}")
        if unit not in _GO_UNITS:
            raise ValueError(f"time: unknown unit {quote(unit)} in duration {shown}")
        total += float(number) * _GO_UNITS[unit]
        if total > MAX_DURATION_S:
            raise ValueError(f"time: invalid duration {shown}")
    return sign * total


def since_seconds(text: str) -> int:
    """``logs --since=5m``: whole seconds (kubectl rounds to the nearest second; at least 1,
    the node's lower bound)."""
    try:
        seconds = go_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid argument {quote(text)}: {exc}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError("--since must be greater than 0")
    return max(1, round(seconds))


def since_time(text: str) -> str:
    """``logs --since-time=2026-12-03T15:04:05Z``: an RFC 3339 time, sent to the node in UTC
    (it compares it with its own clock, which wrote the log's timestamps)."""
    from datetime import UTC, datetime

    moment = None
    if "T" in text.upper() and len(text) <= 64:
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{quote(text)} is not an RFC 3339 time (such as 2006-01-02T15:04:05Z or "
            f"2006-01-02T15:04:05+07:00)"
        )
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def timeout_seconds(text: str) -> float:
    """``--timeout``/``--pod-running-timeout``: a Go duration (``90s``, ``5m``)."""
    try:
        seconds = go_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid argument {quote(text)}: {exc}") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{quote(text)}: a duration of 0 or more")
    return seconds


# -- manifest files ------------------------------------------------------------------------------


def manifest_files(path: str, recursive: bool) -> list[str] | None:
    """The files ``-f DIR`` stands for (``*.json``, ``*.yaml``, ``*.yml``, sorted by path as
    kubectl walks a directory; with ``recursive`` those of its subdirectories too); None when
    ``path`` is not a directory (a file, ``-``: read as given).

    A link to a directory is not walked into (kubectl's walk does not follow one either): a
    link back up looped (each file sent 41 times, until the kernel's ELOOP) and a link out of
    the directory sent files from anywhere. A link to a file is read, as kubectl reads it. At
    most MANIFEST_FILES_MAX files, else a usage error before anything is sent."""
    if path == "-" or not Path(path).is_dir():
        return None
    found: list[str] = []
    pending = [Path(path)]  # directories still to read, the next one last (no recursion)
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise CliError(f"{escape(str(directory))}: {escape(str(exc))}", EXIT_USAGE) from exc
        subdirectories = []
        for entry in entries:
            if entry.is_dir():
                if recursive and not entry.is_symlink():
                    subdirectories.append(entry)
            elif entry.suffix in MANIFEST_SUFFIXES:
                found.append(str(entry))
                if len(found) > MANIFEST_FILES_MAX:
                    raise CliError(
                        f"{escape(path)} holds more than {MANIFEST_FILES_MAX} manifest files: "
                        f"name a smaller directory",
                        EXIT_USAGE,
                    )
        # Depth first, in name order: a directory's files, then each subdirectory's in turn.
        pending.extend(reversed(subdirectories))
    return found


def _with_path(path: str, exc: CliError) -> str:
    """An error about one file of a directory, naming the file once."""
    message = str(exc)
    shown = escape(path)
    return message if message.startswith(shown) else f"{shown}: {message}"


def cmd_apply_paths(client: Client, args: argparse.Namespace) -> int | None:
    """``apply -f DIR [-R]``: every manifest file of the directory, in order; an error in one
    file is reported (with its path) and the others are applied, exit 1 at the end (kubectl).
    A file or ``-`` is :func:`agent.cli.nodectl.cmd_apply`'s alone."""
    files = manifest_files(args.filename, getattr(args, "recursive", False))
    if files is None:
        cmd_apply(client, args)
        return None
    if not files:
        raise CliError(
            f"no objects passed to apply: {escape(args.filename)} has no *.json, *.yaml or "
            f"*.yml file{'' if args.recursive else ' (-R reads its subdirectories)'}"
        )
    failed = False
    for path in files:
        try:
            cmd_apply(client, argparse.Namespace(**{**vars(args), "filename": path}))
        except ServerError as exc:
            print(_with_path(path, exc), file=sys.stderr)
            failed = True
        except CliError as exc:
            print(f"nodectl: {_with_path(path, exc)}", file=sys.stderr)
            failed = True
        sys.stdout.flush()
    return EXIT_ERROR if failed else None


# -- delete --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # "pods" or "nodes"
    namespace: str
    name: str


def delete_targets(args: argparse.Namespace) -> list[Target]:
    """What ``delete`` names: ``-f FILE|DIR`` (its pods), ``TYPE NAME…`` or ``TYPE/NAME…``."""
    if args.filename is not None:
        if args.kind is not None:
            raise CliError(
                "names go either in -f FILE or on the command line, not both", EXIT_USAGE
            )
        files = manifest_files(args.filename, args.recursive)
        targets = []
        for path in [args.filename] if files is None else files:
            for label, doc in _documents(path):
                targets.append(_document_target(path, label, doc, args.namespace))
        if not targets:
            raise CliError(f"no objects passed to delete in {escape(args.filename)}")
        return targets
    if args.kind is None:
        raise CliError(
            "you must provide one or more resources by argument or filename "
            "(nodectl delete pod NAME…, pod/NAME…, -f FILE)",
            EXIT_USAGE,
        )
    if "/" not in args.kind and any("/" in name for name in args.names):
        raise CliError(
            "there is no need to specify a resource type as a separate argument when passing "
            "arguments in resource/name form (nodectl delete pod/a pod/b, or pod a b)",
            EXIT_USAGE,
        )
    targets = []
    for kind, names in _targets(args.kind, args.names):
        if kind not in ("pods", "nodes"):
            raise CliError(f"delete takes pods or nodes, not {quote(args.kind)}", EXIT_USAGE)
        if not names:
            raise CliError("resource(s) were provided, but no name was specified", EXIT_USAGE)
        targets += [Target(kind, args.namespace, name) for name in names]
    return targets


def _document_target(path: str, label: str, doc: object, namespace: str) -> Target:
    where = escape(path) + (f", {label}" if label else "")
    kind = doc.get("kind") if isinstance(doc, dict) else None
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    if kind not in ("Pod", "Node") or not isinstance(name, str) or not name:
        raise CliError(f"{where}: not a Pod or Node with a metadata.name", EXIT_USAGE)
    given = meta.get("namespace") if isinstance(meta, dict) else None
    return Target(
        "pods" if kind == "Pod" else "nodes",
        given if isinstance(given, str) and given else namespace,
        name,
    )


def grace_period(args: argparse.Namespace) -> int | None:
    """The grace period to send: ``--now`` is 1, ``--grace-period=0`` becomes 1 as kubectl
    makes it without --force (an immediate, unconfirmed deletion is not offered), a negative
    one is the pod's own (None)."""
    if args.now:
        if args.grace_period >= 0:
            raise CliError("--now and --grace-period cannot be specified together", EXIT_USAGE)
        return 1
    given: int = args.grace_period
    return None if given < 0 else max(1, given)


def _pod_path(namespace: str, name: str) -> str:
    return f"/v1/namespaces/{_segment(namespace)}/pods/{_segment(name)}"


def cmd_delete(client: Client, args: argparse.Namespace) -> int | None:
    """kubectl's delete: each target deleted in turn (``pod "a" deleted``); one not found is
    reported and the others go on, exit 1 at the end (``--ignore-not-found``: silent); then,
    with ``--wait`` (the default), until the master no longer has the pods (their containers
    stopped on their nodes), bounded by ``--timeout``."""
    targets = delete_targets(args)
    grace = grace_period(args)
    failed = False
    waiting: list[tuple[Target, str, int]] = []  # (pod, its uid, its grace period)
    for target in targets:
        what = "pods" if target.kind == "pods" else "nodes"
        try:
            with named(what, target.name):
                if target.kind == "nodes":
                    client.call("DELETE", f"/v1/nodes/{_segment(target.name)}")
                    print(f"node {quote(target.name)} deleted")
                    continue
                path = _pod_path(target.namespace, target.name)
                pod = client.call("GET", path)
                client.call(
                    "DELETE", path if grace is None else f"{path}?gracePeriodSeconds={grace}"
                )
        except ServerError as exc:
            if exc.status == 404 and args.ignore_not_found:
                continue
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"pod {quote(target.name)} deleted")
        sys.stdout.flush()
        own = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
        pod_grace = grace if grace is not None else own if isinstance(own, int) else 30
        waiting.append((target, str((pod.get("metadata") or {}).get("uid") or ""), pod_grace))
    if args.wait and waiting:
        timeout = args.timeout or max(g for _, _, g in waiting) + WAIT_MARGIN_S
        left = wait_gone(client, [(t.namespace, t.name, uid) for t, uid, _ in waiting], timeout)
        if left:
            shown = ", ".join(f"pods/{escape(name)}" for _, name in left)
            raise CliError(f"timed out waiting for the condition on {shown}")
    return EXIT_ERROR if failed else None


def wait_gone(
    client: Client, pods: list[tuple[str, str, str]], timeout_s: float
) -> list[tuple[str, str]]:
    """Wait until the master no longer has these pods (namespace, name, uid: a new pod of the
    same name is another pod); the ``(namespace, name)`` of those left at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        present = {
            (
                p["metadata"].get("namespace", "default"),
                p["metadata"].get("name"),
                p["metadata"].get("uid", ""),
            )
            for p in client.call("GET", "/v1/pods")["items"]
        }
        left = [(ns, name) for ns, name, uid in pods if (ns, name, uid) in present]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)


# -- run -----------------------------------------------------------------------------------------

# The container's main process under -i/-t: sleeps until SIGTERM, then exits at once (a shell
# as PID 1 would otherwise ignore SIGTERM and hold the deletion for the whole grace period).
KEEPER = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"]
DEFAULT_SHELL = ["sh"]  # run -i without a command: what the session runs


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"invalid {what}: {quote(item)} (expected KEY=VALUE)", EXIT_USAGE)
        out[key] = value
    return out


def run_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """The pod ``run`` creates, as kubectl builds it: labels ``run=NAME`` unless ``--labels``,
    one container named as the pod, the command after ``--`` as its ``args`` (``--command``:
    as its ``command``); with ``-i``/``-t`` the container runs :data:`KEEPER` instead and the
    command runs in the session."""
    labels = _pairs([p for p in args.labels.split(",") if p], "label spec") if args.labels else {}
    container: dict[str, Any] = {"name": args.name, "image": args.image}
    if args.image_pull_policy:
        container["imagePullPolicy"] = args.image_pull_policy
    attached = args.stdin or args.tty
    if attached:
        container["command"] = list(KEEPER)
    elif args.cmd:
        container["command" if args.command_flag else "args"] = list(args.cmd)
    env = _pairs(args.env, "env")
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if args.port is not None:
        container["ports"] = [{"containerPort": args.port}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": args.name, "labels": labels or {"run": args.name}},
        "spec": {"containers": [container], "restartPolicy": args.restart},
    }


def _check_run(args: argparse.Namespace) -> None:
    if not args.image:
        raise CliError('required flag(s) "image" not set', EXIT_USAGE)
    if args.rm and not args.stdin:
        raise CliError("--rm should only be used for attached containers (-i)", EXIT_USAGE)
    if args.tty and not args.stdin:
        raise CliError("-i/--stdin is required for containers with -t/--tty=true", EXIT_USAGE)
    if args.dry_run != "none" and args.stdin:
        raise CliError(
            "--dry-run can't be used with attached containers options (--stdin, --tty)",
            EXIT_USAGE,
        )
    if args.port is not None and not 0 < args.port < 65536:
        raise CliError(f"--port {args.port}: a port from 1 to 65535", EXIT_USAGE)


def cmd_run(client: Client, args: argparse.Namespace) -> int | None:
    """``run NAME --image=IMAGE [flags] [-- CMD…]``: create the pod through the master (the
    path apply takes), ``pod/NAME created``; with ``-i``: wait until it runs, a session in
    it, and with ``--rm`` its deletion when the session ends (``pod "NAME" deleted``)."""
    _check_run(args)
    manifest = run_manifest(args)
    name = escape(args.name)
    # Checked here first, every error at once in kubectl's words (a bad name would otherwise
    # meet the master's "not a valid name" on the look-up below).
    from agent.errors import InvalidObjectError, ManifestError
    from agent.manifest import parse_pod

    try:
        parse_pod(manifest, source="")
    except ManifestError as exc:
        causes = tuple((escape(f), escape(p)) for f, p in exc.causes)
        raise InvalidObjectError(_invalid(manifest, causes)) from None
    if args.dry_run == "client":
        _print_applied(manifest, args.output, f"pod/{name} created (dry run)")
        return None
    path = _pod_path(args.namespace, args.name)
    # kubectl's run creates, never updates: a pod of that name is refused as the API server
    # refuses it. (The master's POST is apply's create-or-update; a pod created between this
    # look and the POST is updated instead, or refused for a change other than its image.)
    try:
        client.call("GET", path)
    except ServerError as exc:
        if exc.status != 404:
            raise
    else:
        raise ServerError(409, "AlreadyExists", f"pods {quote(args.name)} already exists")
    manifest["metadata"]["namespace"] = args.namespace
    post = "/v1/pods?dryRun=All" if args.dry_run == "server" else "/v1/pods"
    try:
        obj = client.call("POST", post, manifest)
    except ServerError as exc:
        if exc.status == 422 and exc.causes:
            raise InvalidObjectError(_invalid(manifest, exc.causes)) from None
        raise
    suffix = " (server dry run)" if args.dry_run == "server" else ""
    _print_applied(obj, args.output, f"pod/{name} created{suffix}")
    if not args.stdin:
        return None
    sys.stdout.flush()
    try:
        wait_running(client, args.namespace, args.name, args.pod_running_timeout)
        code = _session(client, args)
    except KeyboardInterrupt:
        code = 130
    finally:
        if args.rm:
            _remove(client, args.namespace, args.name)
    if not args.rm:
        print(
            f"Session ended; the pod keeps running (nodectl exec -it {name} -- sh for another "
            f"session, nodectl delete pod {name} to remove it)",
            file=sys.stderr,
        )
    return code


REMOVE_GRACE_S = 1  # run --rm: the keeper exits on SIGTERM at once; the session has ended


def _remove(client: Client, namespace: str, name: str) -> None:
    """``--rm``: delete the pod as the session ends, with a grace period of 1 s (the keeper
    needs none, and the master drops the pod at the latest 1 s + its margin later)."""
    try:
        with named("pods", name):
            client.call(
                "DELETE", f"{_pod_path(namespace, name)}?gracePeriodSeconds={REMOVE_GRACE_S}"
            )
    except ServerError as exc:
        print(exc, file=sys.stderr)
        return
    print(f"pod {quote(name)} deleted")


def wait_running(client: Client, namespace: str, name: str, timeout_s: float) -> None:
    """Until the pod's containers run; a pod that ended, or the deadline, is an error naming
    its STATUS (as ``get pods`` shows it) and the reason the node gave."""
    deadline = time.monotonic() + timeout_s
    path = _pod_path(namespace, name)
    while True:
        with named("pods", name):
            pod = client.call("GET", path)
        status = pod.get("status") or {}
        containers = status.get("containerStatuses") or []
        if status.get("phase") == "Running" and any(
            "running" in (c.get("state") or {}) for c in containers
        ):
            return
        shown, _ = _pod_status(pod)
        detail = _waiting_message(containers)
        if status.get("phase") in ("Succeeded", "Failed"):
            raise CliError(
                f"pod {quote(name)} ended before the session could start: STATUS {shown}{detail}"
            )
        if time.monotonic() >= deadline:
            raise CliError(
                f"timed out after {timeout_s:g}s waiting for pod {quote(name)} to be Running: "
                f"STATUS {escape(shown)}{detail}"
            )
        time.sleep(POLL_S)


def _waiting_message(containers: list[Any]) -> str:
    for c in containers:
        state = c.get("state") if isinstance(c, dict) else None
        for key in ("waiting", "terminated"):
            info = state.get(key) if isinstance(state, dict) else None
            if isinstance(info, dict) and info.get("message"):
                return f" ({escape(str(info['message']))})"
    return ""


def _session(client: Client, args: argparse.Namespace) -> int:
    """An exec of the command (default ``sh``) in the pod's container, with a terminal for
    ``-t``, through the master's proxy."""
    from agent.cli import nodectl_stream as ns

    session = argparse.Namespace(
        command="exec",
        namespace=args.namespace,
        pod=args.name,
        container=args.name,
        cmd=list(args.cmd) or list(DEFAULT_SHELL),
        stdin=True,
        tty=args.tty,
        exec_hint=False,
    )
    master_ctx = client.context
    code: int = ns.run(
        lambda conn: ns.exec_or_logs(conn, session),
        lambda: client.servers.open_master(master_ctx),
        raw_tty=args.tty and os.isatty(0),
    )
    return code
