"""Parsing Kubernetes ``v1 Pod`` manifests into the typed model of :mod:`agent.types`.

This is the only producer of :class:`~agent.types.Pod`. It accepts the subset documented in
``docs/manifests.md`` and rejects everything else with a :class:`ManifestError` naming the field
path (``spec.containers[1].envFrom: not supported yet``): a field we do not implement is
never silently ignored, because an operator who wrote a probe or a securityContext must not
believe it is in force. The only fields dropped are read-only output fields that
``kubectl get -o yaml`` prints (``status``, ``metadata.resourceVersion``, ...), so such output
can be applied as is.

A hostile manifest gets a :class:`ManifestError` like any other, never another exception: values
are quoted in messages by :func:`~agent.manifest_loader.shown` (bounded, never a Python repr),
a lone surrogate in any string is refused (it could not be encoded later), and every check is
linear in the manifest's size (duplicate names through sets).

It also owns

* the documents of a manifest text: several ``---`` documents or a ``v1 List``, read by the
  strict, bounded loader of :mod:`agent.manifest_loader` (duplicate keys, tags, aliases, depth);
* the normalised manifest (:attr:`Pod.manifest`): what was parsed, with Kubernetes' defaults
  filled in, as plain JSON data; parsing it again gives the same pod;
* the uid of a pod that has none (static pods): derived from the node name and the normalised
  manifest, so the same file on the same node always gives the same uid (see :func:`derive_uid`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import posixpath
import re
import uuid
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any, TypeVar

from agent import names
from agent.annotations import check_notify_mounts, notify_settings
from agent.errors import ManifestError
from agent.manifest_loader import field_path, has_surrogate, load_yaml, shown, type_name
from agent.quantity import INT64_MAX, parse_cpu_millis, parse_memory_bytes, parse_quantity
from agent.types import (
    Container,
    ContainerPort,
    ContainerResource,
    EmptyDirVolume,
    EnvVar,
    ExecAction,
    FieldRef,
    GRPCAction,
    HostPathVolume,
    HTTPGetAction,
    HTTPHeader,
    Lifecycle,
    LifecycleAction,
    ObjectMeta,
    Pod,
    PodSpec,
    PreStartAction,
    PreStartHook,
    Probe,
    ProbeAction,
    ProbeKind,
    PullPolicy,
    ResourceFieldRef,
    Resources,
    RestartPolicy,
    SleepAction,
    TCPSocketAction,
    Volume,
    VolumeMount,
    WaitCondition,
    WaitForAction,
    _frozen_map,
    canonical_json,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_GRACE_PERIOD_S = 30
PORT_NAME_MAX = 15
UID_MAX = 128
ANNOTATIONS_MAX_BYTES = 256 * 1024  # Kubernetes' TotalAnnotationSizeLimitB

_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_UID = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")

_UID_HELP = (
    f"at most {UID_MAX} alphanumerics, '-', '_' and '.', starting and ending alphanumeric, "
    "such as a UUID"
)

# --- the subset: what each object may hold --------------------------------------------------
# For every object: the fields we implement, the fields Kubernetes has that we do not implement
# ("not supported yet"), and read-only output fields we accept and drop. Any other key is an
# "unknown field", as with `kubectl apply --validate=strict`.

_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
_TOP_DROPPED = {"status"}
_META_FIELDS = {"name", "namespace", "uid", "labels", "annotations"}
_META_DROPPED = {"creationTimestamp", "resourceVersion", "generation", "selfLink", "managedFields"}
_META_UNSUPPORTED = {
    "generateName",
    "ownerReferences",
    "finalizers",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
}
_SPEC_FIELDS = {
    "containers",
    "initContainers",
    "volumes",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostNetwork",
    "nodeName",
}
_SPEC_UNSUPPORTED = {
    "activeDeadlineSeconds",
    "affinity",
    "automountServiceAccountToken",
    "dnsConfig",
    "dnsPolicy",
    "enableServiceLinks",
    "ephemeralContainers",
    "hostAliases",
    "hostIPC",
    "hostPID",
    "hostUsers",
    "hostname",
    "hostnameOverride",
    "imagePullSecrets",
    "nodeSelector",
    "os",
    "overhead",
    "preemptionPolicy",
    "priority",
    "priorityClassName",
    "readinessGates",
    "resourceClaims",
    "resources",
    "runtimeClassName",
    "schedulerName",
    "schedulingGates",
    "securityContext",
    "serviceAccount",
    "serviceAccountName",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "subdomain",
    "tolerations",
    "topologySpreadConstraints",
}
_CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "workingDir",
    "volumeMounts",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
    "lifecycle",
}
_CONTAINER_UNSUPPORTED = {
    "envFrom",
    "resizePolicy",
    "restartPolicy",
    "restartPolicyRules",
    "securityContext",
    "stdin",
    "stdinOnce",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "tty",
    "volumeDevices",
}
# What an init container must not have (Kubernetes' validateInitContainers): it runs to
# completion, so nothing probes it or hooks its start and stop.
_INIT_FORBIDDEN = ("lifecycle", "livenessProbe", "readinessProbe", "startupProbe")
_ENV_FIELDS = {"name", "value", "valueFrom"}
_VALUE_FROM_SOURCES = ("fieldRef", "resourceFieldRef")
_VALUE_FROM_UNSUPPORTED = {"configMapKeyRef", "secretKeyRef", "fileKeyRef"}
_FIELD_REF_FIELDS = {"fieldPath", "apiVersion"}
# `metadata.labels['app']`: a subscripted path (Kubernetes' SplitMaybeSubscriptedPath).
_SUBSCRIPTED_FIELD = re.compile(r"(metadata\.labels|metadata\.annotations)\['(.*)'\]", re.DOTALL)
_FIELD_PATHS_HELP = (
    "metadata.name, metadata.namespace, metadata.uid, metadata.labels['<key>'], "
    "metadata.annotations['<key>'], spec.nodeName, spec.serviceAccountName, status.podIP, "
    "status.podIPs, status.hostIP, status.hostIPs"
)
_RESOURCE_FIELD_REF_FIELDS = {"containerName", "resource", "divisor"}
# Kubernetes' validContainerResourceDivisorForCPU / ForMemory, as exact values (cores, bytes).
_CPU_DIVISORS = {Fraction(1, 1000), Fraction(1)}
_MEMORY_DIVISORS = {
    Fraction(base**power)
    for base, powers in ((1000, range(7)), (1024, range(1, 7)))
    for power in powers
}
_PORT_FIELDS = {"containerPort", "protocol", "name", "hostPort", "hostIP"}
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_RESOURCES_FIELDS = {"limits", "requests"}
_RESOURCES_UNSUPPORTED = {"claims"}
_RESOURCE_NAMES = ("cpu", "memory")
_MOUNT_FIELDS = {"name", "mountPath", "readOnly"}
_MOUNT_UNSUPPORTED = {"subPath", "subPathExpr", "mountPropagation", "recursiveReadOnly"}
_VOLUME_SOURCES = ("hostPath", "emptyDir")
_VOLUME_FIELDS = {"name", *_VOLUME_SOURCES}
_VOLUME_UNSUPPORTED = {
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
}
_HOST_PATH_FIELDS = {"path", "type"}
_HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)
_EMPTY_DIR_FIELDS = {"medium", "sizeLimit"}
_LIST_FIELDS = {"apiVersion", "kind", "items", "metadata"}

# --- what `kubectl get pod -o yaml` and `kubectl run --dry-run=client -o yaml` print ---------
# A field of the "not supported yet" sets above is accepted, and normalised away, when it holds
# Kubernetes' default or is empty ({}, [], ""): it asks for nothing beyond what we do. Any
# other value is still "not supported yet" (docs/manifests.md, "Defaults accepted").
_SPEC_DEFAULTS: Mapping[str, object] = {
    "dnsPolicy": "ClusterFirst",
    "enableServiceLinks": True,
    "schedulerName": "default-scheduler",
    "priority": 0,
    "preemptionPolicy": "PreemptLowerPriority",
    "serviceAccountName": "default",
    "serviceAccount": "default",
    "hostIPC": False,
    "hostPID": False,
    "shareProcessNamespace": False,
    "setHostnameAsFQDN": False,
}
_CONTAINER_DEFAULTS: Mapping[str, object] = {
    "terminationMessagePath": "/dev/termination-log",
    "terminationMessagePolicy": "File",
    "stdin": False,
    "stdinOnce": False,
    "tty": False,
}
_MOUNT_DEFAULTS: Mapping[str, object] = {"mountPropagation": "None"}
# The tolerations the API server's DefaultTolerationSeconds admission adds to every pod; a
# node here has no taints, so they mean nothing: dropped with a warning.
_DEFAULT_TOLERATIONS = tuple(
    {
        "key": f"node.kubernetes.io/{key}",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    }
    for key in ("not-ready", "unreachable")
)
# The service-account token volume the API server adds (`kube-api-access-<5 chars>`, a
# projected volume) and its mount: no API token exists here, dropped with a warning.
_TOKEN_VOLUME = re.compile(r"kube-api-access-[a-z0-9]{1,10}")
_TOKEN_MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_ERRORS = 50  # per document: a hostile or mangled file cannot make the answer unbounded

_E = TypeVar("_E", bound=StrEnum)
_T = TypeVar("_T")


# --- field helpers: each validates one value and names its path on failure -----------------


def _fail(path: str, problem: str) -> ManifestError:
    return ManifestError(path, problem)


def _required(raw: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in raw:
        raise _fail(f"{path}.{key}" if path else key, "required")
    return raw[key]


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be an object, got {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {type_name(key)} {shown(key)}")
        if has_surrogate(key):  # see _string
            raise _fail(path, f"the key {shown(key)} holds a lone surrogate (not a character)")
    return value


def _object(value: object, path: str) -> Mapping[str, Any]:
    """A Kubernetes object (a struct, not a string map): like the API server's decoder, a field
    set to null is the same as an absent one (``value:`` with nothing after it)."""
    return {key: item for key, item in _mapping(value, path).items() if item is not None}


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, f"must be a list, got {type_name(value)}")
    return value


def _string(value: object, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        # YAML turns unquoted `yes`, `0755`, `1.10` into booleans and numbers.
        hint = " (quote it in YAML)" if isinstance(value, (bool, int, float)) else ""
        raise _fail(path, f"must be a string, got {type_name(value)}{hint}")
    if not allow_empty and value == "":
        raise _fail(path, "must not be empty")
    # "\ud800" decodes from JSON but cannot be encoded: the uid's hash, the checkpoint, logs
    # and events would all fail on it later (the agent crash-looped on one in an annotation).
    if has_surrogate(value):
        raise _fail(path, f"{shown(value)} holds a lone surrogate (not a character)")
    return value


def _int(value: object, path: str, *, low: int, high: int) -> int:
    # bool is an int subclass in Python; `true` is not a number in a manifest.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise _fail(path, f"{shown(value)} is out of range (must be between {low} and {high})")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be a boolean (true or false), got {type_name(value)}")
    return value


def _strings(value: object, path: str) -> tuple[str, ...]:
    items = _list(value, path)
    return tuple(_string(item, f"{path}[{i}]", allow_empty=True) for i, item in enumerate(items))


def _enum(kind: type[_E], value: object, path: str) -> _E:
    text = _string(value, path)
    try:
        return kind(text)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        raise _fail(path, f"{shown(text)} is not one of {choices}") from None


def _is_default(value: object, default: object) -> bool:
    """``value`` is Kubernetes' default or empty (``{}``, ``[]``, ``""``); strict about types,
    since ``0 == False`` in Python but not in a manifest."""
    if isinstance(value, (Mapping, list, str)) and not value:
        return True
    return type(value) is type(default) and value == default


_NO_DEFAULT = object()


def _check_fields(
    obj: Mapping[str, Any],
    path: str,
    allowed: Set[str],
    unsupported: Set[str] = frozenset(),
    dropped: Set[str] = frozenset(),
    defaults: Mapping[str, object] | None = None,
) -> None:
    """Every key of ``obj`` outside ``allowed`` and ``dropped`` is an error, all of them in one
    :class:`ManifestError`. With ``defaults`` (even ``{}``), an unsupported one holding its
    default or an empty value is accepted (the caller leaves it out of the normalised manifest);
    without, as for a volume's source, its mere presence means something."""
    causes = []
    for key in obj:
        if key in allowed or key in dropped:
            continue
        if key in unsupported:
            if defaults is not None and _is_default(obj[key], defaults.get(key, _NO_DEFAULT)):
                continue
            causes.append((field_path(path, key), "not supported yet"))
        else:
            causes.append((field_path(path, key), "unknown field"))
    if causes:
        raise ManifestError(*causes[0], causes=causes)


