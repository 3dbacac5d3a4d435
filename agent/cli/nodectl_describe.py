"""``nodectl describe pod|node NAME``: kubectl describe's human layout.

The sections and their order are kubectl's (``pkg/describe/describe.go``): for a pod ``Name``,
``Namespace``, ``Node``, ``Start Time``, ``Labels``, ``Annotations``, ``Status``, ``IP``,
``Init Containers``/``Containers`` (``Container ID``, ``Image``, ``Image ID``, ports, command,
``State`` with its reason, exit code and times, ``Last State``, ``Ready``, ``Restart Count``,
limits and requests, probes, ``Environment``, ``Mounts``), ``Conditions``, ``Volumes``,
``Events``; for a node ``Name``, ``Roles``, ``Labels``, ``CreationTimestamp``,
``Unschedulable``, ``Conditions``, ``Addresses``, ``Capacity``, ``System Info``,
``Non-terminated Pods``, ``Allocated resources``, ``Events``, plus how the node was admitted
(this cluster's registration, in place of kubectl's lease). A field the cluster does not have
(priority, service account, QoS class, taints, tolerations, allocatable) is left out, never
shown with an invented value.

Columns are aligned as Go's tabwriter aligns kubectl's (a run of consecutive lines with a cell
in a column shares its width, padding 2). Every value that came from the server is escaped
(``agent.names.escape``): a label, message or name holding ESC or a newline can neither drive
the terminal nor forge a line.
"""

from __future__ import annotations

import argparse
import time
import urllib.parse
from collections.abc import Iterable
from typing import Any

from agent.cli.nodectl import (
    Client,
    _age,
    _epoch,
    _now,
    _one_kind,
    _segment,
    named,
)
from agent.names import escape

DESCRIBE_EVENTS_SHOWN = 20  # the latest, as kubectl describe
PADDING = 2  # kubectl's tabwriter: minwidth 0, padding 2, spaces
INDENT = "  "
NONE = "<none>"
_MIB = 1 << 20


class Layout:
    """Lines whose cells are separated by tabs, printed aligned as Go's tabwriter does."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, level: int, text: str) -> None:
        self.lines.append(INDENT * level + text)

    def field(self, level: int, key: str, value: object) -> None:
        """``Key:<tab>value``, the value escaped (it came from the server)."""
        self.add(level, f"{key}:\t{_show(value)}")

    def mapping(self, level: int, key: str, values: dict[str, Any] | None, sep: str = "=") -> None:
        """kubectl's labels/annotations: the first on the key's line, the others below it."""
        items = sorted((values or {}).items())
        if not items:
            self.field(level, key, NONE)
            return
        for i, (k, v) in enumerate(items):
            shown = f"{escape(str(k))}{sep}{escape(str(v))}"
            self.add(level, f"{key}:\t{shown}" if i == 0 else f"\t{shown}")

    def render(self) -> str:
        rows = [line.split("\t") for line in self.lines]
        widths: list[list[int]] = [[0] * (len(r) - 1) for r in rows]
        _align(rows, widths, 0, len(rows), 0)
        out = []
        for row, width in zip(rows, widths, strict=True):
            cells = [cell.ljust(w) for cell, w in zip(row, width, strict=False)]
            out.append(("".join(cells) + row[-1]).rstrip())
        return "\n".join(out)


def _align(rows: list[list[str]], widths: list[list[int]], start: int, end: int, col: int) -> None:
    """Go's tabwriter: a column block is a run of consecutive lines that have a tab-ended cell
    in column ``col``; its cells get the block's widest cell plus the padding."""
    i = start
    while i < end:
        if len(rows[i]) - 1 <= col:
            i += 1
            continue
        j = i
        width = 0
        while j < end and len(rows[j]) - 1 > col:
            width = max(width, len(rows[j][col]) + PADDING)
            j += 1
        for k in range(i, j):
            widths[k][col] = width
        _align(rows, widths, i, j, col + 1)
        i = j


def _show(value: object) -> str:
    if value is None or value == "":
        return NONE if value is None else ""
    return escape(str(value))


