"""``FakeRuntime``: the :class:`~agent.node.runtime.base.Runtime` protocol in memory, for unit
tests of whatever drives containers (pod workers, hooks, probes, image GC, streaming).

It behaves as the Docker adapter does — the same contract suite (``tests/contracts/runtime.py``)
runs against both — and adds what a test needs to drive it:

* time from an injectable clock (``time()``, e.g. a test's fake clock);
* processes as :class:`Script` s: a container's main process and each exec run the script
  registered for their command (``script_command``); an unscripted container runs until it is
  stopped, an unscripted exec fails as "not found" (127);
* ``exit_container`` makes a running container's process end with a code (or an OOM kill);
* images: ``add_image`` (present locally), ``publish_image`` (pullable from the fake registry);
* faults: ``fail(operation, error, times=…)`` for any protocol operation ("create fails",
  "start fails", "pull fails"), ``set_down`` (every call raises RuntimeUnavailableError and
  every ``events()`` stream ends);
* what happened: ``calls`` (operation → count) and ``spec_of`` (the spec a container was made
  from).

Nothing here blocks or sleeps; waiting (a followed log, an exec's exit) is on asyncio events.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.aio.clock import Clock, SystemClock
from agent.errors import (
    AgentError,
    ContainerConflictError,
    ImageConflictError,
    ImageUnavailableError,
    NotFoundError,
    NotRunningError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.runtime.base import (
    LIFECYCLE_ACTIONS,
    ContainerRecord,
    ContainerSpec,
    ContainerState,
    ExecOutputSink,
    ExecSession,
    ImageRecord,
    OutputChannel,
    PullProgress,
    PullProgressCallback,
    RegistryAuth,
    ResolvedImage,
    Runtime,
    RuntimeEvent,
    ensure_image,
    familiar_reference,
    repo_digest_for,
    split_reference,
)
from agent.types import LABEL_NODE, LABEL_POD_UID

FAKE_ENGINE_VERSION = "fake-1.0"
DEFAULT_IMAGE_SIZE_BYTES = 5_000_000
SANDBOX_IMAGE_SIZE_BYTES = 700  # what the locally built pause image weighs
DEFAULT_CAPACITY_BYTES = 100 << 30
STOP_EXIT_CODE = 143  # 128 + SIGTERM: a process that let SIGTERM end it
KILL_EXIT_CODE = 137  # 128 + SIGKILL
NOT_FOUND_EXIT_CODE = 127
SHORT_ID_CHARS = 12
_POD_NETWORK = "10.88.0."
# What ``fail`` can make fail: the protocol's operations, and an exec session's engine calls.
_OPERATIONS = frozenset(
    {name for name in vars(Runtime) if not name.startswith("_") and name != "close"}
    | {"exec_resize", "exec_inspect"}
)


@dataclass(frozen=True, slots=True)
class Script:
    """What a process does in the fake: writes ``stdout`` then ``stderr``, echoes its stdin to
    stdout until stdin's EOF if ``echo_stdin``, then exits with ``exit_code``. For a container's
    main process ``exit_code=None`` means it keeps running (until stopped or
    ``exit_container``)."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = 0
    echo_stdin: bool = False
    # What a container's main process exits with when stopped (SIGTERM): 143 if SIGTERM ends
    # it, 0 for one that traps it and exits cleanly.
    stop_exit_code: int = STOP_EXIT_CODE


RUNS_UNTIL_STOPPED = Script(exit_code=None)


def _not_found_script(command: Sequence[str]) -> Script:
    name = command[0] if command else ""
    return Script(
        stderr=f"exec: {name!r}: executable file not found in $PATH\n".encode(),
        exit_code=NOT_FOUND_EXIT_CODE,
    )