def _dns_label(value: object, path: str) -> str:
    return names.check_dns1123_label(_string(value, path), path, _fail)


def _dns_subdomain(value: object, path: str) -> str:
    return names.check_dns1123_subdomain(_string(value, path), path, _fail)


def _labels(value: object, path: str) -> dict[str, str]:
    labels = {}
    for key, item in _mapping(value, path).items():
        item_path = f"{path}[{shown(key)}]"
        names.check_qualified_name(key, item_path, "label", _fail)
        text = _string(item, item_path, allow_empty=True)
        labels[key] = names.check_label_value(text, item_path, _fail)
    return labels


def _annotations(value: object, path: str) -> dict[str, str]:
    annotations = {}
    size = 0
    for key, item in _mapping(value, path).items():
        item_path = f"{path}[{shown(key)}]"
        names.check_qualified_name(key, item_path, "annotation", _fail)
        annotations[key] = _string(item, item_path, allow_empty=True)
        size += len(key.encode()) + len(annotations[key].encode())
    if size > ANNOTATIONS_MAX_BYTES:
        raise _fail(path, f"{size} bytes in total, more than the limit of {ANNOTATIONS_MAX_BYTES}")
    return annotations


def _absolute_path(value: object, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise _fail(path, f"{shown(text)} must be an absolute path (start with '/')")
    if "\x00" in text:
        raise _fail(path, f"{shown(text)} must not contain a NUL character")
    return text


def _bind_path(value: object, path: str) -> str:
    """A path on either side of a bind mount; the Docker bind syntax is ``src:dst:mode``, so a
    ``:`` would be read as a separator and mount something else than what was written."""
    text = _absolute_path(value, path)
    if ":" in text:
        raise _fail(path, f"{shown(text)} must not contain ':'")
    return text


def _image(value: object, path: str) -> str:
    image = _string(value, path)
    if any(ch.isspace() for ch in image):
        raise _fail(path, f"{shown(image)} must not contain whitespace")
    return image


def _default_pull_policy(image: str) -> PullPolicy:
    """Kubernetes' rule: ``Always`` for the tag ``latest`` (even with a digest:
    ``x:latest@sha256:…``) or no tag and no digest, ``IfNotPresent`` otherwise."""
    name, at, _digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]  # a registry host may carry a `:port`
    tag = last.partition(":")[2]
    if tag == "latest" or (not tag and not at):
        return PullPolicy.ALWAYS
    return PullPolicy.IF_NOT_PRESENT


# --- handlers and probes -----------------------------------------------------------------------
# Kubernetes' handler shapes (exec, httpGet, tcpSocket, grpc), shared by probes and lifecycle
# hooks, and the probes' timing fields with Kubernetes' defaults and bounds.

