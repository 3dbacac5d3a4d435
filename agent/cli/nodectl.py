"""``nodectl``: the admin CLI (kubectl-like verbs) against the master's API.

Synchronous and stdlib-only on purpose (``http.client`` + ``ssl``): it starts in a few tens of
milliseconds and imports nothing a command does not need. Config from ``--config``,
``$NODECTL_CONFIG`` or ``~/.config/nodectl/config`` (the ``admin.conf`` that ``node-master init``
writes). Every error goes to stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import ssl
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.nodectl_control import SESSION_IDLE_S, config_path, control
from agent.errors import CliError, NotTheMasterError, ServerError, SessionUnavailableError
from agent.names import escape, quote

EXIT_ERROR = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = Path("~/.config/nodectl/config")
TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class ClientConfig:
    server: str
    ca: str
    client_cert: str
    client_key: str
    # exec and logs start a ``nodectl session`` with this idle timeout when none runs; 0: never.
    session_idle_timeout_s: float = SESSION_IDLE_S
    # Every master, in the order tried (``server`` is the first): agent.cli.nodectl_servers.
    servers: tuple[str, ...] = ()


REQUIRED_KEYS = ("server", "ca", "client_cert", "client_key")
SESSION_KEY = "session_idle_timeout_s"


def load_config(explicit: str | None) -> ClientConfig:
    path = Path(explicit or os.environ.get("NODECTL_CONFIG") or DEFAULT_CONFIG).expanduser()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(
            f"{path}: no nodectl config (use --config, $NODECTL_CONFIG or {DEFAULT_CONFIG})",
            EXIT_USAGE,
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CliError(f"{path}: {exc}", EXIT_USAGE) from exc
    missing = [k for k in REQUIRED_KEYS if not isinstance(raw.get(k), str) and k != "server"]
    if "server" not in raw:
        missing.insert(0, "server")
    if missing:
        raise CliError(f"{path}: missing {', '.join(missing)}", EXIT_USAGE)
    unknown = sorted(set(raw) - {*REQUIRED_KEYS, SESSION_KEY})
    if unknown:
        known = ", ".join((*REQUIRED_KEYS, SESSION_KEY))
        raise CliError(f"{path}: unknown key {unknown[0]!r} (known: {known})", EXIT_USAGE)
    idle = raw.get(SESSION_KEY, SESSION_IDLE_S)
    if isinstance(idle, bool) or not isinstance(idle, int | float) or not 0 <= idle < 1e9:
        raise CliError(f"{path}: {SESSION_KEY} must be a number of seconds >= 0", EXIT_USAGE)
    from agent.cli.nodectl_servers import parse_servers

    servers = parse_servers(raw["server"], str(path))  # one URL, or several (a list)
    return ClientConfig(
        servers[0], raw["ca"], raw["client_cert"], raw["client_key"], float(idle), servers
    )


@contextlib.contextmanager
def _credential_files(config: ClientConfig) -> Iterator[tuple[str, str]]:
    """ssl loads client credentials only from files. On Linux they are anonymous memory files
    (never on disk, gone with the descriptors); elsewhere a 0600 temporary directory."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for data in (config.client_cert, config.client_key):
                fd = os.memfd_create("nodectl-credential", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data.encode())
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nodectl-") as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        for path, data in ((cert, config.client_cert), (key, config.client_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(data)
        yield str(cert), str(key)


def client_context(config: ClientConfig, *, check_hostname: bool = True) -> ssl.SSLContext:
    """TLS with the admin's certificate, trusting only the cluster CA."""
    ctx = ssl.create_default_context(cadata=config.ca)
    ctx.check_hostname = check_hostname
    with _credential_files(config) as (cert, key):
        ctx.load_cert_chain(cert, key)
    return ctx


def master_context(config: ClientConfig) -> ssl.SSLContext:
    """:func:`client_context` for the master: its certificate must also carry the master's
    mark, checked in the handshake before anything is sent (a node's certificate, valid for
    server use under the same CA, is refused with :class:`NotTheMasterError`)."""
    from agent.aio.tls import with_peer_check
    from agent.pki.names import master_mark_check

    return with_peer_check(client_context(config), master_mark_check(config.server))


