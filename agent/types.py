"""Identifiers and wire types shared by the node and the master: the typed pod model.

The model is the supported subset of Kubernetes ``v1 Pod`` (see ``docs/manifests.md``); it is
built only by :mod:`agent.manifest`, which rejects everything outside the subset. All value
objects are frozen; collections are tuples or read-only mappings so a pod can be shared between
tasks without copying.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

LABEL_PREFIX = "io.node-agent."
LABEL_NODE = LABEL_PREFIX + "node"
LABEL_POD_UID = LABEL_PREFIX + "pod.uid"
LABEL_POD_NAME = LABEL_PREFIX + "pod.name"
LABEL_POD_NAMESPACE = LABEL_PREFIX + "pod.namespace"
LABEL_CONTAINER = LABEL_PREFIX + "container"
LABEL_ATTEMPT = LABEL_PREFIX + "attempt"
LABEL_KIND = LABEL_PREFIX + "kind"
LABEL_POD_HASH = LABEL_PREFIX + "pod.hash"
LABEL_POD_SOURCE = LABEL_PREFIX + "pod.source"
LABEL_POD_MANIFEST = LABEL_PREFIX + "pod.manifest"
# The image reference a container was made from; it is created from the pinned image id.
LABEL_IMAGE = LABEL_PREFIX + "image"

KIND_SANDBOX = "sandbox"
KIND_APP = "app"
KIND_INIT = "init"  # an init container: runs to completion before the app containers
SANDBOX_CONTAINER_NAME = "POD"


def _frozen_map(values: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(values or {}))


class RestartPolicy(StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class FieldRef(StrEnum):
    """Downward-API fields an env var may reference (``valueFrom.fieldRef.fieldPath``).

    ``LABEL`` and ``ANNOTATION`` take a key (``metadata.labels['app']``: :attr:`EnvVar.field_key`).
    """

    POD_NAME = "metadata.name"
    POD_NAMESPACE = "metadata.namespace"
    POD_UID = "metadata.uid"
    LABEL = "metadata.labels"
    ANNOTATION = "metadata.annotations"
    NODE_NAME = "spec.nodeName"
    SERVICE_ACCOUNT_NAME = "spec.serviceAccountName"
    POD_IP = "status.podIP"
    POD_IPS = "status.podIPs"
    HOST_IP = "status.hostIP"
    HOST_IPS = "status.hostIPs"


class ContainerResource(StrEnum):
    """What ``valueFrom.resourceFieldRef.resource`` may name."""

    LIMITS_CPU = "limits.cpu"
    LIMITS_MEMORY = "limits.memory"
    REQUESTS_CPU = "requests.cpu"
    REQUESTS_MEMORY = "requests.memory"


@dataclass(frozen=True, slots=True)
class ResourceFieldRef:
    """A container's cpu or memory request or limit, divided by ``divisor`` (rounded up).

    ``container_name`` is None for the container itself. ``divisor`` is in millicores for cpu
    (1 for ``1m``, 1000 for ``1``, the parser's default) and in bytes for memory.
    """

    resource: ContainerResource
    container_name: str | None = None
    divisor: int = 1


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    value: str = ""
    field_ref: FieldRef | None = None
    field_key: str = ""  # the key of a LABEL or ANNOTATION field_ref
    resource_ref: ResourceFieldRef | None = None


@dataclass(frozen=True, slots=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str | None = None
    host_port: int | None = None
    host_ip: str | None = None


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU in millicores, memory in bytes; ``None`` when not given."""

    cpu_request_millis: int | None = None
    cpu_limit_millis: int | None = None
    memory_request_bytes: int | None = None
    memory_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class VolumeMount:
    name: str
    mount_path: str
    read_only: bool = False


# --- handlers and probes ---------------------------------------------------------------------
# Handler actions are Kubernetes' shapes, shared by probes and lifecycle hooks. A port is a
# number, or the name of one of the container's ports (checked when the manifest is parsed).


@dataclass(frozen=True, slots=True)
class ExecAction:
    command: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HTTPHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class HTTPGetAction:
    port: int | str
    path: str = "/"
    host: str | None = None  # None: the pod's IP
    scheme: str = "HTTP"  # HTTP or HTTPS
    headers: tuple[HTTPHeader, ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocketAction:
    port: int | str
    host: str | None = None  # None: the pod's IP


@dataclass(frozen=True, slots=True)
class GRPCAction:
    """grpc.health.v1.Health/Check on ``port`` of the pod's IP (plain-text HTTP/2)."""

    port: int
    service: str = ""


ProbeAction = ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction


class ProbeKind(StrEnum):
    STARTUP = "startup"
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe of a container, with Kubernetes' defaults (seconds as in the manifest)."""

    action: ProbeAction
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_s: int | None = None  # None: the pod's


# --- lifecycle hooks (docs/manifests.md) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SleepAction:
    """``sleep: {seconds: N}`` (postStart and preStop)."""

    seconds: int


class WaitCondition(StrEnum):
    READY = "Ready"


@dataclass(frozen=True, slots=True)
class WaitForAction:
    """``waitFor`` (a preStart precondition, our extension): another pod on this node has
    the condition."""

    pod: str
    namespace: str | None = None  # None: the namespace of the pod that waits
    condition: WaitCondition = WaitCondition.READY


LifecycleAction = ExecAction | HTTPGetAction | TCPSocketAction | SleepAction
PreStartAction = ExecAction | HTTPGetAction | TCPSocketAction | WaitForAction


@dataclass(frozen=True, slots=True)
class PreStartHook:
    """One precondition of ``lifecycle.preStart`` (our extension), checked every ``period_s``
    (each check bounded by ``timeout_s``) until it passes; it has failed after
    ``failure_threshold`` failed checks in a row (None: no such bound) or ``deadline_s``
    seconds after its first check, whichever comes first."""

    action: PreStartAction
    timeout_s: int = 1
    period_s: int = 2
    failure_threshold: int | None = None
    deadline_s: int = 300


@dataclass(frozen=True, slots=True)
class Lifecycle:
    pre_start: tuple[PreStartHook, ...] = ()
    post_start: LifecycleAction | None = None
    pre_stop: LifecycleAction | None = None


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str
    image_pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    resources: Resources = field(default_factory=Resources)
    working_dir: str | None = None
    volume_mounts: tuple[VolumeMount, ...] = ()
    startup_probe: Probe | None = None
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)

    def probe(self, kind: ProbeKind) -> Probe | None:
        if kind is ProbeKind.STARTUP:
            return self.startup_probe
        if kind is ProbeKind.READINESS:
            return self.readiness_probe
        return self.liveness_probe


@dataclass(frozen=True, slots=True)
class HostPathVolume:
    path: str
    type: str = ""


@dataclass(frozen=True, slots=True)
class EmptyDirVolume:
    size_limit_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    host_path: HostPathVolume | None = None
    empty_dir: EmptyDirVolume | None = None


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str = "default"
    uid: str = ""
    labels: Mapping[str, str] = field(default_factory=_frozen_map)
    annotations: Mapping[str, str] = field(default_factory=_frozen_map)


@dataclass(frozen=True, slots=True)
class PodSpec:
    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()  # run in order, each to success, before them
    volumes: tuple[Volume, ...] = ()
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    termination_grace_period_s: int = 30
    host_network: bool = False
    node_name: str | None = None


@dataclass(frozen=True, slots=True)
class Pod:
    """A desired pod.

    ``manifest`` is the normalised manifest (what we parsed, with defaults and uid filled in),
    kept so the API can echo it and the checkpoint can restore the pod byte-for-byte.
    ``source`` says where the pod came from: ``file:<path>`` for a static manifest, ``api``
    for a pod assigned by the master.
    """

    metadata: ObjectMeta
    spec: PodSpec
    manifest: Mapping[str, Any]
    source: str = "api"

    @property
    def uid(self) -> str:
        return self.metadata.uid

    @property
    def full_name(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def spec_hash(self) -> str:
        """Hash of the manifest; a changed hash means the pod must be replaced."""
        return manifest_hash(self.manifest)

    def container(self, name: str) -> Container | None:
        """The app or init container ``name`` (names are unique across both)."""
        for c in (*self.spec.containers, *self.spec.init_containers):
            if c.name == name:
                return c
        return None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, MappingProxyType):
        return dict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest).encode()).hexdigest()[:16]