INT32_MAX = 2**31 - 1
_HTTP_SCHEMES = ("HTTP", "HTTPS")
_HTTP_GET_FIELDS = {"path", "port", "host", "scheme", "httpHeaders"}
_HTTP_HEADER_FIELDS = {"name", "value"}
_TCP_SOCKET_FIELDS = {"port", "host"}
_GRPC_FIELDS = {"port", "service"}
_EXEC_FIELDS = {"command"}
_PROBE_HANDLERS = ("exec", "httpGet", "tcpSocket", "grpc")
_PROBE_TIMING = {
    # field: (default, lowest)
    "initialDelaySeconds": (0, 0),
    "periodSeconds": (10, 1),
    "timeoutSeconds": (1, 1),
    "successThreshold": (1, 1),
    "failureThreshold": (3, 1),
}
_PROBE_FIELDS = {*_PROBE_HANDLERS, *_PROBE_TIMING, "terminationGracePeriodSeconds"}
# RFC 9110's token: what an HTTP header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _no_controls(text: str, path: str) -> str:
    """A value that goes into a request line or header as is: CR, LF or any other control
    character would let a manifest write a second header or request."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise _fail(path, f"{shown(text)} must not contain control characters")
    return text


def _handler_port(value: object, path: str, port_names: Set[str]) -> int | str:
    """A port by number, or by the name of one of the container's ports (Kubernetes resolves
    the name when probing and fails the probe if there is none; refused here instead)."""
    if isinstance(value, str):
        if value not in port_names:
            raise _fail(path, f"no port named {shown(value)} in the container's ports")
        return value
    return _int(value, path, low=1, high=65535)


def _host(value: object, path: str) -> str:
    text = _no_controls(_string(value, path), path)
    if any(ch.isspace() or ch in "/?#@" for ch in text):
        raise _fail(path, f"{shown(text)} is not a host name or IP address")
    return text


def exec_action(value: object, path: str) -> tuple[ExecAction, dict[str, Any]]:
    """``exec: {command: [...]}`` (a handler of probes and lifecycle hooks)."""
    raw = _object(value, path)
    _check_fields(raw, path, _EXEC_FIELDS)
    command = _strings(_required(raw, "command", path), f"{path}.command")
    if not command:
        raise _fail(f"{path}.command", "must not be empty")
    return ExecAction(command), {"command": list(command)}


def http_get_action(
    value: object, path: str, port_names: Set[str]
) -> tuple[HTTPGetAction, dict[str, Any]]:
    """``httpGet`` (a handler of probes and lifecycle hooks); ``port_names``: the container's."""
    raw = _object(value, path)
    _check_fields(raw, path, _HTTP_GET_FIELDS)
    port = _handler_port(_required(raw, "port", path), f"{path}.port", port_names)
    target = _no_controls(_string(raw.get("path", "/"), f"{path}.path"), f"{path}.path")
    if " " in target:
        raise _fail(f"{path}.path", f"{shown(target)} must not contain spaces")
    if not target.startswith("/"):
        target = "/" + target  # as kubelet joins it to the URL
    scheme = _string(raw.get("scheme", "HTTP"), f"{path}.scheme")
    if scheme not in _HTTP_SCHEMES:
        raise _fail(f"{path}.scheme", f"{shown(scheme)} is not one of HTTP, HTTPS")
    out: dict[str, Any] = {"path": target, "port": port, "scheme": scheme}
    host = None
    if "host" in raw:
        host = _host(raw["host"], f"{path}.host")
        out["host"] = host
    headers: list[HTTPHeader] = []
    for i, item in enumerate(_list(raw.get("httpHeaders", []), f"{path}.httpHeaders")):
        item_path = f"{path}.httpHeaders[{i}]"
        header = _object(item, item_path)
        _check_fields(header, item_path, _HTTP_HEADER_FIELDS)
        name = _string(_required(header, "name", item_path), f"{item_path}.name")
        if _HEADER_NAME.fullmatch(name) is None:
            raise _fail(f"{item_path}.name", f"{shown(name)} is not a valid HTTP header name")
        text = _string(header.get("value", ""), f"{item_path}.value", allow_empty=True)
        headers.append(HTTPHeader(name, _no_controls(text, f"{item_path}.value")))
    if headers:
        out["httpHeaders"] = [{"name": h.name, "value": h.value} for h in headers]
    return HTTPGetAction(port, target, host, scheme, tuple(headers)), out


def tcp_socket_action(
    value: object, path: str, port_names: Set[str]
) -> tuple[TCPSocketAction, dict[str, Any]]:
    """``tcpSocket`` (a handler of probes and lifecycle hooks)."""
    raw = _object(value, path)
    _check_fields(raw, path, _TCP_SOCKET_FIELDS)
    port = _handler_port(_required(raw, "port", path), f"{path}.port", port_names)
    out: dict[str, Any] = {"port": port}
    host = None
    if "host" in raw:
        host = _host(raw["host"], f"{path}.host")
        out["host"] = host
    return TCPSocketAction(port, host), out


def grpc_action(value: object, path: str) -> tuple[GRPCAction, dict[str, Any]]:
    """``grpc`` (probes only): the port is a number, as in Kubernetes."""
    raw = _object(value, path)
    _check_fields(raw, path, _GRPC_FIELDS)
    port = _int(_required(raw, "port", path), f"{path}.port", low=1, high=65535)
    service = _string(raw.get("service", ""), f"{path}.service", allow_empty=True)
    out: dict[str, Any] = {"port": port}
    if service:
        out["service"] = _no_controls(service, f"{path}.service")
    return GRPCAction(port, service), out


def probe(
    value: object, path: str, kind: ProbeKind, port_names: Set[str]
) -> tuple[Probe, dict[str, Any]]:
    """One probe (``startupProbe``, ``readinessProbe``, ``livenessProbe``) of a container."""
    raw = _object(value, path)
    _check_fields(raw, path, _PROBE_FIELDS)
    handler, action_any, action_out = _handler_action(raw, path, _PROBE_HANDLERS, port_names)
    action: ProbeAction = action_any
    out: dict[str, Any] = {handler: action_out}
    timing: dict[str, int] = {}
    for key, (default, low) in _PROBE_TIMING.items():
        timing[key] = _int(raw.get(key, default), f"{path}.{key}", low=low, high=INT32_MAX)
        out[key] = timing[key]
    if kind is not ProbeKind.READINESS and timing["successThreshold"] != 1:
        raise _fail(f"{path}.successThreshold", f"must be 1 for a {kind.value} probe")
    grace = None
    if "terminationGracePeriodSeconds" in raw:
        grace_path = f"{path}.terminationGracePeriodSeconds"
        if kind is ProbeKind.READINESS:
            raise _fail(grace_path, "must not be set for a readiness probe")
        grace = _int(raw["terminationGracePeriodSeconds"], grace_path, low=1, high=INT64_MAX)
        out["terminationGracePeriodSeconds"] = grace
    return (
        Probe(
            action=action,
            initial_delay_s=timing["initialDelaySeconds"],
            period_s=timing["periodSeconds"],
            timeout_s=timing["timeoutSeconds"],
            success_threshold=timing["successThreshold"],
            failure_threshold=timing["failureThreshold"],
            termination_grace_period_s=grace,
        ),
        out,
    )


_PROBE_KEYS = (
    ("startupProbe", ProbeKind.STARTUP),
    ("readinessProbe", ProbeKind.READINESS),
    ("livenessProbe", ProbeKind.LIVENESS),
)


def _probes(
    raw: Mapping[str, Any], path: str, ports: list[ContainerPort], out: dict[str, Any]
) -> dict[ProbeKind, Probe]:
    """The container's probes, their normalised form added to ``out``."""
    port_names = {p.name for p in ports if p.name is not None}
    probes: dict[ProbeKind, Probe] = {}
    for key, kind in _PROBE_KEYS:
        if key in raw:
            probes[kind], out[key] = probe(raw[key], f"{path}.{key}", kind, port_names)
    return probes


# --- lifecycle hooks ----------------------------------------------------------------------------
# postStart and preStop as Kubernetes (exec, httpGet, tcpSocket — deprecated there, accepted —
# and sleep); preStart is our extension: a list of preconditions (exec, httpGet, tcpSocket,
# waitFor), each checked until it passes, with its own timing (docs/manifests.md).

_LIFECYCLE_FIELDS = {"postStart", "preStop", "preStart"}
_LIFECYCLE_HANDLERS = ("exec", "httpGet", "tcpSocket", "sleep")
_PRE_START_HANDLERS = ("exec", "httpGet", "tcpSocket", "waitFor")
_PRE_START_TIMING = {
    # field: (default, lowest); failureThreshold has no default (only the deadline bounds it)
    "timeoutSeconds": (1, 1),
    "periodSeconds": (2, 1),
    "deadlineSeconds": (300, 1),
}
_PRE_START_FIELDS = {*_PRE_START_HANDLERS, *_PRE_START_TIMING, "failureThreshold"}
_WAIT_FOR_FIELDS = {"pod", "namespace", "condition"}
_SLEEP_FIELDS = {"seconds"}


def _one_handler(raw: Mapping[str, Any], path: str, choices: tuple[str, ...]) -> str:
    handlers = [h for h in choices if h in raw]
    if not handlers:
        raise _fail(path, f"must have a handler (one of {', '.join(choices)})")
    if len(handlers) > 1:
        raise _fail(path, f"must have exactly one handler, got {', '.join(handlers)}")
    return handlers[0]


def _handler_action(
    raw: Mapping[str, Any], path: str, choices: tuple[str, ...], port_names: Set[str]
) -> tuple[str, Any, dict[str, Any]]:
    """The one handler of a probe or hook among ``choices``: its name, its action and its
    normalised form (each kind of handler has one parser, shared by probes and hooks)."""
    handler = _one_handler(raw, path, choices)
    where = f"{path}.{handler}"
    value = raw[handler]
    action: Any
    if handler == "httpGet":
        action, action_out = http_get_action(value, where, port_names)
    elif handler == "tcpSocket":
        action, action_out = tcp_socket_action(value, where, port_names)
    else:
        action, action_out = _PLAIN_ACTIONS[handler](value, where)
    return handler, action, action_out


def sleep_action(value: object, path: str) -> tuple[SleepAction, dict[str, Any]]:
    """``sleep: {seconds: N}`` (postStart and preStop)."""
    raw = _object(value, path)
    _check_fields(raw, path, _SLEEP_FIELDS)
    seconds = _int(_required(raw, "seconds", path), f"{path}.seconds", low=0, high=INT32_MAX)
    return SleepAction(seconds), {"seconds": seconds}