class Client:
    """The master's HTTP/1.1 API; connects on the first call (streaming commands that go
    through the proxy never make one)."""

    def __init__(self, config: ClientConfig, *, verbose: bool = False) -> None:
        from agent.cli.nodectl_servers import Servers, check_url, config_servers

        urls = config_servers(config)
        for url in urls:
            check_url(url, "config")
        self.config = config
        # The masters, and the one in use; each request fails over among them.
        self.servers = Servers(urls, verbose=verbose)
        self._ctx: ssl.SSLContext | None = None
        self._conn: Any = None
        self.last_headers: dict[str, str] = {}  # the last answer's, names in lower case

    @property
    def context(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = master_context(self.config)
        return self._ctx

    @property
    def _address(self) -> tuple[str, int]:
        """The master in use (the next one after a failure)."""
        return self.servers.address

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        """One request, to the master in use or, when it fails, the next (nodectl_servers)."""
        return self.servers.request(
            method, functools.partial(self._call_once, method, path, body), self._drop
        )

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _call_once(self, method: str, path: str, body: object | None) -> Any:
        import http.client  # ~20 ms of imports (email) that exec and port-forward do not need

        from agent.cli.nodectl_servers import MasterUnreachableError

        if self._conn is None:
            host, port = self._address
            conn = http.client.HTTPSConnection(
                host, port, context=self.context, timeout=self.servers.connect_timeout_s(TIMEOUT_S)
            )
            try:
                conn.connect()  # TCP and TLS within the connect time-out; then reads get theirs
            except NotTheMasterError as exc:  # an OSError too: told apart first
                raise CliError(exc.message) from exc
            except OSError as exc:
                raise MasterUnreachableError(f"cannot reach the master: {exc}", sent=False) from exc
            conn.sock.settimeout(TIMEOUT_S)
            self._conn = conn
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
        except NotTheMasterError as exc:  # an OSError too: told apart first
            raise CliError(exc.message) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._drop()
            raise MasterUnreachableError(f"cannot reach the master: {exc}", sent=True) from exc
        try:
            decoded = json.loads(data) if data else {}
        except (ValueError, RecursionError):  # not JSON, an integer past 4,300 digits, nesting
            decoded = {"raw": data.decode(errors="replace")}
        if response.status >= 400:
            error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            if not isinstance(message, str) or not message:
                message = data.decode(errors="replace")
            # The server's words on one line: a newline or an escape sequence in them (a name
            # the server echoes) can neither forge a line nor drive the terminal.
            status = response.status
            reason = HTTP_REASONS.get(status, f"HTTP {status}")
            raise ServerError(status, reason, escape(message), _causes(error))
        self.last_headers = {k.lower(): v for k, v in response.getheaders()}
        return decoded


MAX_CAUSES = 100  # a 422's causes shown; the master sends at most 51


def _causes(error: object) -> tuple[tuple[str, str], ...]:
    """A 422's ``details.causes`` (every error of a manifest), escaped; () if malformed."""
    details = error.get("details") if isinstance(error, dict) else None
    causes = details.get("causes") if isinstance(details, dict) else None
    if not isinstance(causes, list):
        return ()
    return tuple(
        (escape(c["field"]), escape(c["message"]))
        for c in causes[:MAX_CAUSES]
        if isinstance(c, dict)
        and isinstance(c.get("field"), str)
        and isinstance(c.get("message"), str)
    )


# kubectl's names for the API's statuses (metav1.StatusReason), in its "Error from server (…)".
HTTP_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Gone",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@contextlib.contextmanager
def named(resource: str, name: str) -> Iterator[None]:
    """A request for one named object: the master's 404 becomes kubectl's words for it,
    ``Error from server (NotFound): pods "x" not found``."""
    try:
        yield
    except ServerError as exc:
        if exc.status != 404:
            raise
        raise ServerError(404, "NotFound", f"{resource} {quote(name)} not found") from None


# -- output ----------------------------------------------------------------------------------


def _segment(text: str) -> str:
    """``text`` as one path segment (or query value): a ``/`` in a name is encoded, so the
    master answers "not a valid name" (400) instead of "no such route"."""
    return urllib.parse.quote(text, safe="")


def _table(rows: list[list[str]]) -> str:
    """Aligned columns of cells the rows' makers escaped (``agent.names.escape``): what the
    server sends (a node's name, an event's message) can neither forge a row nor drive the
    terminal."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _node_ready(node: dict[str, Any]) -> str:
    """The node's Ready condition: ``Ready``, ``NotReady`` or ``Unknown``."""
    ready: dict[str, Any] = next(
        (c for c in node.get("status", {}).get("conditions") or [] if c.get("type") == "Ready"),
        {},
    )
    return {"True": "Ready", "False": "NotReady"}.get(ready.get("status", ""), "Unknown")


# Conditions whose True means trouble (kubelet's node pressure conditions).
_PRESSURE_CONDITIONS = frozenset({"DiskPressure", "MemoryPressure", "PIDPressure"})


def _node_row(node: dict[str, Any], wide: bool, now: float | None = None) -> list[str]:
    status = _node_ready(node)
    if node["spec"].get("unschedulable"):
        status += ",SchedulingDisabled"
    # The node's own failing conditions (Docker down, checkpoint not writable) by reason. A
    # pressure condition fails when True (Kubernetes' polarity: DiskPressure False is healthy).
    for condition in node["status"]["conditions"]:
        kind = str(condition.get("type", ""))
        failing = "True" if kind in _PRESSURE_CONDITIONS else "False"
        if kind != "Ready" and condition.get("status") == failing:
            status += f",{condition.get('reason') or kind}"
    reg = node["status"]["registration"]
    info = node["status"].get("nodeInfo") or {}
    row = [
        node["metadata"]["name"],
        status,
        reg["phase"],
        reg.get("admittedBy") or "-",
        _age(node["metadata"].get("creationTimestamp"), _now(now)),
        info.get("agentVersion") or "-",
    ]
    if wide:
        addresses = ",".join(
            a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"
        )
        # The agent runs pods on the Docker Engine only; its version when the node reports it.
        runtime = info.get("containerRuntimeVersion") or "docker"
        row += [addresses or "-", runtime, reg.get("certificateExpiry") or "-"]
        # The master the node's lease goes to (several masters: issue 19), as the node said.
        row.append(node["status"].get("master") or "-")
    # Every value the node or the server chose, escaped: a newline in a name cannot forge a row.
    return [escape(str(cell)) for cell in row]


def _now(now: float | None) -> float:
    import time

    return time.time() if now is None else now


def _pod_row(
    pod: dict[str, Any],
    wide: bool,
    all_namespaces: bool,
    *,
    now: float | None = None,
    lost: frozenset[str] = frozenset(),
) -> list[str]:
    """A pod's row; ``lost``: the nodes that are not Ready (the pods on them are NodeLost)."""
    statuses = pod["status"].get("containerStatuses", [])
    ready = f"{sum(1 for c in statuses if c.get('ready'))}/{len(pod['spec'].get('containers', []))}"
    node = pod["spec"].get("nodeName") or ""
    status, restart_count = _pod_status(pod, node_lost=bool(node) and node in lost)
    now = _now(now)
    age = _age(pod["metadata"].get("creationTimestamp"), now)
    restarts = str(restart_count)
    last = _last_restart(pod)
    if restart_count and last is not None:  # kubectl's "2 (5m ago)"
        restarts += f" ({human_duration(now - last)} ago)"
    row = [pod["metadata"]["name"], ready, status, restarts, age]
    if all_namespaces:
        row.insert(0, pod["metadata"]["namespace"])
    if wide:
        row += [pod["status"].get("podIP") or "<none>", node or "<none>"]
    return [escape(str(cell)) for cell in row]


def _last_restart(pod: dict[str, Any]) -> int | None:
    """When a container last ended before a restart: the latest ``lastState.terminated.
    finishedAt`` of the pod's containers (init ones included), as kubectl's RESTARTS shows it."""
    status = pod.get("status", {})
    latest = None
    for container in (status.get("initContainerStatuses") or []) + (
        status.get("containerStatuses") or []
    ):
        last = container.get("lastState") if isinstance(container, dict) else None
        terminated = last.get("terminated") if isinstance(last, dict) else None
        finished = terminated.get("finishedAt") if isinstance(terminated, dict) else None
        then = _epoch(finished) if isinstance(finished, str) else None
        if then is not None and (latest is None or then > latest):
            latest = then
    return latest


def _pod_status(pod: dict[str, Any], *, node_lost: bool = False) -> tuple[str, int]:
    """The STATUS and RESTARTS columns as kubectl computes them (its printPod): the phase (or
    the pod's reason); while initializing, the first init container that has not succeeded
    (``Init:N/M``, ``Init:<waiting reason>`` such as ``Init:CrashLoopBackOff``,
    ``Init:<terminated reason>`` such as ``Init:Error``) and the init containers' restarts;
    once initialized, the last app container's waiting or terminated reason, if any; then
    ``Terminating`` for a pod with a deletion timestamp. ``node_lost``: the pod's node is not
    Ready, so what it last reported may no longer hold — ``NodeLost`` (``Unknown`` while
    terminating), the reason the node controller gives such pods; a pending or finished pod
    keeps its status."""
    reason, restarts = _container_status(pod)
    status = pod.get("status", {})
    terminating = bool(pod.get("metadata", {}).get("deletionTimestamp"))
    # Pending (never started there) and finished pods keep their status: nothing of it is stale.
    settled = status.get("phase") in ("Succeeded", "Failed", "Pending")
    if node_lost and not settled:
        reason = "Unknown" if terminating else "NodeLost"
    elif terminating:
        reason = "Terminating"
    return reason, restarts


def _container_status(pod: dict[str, Any]) -> tuple[str, int]:
    status = pod.get("status", {})
    reason = str(status.get("reason") or status.get("phase") or "Pending")
    restarts = 0
    initializing = False
    inits = status.get("initContainerStatuses") or []
    total = len(pod.get("spec", {}).get("initContainers") or inits)
    for i, container in enumerate(inits):
        restarts += int(container.get("restartCount", 0))
        state = container.get("state") or {}
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated is not None and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated is not None:
            reason = (
                f"Init:{terminated['reason']}"
                if terminated.get("reason")
                else f"Init:ExitCode:{terminated.get('exitCode')}"
            )
        elif waiting is not None and waiting.get("reason") not in (None, "", "PodInitializing"):
            reason = f"Init:{waiting['reason']}"
        else:
            reason = f"Init:{i}/{total}"
        break
    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    if not initializing or initialized:
        restarts = 0
        has_running = False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount", 0))
            state = container.get("state") or {}
            terminated, waiting = state.get("terminated"), state.get("waiting")
            if waiting is not None and waiting.get("reason"):
                reason = str(waiting["reason"])
            elif terminated is not None:
                reason = str(terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}")
            elif container.get("ready") and state.get("running") is not None:
                has_running = True
        if reason == "Completed" and has_running:
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            reason = "Running" if ready else "NotReady"
    return reason, restarts


def _age(timestamp: str | None, now: float) -> str:
    """How long ago ``timestamp`` (RFC 3339, UTC) was, as kubectl's AGE column shows it."""
    then = _epoch(timestamp or "")
    return "<unknown>" if then is None else human_duration(now - then)


def _epoch(stamp: str) -> int | None:
    """``YYYY-MM-DDTHH:MM:SSZ`` (the API's timestamps) as seconds since the epoch, without
    time.strptime: its import (_strptime, calendar, locale, datetime) would cost every table
    several milliseconds of start-up."""
    if (
        len(stamp) != 20
        or stamp[4] + stamp[7] + stamp[10] + stamp[13] + stamp[16] + stamp[19] != "--T::Z"
    ):
        return None
    parts = (stamp[0:4], stamp[5:7], stamp[8:10], stamp[11:13], stamp[14:16], stamp[17:19])
    if not all(p.isdigit() and p.isascii() for p in parts):
        return None
    year, month, day, hour, minute, second = (int(p) for p in parts)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    # Days from the civil date (Howard Hinnant's algorithm), proleptic Gregorian.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


def human_duration(seconds_f: float) -> str:
    """kubectl's ``duration.HumanDuration``: 5s, 119s, 3m2s, 179m, 4h5m, 23h, 3d4h, 30d, 2y3d;
    precise while short, coarser as it grows."""
    if seconds_f < -1:
        return "<invalid>"
    seconds = max(0, int(seconds_f))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m" if seconds % 60 == 0 else f"{minutes}m{seconds % 60}s"
    if minutes < 3 * 60:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    days = hours // 24
    if hours < 24 * 365 * 8:
        return f"{days // 365}y" if days % 365 == 0 else f"{days // 365}y{days % 365}d"
    return f"{days // 365}y"


def _csr_row(request: dict[str, Any], now: float) -> list[str]:
    """A node's serving-names request; every value the node chose is escaped (it may hold
    anything a certificate may: never a control character that forges a row)."""
    spec = request.get("spec", {})
    return [
        escape(request["metadata"]["name"]),
        escape(",".join(spec.get("names", []))) or "-",
        escape(spec.get("source") or "-"),
        _age(request["metadata"].get("creationTimestamp"), now),
        escape(request.get("status", {}).get("condition") or "-"),
    ]


def _yaml(document: object) -> str:
    """``document`` as YAML in which every string holding a control or invisible character is
    double-quoted with escapes (``"a\\nb"``), never a multi-line scalar whose second line could
    pass for a line nodectl wrote; non-ASCII is escaped too (PyYAML's default)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
        style = None if data.isprintable() else '"'
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(document, Dumper=Dumper, sort_keys=False)


def _emit_documents(items: list[dict[str, Any]], output: str, single: bool) -> None:
    """``-o json|yaml`` as kubectl prints them: ``get TYPE NAME`` prints the object, every other
    get prints a ``List`` (also of zero or one item, so ``jq '.items[]'`` always works)."""
    document = items[0] if single else {"apiVersion": "v1", "kind": "List", "items": items}
    if output == "json":
        print(json.dumps(document, indent=2))
        return
    print(_yaml(document), end="")


@dataclass(frozen=True, slots=True)
class TableOptions:
    wide: bool = False
    all_namespaces: bool = False
    no_headers: bool = False
    show_labels: bool = False
    prefix: bool = False  # NAME as kind/name, as kubectl shows several kinds (get all)


def _table_rows(
    objects: list[dict[str, Any]],
    kind: str,
    options: TableOptions,
    lost: frozenset[str] = frozenset(),
) -> list[list[str]]:
    """The rows of one kind's table, its header first."""
    import time

    now = time.time()
    wide = options.wide
    if kind == "csr":
        header = ["NAME", "REQUESTED NAMES", "SOURCE", "AGE", "CONDITION"]
        rows = [_csr_row(r, now) for r in objects]
    elif kind == "nodes":
        header = ["NAME", "STATUS", "REGISTRATION", "TRUST", "AGE", "VERSION"]
        header += ["INTERNAL-IP", "CONTAINER-RUNTIME", "CERT-EXPIRY", "MASTER"] if wide else []
        rows = [_node_row(n, wide, now) for n in objects]
    else:
        header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
        if options.all_namespaces:
            header.insert(0, "NAMESPACE")
        rows = [_pod_row(p, wide, options.all_namespaces, now=now, lost=lost) for p in objects]
    name_at = 1 if kind == "pods" and options.all_namespaces else 0
    if options.prefix:
        singular = {"nodes": "node", "pods": "pod", "csr": "certificaterequest"}[kind]
        for row in rows:
            row[name_at] = f"{singular}/{row[name_at]}"
    if options.show_labels:
        header.append("LABELS")
        for row, obj in zip(rows, objects, strict=True):
            row.append(escape(_labels(obj)))
    return [header, *rows]


def _labels(obj: dict[str, Any]) -> str:
    labels = obj.get("metadata", {}).get("labels")
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _print_table(rows: list[list[str]], no_headers: bool) -> None:
    print(_table(rows[1:] if no_headers else rows) if len(rows) > (1 if no_headers else 0) else "")


# -- commands --------------------------------------------------------------------------------

KINDS = {
    "node": "nodes",
    "nodes": "nodes",
    "no": "nodes",
    "pod": "pods",
    "pods": "pods",
    "po": "pods",
    # Requests for serving names beyond those the master verified (kubectl's CSRs).
    "csr": "csr",
    "csrs": "csr",
    "certificaterequest": "csr",
    "certificaterequests": "csr",
    "certificatesigningrequest": "csr",
    "certificatesigningrequests": "csr",
}


def _kinds(spec: str) -> list[str]:
    """The kinds a ``get`` names: ``all`` is nodes and pods (kubectl's ``all`` is the
    workloads; a cluster of ours has nodes and pods)."""
    kinds = []
    for item in spec.split(","):
        if item == "all":
            kinds += ["nodes", "pods"]
            continue
        if item not in KINDS:
            raise CliError(
                f"unknown resource type {quote(item)} (known: nodes (node, no), pods (pod, po), "
                f"csr (certificaterequests), all)",
                EXIT_USAGE,
            )
        kinds.append(KINDS[item])
    return list(dict.fromkeys(kinds))


def _targets(kind: str, names: list[str]) -> list[tuple[str, list[str]]]:
    """What a get asks for: kinds, each with the names asked (none: all of it). ``TYPE/NAME``
    arguments (``get pod/web node/n1``) or ``TYPE NAME…``."""
    if "/" in kind:
        targets: dict[str, list[str]] = {}
        for arg in [kind, *names]:
            what, sep, name = arg.partition("/")
            if not sep or not name:
                raise CliError(
                    f"there is no need to specify a resource type as a separate argument when "
                    f"passing arguments in resource/name form (got {quote(arg)})",
                    EXIT_USAGE,
                )
            kinds = _kinds(what)
            if len(kinds) != 1 or "," in what or what == "all":
                raise CliError(f"{quote(arg)}: one resource type before the /", EXIT_USAGE)
            targets.setdefault(kinds[0], []).append(name)
        return list(targets.items())
    kinds = _kinds(kind)
    if names and len(kinds) > 1:
        raise CliError("names go with one resource type (or TYPE/NAME each)", EXIT_USAGE)
    return [(k, list(names)) for k in kinds]


def cmd_get(client: Client, args: argparse.Namespace) -> int | None:
    """``get``; ``get events`` (agent.cli.nodectl_events) and ``get -w``
    (agent.cli.nodectl_watch) in their own modules."""
    if args.kind in ("events", "event", "ev"):
        from agent.cli import nodectl_events

        nodectl_events.run(client, args)
        return None
    if args.for_object:
        raise CliError("--for goes with get events", EXIT_USAGE)
    if args.watch or args.watch_only:
        from agent.cli import nodectl_watch

        return nodectl_watch.run(client, args)
    _get_listed(client, args)
    return None


def _get_listed(client: Client, args: argparse.Namespace) -> None:
    targets = _targets(args.kind, args.names)
    output = args.output
    template = ""
    if output not in (None, "wide", "json", "yaml"):
        from agent.cli import output as out

        parsed = out.parse_output(output)
        output, template = parsed.format, parsed.template
    selector: tuple[Any, ...] = ()
    fields: tuple[Any, ...] = ()
    if args.selector is not None or args.field_selector is not None:
        from agent.cli import output as out

        if any(names for _, names in targets):
            raise CliError("name cannot be provided when a selector is specified", EXIT_USAGE)
        selector = out.parse_selector(args.selector or "")
        fields = out.parse_field_selector(args.field_selector) if args.field_selector else ()
    listed: dict[str, list[dict[str, Any]]] = {}

    def listing(kind: str) -> list[dict[str, Any]]:
        if kind not in listed:
            if kind == "nodes":
                listed[kind] = client.call("GET", "/v1/nodes")["items"]
            elif kind == "csr":
                listed[kind] = client.call("GET", "/v1/certificaterequests")["items"]
            else:
                query = "" if args.all_namespaces else "?namespace=" + _segment(args.namespace)
                listed[kind] = client.call("GET", "/v1/pods" + query)["items"]
        return listed[kind]

    found: list[tuple[str, list[dict[str, Any]]]] = []
    for kind, names in targets:
        items = listing(kind)
        if selector or fields:
            from agent.cli import output as out

            items = out.select_fields(out.select(items, selector), kind, fields)
        if names:
            by_name = {item["metadata"]["name"]: item for item in items}
            for name in names:
                if name not in by_name:
                    what = {"nodes": "nodes", "pods": "pods", "csr": "certificaterequests"}[kind]
                    raise ServerError(404, "NotFound", f"{what} {quote(name)} not found")
            items = [by_name[name] for name in names]
        found.append((kind, items))
    every = [item for _, items in found for item in items]
    single = len(targets) == 1 and len(targets[0][1]) == 1
    if output in ("json", "yaml", "jsonpath"):
        document = every[0] if single else {"apiVersion": "v1", "kind": "List", "items": every}
        if output == "jsonpath":
            from agent.cli import jsonpath

            # As kubectl: the template's output as is, no newline added.
            print(jsonpath.render(jsonpath.parse(template), document), end="")
        else:
            _emit_documents(every, output, single=single)
        return
    if output == "name":
        from agent.cli import output as out

        for kind, items in found:
            for item in items:
                print(out.name_of(kind, item))
        return
    if output == "custom-columns":
        from agent.cli import output as out

        columns = out.parse_columns(template)
        if every or not args.no_headers:
            print(_table(out.column_rows(columns, every, not args.no_headers)))
        return
    _emit_tables(client, args, found, listing)


def _emit_tables(
    client: Client,
    args: argparse.Namespace,
    found: list[tuple[str, list[dict[str, Any]]]],
    listing: Callable[[str], list[dict[str, Any]]],
) -> None:
    options = TableOptions(
        wide=args.output == "wide",
        all_namespaces=args.all_namespaces,
        no_headers=args.no_headers,
        show_labels=args.show_labels,
        prefix=len(found) > 1,
    )
    if not any(items for _, items in found):
        where = "" if args.all_namespaces else f" in {escape(args.namespace)} namespace"
        kinds = {kind for kind, _ in found}
        print(
            f"No resources found{where if 'pods' in kinds else ''}."
            if kinds != {"csr"}
            else "No csr found.",
            file=sys.stderr,
        )
        return
    first = True
    for kind, items in found:
        if not items:
            continue
        lost: frozenset[str] = frozenset()
        if kind == "pods" and any(p["spec"].get("nodeName") for p in items):
            # NodeLost: the pods' nodes' readiness, from the nodes' list (one more request).
            lost = frozenset(
                n["metadata"]["name"] for n in listing("nodes") if _node_ready(n) != "Ready"
            )
        if not first:
            print()
        first = False
        _print_table(_table_rows(items, kind, options, lost), options.no_headers)


def _one_kind(spec: str, verb: str) -> str:
    """The one kind of node or pod a verb on one object takes."""
    kinds = _kinds(spec)
    if len(kinds) != 1 or kinds[0] not in ("nodes", "pods"):
        raise CliError(f"{verb} takes one resource type: nodes or pods, not {quote(spec)}", 2)
    return kinds[0]


def cmd_describe(client: Client, args: argparse.Namespace) -> None:
    """``describe``: kubectl's human layout (:mod:`agent.cli.nodectl_describe`)."""
    from agent.cli import nodectl_describe

    nodectl_describe.cmd_describe(client, args)


def _documents(path: str) -> list[tuple[str, object]]:
    """The pod documents of a file (``-``: standard input), each with where it is, read by the
    strict loader the master and the agent use (``agent.manifest_loader``): a repeated key, a
    tag, an alias bomb, 5,000-deep nesting are errors naming the path, never a traceback."""
    from agent.errors import ManifestError
    from agent.manifest import pod_documents
    from agent.manifest_loader import MAX_MANIFEST_BYTES

    shown = escape(path)
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_MANIFEST_BYTES + 1)
        else:
            with Path(path).open("rb") as handle:
                data = handle.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise CliError(f"{shown}: {escape(str(exc))}", EXIT_USAGE) from exc
    try:
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES} bytes", shown)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError("", f"not UTF-8 (at byte {exc.start})", shown) from None
        return pod_documents(text, source=shown)
    except ManifestError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _invalid(doc: object, causes: tuple[tuple[str, str], ...]) -> str:
    """kubectl's words for a refused manifest: ``The Pod "x" is invalid: …``, one cause on the
    line, several as a ``* field: problem`` list (``causes`` escaped by their producer)."""
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    head = f"The Pod {quote(name)} is invalid:" if isinstance(name, str) else "The Pod is invalid:"
    lines = [f"{field}: {problem}" if field else problem for field, problem in causes]
    if len(lines) == 1:
        return f"{head} {lines[0]}"
    return "\n".join([head, *(f"* {line}" for line in lines)])