def _new_id(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _rfc3339_nano(ts: float) -> bytes:
    """Docker's log timestamp: RFC 3339 in UTC with nanoseconds."""
    whole = datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%S")
    nanos = round((ts - int(ts)) * 1e9) % 1_000_000_000
    return f"{whole}.{nanos:09d}Z".encode()


@dataclass(slots=True)
class _Container:
    id: str
    spec: ContainerSpec
    image_id: str
    created_at: float
    state: ContainerState = ContainerState.CREATED
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    ip_address: str = ""
    log: list[tuple[float, bytes]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: list[FakeExecSession] = field(default_factory=list)

    def touch(self) -> None:
        """Wake whoever waits on this container (log followers), then arm a new event."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(slots=True)
class _Image:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size_bytes: int
    created_at: float

    def record(self) -> ImageRecord:
        return ImageRecord(
            id=self.id,
            repo_tags=tuple(self.repo_tags),
            repo_digests=tuple(self.repo_digests),
            size_bytes=self.size_bytes,
            created_at=_dt(self.created_at),
        )


@dataclass(frozen=True, slots=True)
class _Published:
    image_id: str
    digest: str
    size_bytes: int
    created_at: float


@dataclass(slots=True)
class _Fault:
    error: AgentError
    times: int | None


class FakeExecSession:
    """An exec in the fake: its output is queued at start (and stdin echoed as it comes, if
    the script says so); it ends when the script is done, or when its container stops."""

    def __init__(
        self,
        runtime: FakeRuntime,
        exec_id: str,
        container: _Container,
        script: Script,
        *,
        stdin: bool,
        tty: bool,
    ) -> None:
        self.id = exec_id
        self.command_stdin = bytearray()  # what the process read from its stdin
        self.resizes: list[tuple[int, int]] = []
        self._runtime = runtime
        self._container = container
        self._script = script
        self._tty = tty
        self._output: asyncio.Queue[tuple[OutputChannel, bytes]] = asyncio.Queue()
        self._sink: ExecOutputSink | None = None
        self._delivering = False  # a delivery to the sink scheduled
        self._paused = False  # the sink asked for no more
        self._exit: int | None = None
        self._done = asyncio.Event()
        self._stdin_open = stdin
        self._ended = False
        self._put(OutputChannel.STDOUT, script.stdout)
        self._put(OutputChannel.STDERR, script.stderr)
        if not (stdin and script.echo_stdin):
            self.finish(script.exit_code if script.exit_code is not None else 0)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def _put(self, channel: OutputChannel, data: bytes) -> None:
        if data:
            self._output.put_nowait((OutputChannel.STDOUT if self._tty else channel, data))
            self._kick()

    def finish(self, code: int) -> None:
        """The process ends with ``code``: its output reaches EOF (idempotent)."""
        if self._done.is_set():
            return
        self._exit = code
        self._output.put_nowait((OutputChannel.STDOUT, b""))
        self._kick()
        self._done.set()

    @property
    def output_paused(self) -> bool:
        """The sink asked for no more output and has not resumed it yet."""
        return self._paused

    def attach_output(self, sink: ExecOutputSink) -> None:
        self._sink = sink
        self.resume_output()

    def resume_output(self) -> None:
        self._paused = False
        self._kick()

    def _kick(self) -> None:
        # Delivered from the loop, as a socket's reads are: never inside the caller's frame.
        if self._sink is not None and not self._paused and not self._delivering:
            self._delivering = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _deliver(self) -> None:
        self._delivering = False
        sink = self._sink
        while sink is not None and not self._output.empty():
            channel, data = self._output.get_nowait()
            if not data:
                self._sink = None
                self._ended = True
                sink.exec_output_ended(None)
                return
            if not sink.exec_output(channel, data):
                self._paused = True
                return  # until resume_output

    async def read(self) -> tuple[OutputChannel, bytes]:
        if self._ended:
            return OutputChannel.STDOUT, b""
        channel, data = await self._output.get()
        self._ended = not data
        return channel, data

    async def write(self, data: bytes) -> None:
        if not self._stdin_open:
            raise RuntimeOperationError(f"exec {self.id[:SHORT_ID_CHARS]}: stdin is closed")
        self.command_stdin += data
        if self._script.echo_stdin and not self._done.is_set():
            self._put(OutputChannel.STDOUT, bytes(data))

    async def close_stdin(self) -> None:
        self._stdin_open = False
        if self._script.echo_stdin:
            self.finish(self._script.exit_code if self._script.exit_code is not None else 0)

    async def resize(self, cols: int, rows: int) -> None:
        self._runtime._enter("exec_resize")
        self.resizes.append((cols, rows))

    async def exit_code(self, wait_s: float) -> int | None:
        self._runtime._enter("exec_inspect")
        try:
            async with asyncio.timeout(wait_s):
                await self._done.wait()
        except TimeoutError:
            return None
        return self._exit

    async def close(self) -> None:
        self._stdin_open = False


class FakeRuntime:
    """In-memory runtime; see the module docstring for what a test can do with it."""

    def __init__(
        self,
        node_name: str = "fake-node",
        *,
        clock: Clock | None = None,
        process_pid: int | None = None,
        capacity_bytes: int = DEFAULT_CAPACITY_BYTES,
    ) -> None:
        self.node_name = node_name
        self.clock: Clock = clock or SystemClock()
        # Containers "run" in the test's own namespaces: a port-forward through the fake
        # reaches the test process's loopback.
        self.process_pid = process_pid if process_pid is not None else os.getpid()
        self.capacity_bytes = capacity_bytes
        self.calls: Counter[str] = Counter()
        self.pull_auths: list[RegistryAuth | None] = []  # what each pull_image call was given
        self.down = False
        self._containers: dict[str, _Container] = {}
        self._images: dict[str, _Image] = {}
        self._registry: dict[str, _Published] = {}
        self._scripts: dict[tuple[str, ...], Script] = {}
        self._faults: dict[str, list[_Fault]] = {}
        self._subscribers: set[asyncio.Queue[RuntimeEvent | None]] = set()
        self._serial = itertools.count(1)
        self._ips = itertools.count(2)

    # -- test controls -------------------------------------------------------------------------

    def script_command(self, command: Sequence[str], script: Script) -> None:
        """What a process with this exact command line (entrypoint + cmd for a container's
        main process) does, in containers and in execs."""
        self._scripts[tuple(command)] = script

    def fail(self, operation: str, error: AgentError, *, times: int | None = 1) -> None:
        """The next ``times`` calls of ``operation`` (a Runtime method name, or
        ``exec_resize`` / ``exec_inspect`` for a session's calls) raise ``error``; None: every
        call until ``clear_faults``."""
        if operation not in _OPERATIONS:
            raise ValueError(f"FakeRuntime has no operation {operation!r}")
        self._faults.setdefault(operation, []).append(_Fault(error, times))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def events_pending(self) -> int:
        """Events emitted that an open ``events()`` stream has not taken yet (a test waits for
        0 before it starts counting what later events cause)."""
        return sum(queue.qsize() for queue in self._subscribers)

    def set_down(self, down: bool = True) -> None:
        """The engine stops (or starts again) answering: while down every call raises
        RuntimeUnavailableError, and every open ``events()`` stream ends now. Containers keep
        their state, as with a live-restore engine."""
        self.down = down
        if down:
            for queue in self._subscribers:
                queue.put_nowait(None)
            for container in self._containers.values():
                container.touch()  # followed logs end too

    def exit_container(self, container_id: str, code: int, *, oom: bool = False) -> None:
        """The container's main process ends with ``code`` (OOM-killed if ``oom``), as if it
        died on its own."""
        container = self._get(container_id)
        if container.state is not ContainerState.RUNNING:
            raise NotRunningError(f"container {container_id[:SHORT_ID_CHARS]} is not running")
        if oom:
            self._emit("oom", container)
        self._exit(container, code, oom=oom)

    def write_log(self, container_id: str, data: bytes) -> None:
        """The container's main process writes ``data`` to its output."""
        container = self._get(container_id)
        container.log.append((self.clock.time(), data))
        container.touch()

    def add_image(
        self,
        ref: str,
        *,
        size_bytes: int = DEFAULT_IMAGE_SIZE_BYTES,
        created_at: float | None = None,
        image_id: str | None = None,
    ) -> ImageRecord:
        """Make ``ref`` a local image (as ``docker import`` or ``docker tag`` of ``image_id``);
        a reference held by another image moves to this one."""
        familiar = familiar_reference(ref)
        if image_id is not None and image_id in self._images:
            image = self._images[image_id]
        else:
            new_id = image_id or "sha256:" + _new_id("image", ref, next(self._serial))
            image = _Image(
                id=new_id,
                repo_tags=[],
                repo_digests=[],
                size_bytes=size_bytes,
                created_at=self.clock.time() if created_at is None else created_at,
            )
            self._images[new_id] = image
        if "@" not in familiar:
            self._untag_everywhere(familiar)
            image.repo_tags.append(familiar)
        return image.record()

    def publish_image(
        self,
        ref: str,
        *,
        size_bytes: int = DEFAULT_IMAGE_SIZE_BYTES,
        created_at: float | None = None,
    ) -> None:
        """Make ``ref`` pullable from the fake registry."""
        familiar = familiar_reference(ref)
        self._registry[familiar] = _Published(
            image_id="sha256:" + _new_id("published", familiar, next(self._serial)),
            digest="sha256:" + _new_id("digest", familiar),
            size_bytes=size_bytes,
            created_at=self.clock.time() if created_at is None else created_at,
        )

    def spec_of(self, container_id: str) -> ContainerSpec:
        return self._get(container_id).spec

    def sessions_of(self, container_id: str) -> list[FakeExecSession]:
        return list(self._get(container_id).sessions)

    # -- plumbing ------------------------------------------------------------------------------

    def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        if self.down:
            raise RuntimeUnavailableError(f"{operation}: docker engine unreachable (fake: down)")
        faults = self._faults.get(operation)
        if not faults:
            return
        fault = faults[0]
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
        raise fault.error

    def _emit(self, action: str, container: _Container) -> None:
        assert action in LIFECYCLE_ACTIONS, action  # the protocol's promise, as Docker's filter
        if container.spec.labels.get(LABEL_NODE) != self.node_name:
            return
        event = RuntimeEvent(
            action=action,
            container_id=container.id,
            pod_uid=container.spec.labels.get(LABEL_POD_UID, ""),
        )
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _find(self, container_id: str) -> _Container | None:
        found = self._containers.get(container_id)
        if found is not None:
            return found
        for container in self._containers.values():
            if container.spec.name == container_id.lstrip("/"):
                return container
        matches = [c for c in self._containers.values() if c.id.startswith(container_id)]
        return matches[0] if container_id and len(matches) == 1 else None

    def _get(self, container_id: str) -> _Container:
        found = self._find(container_id)
        if found is None:
            raise NotFoundError(f"container {container_id[:SHORT_ID_CHARS]}: not found")
        return found

    def _ours(self, pod_uid: str | None) -> list[_Container]:
        mine = [
            c
            for c in self._containers.values()
            if c.spec.labels.get(LABEL_NODE) == self.node_name
            and (pod_uid is None or c.spec.labels.get(LABEL_POD_UID) == pod_uid)
        ]
        return sorted(mine, key=lambda c: c.created_at, reverse=True)  # newest first, as Docker

    def _record(self, c: _Container) -> ContainerRecord:
        return ContainerRecord(
            id=c.id,
            name=c.spec.name,
            labels=dict(c.spec.labels),
            state=c.state,
            created_at=_dt(c.created_at),
            started_at=_dt(c.started_at),
            finished_at=_dt(c.finished_at),
            exit_code=c.exit_code if c.state is ContainerState.EXITED else None,
            oom_killed=c.oom_killed,
            error=c.error,
            image=c.spec.image,
            image_id=c.image_id,
            ip_address=c.ip_address,
        )

    @staticmethod
    def _summary(record: ContainerRecord) -> ContainerRecord:
        """What Docker's list says without an inspect."""
        return ContainerRecord(
            id=record.id,
            name=record.name,
            labels=record.labels,
            state=record.state,
            image=record.image,
            image_id=record.image_id,
        )

    def _command(self, spec: ContainerSpec) -> tuple[str, ...]:
        return (*(spec.entrypoint or ()), *(spec.cmd or ()))

    def _exit(self, container: _Container, code: int, *, oom: bool = False) -> None:
        container.state = ContainerState.EXITED
        container.exit_code = code
        container.oom_killed = oom
        container.finished_at = self.clock.time()
        container.ip_address = ""
        for session in container.sessions:
            session.finish(KILL_EXIT_CODE)
        container.touch()
        self._emit("die", container)

    # -- Runtime: engine -----------------------------------------------------------------------

    async def ping(self) -> str:
        self._enter("ping")
        return FAKE_ENGINE_VERSION

    def events(self) -> AsyncIterator[RuntimeEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[RuntimeEvent]:
        self._enter("events")
        queue: asyncio.Queue[RuntimeEvent | None] = asyncio.Queue()
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(queue)

    async def close(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)

    # -- Runtime: containers -------------------------------------------------------------------

    async def list_containers(self, pod_uid: str | None = None) -> list[ContainerRecord]:
        self._enter("list_containers")
        return [self._record(c) for c in self._ours(pod_uid)]

    async def list_container_summaries(self, pod_uid: str) -> list[ContainerRecord]:
        self._enter("list_container_summaries")
        return [self._summary(self._record(c)) for c in self._ours(pod_uid)]

    async def list_pod_uids(self) -> dict[str, set[str]]:
        self._enter("list_pod_uids")
        pods: dict[str, set[str]] = {}
        for c in self._ours(None):
            uid = c.spec.labels.get(LABEL_POD_UID, "")
            pods.setdefault(uid, set()).add(f"{c.id}:{c.state.value}")
        return pods

    async def inspect_container(self, container_id: str) -> ContainerRecord:
        self._enter("inspect_container")
        return self._record(self._get(container_id))

    async def container_pid(self, container_id: str) -> int:
        self._enter("container_pid")
        container = self._get(container_id)
        if container.state is not ContainerState.RUNNING:
            raise NotRunningError(f"container {container_id[:SHORT_ID_CHARS]} is not running")
        return self.process_pid

    async def create_container(self, spec: ContainerSpec) -> str:
        self._enter("create_container")
        if any(c.spec.name == spec.name for c in self._containers.values()):
            raise ContainerConflictError(
                f"create container {spec.name}: the name {spec.name!r} is already in use"
            )
        image = self._image(spec.image)
        if image is None:
            raise NotFoundError(f"create container {spec.name}: no such image {spec.image!r}")
        if spec.network_of is not None and self._find(spec.network_of) is None:
            raise NotFoundError(f"create container {spec.name}: no container {spec.network_of}")
        container = _Container(
            id=_new_id("container", spec.name, next(self._serial)),
            spec=spec,
            image_id=image.id,
            created_at=self.clock.time(),
        )
        self._containers[container.id] = container
        self._emit("create", container)
        return container.id

    async def start_container(self, container_id: str) -> None:
        self._enter("start_container")
        container = self._get(container_id)
        if container.state is ContainerState.RUNNING:
            return
        spec = container.spec
        if spec.network_of is not None:
            sandbox = self._find(spec.network_of)
            if sandbox is None or sandbox.state is not ContainerState.RUNNING:
                raise RuntimeOperationError(
                    f"start container {container_id[:SHORT_ID_CHARS]}: cannot join the "
                    f"network of a container that is not running"
                )
        container.state = ContainerState.RUNNING
        container.started_at = self.clock.time()
        container.finished_at = None
        container.exit_code = None
        container.oom_killed = False
        if spec.network_of is None and not spec.host_network:
            container.ip_address = f"{_POD_NETWORK}{next(self._ips)}"
        self._emit("start", container)
        script = self._scripts.get(self._command(spec), RUNS_UNTIL_STOPPED)
        now = self.clock.time()
        for data in (script.stdout, script.stderr):
            if data:
                container.log.append((now, data))
        container.touch()
        if script.exit_code is not None:
            self._exit(container, script.exit_code)

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        self._enter("stop_container")
        container = self._find(container_id)
        if container is None or container.state is not ContainerState.RUNNING:
            return
        self._emit("kill", container)
        script = self._scripts.get(self._command(container.spec), RUNS_UNTIL_STOPPED)
        self._exit(container, script.stop_exit_code)
        self._emit("stop", container)

    async def remove_container(self, container_id: str) -> None:
        self._enter("remove_container")
        container = self._find(container_id)
        if container is None:
            return
        if container.state is ContainerState.RUNNING:
            self._emit("kill", container)
            self._exit(container, KILL_EXIT_CODE)
        del self._containers[container.id]
        container.touch()
        self._emit("destroy", container)

    # -- Runtime: processes in containers ------------------------------------------------------

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> FakeExecSession:
        self._enter("exec_start")
        container = self._get(container_id)
        if container.state is not ContainerState.RUNNING:
            raise NotRunningError(
                f"exec in {container_id[:SHORT_ID_CHARS]}: container is not running"
            )
        script = self._scripts.get(tuple(command)) or _not_found_script(command)
        session = FakeExecSession(
            self,
            _new_id("exec", container.id, next(self._serial)),
            container,
            script,
            stdin=stdin,
            tty=tty,
        )
        container.sessions.append(session)
        return session

    def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        timestamps: bool,
        since_s: float | None,
    ) -> AsyncIterator[bytes]:
        return self._logs(
            container_id, follow=follow, tail=tail, timestamps=timestamps, since_s=since_s
        )

    async def _logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        timestamps: bool,
        since_s: float | None,
    ) -> AsyncIterator[bytes]:
        self._enter("logs")
        container = self._get(container_id)
        since = None if since_s is None else self.clock.time() - since_s
        lines = [
            (ts, line)
            for ts, data in container.log
            if since is None or ts >= since
            for line in data.splitlines(keepends=True)
        ]
        if tail is not None:
            lines = lines[len(lines) - tail :] if tail else []
        seen = len(container.log)
        if lines:
            yield self._format(lines, timestamps)
        while follow:
            if len(container.log) == seen:
                gone = container.id not in self._containers or self.down
                if gone or container.state is not ContainerState.RUNNING:
                    return
                await container.changed.wait()
            fresh = container.log[seen:]
            seen += len(fresh)
            if fresh:
                yield self._format(
                    ((ts, line) for ts, data in fresh for line in data.splitlines(True)),
                    timestamps,
                )

    @staticmethod
    def _format(lines: Iterable[tuple[float, bytes]], timestamps: bool) -> bytes:
        if not timestamps:
            return b"".join(line for _, line in lines)
        return b"".join(_rfc3339_nano(ts) + b" " + line for ts, line in lines)

    # -- Runtime: images -----------------------------------------------------------------------

    def _image(self, ref: str) -> _Image | None:
        if ref in self._images:
            return self._images[ref]
        familiar = familiar_reference(ref)
        for image in self._images.values():
            if familiar in image.repo_tags or familiar in image.repo_digests:
                return image
        hex_id = ref.removeprefix("sha256:")
        if len(hex_id) >= SHORT_ID_CHARS and all(ch in "0123456789abcdef" for ch in hex_id):
            matches = [i for i in self._images.values() if i.id[7:].startswith(hex_id)]
            if len(matches) == 1:
                return matches[0]
        return None

    def _untag_everywhere(self, familiar: str) -> None:
        for image in self._images.values():
            if familiar in image.repo_tags:
                image.repo_tags.remove(familiar)

    async def list_images(self) -> list[ImageRecord]:
        self._enter("list_images")
        return [image.record() for image in self._images.values()]

    async def inspect_image(self, ref: str) -> ImageRecord | None:
        self._enter("inspect_image")
        image = self._image(ref)
        return None if image is None else image.record()

    async def resolve_image(self, ref: str) -> ResolvedImage:
        self._enter("resolve_image")
        image = self._image(ref)
        if image is None:
            raise NotFoundError(f"image {ref!r} is not present")
        return ResolvedImage(
            reference=ref,
            image_id=image.id,
            repo_digest=repo_digest_for(ref, tuple(image.repo_digests)),
        )

    async def pull_image(
        self,
        ref: str,
        progress: PullProgressCallback | None = None,
        auth: RegistryAuth | None = None,
    ) -> ImageRecord:
        self.pull_auths.append(auth)
        try:
            self._enter("pull_image")
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            if isinstance(exc, ImageUnavailableError):
                raise
            raise ImageUnavailableError(f"image {ref!r} could not be pulled: {exc}") from exc
        familiar = familiar_reference(ref)
        published = self._registry.get(familiar)
        if published is None:
            raise ImageUnavailableError(
                f"image {ref!r} could not be pulled: manifest unknown (fake registry)"
            )
        repo = split_reference(familiar)[0]
        layer = published.digest[7:19]
        reports = (
            PullProgress("", f"Pulling from {repo}"),
            PullProgress(layer, "Downloading", 0, published.size_bytes),
            PullProgress(layer, "Downloading", published.size_bytes, published.size_bytes),
            PullProgress(layer, "Pull complete"),
            PullProgress("", f"Digest: {published.digest}"),
            PullProgress("", f"Status: Downloaded newer image for {familiar}"),
        )
        image = self._images.get(published.image_id)
        if image is None:
            image = _Image(
                id=published.image_id,
                repo_tags=[],
                repo_digests=[],
                size_bytes=published.size_bytes,
                created_at=published.created_at,
            )
            self._images[image.id] = image
        repo_digest = f"{repo}@{published.digest}"
        if repo_digest not in image.repo_digests:
            image.repo_digests.append(repo_digest)
        if "@" not in familiar and familiar not in image.repo_tags:
            self._untag_everywhere(familiar)
            image.repo_tags.append(familiar)
        if progress is not None:
            for report in reports:
                progress(report)
        return image.record()

    async def remove_image(self, ref_or_id: str) -> None:
        self._enter("remove_image")
        image = self._image(ref_or_id)
        if image is None:
            return
        familiar = familiar_reference(ref_or_id)
        by_reference = familiar in image.repo_tags or familiar in image.repo_digests
        if by_reference and len(image.repo_tags) + (familiar in image.repo_digests) > 1:
            if familiar in image.repo_tags:
                image.repo_tags.remove(familiar)
            else:
                image.repo_digests.remove(familiar)
            return
        if not by_reference and len(image.repo_tags) > 1:
            raise ImageConflictError(
                f"remove image {ref_or_id}: image is referenced in multiple repositories"
            )
        users = [c for c in self._containers.values() if c.image_id == image.id]
        if users:
            raise ImageConflictError(
                f"remove image {ref_or_id}: container {users[0].id[:SHORT_ID_CHARS]} is using "
                f"image {image.id[7:19]}"
            )
        del self._images[image.id]

    async def ensure_image(self, image: str, pull: str) -> ImageRecord:
        self._enter("ensure_image")
        return await ensure_image(self, image, pull)

    async def ensure_sandbox_image(self, image: str) -> ImageRecord:
        self._enter("ensure_sandbox_image")
        present = await self.inspect_image(image)
        if present is not None:
            return present
        try:
            return await self.pull_image(image)
        except ImageUnavailableError:
            pass
        # Built locally, as the Docker adapter does when the image cannot be pulled.
        return self.add_image(image, size_bytes=SANDBOX_IMAGE_SIZE_BYTES)

    async def image_ids_in_use(self) -> dict[str, str]:
        self._enter("image_ids_in_use")
        found: dict[str, str] = {}
        for container in sorted(self._containers.values(), key=lambda c: c.created_at):
            found.setdefault(container.image_id, container.spec.name)
        return found

    async def image_fs_usage(self) -> dict[str, int]:
        self._enter("image_fs_usage")
        used = sum(image.size_bytes for image in self._images.values())
        return {
            "capacityBytes": self.capacity_bytes,
            "usedBytes": used,
            "availableBytes": max(0, self.capacity_bytes - used),
        }


if TYPE_CHECKING:
    # The fake satisfies the protocols statically (mypy), not only in the contract suite.
    def _is_runtime(fake: FakeRuntime) -> Runtime:
        return fake

    def _is_session(session: FakeExecSession) -> ExecSession:
        return session