def wait_for_action(value: object, path: str) -> tuple[WaitForAction, dict[str, Any]]:
    """``waitFor: {pod, namespace, condition}``; no namespace means the pod's own."""
    raw = _object(value, path)
    _check_fields(raw, path, _WAIT_FOR_FIELDS)
    pod = _dns_subdomain(_required(raw, "pod", path), f"{path}.pod")
    out: dict[str, Any] = {"pod": pod}
    namespace = None
    if "namespace" in raw:
        namespace = _dns_label(raw["namespace"], f"{path}.namespace")
        out["namespace"] = namespace
    condition = _enum(WaitCondition, raw.get("condition", "Ready"), f"{path}.condition")
    out["condition"] = condition.value
    return WaitForAction(pod, namespace, condition), out


# The handlers whose parser needs no container port names (every name in a handler tuple above
# is either here or httpGet/tcpSocket).
_PLAIN_ACTIONS: Mapping[str, Callable[[object, str], tuple[Any, dict[str, Any]]]] = {
    "exec": exec_action,
    "grpc": grpc_action,
    "sleep": sleep_action,
    "waitFor": wait_for_action,
}


def lifecycle_handler(
    value: object, path: str, port_names: Set[str]
) -> tuple[LifecycleAction, dict[str, Any]]:
    """A ``postStart`` or ``preStop`` handler."""
    raw = _object(value, path)
    _check_fields(raw, path, set(_LIFECYCLE_HANDLERS))
    handler, action_any, action_out = _handler_action(raw, path, _LIFECYCLE_HANDLERS, port_names)
    action: LifecycleAction = action_any
    return action, {handler: action_out}


def pre_start_hook(
    value: object, path: str, port_names: Set[str]
) -> tuple[PreStartHook, dict[str, Any]]:
    """One precondition of ``lifecycle.preStart``."""
    raw = _object(value, path)
    _check_fields(raw, path, _PRE_START_FIELDS)
    handler, action_any, action_out = _handler_action(raw, path, _PRE_START_HANDLERS, port_names)
    action: PreStartAction = action_any
    out: dict[str, Any] = {handler: action_out}
    timing: dict[str, int] = {}
    for key, (default, low) in _PRE_START_TIMING.items():
        timing[key] = _int(raw.get(key, default), f"{path}.{key}", low=low, high=INT32_MAX)
        out[key] = timing[key]
    threshold = None
    if "failureThreshold" in raw:
        threshold = _int(raw["failureThreshold"], f"{path}.failureThreshold", low=1, high=INT32_MAX)
        out["failureThreshold"] = threshold
    hook = PreStartHook(
        action=action,
        timeout_s=timing["timeoutSeconds"],
        period_s=timing["periodSeconds"],
        failure_threshold=threshold,
        deadline_s=timing["deadlineSeconds"],
    )
    return hook, out


def _lifecycle(
    raw: Mapping[str, Any], path: str, ports: list[ContainerPort], out: dict[str, Any]
) -> Lifecycle:
    """The container's ``lifecycle``, its normalised form added to ``out``."""
    if "lifecycle" not in raw:
        return Lifecycle()
    where = f"{path}.lifecycle"
    lifecycle = _object(raw["lifecycle"], where)
    _check_fields(lifecycle, where, _LIFECYCLE_FIELDS)
    port_names = {p.name for p in ports if p.name is not None}
    normal: dict[str, Any] = {}
    post_start = pre_stop = None
    if "postStart" in lifecycle:
        post_start, normal["postStart"] = lifecycle_handler(
            lifecycle["postStart"], f"{where}.postStart", port_names
        )
    if "preStop" in lifecycle:
        pre_stop, normal["preStop"] = lifecycle_handler(
            lifecycle["preStop"], f"{where}.preStop", port_names
        )
    hooks: list[PreStartHook] = []
    if "preStart" in lifecycle:
        hooks_out = []
        for i, item in enumerate(_list(lifecycle["preStart"], f"{where}.preStart")):
            hook, hook_out = pre_start_hook(item, f"{where}.preStart[{i}]", port_names)
            hooks.append(hook)
            hooks_out.append(hook_out)
        if hooks_out:
            normal["preStart"] = hooks_out
    if normal:
        out["lifecycle"] = normal
    return Lifecycle(pre_start=tuple(hooks), post_start=post_start, pre_stop=pre_stop)


# --- the subset as data (nodectl explain) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectSubset:
    """One object of the subset as the parser checks it: the fields it implements, Kubernetes'
    fields it does not (with ``defaults``, even empty: such a field is accepted when it holds
    its default there, or is empty), and the read-only fields it accepts and drops."""

    supported: Set[str]
    unsupported: Set[str] = frozenset()
    dropped: Set[str] = frozenset()
    defaults: Mapping[str, object] | None = None


# Keyed by Kubernetes' type names. The same sets the parser's _check_fields calls use: a field
# added to the parser is in `nodectl explain` (whose descriptions test_nodectl_explain holds to
# this table).
SUBSET: Mapping[str, ObjectSubset] = {
    "Pod": ObjectSubset(_TOP_FIELDS, dropped=_TOP_DROPPED),
    "ObjectMeta": ObjectSubset(_META_FIELDS, _META_UNSUPPORTED, _META_DROPPED, {}),
    "PodSpec": ObjectSubset(_SPEC_FIELDS, _SPEC_UNSUPPORTED, defaults=_SPEC_DEFAULTS),
    "Container": ObjectSubset(
        _CONTAINER_FIELDS, _CONTAINER_UNSUPPORTED, defaults=_CONTAINER_DEFAULTS
    ),
    "EnvVar": ObjectSubset(_ENV_FIELDS),
    "EnvVarSource": ObjectSubset(set(_VALUE_FROM_SOURCES), _VALUE_FROM_UNSUPPORTED),
    "ObjectFieldSelector": ObjectSubset(_FIELD_REF_FIELDS),
    "ResourceFieldSelector": ObjectSubset(_RESOURCE_FIELD_REF_FIELDS),
    "ContainerPort": ObjectSubset(_PORT_FIELDS),
    "ResourceRequirements": ObjectSubset(_RESOURCES_FIELDS, _RESOURCES_UNSUPPORTED),
    "VolumeMount": ObjectSubset(_MOUNT_FIELDS, _MOUNT_UNSUPPORTED, defaults=_MOUNT_DEFAULTS),
    "Volume": ObjectSubset(_VOLUME_FIELDS, _VOLUME_UNSUPPORTED),
    "HostPathVolumeSource": ObjectSubset(_HOST_PATH_FIELDS),
    "EmptyDirVolumeSource": ObjectSubset(_EMPTY_DIR_FIELDS),
    "Probe": ObjectSubset(_PROBE_FIELDS),
    "ExecAction": ObjectSubset(_EXEC_FIELDS),
    "HTTPGetAction": ObjectSubset(_HTTP_GET_FIELDS),
    "HTTPHeader": ObjectSubset(_HTTP_HEADER_FIELDS),
    "TCPSocketAction": ObjectSubset(_TCP_SOCKET_FIELDS),
    "GRPCAction": ObjectSubset(_GRPC_FIELDS),
    "Lifecycle": ObjectSubset(_LIFECYCLE_FIELDS),
    "LifecycleHandler": ObjectSubset(set(_LIFECYCLE_HANDLERS)),
    "SleepAction": ObjectSubset(_SLEEP_FIELDS),
    "PreStartHook": ObjectSubset(_PRE_START_FIELDS),
    "WaitForAction": ObjectSubset(_WAIT_FOR_FIELDS),
}


# --- the parser -----------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by :meth:`_Parser.add` at :data:`MAX_ERRORS`: the document is not read further."""