FORCE_WAIT_S = 60.0  # apply --force: how long the deleted pod may take to go
FORCE_POLL_S = 0.5


def cmd_apply(client: Client, args: argparse.Namespace) -> None:
    """``apply -f FILE [--dry-run=client|server] [--force] [-o json|yaml]``.

    Every document is parsed here first with the master's parser: its warnings (what the API
    server adds, dropped) are printed as kubectl prints a server's, and with ``--dry-run=client``
    its errors, all of them, are the answer. The master refuses an update other than images
    (422); ``--force`` then deletes the pod, waits until it is gone and creates it again."""
    from agent.errors import InvalidObjectError, ManifestError
    from agent.manifest import parse_pod

    dry_run = getattr(args, "dry_run", "none")
    force = getattr(args, "force", False)
    output = getattr(args, "output", None)
    for label, doc in _documents(args.filename):
        where = f"{label}: " if label else ""
        warnings: list[str] = []
        try:
            pod = parse_pod(doc, source="", warnings=warnings)
        except ManifestError as exc:
            if dry_run == "client":
                causes = tuple((escape(f), escape(p)) for f, p in exc.causes)
                raise InvalidObjectError(where + _invalid(doc, causes)) from None
            pod = None  # the master's answer says what is wrong, as it sees it
        for warning in warnings:
            print(f"Warning: {where}{escape(warning)}", file=sys.stderr)
        name = escape(pod.metadata.name) if pod is not None else ""
        if dry_run == "client" and pod is not None:
            _print_applied(dict(pod.manifest), output, f"pod/{name} created (dry run)")
            continue
        path = "/v1/pods?dryRun=All" if dry_run == "server" else "/v1/pods"
        try:
            try:
                obj = client.call("POST", path, doc)
            except ServerError as exc:
                if not (force and dry_run == "none" and _forbidden_update(exc) and pod):
                    raise
                _delete_and_wait(client, pod.metadata.namespace, pod.metadata.name)
                obj = client.call("POST", path, _without_uid(doc))
                _print_applied(obj, output, f"pod/{name} replaced")
                continue
        except ServerError as exc:
            if exc.status == 422 and exc.causes:
                raise InvalidObjectError(where + _invalid(doc, exc.causes)) from None
            if label:  # which of the file's pods the master refused
                raise CliError(f"{label}: {exc}", exc.exit_code) from None
            raise
        except CliError as exc:
            if label:
                raise CliError(f"{label}: {exc}", exc.exit_code) from None
            raise
        shown_name = escape(str(obj["metadata"]["name"]))
        suffix = " (server dry run)" if dry_run == "server" else ""
        # The master says what happened (X-Apply-Result), as kubectl apply prints it.
        verb = client.last_headers.get("x-apply-result", "")
        if verb not in ("created", "configured", "unchanged"):
            verb = "configured"
        _print_applied(obj, output, f"pod/{shown_name} {verb}{suffix}")