def _time(stamp: object) -> str:
    """An API timestamp as kubectl prints one (RFC 1123 with a numeric zone, here UTC)."""
    then = _epoch(stamp) if isinstance(stamp, str) else None
    if then is None:
        return _show(stamp) if stamp else NONE
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(then))


# -- command --------------------------------------------------------------------------------


def cmd_describe(client: Client, args: argparse.Namespace) -> None:
    kind = _one_kind(args.kind, "describe")
    with named(kind, args.name):
        if kind == "nodes":
            obj = client.call("GET", f"/v1/nodes/{_segment(args.name)}")
        else:
            obj = client.call(
                "GET",
                f"/v1/namespaces/{_segment(args.namespace)}/pods/{_segment(args.name)}",
            )
    query = urllib.parse.urlencode(
        {"kind": "Node" if kind == "nodes" else "Pod", "name": args.name}
    )
    events = client.call("GET", f"/v1/events?{query}")["items"]
    now = _now(None)
    if kind == "nodes":
        pods = client.call("GET", "/v1/pods")["items"]
        print(describe_node(obj, pods, events, now))
    else:
        print(describe_pod(obj, events, now))


# -- pod ------------------------------------------------------------------------------------


def describe_pod(pod: dict[str, Any], events: list[dict[str, Any]], now: float) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    out = Layout()
    out.field(0, "Name", meta.get("name"))
    out.field(0, "Namespace", meta.get("namespace"))
    node = spec.get("nodeName")
    host_ip = status.get("hostIP")
    out.field(0, "Node", f"{node}/{host_ip}" if node and host_ip else node or None)
    if status.get("startTime"):
        out.add(0, f"Start Time:\t{_time(status['startTime'])}")
    out.mapping(0, "Labels", meta.get("labels"))
    out.mapping(0, "Annotations", meta.get("annotations"), sep=": ")
    if meta.get("deletionTimestamp"):
        lasts = _age(meta["deletionTimestamp"], now)
        out.add(0, f"Status:\tTerminating (lasts {lasts})")
        grace = meta.get("deletionGracePeriodSeconds")
        if isinstance(grace, int):
            out.add(0, f"Termination Grace Period:\t{grace}s")
    else:
        out.field(0, "Status", status.get("phase") or "Pending")
    if status.get("reason"):
        out.field(0, "Reason", status["reason"])
    if status.get("message"):
        out.field(0, "Message", status["message"])
    out.field(0, "IP", status.get("podIP") or "")
    ips = [ip.get("ip") for ip in status.get("podIPs") or [] if isinstance(ip, dict)]
    if ips:
        out.add(0, "IPs:")
        for ip in ips:
            out.field(1, "IP", ip)
    else:
        out.field(0, "IPs", None)
    for title, key, statuses in (
        ("Init Containers", "initContainers", "initContainerStatuses"),
        ("Containers", "containers", "containerStatuses"),
    ):
        containers = spec.get(key) or []
        if not containers and key == "initContainers":
            continue
        by_name = {s.get("name"): s for s in status.get(statuses) or [] if isinstance(s, dict)}
        out.add(0, f"{title}:")
        for container in containers:
            _container(out, container, by_name.get(container.get("name")))
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    if conditions:
        out.add(0, "Conditions:")
        out.add(1, "Type\tStatus")
        for condition in conditions:
            out.add(1, f"{_show(condition.get('type'))}\t{_show(condition.get('status'))}")
    _volumes(out, spec.get("volumes") or [])
    return out.render() + "\n" + events_section(events, now)


