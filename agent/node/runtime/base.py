"""What the node needs from a container runtime: the ``Runtime`` protocol and its value types.

The pod workers speak only this protocol; :mod:`agent.node.runtime.docker` implements it on the
Docker Engine. Records are snapshots (frozen), never live handles.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from agent.types import (
    KIND_SANDBOX,
    LABEL_ATTEMPT,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_POD_HASH,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
)


class ContainerState(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class ContainerRecord:
    """One container of ours as the runtime last reported it."""

    id: str
    name: str
    labels: Mapping[str, str]
    state: ContainerState
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    image: str = ""
    image_id: str = ""
    ip_address: str = ""

    @property
    def pod_uid(self) -> str:
        return self.labels.get(LABEL_POD_UID, "")

    @property
    def pod_name(self) -> str:
        return self.labels.get(LABEL_POD_NAME, "")

    @property
    def pod_namespace(self) -> str:
        return self.labels.get(LABEL_POD_NAMESPACE, "")

    @property
    def container_name(self) -> str:
        return self.labels.get(LABEL_CONTAINER, "")

    @property
    def pod_hash(self) -> str:
        return self.labels.get(LABEL_POD_HASH, "")

    @property
    def is_sandbox(self) -> bool:
        return self.labels.get(LABEL_KIND) == KIND_SANDBOX

    @property
    def attempt(self) -> int:
        try:
            return int(self.labels.get(LABEL_ATTEMPT, "0"))
        except ValueError:
            return 0

    @property
    def running(self) -> bool:
        return self.state in (ContainerState.RUNNING, ContainerState.RESTARTING)

    @property
    def ever_started(self) -> bool:
        return self.started_at is not None


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class PortBinding:
    container_port: int
    protocol: str
    host_port: int
    host_ip: str = ""


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything needed to create one container, runtime-neutral.

    ``network_of`` names the sandbox whose namespaces an app container joins (``None`` for the
    sandbox itself); ``host_network`` puts the sandbox in the host's namespace.
    """

    name: str
    image: str
    labels: Mapping[str, str]
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    hostname: str | None = None
    network_of: str | None = None
    host_network: bool = False
    mounts: tuple[Mount, ...] = ()
    port_bindings: tuple[PortBinding, ...] = ()
    nano_cpus: int | None = None
    cpu_shares: int | None = None
    memory_bytes: int | None = None
    memory_reservation_bytes: int | None = None
    log_max_size: str = "10m"
    log_max_files: int = 3


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """A container lifecycle event: ``action`` is docker's (start, die, oom, destroy, ...)."""

    action: str
    container_id: str
    pod_uid: str


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str
    tags: tuple[str, ...]


class Runtime(Protocol):
    """The container runtime as the pod workers see it. All methods are safe to call
    concurrently; none blocks the event loop."""

    async def ping(self) -> str:
        """Return the engine version; raise RuntimeUnavailableError if it does not answer."""
        ...

    async def list_containers(self, pod_uid: str | None = None) -> list[ContainerRecord]:
        """Our containers (all states), optionally of one pod, inspected in full."""
        ...

    async def list_pod_uids(self) -> dict[str, set[str]]:
        """Cheap relist: pod uid -> signature of its containers (id:state), no inspect."""
        ...

    async def ensure_image(self, image: str, pull: str) -> ImageRecord:
        """Make ``image`` present per the pull policy (Always, IfNotPresent, Never)."""
        ...

    async def ensure_sandbox_image(self, image: str) -> ImageRecord:
        """Make the sandbox image present: pull it, or build a minimal one locally."""
        ...

    async def create_container(self, spec: ContainerSpec) -> str:
        """Create (not start); raise ContainerConflictError if the name exists."""
        ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        """SIGTERM (or the image's stop signal), wait ``grace_s``, then SIGKILL."""
        ...

    async def remove_container(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is not an error."""
        ...

    async def image_fs_usage(self) -> dict[str, int]:
        """Bytes of the filesystem holding images: capacityBytes, usedBytes, availableBytes."""
        ...

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """Lifecycle events of our containers until the engine connection drops."""
        ...

    async def close(self) -> None: ...