def _without_uid(doc: object) -> object:
    """A recreated pod is a new pod: a uid in the manifest (``kubectl get`` output) would give
    the new one the old one's identity, so the master assigns a fresh one instead."""
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return doc
    meta = {k: v for k, v in doc["metadata"].items() if k != "uid"}
    return {**doc, "metadata": meta}


def _forbidden_update(exc: ServerError) -> bool:
    """The master's refusal of an update other than images (what ``--force`` is for)."""
    return exc.status == 422 and any(
        field == "spec" and problem.startswith("Forbidden: pod updates")
        for field, problem in exc.causes
    )


def _print_applied(obj: dict[str, Any], output: str | None, line: str) -> None:
    if output == "json":
        print(json.dumps(obj, indent=4))
    elif output == "yaml":
        import yaml

        print(yaml.safe_dump(obj, sort_keys=True, default_flow_style=False), end="")
    else:
        print(line)


def _delete_and_wait(client: Client, namespace: str, name: str) -> None:
    """``apply --force``: delete the pod and wait until the master no longer has it (its
    containers stopped on the node), so the new pod does not meet the old one."""
    import time

    pod_path = f"/v1/namespaces/{_segment(namespace)}/pods/{_segment(name)}"
    with named("pods", name):
        client.call("DELETE", pod_path)
    deadline = time.monotonic() + FORCE_WAIT_S
    while time.monotonic() < deadline:
        try:
            client.call("GET", pod_path)
        except ServerError as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(FORCE_POLL_S)
    raise CliError(f"pod {quote(name)} still exists {FORCE_WAIT_S:.0f} s after its deletion")