def _container(out: Layout, c: dict[str, Any], status: dict[str, Any] | None) -> None:
    out.add(1, f"{escape(str(c.get('name', '')))}:")
    status = status or {}
    if status.get("containerID"):
        out.field(2, "Container ID", status["containerID"])
    out.field(2, "Image", c.get("image"))
    out.field(2, "Image ID", status.get("imageID") or "")
    ports = [p for p in c.get("ports") or [] if isinstance(p, dict)]
    if not ports:
        out.field(2, "Port", NONE)
        out.field(2, "Host Port", NONE)
    for port in ports:
        protocol = port.get("protocol") or "TCP"
        named_port = f" ({port['name']})" if port.get("name") else ""
        out.field(2, "Port", f"{port.get('containerPort')}/{protocol}{named_port}")
        out.field(2, "Host Port", f"{port.get('hostPort', 0)}/{protocol}")
    for key, title in (("command", "Command"), ("args", "Args")):
        if c.get(key):
            out.add(2, f"{title}:")
            for word in c[key]:
                out.add(3, _show(word))
    state = status.get("state") or {}
    if state:
        _state(out, "State", state)
    else:
        out.field(2, "State", "Waiting")
        out.field(3, "Reason", "ContainerCreating" if status else "Pending")
    last = status.get("lastState") or {}
    if last:
        _state(out, "Last State", last)
    out.field(2, "Ready", "True" if status.get("ready") else "False")
    out.field(2, "Restart Count", status.get("restartCount", 0))
    resources = c.get("resources") or {}
    for key, title in (("limits", "Limits"), ("requests", "Requests")):
        amounts = resources.get(key) or {}
        if amounts:
            out.add(2, f"{title}:")
            for name, amount in sorted(amounts.items()):
                out.add(3, f"{escape(str(name))}:\t{_show(amount)}")
    for key, title in (
        ("livenessProbe", "Liveness"),
        ("readinessProbe", "Readiness"),
        ("startupProbe", "Startup"),
    ):
        if isinstance(c.get(key), dict):
            out.add(2, f"{title}:\t{_probe(c[key])}")
    env = [e for e in c.get("env") or [] if isinstance(e, dict)]
    if not env:
        out.field(2, "Environment", NONE)
    else:
        out.add(2, "Environment:")
        for variable in env:
            out.add(3, f"{escape(str(variable.get('name', '')))}:\t{_env_value(variable)}")
    mounts = [m for m in c.get("volumeMounts") or [] if isinstance(m, dict)]
    if not mounts:
        out.field(2, "Mounts", NONE)
    else:
        out.add(2, "Mounts:")
        for mount in mounts:
            flags = "ro" if mount.get("readOnly") else "rw"
            if mount.get("subPath"):
                flags += f',path="{escape(str(mount["subPath"]))}"'
            path, name = escape(str(mount.get("mountPath", ""))), escape(str(mount.get("name", "")))
            out.add(3, f"{path} from {name} ({flags})")


def _state(out: Layout, title: str, state: dict[str, Any]) -> None:
    """kubectl's describeContainerState: the state's name, then its details one level in."""
    if isinstance(state.get("running"), dict):
        out.field(2, title, "Running")
        out.add(3, f"Started:\t{_time(state['running'].get('startedAt'))}")
    elif isinstance(state.get("waiting"), dict):
        waiting = state["waiting"]
        out.field(2, title, "Waiting")
        out.field(3, "Reason", waiting.get("reason") or "")
        if waiting.get("message"):
            out.field(3, "Message", waiting["message"])
    elif isinstance(state.get("terminated"), dict):
        ended = state["terminated"]
        out.field(2, title, "Terminated")
        out.field(3, "Reason", ended.get("reason") or "")
        if ended.get("message"):
            out.field(3, "Message", ended["message"])
        out.field(3, "Exit Code", ended.get("exitCode"))
        if ended.get("signal"):
            out.field(3, "Signal", ended["signal"])
        out.add(3, f"Started:\t{_time(ended.get('startedAt'))}")
        out.add(3, f"Finished:\t{_time(ended.get('finishedAt'))}")
    else:
        out.field(2, title, "Waiting")