class _Parser:
    """Parses one pod document; builds the typed model and the normalised manifest together,
    so the two cannot disagree.

    Every error of the document is collected (``errors``, at most :data:`MAX_ERRORS`): each
    field is parsed under :meth:`guard`, which records its error and lets the parse go on with
    a placeholder; :meth:`pod` raises them all at the end. The models built from placeholders
    are never returned. Fields the API server adds are dropped with a warning (``warnings``).
    """

    def __init__(self, node_name: str | None) -> None:
        self.node_name = node_name
        self.errors: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.server_output = False  # the document is `kubectl get -o yaml` output

    def add(self, exc: ManifestError) -> None:
        for cause in exc.causes:
            if len(self.errors) >= MAX_ERRORS:
                self.errors.append(("", f"too many errors: stopped after {MAX_ERRORS}"))
                raise _Stop
            self.errors.append(cause)

    def guard(self, parse: Callable[[], _T]) -> _T | None:
        """``parse()``, or None with its errors recorded."""
        try:
            return parse()
        except ManifestError as exc:
            self.add(exc)
            return None

    def pod(self, doc: object) -> tuple[ObjectMeta, PodSpec, dict[str, Any]]:
        if not isinstance(doc, Mapping):
            raise _fail("", f"a manifest must be an object (a v1 Pod), got {type_name(doc)}")
        top = _object(doc, "")
        if not top:
            raise _fail("", "empty document")
        for key, expected in (("apiVersion", "v1"), ("kind", "Pod")):
            if _required(top, key, "") != expected:
                raise _fail(key, f"must be {shown(expected)}, got {shown(top[key])}")
        parsed_meta = parsed_spec = None
        try:
            self.guard(lambda: _check_fields(top, "", _TOP_FIELDS, dropped=_TOP_DROPPED))
            raw_meta = top.get("metadata")
            # What only the API server writes: this is a pod of a cluster, printed by kubectl.
            self.server_output = bool(top.get("status")) or (
                isinstance(raw_meta, Mapping) and raw_meta.get("resourceVersion") is not None
            )
            parsed_meta = self.guard(lambda: self.metadata(_required(top, "metadata", "")))
            parsed_spec = self.guard(lambda: self.spec(_required(top, "spec", "")))
        except _Stop:
            pass
        if self.errors or parsed_meta is None or parsed_spec is None:
            raise ManifestError(*self.errors[0], causes=self.errors)
        meta, meta_out = parsed_meta
        spec, spec_out = parsed_spec
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": meta_out, "spec": spec_out}
        return meta, spec, manifest

    def metadata(self, value: object) -> tuple[ObjectMeta, dict[str, Any]]:
        path = "metadata"
        meta = _object(value, path)
        self.guard(
            lambda: _check_fields(
                meta, path, _META_FIELDS, _META_UNSUPPORTED, _META_DROPPED, defaults={}
            )
        )
        name = self.guard(lambda: _dns_subdomain(_required(meta, "name", path), "metadata.name"))
        namespace = self.guard(
            lambda: _dns_label(meta.get("namespace", DEFAULT_NAMESPACE), "metadata.namespace")
        )
        uid = ""
        if "uid" in meta:
            uid = self.guard(lambda: self.uid(meta["uid"])) or ""
        labels = self.guard(lambda: _labels(meta.get("labels", {}), "metadata.labels")) or {}
        annotations = (
            self.guard(lambda: _annotations(meta.get("annotations", {}), "metadata.annotations"))
            or {}
        )
        name = name or ""
        namespace = namespace or DEFAULT_NAMESPACE
        out: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            out["uid"] = uid
        if labels:
            out["labels"] = labels
        if annotations:
            out["annotations"] = annotations
        return (
            ObjectMeta(
                name=name,
                namespace=namespace,
                uid=uid,
                labels=_frozen_map(labels),
                annotations=_frozen_map(annotations),
            ),
            out,
        )

    @staticmethod
    def uid(value: object) -> str:
        # The uid names directories under the state dir and goes into container names.
        uid = _string(value, "metadata.uid")
        if len(uid) > UID_MAX or _UID.fullmatch(uid) is None:
            raise _fail("metadata.uid", f"{shown(uid)} is not a valid uid ({_UID_HELP})")
        return uid

    def tolerations(self, value: object) -> None:
        """``spec.tolerations``: only the two the API server adds to every pod (dropped, with
        a warning); a node here has no taints for any other to tolerate."""
        path = "spec.tolerations"
        added = 0
        for item in _list(value, path):
            if item not in _DEFAULT_TOLERATIONS:
                # Only the API server's default not-ready/unreachable NoExecute ones (dropped).
                raise _fail(path, "not supported yet")
            added += 1
        if added:
            self.warnings.append(
                f"{path}: the API server's default tolerations dropped (nodes here have no taints)"
            )

    def node_name_of(self, spec: Mapping[str, Any]) -> str | None:
        if "nodeName" not in spec:
            return self.node_name
        # The node-name check, not the pod-name one: a name no node can have (over 52
        # characters) is refused here instead of never binding.
        name = names.check_node_name(
            _string(spec["nodeName"], "spec.nodeName"), "spec.nodeName", _fail
        )
        if self.server_output:
            # `kubectl get -o yaml` output: its scheduler chose a node of that cluster; here
            # the pod is placed afresh (docs/decisions.md). Pin a pod by applying its own
            # manifest with spec.nodeName.
            self.warnings.append(
                f"spec.nodeName: {shown(name)}, chosen by the scheduler of the cluster this "
                f"output comes from, dropped"
            )
            return self.node_name
        return name

    def spec(self, value: object) -> tuple[PodSpec, dict[str, Any]]:
        path = "spec"
        spec = _object(value, path)
        checked = {k: v for k, v in spec.items() if k != "tolerations"}
        self.guard(
            lambda: _check_fields(
                checked, path, _SPEC_FIELDS, _SPEC_UNSUPPORTED, defaults=_SPEC_DEFAULTS
            )
        )
        if "tolerations" in spec:
            self.guard(lambda: self.tolerations(spec["tolerations"]))
        volumes, volumes_out, volume_names, token_volumes = self.volumes(
            spec.get("volumes", []), "spec.volumes"
        )
        host_network = bool(
            self.guard(lambda: _bool(spec.get("hostNetwork", False), "spec.hostNetwork"))
        )

        def raw_containers() -> list[Any]:
            items = _list(_required(spec, "containers", path), "spec.containers")
            if not items:
                raise _fail("spec.containers", "must list at least one container")
            return items

        containers: list[Container] = []
        containers_out = []
        container_names: set[str] = set()  # a set, not a scan: 8,000 containers took 5.7 s
        for i, item in enumerate(self.guard(raw_containers) or []):
            item_path = f"spec.containers[{i}]"
            container, container_out = self.container(
                item, item_path, volume_names, host_network, token_volumes
            )
            if container.name in container_names:
                self.add(
                    _fail(f"{item_path}.name", f"duplicate container name {shown(container.name)}")
                )
            container_names.add(container.name)
            containers.append(container)
            containers_out.append(container_out)
        self.guard(lambda: self.check_host_ports(containers))
        init_containers, init_out = self.init_containers(
            spec.get("initContainers", []), volume_names, host_network, container_names
        )
        self.guard(lambda: self.check_resource_refs(containers, init_containers))
        restart_policy = self.guard(
            lambda: _enum(
                RestartPolicy,
                spec.get("restartPolicy", RestartPolicy.ALWAYS.value),
                "spec.restartPolicy",
            )
        )
        restart_policy = restart_policy or RestartPolicy.ALWAYS
        grace = self.guard(
            lambda: _int(
                spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_PERIOD_S),
                "spec.terminationGracePeriodSeconds",
                low=0,
                high=INT64_MAX,
            )
        )
        grace = DEFAULT_GRACE_PERIOD_S if grace is None else grace
        node_name = self.guard(lambda: self.node_name_of(spec))
        out: dict[str, Any] = {
            "containers": containers_out,
            **({"initContainers": init_out} if init_out else {}),
            "restartPolicy": restart_policy.value,
            "terminationGracePeriodSeconds": grace,
        }
        if volumes_out:
            out["volumes"] = volumes_out
        if host_network:
            out["hostNetwork"] = True
        if node_name:
            out["nodeName"] = node_name
        return (
            PodSpec(
                containers=tuple(containers),
                init_containers=tuple(init_containers),
                volumes=tuple(volumes),
                restart_policy=restart_policy,
                termination_grace_period_s=grace,
                host_network=host_network,
                node_name=node_name,
            ),
            out,
        )

    @staticmethod
    def check_resource_refs(containers: list[Container], init_containers: list[Container]) -> None:
        """A ``resourceFieldRef.containerName`` names a container of the pod, app or init, as
        kubelet resolves it (kubelet would fail the container at start; refused here instead)."""
        known = {c.name for c in (*containers, *init_containers)}
        for where, group in (("containers", containers), ("initContainers", init_containers)):
            for i, container in enumerate(group):
                for j, var in enumerate(container.env):
                    ref = var.resource_ref
                    name = ref.container_name if ref is not None else None
                    if name is not None and name not in known:
                        raise _fail(
                            f"spec.{where}[{i}].env[{j}].valueFrom.resourceFieldRef.containerName",
                            f"no container named {shown(name)} in this pod",
                        )

    def init_containers(
        self, value: object, volume_names: Set[str], host_network: bool, app_names: Set[str]
    ) -> tuple[list[Container], list[dict[str, Any]]]:
        """``spec.initContainers``: containers as the app ones, minus what only a long-running
        container can have. Kubernetes' rules: names unique across init and app containers;
        no probes and no lifecycle (an init container's success is its exit code). Sidecars
        (``restartPolicy: Always``) are not supported yet (docs/decisions.md)."""
        path = "spec.initContainers"
        containers: list[Container] = []
        out = []
        seen: set[str] = set()
        for i, item in enumerate(self.guard(lambda: _list(value, path)) or []):
            item_path = f"{path}[{i}]"
            raw = self.guard(lambda: _object(item, item_path))  # noqa: B023 (called at once)
            if raw is None:
                continue
            forbidden = [key for key in _INIT_FORBIDDEN if key in raw]
            for key in forbidden:
                self.add(_fail(f"{item_path}.{key}", "must not be set for init containers"))
            if "restartPolicy" in raw:
                self.add(
                    _fail(
                        f"{item_path}.restartPolicy",
                        "not supported yet (sidecar init containers, restartPolicy: Always)",
                    )
                )
            rest = {k: v for k, v in raw.items() if k not in forbidden and k != "restartPolicy"}
            container, container_out = self.container(rest, item_path, volume_names, host_network)
            if container.name in seen or container.name in app_names:
                self.add(
                    _fail(
                        f"{item_path}.name",
                        f"duplicate container name {shown(container.name)} "
                        f"(unique across initContainers and containers)",
                    )
                )
            seen.add(container.name)
            containers.append(container)
            out.append(container_out)
        return containers, out

    @staticmethod
    def check_host_ports(containers: list[Container]) -> None:
        """One host port per protocol per pod: two bindings of it could never both start."""
        used: dict[tuple[int, str], str] = {}
        for i, container in enumerate(containers):
            for j, port in enumerate(container.ports):
                if port.host_port is None:
                    continue
                key = (port.host_port, port.protocol)
                where = f"spec.containers[{i}].ports[{j}].hostPort"
                if key in used:
                    raise _fail(
                        where, f"{port.host_port}/{port.protocol} is already used by {used[key]}"
                    )
                used[key] = where

    def volumes(
        self, value: object, path: str
    ) -> tuple[list[Volume], list[dict[str, Any]], set[str], set[str]]:
        """The volumes, their normalised form, every name given (a mount naming a volume that
        has an error is not an error too) and the API server's token volumes (dropped)."""
        volumes: list[Volume] = []
        out = []
        seen: set[str] = set()
        tokens: set[str] = set()
        for i, item in enumerate(self.guard(lambda: _list(value, path)) or []):
            item_path = f"{path}[{i}]"
            if isinstance(item, Mapping) and isinstance(item.get("name"), str):
                seen_before = item["name"] in seen
                seen.add(item["name"])
            else:
                seen_before = False
            if (
                isinstance(item, Mapping)
                and set(item) == {"name", "projected"}
                and isinstance(item["name"], str)
                and _TOKEN_VOLUME.fullmatch(item["name"])
            ):
                tokens.add(item["name"])
                self.warnings.append(
                    f"{item_path}: {shown(item['name'])}, the API server's service-account token "
                    f"volume, dropped with its mounts (no API token here)"
                )
                continue
            parsed = self.guard(lambda: self.volume(item, item_path, seen_before))  # noqa: B023
            if parsed is not None:
                volumes.append(parsed[0])
                out.append(parsed[1])
        return volumes, out, seen, tokens

    def volume(self, item: object, item_path: str, repeated: bool) -> tuple[Volume, dict[str, Any]]:
        # Not _object: `emptyDir:` with nothing after it is null and still the source.
        raw = _mapping(item, item_path)
        _check_fields(raw, item_path, _VOLUME_FIELDS, _VOLUME_UNSUPPORTED)
        name = _dns_label(_required(raw, "name", item_path), f"{item_path}.name")
        if repeated:
            raise _fail(f"{item_path}.name", f"duplicate volume name {shown(name)}")
        sources = [s for s in _VOLUME_SOURCES if s in raw]
        if len(sources) != 1:
            raise _fail(
                item_path,
                f"must have exactly one volume source ({' or '.join(_VOLUME_SOURCES)}), "
                f"got {len(sources)}",
            )
        if "hostPath" in raw:
            return self.host_path(name, raw["hostPath"], f"{item_path}.hostPath")
        return self.empty_dir(name, raw["emptyDir"], f"{item_path}.emptyDir")

    @staticmethod
    def host_path(name: str, value: object, path: str) -> tuple[Volume, dict[str, Any]]:
        raw = _object(value, path)
        _check_fields(raw, path, _HOST_PATH_FIELDS)
        host_path = _bind_path(_required(raw, "path", path), f"{path}.path")
        if ".." in host_path.split("/"):
            # As Kubernetes: the path that was reviewed must be the path that is mounted.
            raise _fail(f"{path}.path", f"{shown(host_path)} must not contain '..'")
        kind = _string(raw.get("type", ""), f"{path}.type", allow_empty=True)
        if kind not in _HOST_PATH_TYPES:
            choices = ", ".join(shown(t) for t in _HOST_PATH_TYPES)
            raise _fail(f"{path}.type", f"{shown(kind)} is not one of {choices}")
        return (
            Volume(name=name, host_path=HostPathVolume(host_path, kind)),
            {"name": name, "hostPath": {"path": host_path, "type": kind}},
        )

    @staticmethod
    def empty_dir(name: str, value: object, path: str) -> tuple[Volume, dict[str, Any]]:
        # `emptyDir:` with nothing after it is YAML null; Kubernetes reads it as {}.
        raw = _object({} if value is None else value, path)
        _check_fields(raw, path, _EMPTY_DIR_FIELDS)
        medium = _string(raw.get("medium", ""), f"{path}.medium", allow_empty=True)
        if medium:
            raise _fail(
                f"{path}.medium",
                f'{shown(medium)} not supported yet (only the default disk medium "")',
            )
        entry: dict[str, Any] = {}
        size = None
        if "sizeLimit" in raw:
            size = parse_memory_bytes(raw["sizeLimit"], f"{path}.sizeLimit")
            entry["sizeLimit"] = str(raw["sizeLimit"])
        return Volume(name=name, empty_dir=EmptyDirVolume(size)), {"name": name, "emptyDir": entry}

    def container(
        self,
        value: object,
        path: str,
        volume_names: Set[str],
        host_network: bool,
        token_volumes: Set[str] = frozenset(),
    ) -> tuple[Container, dict[str, Any]]:
        """One container; each field under :meth:`guard` (a placeholder when it has errors)."""
        raw = self.guard(lambda: _object(value, path))
        if raw is None:
            return Container(name="", image=""), {}
        self.guard(
            lambda: _check_fields(
                raw, path, _CONTAINER_FIELDS, _CONTAINER_UNSUPPORTED, defaults=_CONTAINER_DEFAULTS
            )
        )
        name = self.guard(lambda: _dns_label(_required(raw, "name", path), f"{path}.name")) or ""
        image = self.guard(lambda: _image(_required(raw, "image", path), f"{path}.image")) or ""
        pull: PullPolicy | None = _default_pull_policy(image)
        if "imagePullPolicy" in raw:
            pull = self.guard(
                lambda: _enum(PullPolicy, raw["imagePullPolicy"], f"{path}.imagePullPolicy")
            )
        pull = pull or PullPolicy.IF_NOT_PRESENT
        out: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": pull.value}
        command = self.guard(lambda: _strings(raw.get("command", []), f"{path}.command")) or ()
        if command:
            out["command"] = list(command)
        args = self.guard(lambda: _strings(raw.get("args", []), f"{path}.args")) or ()
        if args:
            out["args"] = list(args)
        env, env_out = self.guard(lambda: self.env(raw.get("env", []), f"{path}.env")) or ([], [])
        if env_out:
            out["env"] = env_out
        ports, ports_out = self.guard(
            lambda: self.ports(raw.get("ports", []), f"{path}.ports", host_network)
        ) or ([], [])
        if ports_out:
            out["ports"] = ports_out
        resources, resources_out = self.guard(
            lambda: self.resources(raw.get("resources", {}), f"{path}.resources")
        ) or (Resources(), {})
        if resources_out:
            out["resources"] = resources_out
        working_dir = None
        if "workingDir" in raw:
            working_dir = self.guard(
                lambda: _absolute_path(raw["workingDir"], f"{path}.workingDir")
            )
            out["workingDir"] = working_dir
        mounts, mounts_out = self.guard(
            lambda: self.mounts(
                raw.get("volumeMounts", []), f"{path}.volumeMounts", volume_names, token_volumes
            )
        ) or ([], [])
        if mounts_out:
            out["volumeMounts"] = mounts_out
        probes = self.guard(lambda: _probes(raw, path, ports, out)) or {}
        lifecycle = self.guard(lambda: _lifecycle(raw, path, ports, out)) or Lifecycle()
        container = Container(
            name=name,
            image=image,
            image_pull_policy=pull,
            command=command,
            args=args,
            env=tuple(env),
            ports=tuple(ports),
            resources=resources,
            working_dir=working_dir,
            volume_mounts=tuple(mounts),
            startup_probe=probes.get(ProbeKind.STARTUP),
            readiness_probe=probes.get(ProbeKind.READINESS),
            liveness_probe=probes.get(ProbeKind.LIVENESS),
            lifecycle=lifecycle,
        )
        return container, out

    @staticmethod
    def env(value: object, path: str) -> tuple[list[EnvVar], list[dict[str, Any]]]:
        # Duplicate names are allowed, as in Kubernetes: the last one wins in the container.
        env = []
        out: list[dict[str, Any]] = []
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _object(item, item_path)
            _check_fields(raw, item_path, _ENV_FIELDS)
            name = _string(_required(raw, "name", item_path), f"{item_path}.name")
            # Kubernetes' relaxed rule (RelaxedEnvironmentVariableValidation): printable ASCII
            # except '='.
            if any(not " " <= ch <= "~" or ch == "=" for ch in name):
                raise _fail(
                    f"{item_path}.name",
                    f"{shown(name)} is not a valid environment variable name "
                    f"(printable ASCII characters except '=')",
                )
            if "value" in raw and "valueFrom" in raw:
                raise _fail(item_path, "value and valueFrom are mutually exclusive")
            if "valueFrom" in raw:
                var, value_from = _Parser.value_from(
                    name, raw["valueFrom"], f"{item_path}.valueFrom"
                )
                env.append(var)
                out.append({"name": name, "valueFrom": value_from})
            else:
                text = _string(raw.get("value", ""), f"{item_path}.value", allow_empty=True)
                env.append(EnvVar(name=name, value=text))
                out.append({"name": name, "value": text})
        return env, out

    @staticmethod
    def value_from(name: str, value: object, path: str) -> tuple[EnvVar, dict[str, Any]]:
        value_from = _object(value, path)
        _check_fields(value_from, path, set(_VALUE_FROM_SOURCES), _VALUE_FROM_UNSUPPORTED)
        sources = [s for s in _VALUE_FROM_SOURCES if s in value_from]
        if len(sources) != 1:
            raise _fail(
                path,
                f"must have exactly one source ({' or '.join(_VALUE_FROM_SOURCES)}), "
                f"got {len(sources)}",
            )
        if "fieldRef" in value_from:
            ref, key = _Parser.field_ref(value_from["fieldRef"], f"{path}.fieldRef")
            field = f"{ref.value}['{key}']" if key else ref.value
            var = EnvVar(name=name, field_ref=ref, field_key=key)
            return var, {"fieldRef": {"fieldPath": field}}
        resource, entry = _Parser.resource_field_ref(
            value_from["resourceFieldRef"], f"{path}.resourceFieldRef"
        )
        return EnvVar(name=name, resource_ref=resource), {"resourceFieldRef": entry}

    @staticmethod
    def field_ref(value: object, ref_path: str) -> tuple[FieldRef, str]:
        """The field and, for labels and annotations, the key (else "")."""
        raw = _object(value, ref_path)
        _check_fields(raw, ref_path, _FIELD_REF_FIELDS)
        if "apiVersion" in raw and raw["apiVersion"] != "v1":
            raise _fail(f"{ref_path}.apiVersion", f'must be "v1", got {shown(raw["apiVersion"])}')
        where = f"{ref_path}.fieldPath"
        field_path = _string(_required(raw, "fieldPath", ref_path), where)
        subscripted = _SUBSCRIPTED_FIELD.fullmatch(field_path)
        if subscripted is not None:
            ref = FieldRef(subscripted.group(1))
            key = subscripted.group(2)
            # Kubernetes: a label name, and an annotation key checked in lower case.
            what = "label" if ref is FieldRef.LABEL else "annotation"
            names.check_qualified_name(
                key if ref is FieldRef.LABEL else key.lower(), where, what, _fail
            )
            return ref, key
        plain: FieldRef | None
        try:
            plain = FieldRef(field_path)
        except ValueError:
            plain = None
        if plain is None or plain in (FieldRef.LABEL, FieldRef.ANNOTATION):
            # The whole map (`metadata.labels`) is for downwardAPI volumes only, as Kubernetes.
            raise _fail(
                where, f"{shown(field_path)} not supported yet (supported: {_FIELD_PATHS_HELP})"
            )
        return plain, ""

    @staticmethod
    def resource_field_ref(value: object, path: str) -> tuple[ResourceFieldRef, dict[str, Any]]:
        raw = _object(value, path)
        _check_fields(raw, path, _RESOURCE_FIELD_REF_FIELDS)
        container_name = None
        out: dict[str, Any] = {}
        if "containerName" in raw:
            # Checked against the pod's containers in spec(), once they are all known.
            container_name = _dns_label(raw["containerName"], f"{path}.containerName")
            out["containerName"] = container_name
        resource_path = f"{path}.resource"
        text = _string(_required(raw, "resource", path), resource_path)
        try:
            resource = ContainerResource(text)
        except ValueError:
            choices = ", ".join(r.value for r in ContainerResource)
            raise _fail(
                resource_path, f"{shown(text)} not supported yet (supported: {choices})"
            ) from None
        out["resource"] = resource.value
        cpu = resource in (ContainerResource.LIMITS_CPU, ContainerResource.REQUESTS_CPU)
        divisor = Fraction(1)
        if "divisor" in raw:
            divisor_path = f"{path}.divisor"
            written = parse_quantity(raw["divisor"], divisor_path)
            # Kept as written, like resources; "0" is what `kubectl get -o yaml` prints for an
            # unset divisor, and means 1, as in kubelet.
            out["divisor"] = str(raw["divisor"])
            if written != 0:
                allowed = _CPU_DIVISORS if cpu else _MEMORY_DIVISORS
                if written not in allowed:
                    choices = (
                        "1m, 1"
                        if cpu
                        else "1, 1k, 1M, 1G, 1T, 1P, 1E, 1Ki, 1Mi, 1Gi, 1Ti, 1Pi, 1Ei"
                    )
                    raise _fail(
                        divisor_path,
                        f"{shown(raw['divisor'])} is not a valid divisor for {resource.value} "
                        f"(one of {choices})",
                    )
                divisor = written
        units = int(divisor * 1000) if cpu else int(divisor)
        return ResourceFieldRef(resource, container_name, units), out

    @staticmethod
    def ports(
        value: object, path: str, host_network: bool
    ) -> tuple[list[ContainerPort], list[dict[str, Any]]]:
        ports: list[ContainerPort] = []
        out = []
        port_names: set[str] = set()
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _object(item, item_path)
            _check_fields(raw, item_path, _PORT_FIELDS)
            number = _int(
                _required(raw, "containerPort", item_path),
                f"{item_path}.containerPort",
                low=1,
                high=65535,
            )
            protocol = _string(raw.get("protocol", "TCP"), f"{item_path}.protocol")
            if protocol not in _PROTOCOLS:
                raise _fail(
                    f"{item_path}.protocol",
                    f"{shown(protocol)} is not one of {', '.join(_PROTOCOLS)}",
                )
            entry: dict[str, Any] = {"containerPort": number, "protocol": protocol}
            name = None
            if "name" in raw:
                name = _string(raw["name"], f"{item_path}.name")
                if (
                    len(name) > PORT_NAME_MAX
                    or _PORT_NAME.fullmatch(name) is None
                    or "--" in name
                    or not any(ch.isalpha() for ch in name)
                ):
                    raise _fail(
                        f"{item_path}.name",
                        f"{shown(name)} is not a valid port name (IANA_SVC_NAME: at most 15 "
                        f"lowercase alphanumerics and '-', at least one letter, no '--')",
                    )
                if name in port_names:
                    raise _fail(f"{item_path}.name", f"duplicate port name {shown(name)}")
                port_names.add(name)
                entry["name"] = name
            host_port = None
            if "hostPort" in raw:
                host_port = _int(raw["hostPort"], f"{item_path}.hostPort", low=1, high=65535)
            # Kubernetes: on the host network a container port *is* a host port, so hostPort
            # defaults to containerPort and may not differ from it.
            if host_network:
                if host_port is not None and host_port != number:
                    raise _fail(
                        f"{item_path}.hostPort",
                        f"must equal containerPort ({number}) when spec.hostNetwork is true",
                    )
                host_port = number
            if host_port is not None:
                entry["hostPort"] = host_port
            host_ip = None
            if "hostIP" in raw:
                host_ip = _string(raw["hostIP"], f"{item_path}.hostIP")
                try:
                    ipaddress.ip_address(host_ip)
                except ValueError:
                    raise _fail(
                        f"{item_path}.hostIP", f"{shown(host_ip)} is not an IP address"
                    ) from None
                entry["hostIP"] = host_ip
            ports.append(ContainerPort(number, protocol, name, host_port, host_ip))
            out.append(entry)
        return ports, out

    @staticmethod
    def resources(value: object, path: str) -> tuple[Resources, dict[str, Any]]:
        raw = _object(value, path)
        _check_fields(raw, path, _RESOURCES_FIELDS, _RESOURCES_UNSUPPORTED)
        parsed: dict[str, dict[str, int]] = {}
        out: dict[str, Any] = {}
        for section in ("limits", "requests"):
            amounts = _mapping(raw.get(section, {}), f"{path}.{section}")
            parsed[section] = {}
            for resource, amount in amounts.items():
                where = field_path(f"{path}.{section}", resource)
                if resource == "cpu":
                    parsed[section][resource] = parse_cpu_millis(amount, where)
                elif resource == "memory":
                    parsed[section][resource] = parse_memory_bytes(amount, where)
                else:
                    raise _fail(where, "not supported yet (only cpu and memory)")
                # Kept as written (`500m`, not 500): the manifest echoes the user's input.
                out.setdefault(section, {})[resource] = str(amount)
        limits, requests = parsed["limits"], parsed["requests"]
        for resource in _RESOURCE_NAMES:
            if resource not in limits:
                continue
            # Kubernetes defaults a missing request to the limit (Guaranteed QoS).
            requests.setdefault(resource, limits[resource])
            if requests[resource] > limits[resource]:
                request, limit = out["requests"][resource], out["limits"][resource]
                raise _fail(
                    f"{path}.requests.{resource}",
                    f"{shown(request)} is more than the limit {shown(limit)} "
                    f"(a request must be less than or equal to its limit)",
                )
        resources = Resources(
            cpu_request_millis=requests.get("cpu"),
            cpu_limit_millis=limits.get("cpu"),
            memory_request_bytes=requests.get("memory"),
            memory_limit_bytes=limits.get("memory"),
        )
        return resources, out

    @staticmethod
    def mounts(
        value: object, path: str, volume_names: Set[str], token_volumes: Set[str] = frozenset()
    ) -> tuple[list[VolumeMount], list[dict[str, Any]]]:
        mounts: list[VolumeMount] = []
        out = []
        targets: dict[str, int] = {}
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _object(item, item_path)
            if isinstance(raw.get("name"), str) and raw["name"] in token_volumes:
                continue  # the API server's token mount: dropped with its volume
            _check_fields(
                raw, item_path, _MOUNT_FIELDS, _MOUNT_UNSUPPORTED, defaults=_MOUNT_DEFAULTS
            )
            name = _string(_required(raw, "name", item_path), f"{item_path}.name")
            if name not in volume_names:
                raise _fail(f"{item_path}.name", f"no volume named {shown(name)} in spec.volumes")
            target_path = f"{item_path}.mountPath"
            target = _bind_path(_required(raw, "mountPath", item_path), target_path)
            # `/data`, `/data/` and `//data` are the same mount point (normpath keeps a
            # leading `//`, which POSIX leaves implementation-defined and Linux reads as `/`).
            normal = "/" + posixpath.normpath(target).lstrip("/")
            if normal == "/":
                raise _fail(target_path, "must not be '/' (the container's root filesystem)")
            if normal in targets:
                raise _fail(
                    target_path,
                    f"{shown(target)} is already a mount point ({path}[{targets[normal]}])",
                )
            targets[normal] = i
            read_only = _bool(raw.get("readOnly", False), f"{item_path}.readOnly")
            mounts.append(VolumeMount(name, target, read_only))
            entry: dict[str, Any] = {"name": name, "mountPath": target}
            if read_only:
                entry["readOnly"] = True
            out.append(entry)
        return mounts, out