def _verbs() -> Any:
    from agent.cli import nodectl_verbs

    return nodectl_verbs


def cmd_delete(client: Client, args: argparse.Namespace) -> int | None:
    """:func:`agent.cli.nodectl_verbs.cmd_delete`."""
    code: int | None = _verbs().cmd_delete(client, args)
    return code


def cmd_node_action(client: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] | None = None
    if getattr(args, "reason", None):
        body = {"reason": args.reason}
    fingerprint = getattr(args, "fingerprint", None)
    if getattr(args, "force_replace", False):
        if not fingerprint:
            raise CliError(
                f"--force-replace needs --fingerprint sha256:…, the waiting key's fingerprint "
                f"as `nodectl describe node {args.name}` shows it",
                EXIT_USAGE,
            )
        body = {"forceReplace": True, "fingerprint": fingerprint}
    elif fingerprint:
        raise CliError("--fingerprint goes with --force-replace", EXIT_USAGE)
    with named("nodes", args.name):
        client.call("POST", f"/v1/nodes/{_segment(args.name)}/{args.command}", body)
    past = {
        "approve": "approved",
        "deny": "denied",
        "cordon": "cordoned",
        "uncordon": "uncordoned",
    }[args.command]
    print(f"node/{escape(args.name)} {past}")


def cmd_certificate(client: Client, args: argparse.Namespace) -> None:
    """``certificate approve|deny NODE…``: decide on the serving names each node asked for
    beyond those the master verified (approved ones are on its next certificate). The names
    decided are those listed now, sent along, so that a request the node changed meanwhile is
    refused (409) rather than approved unseen."""
    past = {"approve": "approved", "deny": "denied"}[args.action]
    listed = client.call("GET", "/v1/certificaterequests")["items"]
    waiting = {r["metadata"]["name"]: r.get("status", {}).get("pending", []) for r in listed}
    for name in args.names:
        names = waiting.get(name)
        if not names:
            raise CliError(f"node {quote(name)} has no serving names waiting for a decision")
        client.call(
            "POST",
            f"/v1/nodes/{urllib.parse.quote(name, safe='')}/servingnames/{args.action}",
            {"names": names},
        )
        print(f"certificaterequest/{escape(name)} {past}: {escape(', '.join(names))}")