def _probe(probe: dict[str, Any]) -> str:
    """kubectl's probe line: the action, then ``delay= timeout= period= #success= #failure=``
    with Kubernetes' defaults for what the manifest leaves out."""
    if isinstance(probe.get("exec"), dict):
        words = " ".join(str(w) for w in probe["exec"].get("command") or [])
        action = f"exec [{words}]"
    elif isinstance(probe.get("httpGet"), dict):
        http = probe["httpGet"]
        scheme = str(http.get("scheme") or "HTTP").lower()
        action = (
            f"http-get {scheme}://{http.get('host', '')}:{http.get('port')}{http.get('path', '/')}"
        )
    elif isinstance(probe.get("tcpSocket"), dict):
        tcp = probe["tcpSocket"]
        action = f"tcp-socket {tcp.get('host', '')}:{tcp.get('port')}"
    elif isinstance(probe.get("grpc"), dict):
        grpc = probe["grpc"]
        action = f"grpc <pod>:{grpc.get('port')} {grpc.get('service') or ''}".rstrip()
    else:
        action = "unknown"
    timing = (
        f"delay={probe.get('initialDelaySeconds', 0)}s timeout={probe.get('timeoutSeconds', 1)}s "
        f"period={probe.get('periodSeconds', 10)}s #success={probe.get('successThreshold', 1)} "
        f"#failure={probe.get('failureThreshold', 3)}"
    )
    return escape(f"{action} {timing}")


def _env_value(variable: dict[str, Any]) -> str:
    if "value" in variable:
        return _show(variable.get("value"))
    source = variable.get("valueFrom") or {}
    field = source.get("fieldRef") if isinstance(source, dict) else None
    if isinstance(field, dict):
        return escape(f" ({field.get('apiVersion', 'v1')}:{field.get('fieldPath', '')})")
    resource = source.get("resourceFieldRef") if isinstance(source, dict) else None
    if isinstance(resource, dict):
        return escape(f" ({resource.get('resource', '')})")
    return ""


def _volumes(out: Layout, volumes: Iterable[Any]) -> None:
    shown = [v for v in volumes if isinstance(v, dict)]
    if not shown:
        out.field(0, "Volumes", NONE)
        return
    out.add(0, "Volumes:")
    for volume in shown:
        out.add(1, f"{escape(str(volume.get('name', '')))}:")
        if isinstance(volume.get("hostPath"), dict):
            host = volume["hostPath"]
            out.field(2, "Type", "HostPath (bare host directory volume)")
            out.field(2, "Path", host.get("path"))
            out.field(2, "HostPathType", host.get("type") or "")
        elif "emptyDir" in volume:
            empty = volume.get("emptyDir") or {}
            out.field(2, "Type", "EmptyDir (a temporary directory that shares a pod's lifetime)")
            out.field(2, "Medium", empty.get("medium") or "")
            out.field(2, "SizeLimit", empty.get("sizeLimit") or "<unset>")
        else:
            kinds = [k for k in volume if k != "name"]
            out.field(2, "Type", ", ".join(kinds) or NONE)


# -- node -----------------------------------------------------------------------------------