# --- public API -----------------------------------------------------------------------------


def derive_uid(manifest: Mapping[str, Any], node_name: str | None) -> str:
    """The uid of a pod whose manifest has none, as kubelet does for static pods.

    SHA-256 over the node name and the canonical JSON of the normalised manifest (without a
    uid), formatted as a UUID. The same file on the same node always gets the same uid, so an
    agent restart adopts the pod's containers; any change to the pod gives a new uid, so the old
    pod is replaced. Formatting, comments, key order and spelled-out defaults do not count.
    """
    digest = hashlib.sha256(((node_name or "") + "\n" + canonical_json(manifest)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def _parse_pod(
    doc: object, source: str, node_name: str | None, where: str, warnings: list[str] | None
) -> Pod:
    parser = _Parser(node_name)
    try:
        meta, spec, manifest = parser.pod(doc)
        notify = notify_settings(meta.annotations, {c.name for c in spec.containers})
        check_notify_mounts(
            notify, [(c.name, [m.mount_path for m in c.volume_mounts]) for c in spec.containers]
        )
    except ManifestError as exc:
        raise exc.at(where) from None
    if warnings is not None:
        warnings.extend(parser.warnings)
    if not meta.uid:
        uid = derive_uid(manifest, node_name)
        meta = ObjectMeta(meta.name, meta.namespace, uid, meta.labels, meta.annotations)
        manifest["metadata"]["uid"] = uid
    return Pod(metadata=meta, spec=spec, manifest=manifest, source=source)


def parse_pod(
    doc: object,
    *,
    source: str,
    node_name: str | None = None,
    index: int | None = None,
    warnings: list[str] | None = None,
) -> Pod:
    """One decoded pod document → :class:`Pod`.

    ``source`` is stored on the pod and prefixes error messages; ``index`` (0-based) names the
    document of a multi-document file in errors. ``node_name`` fills ``spec.nodeName`` when the
    manifest has none and salts the derived uid. A :class:`ManifestError` holds every error of
    the document (``causes``, at most :data:`MAX_ERRORS`). ``warnings``, when given, receives
    one line per field the API server adds that was dropped (the token volume, the default
    tolerations, another cluster's ``nodeName``).
    """
    label = "" if index is None else f"document {index + 1}"
    return _parse_pod(doc, source, node_name, _where(source, label), warnings)


def pod_documents(text: str, *, source: str) -> list[tuple[str, object]]:
    """The pod documents of a YAML or JSON text, each with where it is (``document 2``,
    ``items[3]``), read by the strict loader (:func:`agent.manifest_loader.load_yaml`).

    The text may hold several ``---`` documents (empty ones are skipped) and each document may
    be a pod or a ``v1 List`` of pods (what ``kubectl get pods -o yaml`` prints). ``nodectl
    apply`` sends these to the master; :func:`parse_manifests` parses them here.
    """
    documents = load_yaml(text, source=source)
    located: list[tuple[str, object]] = []  # (where in the text, pod document)
    for n, document in enumerate(documents):
        label = f"document {n + 1}" if len(documents) > 1 else ""
        if isinstance(document, Mapping) and document.get("kind") == "List":
            try:
                items = _list_items(document)
            except ManifestError as exc:
                raise ManifestError(exc.field, exc.problem, _where(source, label)) from None
            located.extend(
                (f"{label}, items[{k}]" if label else f"items[{k}]", item)
                for k, item in enumerate(items)
            )
        else:
            located.append((label, document))
    return located


def parse_manifests(
    text: str, *, source: str, node_name: str | None = None, warnings: list[str] | None = None
) -> list[Pod]:
    """Every pod in a YAML or JSON text (see :func:`pod_documents`), in order.

    The whole text is rejected if any pod is invalid or if two pods have the same
    namespace/name. Linear in the text's size; callers parse texts above
    :data:`~agent.manifest_loader.OFF_LOOP_BYTES` off the event loop.
    """
    pods: list[Pod] = []
    seen: dict[str, str] = {}
    for label, document in pod_documents(text, source=source):
        pod = _parse_pod(document, source, node_name, _where(source, label), warnings)
        if pod.full_name in seen:
            raise ManifestError(
                "metadata.name",
                f"pod {pod.full_name} is defined twice (first in {seen[pod.full_name]})",
                _where(source, label),
            )
        seen[pod.full_name] = label
        pods.append(pod)
    return pods


def _where(source: str, label: str) -> str:
    return f"{source} ({label})" if label else source


def _list_items(document: Mapping[Any, Any]) -> list[Any]:
    top = _mapping(document, "")
    _check_fields(top, "", _LIST_FIELDS)
    if top.get("apiVersion", "v1") != "v1":
        raise _fail("apiVersion", f'must be "v1", got {shown(top["apiVersion"])}')
    return _list(_required(top, "items", ""), "items")