def _streaming(client: Client, args: argparse.Namespace) -> int | None:
    """exec, port-forward and logs: HTTP/2 streams through the master's proxy, or with
    ``--direct`` straight to the pod's node (found through the master)."""
    from agent.cli import nodectl_stream as ns

    config = client.config
    try:
        opener: Callable[[], Any]
        if args.direct:
            target = ns.resolve_node(client.call, args.namespace, args.pod)
            # The node's identity is checked by name after the handshake (see open_node).
            node_ctx = client_context(config, check_hostname=False)
            opener = lambda: ns.open_node(target, node_ctx)  # noqa: E731
        else:
            master_ctx = client.context
            # The first master that accepts the connection (nodectl_servers).
            opener = lambda: client.servers.open_master(master_ctx)  # noqa: E731
        if args.command == "exec" and not args.cmd:
            raise CliError("exec needs a command after --", EXIT_USAGE)
        if args.command in ("exec", "logs"):
            # Like ssh's ControlPersist: this command runs on its own, the next ones in the
            # session (a second one racing to start finds the lock taken and exits).
            persist = bool(
                config.session_idle_timeout_s
                and not (args.direct or args.no_session)
                and sys.platform == "linux"
            )
            # One that may run long starts it now, for other terminals; a short one when done,
            # so that the session's start-up does not compete with it for the CPU.
            long_running = (args.stdin or args.tty) if args.command == "exec" else args.follow
            if persist and long_running:
                _start_session(config_path(args.config), config.session_idle_timeout_s, wait=False)
            run_session = lambda conn: ns.exec_or_logs(conn, args)  # noqa: E731
            if not args.direct:  # refused with a 5xx: the next master (nodectl_servers)
                again = args.command == "logs" or not (args.stdin or args.tty)
                plain = run_session
                run_session = lambda conn: client.servers.stream(  # noqa: E731
                    conn, client.context, plain, again=again
                )
            code: int = ns.run(run_session, opener, raw_tty=args.command == "exec" and args.tty)
            if persist and not long_running:
                _start_session(config_path(args.config), config.session_idle_timeout_s, wait=False)
            return code
        pairs = ns.parse_ports(args.ports)
        if args.direct and args.relay:
            raise CliError("--direct and --relay exclude each other", EXIT_USAGE)
        session = lambda conn: ns.port_forward_session(  # noqa: E731
            conn, args.namespace, args.pod, pairs, args.address
        )
        if not (args.direct or args.relay):  # by the master's tickets where it allows them
            from agent.cli import nodectl_tickets as nt

            node_ctx = client_context(config, check_hostname=False)
            session = lambda conn: nt.port_forward(  # noqa: E731
                conn, node_ctx, args.namespace, args.pod, pairs, args.address
            )
        with contextlib.suppress(KeyboardInterrupt):
            ns.run(session, opener, bulk=True)
        return None
    except KeyboardInterrupt:
        return 130


def cmd_session(client: Client, args: argparse.Namespace) -> int | None:
    """``session start|stop|status``: the connection-sharing holder of this config (see
    :mod:`agent.cli.nodectl_session`)."""
    config = config_path(args.config)
    if args.action == "start":
        if sys.platform != "linux":
            raise CliError("nodectl sessions need Linux (Unix sockets passing descriptors)")
        return _start_session(config, args.idle_timeout)
    try:
        reply = control(config, b"S" if args.action == "stop" else b"I")
    except SessionUnavailableError:
        raise CliError(f"no session is running for {config}") from None
    if args.action == "stop":
        print("session stopped")
    else:
        print(reply[1:].decode(), end="")
    return None