def describe_node(
    node: dict[str, Any], pods: list[dict[str, Any]], events: list[dict[str, Any]], now: float
) -> str:
    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    name = str(meta.get("name", ""))
    labels = meta.get("labels") or {}
    out = Layout()
    out.field(0, "Name", name)
    roles = sorted(
        k.partition("node-role.kubernetes.io/")[2]
        for k in labels
        if k.startswith("node-role.kubernetes.io/")
    )
    out.field(0, "Roles", ",".join(roles) or NONE)
    out.mapping(0, "Labels", labels)
    out.add(0, f"CreationTimestamp:\t{_time(meta.get('creationTimestamp'))}")
    out.field(0, "Unschedulable", "true" if spec.get("unschedulable") else "false")
    _registration(out, status.get("registration") or {})
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    if conditions:
        out.add(0, "Conditions:")
        out.add(1, "Type\tStatus\tLastHeartbeatTime\tReason\tMessage")
        out.add(1, "----\t------\t-----------------\t------\t-------")
        for c in conditions:
            heartbeat = _time(c.get("lastHeartbeatTime")) if c.get("lastHeartbeatTime") else ""
            cells = [c.get("type"), c.get("status"), None, c.get("reason"), c.get("message")]
            shown = [_show(v) if v is not None else "" for v in cells]
            shown[2] = heartbeat
            out.add(1, "\t".join(shown))
    addresses = [a for a in status.get("addresses") or [] if isinstance(a, dict)]
    out.add(0, "Addresses:")
    for address in addresses:
        out.add(1, f"{escape(str(address.get('type', '')))}:\t{_show(address.get('address'))}")
    capacity = status.get("capacity") or {}
    if capacity:
        out.add(0, "Capacity:")
        for key, value in sorted(capacity.items()):
            out.add(1, f"{escape(str(key))}:\t{_show(value)}")
    info = status.get("nodeInfo") or {}
    if info.get("agentVersion") or info.get("containerRuntimeVersion"):
        out.add(0, "System Info:")
        if info.get("containerRuntimeVersion"):
            out.field(1, "Container Runtime Version", info["containerRuntimeVersion"])
        if info.get("agentVersion"):
            out.field(1, "Node Agent Version", info["agentVersion"])
    image_fs = status.get("imageFs") or {}
    if image_fs:
        out.add(0, "Image Filesystem:")
        for key, value in sorted(image_fs.items()):
            size = f"{value // _MIB}Mi" if isinstance(value, int) else _show(value)
            out.add(1, f"{escape(str(key))}:\t{size}")
    endpoint = (status.get("daemonEndpoints") or {}).get("nodeApi")
    if endpoint:
        out.field(0, "Node API", endpoint)
    running = [
        p
        for p in pods
        if p.get("spec", {}).get("nodeName") == name
        and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
    ]
    _node_pods(out, running, capacity, now)
    text = out.render()
    extra = _node_notes(name, status.get("registration") or {})
    return text + "\n" + (extra + "\n" if extra else "") + events_section(events, now)


def _registration(out: Layout, registration: dict[str, Any]) -> None:
    if not registration:
        return
    out.add(0, "Registration:")
    out.field(1, "Phase", registration.get("phase"))
    if registration.get("admittedBy"):
        out.field(1, "Admitted By", registration["admittedBy"])
    if registration.get("reason"):
        out.field(1, "Reason", registration["reason"])
    if registration.get("keyFingerprint"):
        out.field(1, "Key", registration["keyFingerprint"])
    names = registration.get("servingNames")
    verified = names.get("verified") if isinstance(names, dict) else None
    if verified:
        out.field(1, "Serving Names", ", ".join(str(n) for n in verified))
    if registration.get("certificateExpiry"):
        out.add(1, f"Certificate Expiry:\t{_time(registration['certificateExpiry'])}")


