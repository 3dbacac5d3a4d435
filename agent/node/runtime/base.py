"""What the node needs from a container runtime: the ``Runtime`` protocol and its value types.

Everything the node does with containers and images goes through this protocol:
:mod:`agent.node.runtime.docker` implements it on the Docker Engine, :mod:`agent.node.runtime.fake`
in memory for unit tests, and one contract suite (``tests/contracts/runtime.py``) holds both to
the same behaviour. Records are snapshots (frozen), never live handles; the value types are
runtime-neutral.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Protocol

from agent.errors import ImageUnavailableError
from agent.types import (
    KIND_INIT,
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
    def is_init(self) -> bool:
        """An init container (runs to completion before the pod's app containers)."""
        return self.labels.get(LABEL_KIND) == KIND_INIT

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
    log_max_files: int = 5


# The container actions ``Runtime.events`` reports: those that may change what a pod worker
# decides from. Execs (a probe every 10 s on 100 pods is 30 events a second: exec_create,
# exec_start, exec_die), attaches and resizes are left out at the source.
LIFECYCLE_ACTIONS = frozenset(
    {
        "create",
        "start",
        "restart",
        "kill",
        "die",
        "oom",
        "stop",
        "destroy",
        "pause",
        "unpause",
        "rename",
        "update",
    }
)


@dataclass(frozen=True, slots=True)
class RuntimeEvent:
    """A container lifecycle event: ``action`` is docker's, one of LIFECYCLE_ACTIONS."""

    action: str
    container_id: str
    pod_uid: str


class OutputChannel(IntEnum):
    """Which of a process's outputs a piece of exec output came from (with a TTY: STDOUT)."""

    STDOUT = 1
    STDERR = 2


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One local image. ``repo_tags`` are familiar references (``busybox:latest``);
    ``repo_digests`` are ``repo@sha256:…`` (empty for an image never pulled from or pushed to a
    registry, e.g. imported or built locally)."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    size_bytes: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """What a reference names right now: the image id, and the repo digest a registry knows
    it by ("" when it has none for that repository)."""

    reference: str
    image_id: str
    repo_digest: str


@dataclass(frozen=True, slots=True)
class PullProgress:
    """One progress report of a pull, as the engine gives it: ``layer_id`` is "" for messages
    about the whole image; byte counts are None where the engine does not report them."""

    layer_id: str
    status: str
    current_bytes: int | None = None
    total_bytes: int | None = None


PullProgressCallback = Callable[[PullProgress], None]


@dataclass(frozen=True, slots=True)
class RegistryAuth:
    """Credentials for one pull (a secret: kept out of reprs). Every field empty is an
    anonymous pull; ``identity_token`` is an OAuth refresh token (Docker's ``identitytoken``)
    used instead of a password."""

    server_address: str = ""
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)


ANONYMOUS = RegistryAuth()

PULL_ALWAYS = "Always"
PULL_IF_NOT_PRESENT = "IfNotPresent"
PULL_NEVER = "Never"
_DEFAULT_REGISTRY_PREFIXES = ("docker.io/library/", "index.docker.io/library/", "docker.io/")


def split_reference(image: str) -> tuple[str, str]:
    """Split ``repo[:tag]`` (a registry port is not a tag; no tag means ``latest``); a digest
    reference ``repo@sha256:…`` is returned whole with an empty tag."""
    if "@" in image:
        return image, ""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


def familiar_reference(image: str) -> str:
    """The form engines list references in: ``busybox`` and ``docker.io/library/busybox`` are
    both ``busybox:latest``."""
    for prefix in _DEFAULT_REGISTRY_PREFIXES:
        if image.startswith(prefix):
            image = image[len(prefix) :]
            break
    repo, tag = split_reference(image)
    return f"{repo}:{tag}" if tag else repo


def repo_digest_for(reference: str, digests: tuple[str, ...]) -> str:
    """The repo digest of ``digests`` that belongs to ``reference``'s repository ("" if none)."""
    repo = split_reference(familiar_reference(reference))[0].split("@", 1)[0]
    for digest in digests:
        if familiar_reference(digest).split("@", 1)[0] == repo:
            return digest
    return ""


class ExecOutputSink(Protocol):
    """Takes an exec's output in the loop's callbacks, as it arrives (``ExecSession.
    attach_output``): the node's exec stream without a task per direction (issue 20)."""

    def exec_output(self, channel: OutputChannel, data: bytes) -> bool:
        """One piece of output; False asks for no more until ``resume_output``."""
        ...

    def exec_output_ended(self, error: Exception | None) -> None:
        """Both outputs ended (``error`` None), or reading them failed."""
        ...


class ExecSession(Protocol):
    """A process started in a running container, with its streams.

    ``read`` returns output pieces as they come and ``(STDOUT, b"")`` once both outputs ended;
    ``close_stdin`` is EOF on the process's stdin (its output keeps flowing). ``close`` releases
    the streams (idempotent); it does not kill the process.
    """

    @property
    def id(self) -> str: ...

    async def read(self) -> tuple[OutputChannel, bytes]: ...

    def attach_output(self, sink: ExecOutputSink) -> None:
        """From now on the output goes to ``sink`` in callbacks (what is pending first), in
        place of ``read`` (call one or the other, never both); once, before ``close``."""
        ...

    def resume_output(self) -> None:
        """``sink`` takes output again after ``exec_output`` returned False."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, cols: int, rows: int) -> None:
        """Size the session's terminal. Once the process has ended there is no terminal
        left to size: the call then does nothing (a client's late resize is not an error)."""
        ...

    async def exit_code(self, wait_s: float) -> int | None:
        """The exit code, waiting at most ``wait_s`` for the process to end (None if it has
        not by then). Call it after ``read`` returned EOF."""
        ...

    async def close(self) -> None: ...


class Runtime(Protocol):
    """The container runtime as the node sees it. All methods are safe to call concurrently;
    none blocks the event loop. Faults are the same for every implementation:
    RuntimeUnavailableError when the engine does not answer, NotFoundError for a missing
    container or image, ContainerConflictError for a duplicate container name,
    NotRunningError for exec or a pid in a container that is not running,
    ImageConflictError for an image that cannot be removed as asked, ImageUnavailableError for
    an image that cannot be pulled, RuntimeOperationError for anything else refused."""

    async def ping(self) -> str:
        """Return the engine version; raise RuntimeUnavailableError if it does not answer."""
        ...

    # -- containers ----------------------------------------------------------------------------

    async def list_containers(self, pod_uid: str | None = None) -> list[ContainerRecord]:
        """Our containers (all states), optionally of one pod, inspected in full."""
        ...

    async def list_container_summaries(self, pod_uid: str) -> list[ContainerRecord]:
        """One pod's containers from a single cheap list: id, name, labels, state and image
        only (no times, exit code or address) — what a stream needs to find its container."""
        ...

    async def list_pod_uids(self) -> dict[str, set[str]]:
        """Cheap relist: pod uid -> signature of its containers (id:state), no inspect."""
        ...

    async def inspect_container(self, container_id: str) -> ContainerRecord:
        """One container in full; NotFoundError if it does not exist."""
        ...

    async def container_pid(self, container_id: str) -> int:
        """The host pid of the container's first process (to enter its namespaces)."""
        ...

    async def create_container(self, spec: ContainerSpec) -> str:
        """Create (not start); raise ContainerConflictError if the name exists and
        NotFoundError if the image is not present."""
        ...

    async def start_container(self, container_id: str) -> None: ...

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        """SIGTERM (or the image's stop signal), wait ``grace_s``, then SIGKILL; a container
        that is gone or already stopped is not an error."""
        ...

    async def remove_container(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is not an error."""
        ...

    # -- processes in containers ---------------------------------------------------------------

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> ExecSession:
        """Start ``command`` in a running container, its streams attached (stdout and stderr
        apart unless ``tty``)."""
        ...

    def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        timestamps: bool,
        since_s: float | None,
    ) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr merged, in order); following ends when
        the container stops or the consumer goes away. ``tail`` lines (None: all), output of
        the last ``since_s`` seconds (None: all), each line prefixed with its RFC 3339 time
        if ``timestamps``."""
        ...

    # -- images --------------------------------------------------------------------------------

    async def list_images(self) -> list[ImageRecord]: ...

    async def inspect_image(self, ref: str) -> ImageRecord | None:
        """The local image a reference or id names, or None."""
        ...

    async def resolve_image(self, ref: str) -> ResolvedImage:
        """What a local reference names now; NotFoundError if absent."""
        ...

    async def pull_image(
        self,
        ref: str,
        progress: PullProgressCallback | None = None,
        auth: RegistryAuth | None = None,
    ) -> ImageRecord:
        """Pull from its registry, reporting progress on the event loop; raise
        ImageUnavailableError if it cannot be pulled. ``auth`` None leaves the credentials to
        the engine client's own lookup (the Docker SDK: the agent user's
        ``~/.docker/config.json``); ``ANONYMOUS`` sends none."""
        ...

    async def remove_image(self, ref_or_id: str) -> None:
        """Remove a reference (untag), and the image with its last reference. Refused with
        ImageConflictError when that would remove an image a container (in any state) uses, or
        (by id) several references still name it. An absent image is not an error."""
        ...

    async def ensure_image(self, image: str, pull: str) -> ImageRecord:
        """Make ``image`` present per the pull policy (Always, IfNotPresent, Never)."""
        ...

    async def ensure_sandbox_image(self, image: str) -> ImageRecord:
        """Make the sandbox image present: pull it, or build a minimal one locally."""
        ...

    async def image_fs_usage(self) -> dict[str, int]:
        """Bytes of the filesystem holding images: capacityBytes, usedBytes, availableBytes."""
        ...

    async def image_ids_in_use(self) -> dict[str, str]:
        """Image id -> the name of one container using it, over every container on the engine
        (ours or not, in any state): what image GC must never delete."""
        ...

    # -- engine ----------------------------------------------------------------------------

    def events(self) -> AsyncIterator[RuntimeEvent]:
        """Lifecycle events (LIFECYCLE_ACTIONS only) of our containers until the engine
        connection drops."""
        ...

    async def close(self) -> None: ...


async def ensure_image(runtime: Runtime, image: str, pull: str) -> ImageRecord:
    """The pull policy on top of ``inspect_image``/``pull_image``, for every runtime."""
    present = await runtime.inspect_image(image) if pull != PULL_ALWAYS else None
    if present is not None:
        return present
    if pull == PULL_NEVER:
        raise ImageUnavailableError(f"image {image!r} is not present and imagePullPolicy is Never")
    return await runtime.pull_image(image)