def _start_session(config: str, idle_timeout_s: float, *, wait: bool = True) -> int:
    import subprocess

    # -P and cwd "/": the holder must not import from, nor keep busy, the caller's directory.
    command = [sys.executable, "-P", "-m", "agent.cli.nodectl_session", "--config", config]
    command += ["--idle-timeout", str(idle_timeout_s)]
    if not wait:
        from agent.cli.nodectl_session import start_wanted

        # The command itself succeeded: nothing about the session may change its outcome.
        with contextlib.suppress(OSError):
            if start_wanted(config):
                subprocess.Popen(
                    command,
                    cwd="/",
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        return 0
    read_end, write_end = os.pipe()
    command += ["--ready-fd", str(write_end)]
    try:
        proc = subprocess.Popen(
            command,
            cwd="/",
            pass_fds=(write_end,),
            start_new_session=True,  # outlives this terminal, like ``ssh -fNM``
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as ready:
        report = ready.read().decode(errors="replace").strip()
    if report.startswith("session started"):
        print(report)
        return 0
    code = proc.wait(timeout=TIMEOUT_S)
    raise CliError(report.removeprefix("nodectl: ") or f"the session exited with status {code}")


@functools.cache  # a session parses every command it runs; the parser itself never changes
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodectl", description="administer a node-agent cluster")
    parser.add_argument(
        "--config", help="nodectl config (default: $NODECTL_CONFIG or ~/.config/nodectl/config)"
    )
    parser.add_argument(
        "--no-session",
        action="store_true",
        help="run exec and logs in this process: neither use nor start a nodectl session",
    )
    parser.add_argument(
        "--server",
        metavar="URL[,URL...]",
        help="the master(s), tried in this order (instead of the config's server)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="say on stderr when a master fails over"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    get = sub.add_parser("get", help="list nodes, pods or serving-name requests (csr)")
    get.add_argument(
        "kind", help="nodes, pods, csr, all, a list of them (nodes,pods), or TYPE/NAME…"
    )
    get.add_argument("names", nargs="*", metavar="NAME")
    get.add_argument(
        "-o",
        "--output",
        metavar="FORMAT",
        help="wide, json, yaml, name, jsonpath=TEMPLATE, custom-columns=NAME:PATH,…",
    )
    get.add_argument("-n", "--namespace", default="default")
    get.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-l", "--selector", help="label selector: a=b, a!=b, a in (x,y), a, !a")
    get.add_argument(
        "--field-selector", metavar="SELECTOR", help="spec.nodeName=N, status.phase=Running, …"
    )
    get.add_argument("--no-headers", action="store_true", help="tables without their header")
    get.add_argument("--show-labels", action="store_true", help="a LABELS column")
    get.add_argument("-w", "--watch", action="store_true", help="after the list, print each change")
    get.add_argument("--watch-only", action="store_true", help="print each change, no list")
    get.add_argument("--output-watch-events", action="store_true", help="watch: an EVENT column")
    get.add_argument(
        "--for", dest="for_object", metavar="TYPE/NAME", help="get events: of pod/NAME, node/NAME"
    )
    describe = sub.add_parser("describe", help="show one node or pod in full")
    describe.add_argument("kind")
    describe.add_argument("name")
    describe.add_argument("-n", "--namespace", default="default")
    apply = sub.add_parser("apply", help="create or update pods from a manifest")
    apply.add_argument(
        "-f", "--filename", required=True, help="FILE, DIR (its *.yaml, *.yml, *.json) or -"
    )
    apply.add_argument(
        "-R", "--recursive", action="store_true", help="-f DIR: its subdirectories too"
    )
    apply.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=("none", "client", "server"),
        help="client: check here and print what would be sent; server: the master checks "
        "everything and stores nothing",
    )
    apply.add_argument(
        "--force",
        action="store_true",
        help="a change the master refuses (other than images): delete, wait, recreate",
    )
    apply.add_argument("-o", "--output", choices=("json", "yaml"), help="print the pod object")
    delete = sub.add_parser(
        "delete",
        help="delete pods or nodes, and wait until they are gone",
        description="nodectl delete pod A B…, pod/A pod/B…, -f FILE|DIR [-R]",
    )
    delete.add_argument("kind", nargs="?", help="pods, nodes, or TYPE/NAME")
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("-n", "--namespace", default="default")
    delete.add_argument("-f", "--filename", help="the pods of FILE, DIR or - (stdin)")
    delete.add_argument("-R", "--recursive", action="store_true", help="-f DIR: subdirs too")
    delete.add_argument(
        "--grace-period",
        type=int,
        default=-1,
        metavar="SECONDS",
        help="the seconds the containers get to stop, in place of the pod's own (0 is 1)",
    )
    delete.add_argument("--now", action="store_true", help="--grace-period=1")
    delete.add_argument(
        "--wait",
        action="store_true",
        default=True,
        help="return once the pods are gone (default true; --wait=false returns at once)",
    )
    delete.add_argument("--no-wait", dest="wait", action="store_false", help=argparse.SUPPRESS)
    delete.add_argument(
        "--timeout",
        type=_verb_type("timeout_seconds"),
        default=0.0,
        metavar="DURATION",
        help="--wait's bound (default: the grace period and 30s)",
    )
    delete.add_argument("--ignore-not-found", action="store_true")
    run = sub.add_parser(
        "run",
        help="create a pod of one container; -it: a terminal in it",
        description="-i/-t: the container runs a keeper (sh sleeping) and the session is an "
        "exec of the command (default sh) in it; --rm deletes the pod when it ends",
        epilog="nodectl run -it --rm debug --image=busybox -- sh",
    )
    run.add_argument("name")
    run.add_argument("--image", help="the container's image")
    run.add_argument("--image-pull-policy", choices=("Always", "IfNotPresent", "Never"))
    run.add_argument("--restart", choices=("Always", "OnFailure", "Never"), default="Always")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--labels", "-l", default="", metavar="k=v,…", help="default run=NAME")
    run.add_argument("--port", type=int, metavar="PORT", help="the containerPort")
    run.add_argument("-i", "--stdin", action="store_true", help="a session in the pod")
    run.add_argument("-t", "--tty", action="store_true", help="with a terminal (with -i)")
    run.add_argument("--rm", action="store_true", help="delete the pod when the session ends")
    run.add_argument(
        "--command",
        dest="command_flag",
        action="store_true",
        help="the words after -- are the container's command, not its args",
    )
    run.add_argument(
        "--dry-run", nargs="?", const="client", default="none", choices=("none", "client", "server")
    )
    run.add_argument("-o", "--output", choices=("json", "yaml"), help="print the pod object")
    run.add_argument("-n", "--namespace", default="default")
    run.add_argument(
        "--pod-running-timeout",
        type=_verb_type("timeout_seconds"),
        default=60.0,
        metavar="DURATION",
        help="-i: how long the pod may take to run (default 1m)",
    )
    for verb in ("approve", "deny", "cordon", "uncordon"):
        action = sub.add_parser(verb, help=f"{verb} a node")
        action.add_argument("name")
        if verb == "deny":
            action.add_argument("--reason", default="")
        if verb == "approve":
            action.add_argument(
                "--force-replace",
                action="store_true",
                help="accept the node's new key (after a reinstall) in place of the registered one",
            )
            action.add_argument(
                "--fingerprint",
                metavar="sha256:HEX",
                help="with --force-replace: the new key's fingerprint, as describe node shows it",
            )
    certificate = sub.add_parser(
        "certificate",
        help="approve or deny the serving names a node asked for (get csr lists them)",
        description="A node's certificate names only what the master verified (the node name, "
        "the address it registered from); other names it asks for wait for an administrator. "
        "Approved names are on the node's next certificate, denied ones never.",
    )
    certificate.add_argument("action", choices=("approve", "deny"))
    certificate.add_argument("names", nargs="+", metavar="NODE")
    top = sub.add_parser("top", help="CPU and memory of nodes or pods, as their nodes measure it")
    top.add_argument("kind", help="nodes (node, no) or pods (pod, po)")
    top.add_argument("name", nargs="?")
    top.add_argument("-n", "--namespace", default="default")
    top.add_argument("-A", "--all-namespaces", action="store_true")
    top.add_argument("-l", "--selector", help="label selector: a=b, a!=b, a in (x,y), a, !a")
    top.add_argument("--containers", action="store_true", help="pods: one row per container")
    top.add_argument("--no-headers", action="store_true")
    top.add_argument("--sort-by", choices=("cpu", "memory"))
    drain = sub.add_parser(
        "drain",
        help="cordon a node, then move or delete its pods and wait until they are gone",
        description="Pods the scheduler placed are created again elsewhere; pods pinned by "
        "spec.nodeName cannot move (--force deletes them); static pods stay (--ignore-static).",
    )
    drain.add_argument("name")
    drain.add_argument(
        "--force", action="store_true", help="delete the pods pinned to the node by spec.nodeName"
    )
    drain.add_argument(
        "--ignore-static",
        "--ignore-daemonsets",
        dest="ignore_static",
        action="store_true",
        help="leave the node's static pods running (kubectl's --ignore-daemonsets)",
    )
    drain.add_argument(
        "--timeout", default="0", metavar="DURATION", help="give up after this long (0: never)"
    )
    drain.add_argument(
        "--grace-period",
        type=int,
        default=-1,
        metavar="SECONDS",
        help="the seconds each pod gets to stop, in place of its own (negative: its own; 0 is 1)",
    )
    drain.add_argument(
        "--dry-run",
        nargs="?",
        const="client",
        default="none",
        choices=("none", "client", "server"),
        help="say what would be done (the master's answer for each pod), change nothing",
    )
    exe = sub.add_parser("exec", help="run a command in a pod's container")
    exe.add_argument("-i", "--stdin", action="store_true", help="pass stdin to the command")
    exe.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    logs = sub.add_parser("logs", help="print a container's logs")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=None, metavar="N")
    logs.add_argument("--timestamps", action="store_true")
    logs.add_argument("-p", "--previous", action="store_true")
    logs.add_argument(
        "--since", type=_verb_type("since_seconds"), metavar="DURATION", help="5s, 2m, 3h"
    )
    logs.add_argument(
        "--since-time", type=_verb_type("since_time"), metavar="RFC3339", help="from this time"
    )
    forward = sub.add_parser("port-forward", help="forward local ports to a pod")
    forward.add_argument("--address", default="127.0.0.1", help="local address to listen on")
    for streaming in (exe, logs, forward):
        streaming.add_argument("-n", "--namespace", default="default")
        streaming.add_argument("--direct", action="store_true", help="straight to the node")
        if streaming is not forward:
            streaming.add_argument("-c", "--container")
        streaming.add_argument("pod")
    forward.add_argument(
        "--relay",
        action="store_true",
        help="through the master's relay, even where its ticket would let the bytes go "
        "straight to the node",
    )
    exe.epilog = "the command follows --, as with kubectl: nodectl exec POD -- ls -l"
    # kubectl's deprecated ``exec POD CMD…`` (no ``--``): run, with kubectl's hint.
    exe.add_argument("legacy_cmd", nargs="*", help=argparse.SUPPRESS)
    forward.add_argument("ports", nargs="+", metavar="[LOCAL:]REMOTE")
    session = sub.add_parser(
        "session",
        help="share one connection to the master between exec and logs commands",
        description="A background process per config keeps the connection to the master "
        "open; exec and logs run through it without a new TLS connection or interpreter "
        "start-up (like ssh's ControlMaster).",
    )
    session.add_argument("action", choices=("start", "stop", "status"))
    session.add_argument(
        "--idle-timeout",
        type=_positive_seconds,
        default=SESSION_IDLE_S,
        metavar="SECONDS",
        help=f"start: end the session after this long without a command ({SESSION_IDLE_S:g})",
    )
    version = sub.add_parser("version", help="print the client's and the master's version")
    version.add_argument("--client", action="store_true", help="the client's only")
    config = sub.add_parser("config", help="show the nodectl config (config view)")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    view = config_sub.add_parser(
        "view", help="the config, certificate and key data shown as DATA+OMITTED"
    )
    view.add_argument("--raw", action="store_true", help="with the certificate and key data")
    for info in (version, view):
        info.add_argument("-o", "--output", choices=("json", "yaml"))
    explain = sub.add_parser(
        "explain",
        help="the pod manifest's fields, and what this cluster supports of them",
        epilog="nodectl explain pod.spec.containers --recursive",
    )
    explain.add_argument("path", metavar="pod[.FIELD…]")
    explain.add_argument("--recursive", action="store_true", help="every field below, by name")
    return parser


def _verb_type(name: str) -> Callable[[str], Any]:
    """An argument type of :mod:`agent.cli.nodectl_verbs`, imported only when used."""

    def convert(text: str) -> Any:
        from agent.cli import nodectl_verbs

        return getattr(nodectl_verbs, name)(text)

    convert.__name__ = name
    return convert


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{quote(text)}: true or false")


# Boolean flags taken as kubectl (pflag) takes them: ``--wait`` is true, ``--wait=false``
# false, and the next word is never the flag's value (``--wait pod a`` deletes pod a).
_FLAG_BOOLS = ("--wait",)


def _split_flag_bools(argv: list[str]) -> list[str]:
    """``--wait=false`` as the hidden ``--no-wait``, ``--wait=true`` as ``--wait``;
    ArgumentTypeError for another value."""
    out = []
    for word in argv:
        flag, eq, value = word.partition("=")
        if eq and flag in _FLAG_BOOLS:
            out.append(flag if _boolean(value) else f"--no-{flag[2:]}")
        else:
            out.append(word)
    return out


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """nodectl's arguments; everything after ``--`` is exec's remote command, never options."""
    argv = list(argv)
    remote: list[str] = []
    dashed = "--" in argv
    if dashed:
        cut = argv.index("--")
        argv, remote = argv[:cut], argv[cut + 1 :]
    parser = _parser()
    try:
        argv = _split_flag_bools(argv)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"invalid boolean flag value: {exc}")
    args = parser.parse_args(argv)
    args.cmd = remote
    if args.command == "exec" and args.legacy_cmd:
        if dashed:
            parser.error("the command goes after --, not also before it")
        args.cmd, args.exec_hint = args.legacy_cmd, True
    if args.command == "logs" and args.since is not None and args.since_time is not None:
        parser.error("at most one of `sinceTime` or `sinceSeconds` may be specified")
    return args