def _node_pods(
    out: Layout, pods: list[dict[str, Any]], capacity: dict[str, Any], now: float
) -> None:
    """kubectl's Non-terminated Pods table and Allocated resources, from the pods' own
    requests and limits (sums over their app containers) against the node's capacity."""
    from agent.errors import ManifestError
    from agent.quantity import parse_cpu_millis, parse_memory_bytes

    def amount(value: object, cpu: bool) -> int:
        try:
            return parse_cpu_millis(value, "cpu") if cpu else parse_memory_bytes(value, "memory")
        except ManifestError:
            return 0

    cap_cpu = amount(capacity.get("cpu", 0), True)
    cap_memory = amount(capacity.get("memory", 0), False)

    def shown(value: int, cpu: bool) -> str:
        whole = cap_cpu if cpu else cap_memory
        text = (f"{value}m" if value % 1000 else str(value // 1000)) if cpu else _memory(value)
        if cpu and value == 0:
            text = "0"
        share = f"{value * 100 // whole}%" if whole else "0%"
        return f"{text} ({share})"

    out.add(0, f"Non-terminated Pods:\t({len(pods)} in total)")
    out.add(1, "Namespace\tName\tCPU Requests\tCPU Limits\tMemory Requests\tMemory Limits\tAge")
    out.add(1, "---------\t----\t------------\t----------\t---------------\t-------------\t---")
    totals = [0, 0, 0, 0]
    for pod in sorted(
        pods, key=lambda p: (p["metadata"].get("namespace", ""), p["metadata"]["name"])
    ):
        sums = [0, 0, 0, 0]
        for c in pod.get("spec", {}).get("containers") or []:
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            sums[0] += amount(requests.get("cpu", limits.get("cpu", 0)), True)
            sums[1] += amount(limits.get("cpu", 0), True)
            sums[2] += amount(requests.get("memory", limits.get("memory", 0)), False)
            sums[3] += amount(limits.get("memory", 0), False)
        totals = [t + s for t, s in zip(totals, sums, strict=True)]
        meta = pod["metadata"]
        cells = [
            escape(str(meta.get("namespace", ""))),
            escape(str(meta.get("name", ""))),
            shown(sums[0], True),
            shown(sums[1], True),
            shown(sums[2], False),
            shown(sums[3], False),
            _age(meta.get("creationTimestamp"), now),
        ]
        out.add(1, "\t".join(cells))
    out.add(0, "Allocated resources:")
    out.add(1, "(Total limits may be over 100 percent, i.e., overcommitted.)")
    out.add(1, "Resource\tRequests\tLimits")
    out.add(1, "--------\t--------\t------")
    out.add(1, f"cpu\t{shown(totals[0], True)}\t{shown(totals[1], True)}")
    out.add(1, f"memory\t{shown(totals[2], False)}\t{shown(totals[3], False)}")


def _memory(size: int) -> str:
    """A byte count as kubectl's describe prints a quantity: the largest exact binary unit."""
    for suffix, unit in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def _node_notes(name: str, registration: dict[str, Any]) -> str:
    """What waits for an administrator about this node, and the command for it."""
    lines = []
    waiting = registration.get("replacement")
    if isinstance(waiting, dict):
        fingerprint, source, at, rule = (
            escape(str(waiting.get(key) or "-"))
            for key in ("fingerprint", "source", "requestedAt", "admittedBy")
        )
        lines.append(f"key replacement waiting: {fingerprint} from {source} at {at} (rule {rule})")
        lines.append(
            f"  if this is the key you expect: nodectl approve {escape(name)} --force-replace "
            f"--fingerprint {fingerprint}"
        )
    names = registration.get("servingNames")
    pending = names.get("pending") if isinstance(names, dict) else None
    if pending:
        lines.append(f"serving names waiting: {escape(', '.join(pending))}")
        lines.append(
            f"  nodectl certificate approve {escape(name)} puts them on its next certificate; "
            f"nodectl certificate deny {escape(name)} refuses them"
        )
    return "\n".join(lines)


# -- events ---------------------------------------------------------------------------------


def events_section(events: list[dict[str, Any]], now: float) -> str:
    """kubectl describe's Events table: Type, Reason, Age ("10s (x5 over 2m)" for an event
    that repeated), From (the master, or the node-agent and its node), Message; oldest first
    by last occurrence, the latest DESCRIBE_EVENTS_SHOWN."""
    if not events:
        return "Events:  <none>"
    latest = sorted(events, key=lambda e: str(e.get("lastTimestamp") or ""))
    out = Layout()
    out.add(0, "Events:")
    out.add(1, "Type\tReason\tAge\tFrom\tMessage")
    out.add(1, "----\t------\t----\t----\t-------")
    for e in latest[-DESCRIBE_EVENTS_SHOWN:]:
        age = _age(e.get("lastTimestamp"), now)
        count = e.get("count")
        if isinstance(count, int) and count > 1:
            age = f"{age} (x{count} over {_age(e.get('firstTimestamp'), now)})"
        source = e.get("source") or {}
        origin = str(source.get("component") or "")
        if source.get("host") and origin != "node-master":
            origin = f"{origin}, {source['host']}"
        kind, reason, message = (escape(str(e.get(k, ""))) for k in ("type", "reason", "message"))
        out.add(1, "\t".join([kind, reason, age, escape(origin), message]))
    return out.render()