def _lazy(module: str, function: str) -> Callable[[Client, argparse.Namespace], int | None]:
    """A command of its own module (``agent.cli.<module>``), imported when it runs."""

    def run(client: Client, args: argparse.Namespace) -> int | None:
        import importlib

        command: Callable[[Client, argparse.Namespace], int | None]
        command = getattr(importlib.import_module(f"agent.cli.{module}"), function)
        return command(client, args)

    return run


COMMANDS = {
    "get": cmd_get,
    "describe": cmd_describe,
    "apply": _lazy("nodectl_verbs", "cmd_apply_paths"),
    "delete": cmd_delete,
    "run": _lazy("nodectl_verbs", "cmd_run"),
    "approve": cmd_node_action,
    "deny": cmd_node_action,
    "cordon": cmd_node_action,
    "uncordon": cmd_node_action,
    "certificate": cmd_certificate,
    "drain": _lazy("nodectl_drain", "cmd_drain"),
    "top": _lazy("nodectl_top", "cmd_top"),
    "exec": _streaming,
    "logs": _streaming,
    "port-forward": _streaming,
    "session": cmd_session,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    code: int | None
    try:
        if args.command in ("version", "config", "explain"):  # a config of their own, or none
            from agent.cli import nodectl_info

            code = nodectl_info.run(args)
        else:
            client = Client(_with_server(load_config(args.config), args), verbose=args.verbose)
            code = COMMANDS[args.command](client, args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
    except ServerError as exc:
        print(exc, file=sys.stderr)  # kubectl's shape, as is: Error from server (NotFound): …
        return exc.code
    except CliError as exc:
        print(f"nodectl: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        return _closed_pipe()
    return code or 0


def _with_server(config: ClientConfig, args: argparse.Namespace) -> ClientConfig:
    """``config`` with ``--server``'s masters instead of its own, if given."""
    if not args.server:
        return config
    from agent.cli.nodectl_servers import parse_servers

    servers = parse_servers(args.server, "--server")
    return dataclasses.replace(config, server=servers[0], servers=servers)


EXIT_SIGPIPE = 128 + 13  # what the shell reports for a coreutils tool ended by SIGPIPE


def _closed_pipe() -> int:
    """The reader of stdout went away (``nodectl get pods | head -1``): stop quietly, as
    coreutils tools do. What is still buffered for stdout is dropped, not flushed again at exit
    (which would print Python's "Exception ignored … BrokenPipeError")."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
