"""The Docker Engine implementation of :class:`~agent.node.runtime.base.Runtime`.

Owns the docker SDK (the only module besides its private helpers that may import it, an
import-linter contract says so): every SDK call runs through the thread bridge, every SDK
exception is translated here into our error tree, and so is a malformed answer: each call's
answer is parsed inside the translated call (``_call``'s ``parse``), so a missing key or a bad
time becomes a RuntimeOperationError naming the call, never a foreign exception that would end
a worker and the daemon. Docker's multiplexed exec stream is taken apart here. Only containers
labelled with this agent's node name are ever listed, so agents sharing one engine never touch
each other's containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import docker
import docker.errors
import docker.types
import psutil
import requests.exceptions

from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
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
    ImageRecord,
    OutputChannel,
    PullProgress,
    PullProgressCallback,
    RegistryAuth,
    ResolvedImage,
    RuntimeEvent,
    ensure_image,
    repo_digest_for,
    split_reference,
)
from agent.node.runtime.dockerstream import DockerStreamDemux
from agent.node.runtime.engine import Answer, EngineClient, judge, unix_socket_path
from agent.node.runtime.pause import PAUSE_PATH, pause_rootfs_tar
from agent.types import LABEL_NODE, LABEL_POD_UID

log = logging.getLogger(__name__)
T = TypeVar("T")

_ZERO_TIME_PREFIX = "0001-01-01"
_NO_REFERENCE = ("<none>:<none>", "<none>@<none>")
EXEC_READ_CHUNK_BYTES = 1 << 20
_EXEC_ID = re.compile(r"[0-9a-f]{64}")  # what Docker names an exec: it goes into a URL path
_REFERENCE_SAFE = "/:@"  # an image reference's separators stay literal in its URL path
EXIT_CODE_FIRST_POLL_S = 0.001
EXIT_CODE_MAX_POLL_S = 0.02
STOP_GRACE_MAX_S = 2**31 - 1  # seconds (68 years): a longer stop timeout overflows the SDK
# How long the engine's data root (``docker info``'s DockerRootDir, ~15 ms of the engine's
# time per ask) is trusted before asking again: an engine restarted with another --data-root
# is measured right within this many seconds.
DATA_ROOT_TTL_S = 60.0


def _parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    # Docker prints RFC 3339 with nanoseconds; fromisoformat takes at most microseconds.
    head, _, tail = value.partition(".")
    if tail:
        digits = "".join(ch for ch in tail if ch.isdigit())
        zone = tail[len(digits) :]
        value = f"{head}.{digits[:6]}{zone}"
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _translate(
    exc: Exception, what: str, conflict: type[AgentError] = ContainerConflictError
) -> AgentError:
    """Our error for an SDK exception; ``conflict`` is what a 409 means for this call (a
    duplicate name on create, a stopped container for exec, an image in use on removal)."""
    if isinstance(exc, docker.errors.NotFound):
        return NotFoundError(f"{what}: not found")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code or 500
        message = exc.explanation or str(exc)
        if status == 409:
            return conflict(f"{what}: {message}")
        return RuntimeOperationError(f"{what}: docker answered {status}: {message}")
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return RuntimeUnavailableError(f"{what}: docker engine unreachable: {exc}")
    if isinstance(exc, docker.errors.DockerException):
        return RuntimeUnavailableError(f"{what}: {exc}")
    return RuntimeOperationError(f"{what}: {type(exc).__name__}: {exc}")


def record_from_summary(summary: dict[str, Any]) -> ContainerRecord:
    """A record from Docker's container list alone: id, name, labels, state and image; no
    times, exit code or address (those need an inspect)."""
    try:
        status = ContainerState(summary.get("State", "dead"))
    except ValueError:
        status = ContainerState.DEAD
    names = summary.get("Names") or [""]
    return ContainerRecord(
        id=summary["Id"],
        name=str(names[0]).lstrip("/"),
        labels=dict(summary.get("Labels") or {}),
        state=status,
        image=summary.get("Image") or "",
        image_id=summary.get("ImageID") or "",
    )


def record_from_inspect(data: dict[str, Any]) -> ContainerRecord:
    state = data.get("State") or {}
    config = data.get("Config") or {}
    network = data.get("NetworkSettings") or {}
    ip = network.get("IPAddress") or ""
    if not ip:
        for net in (network.get("Networks") or {}).values():
            if net and net.get("IPAddress"):
                ip = net["IPAddress"]
                break
    try:
        status = ContainerState(state.get("Status", "dead"))
    except ValueError:
        status = ContainerState.DEAD
    return ContainerRecord(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=status,
        created_at=_parse_time(data.get("Created")),
        started_at=_parse_time(state.get("StartedAt")),
        finished_at=_parse_time(state.get("FinishedAt")),
        exit_code=state.get("ExitCode") if status in (ContainerState.EXITED,) else None,
        oom_killed=bool(state.get("OOMKilled")),
        error=state.get("Error") or "",
        image=config.get("Image") or "",
        image_id=data.get("Image") or "",
        ip_address=ip,
    )


class DockerRuntime:
    """Runtime on the Docker Engine via the docker SDK."""

    def __init__(
        self,
        bridge: ThreadBridge,
        node_name: str,
        *,
        docker_host: str | None = None,
        timeout_s: float = 60.0,
        pool_size: int = 8,
        lean_exec: bool = True,
    ) -> None:
        """``lean_exec=False`` keeps exec on the SDK even on a Unix socket (the contract
        suite runs that path too, as other ``docker_host`` schemes take it)."""
        self._bridge = bridge
        self._node_filter = f"{LABEL_NODE}={node_name}"
        self._docker_host = docker_host
        self._timeout_s = timeout_s
        self._pool_size = pool_size
        self._client: docker.DockerClient | None = None
        # Exec's calls on the loop when the engine is on a Unix socket (engine.py says why).
        path = unix_socket_path(docker_host, os.environ.get("DOCKER_HOST")) if lean_exec else None
        self._engine = EngineClient(path, timeout_s=timeout_s) if path else None
        self._data_root: tuple[str, float] | None = None  # (DockerRootDir, monotonic expiry)
        self.call_errors = 0

    def _api(self) -> docker.APIClient:
        if self._client is None:
            try:
                if self._docker_host:
                    self._client = docker.DockerClient(
                        base_url=self._docker_host,
                        timeout=int(self._timeout_s),
                        max_pool_size=self._pool_size,
                    )
                else:
                    self._client = docker.DockerClient.from_env(
                        timeout=int(self._timeout_s), max_pool_size=self._pool_size
                    )
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailableError(f"cannot set up docker client: {exc}") from exc
        return self._client.api

    async def _call(
        self,
        what: str,
        func: Any,
        *args: Any,
        conflict: type[AgentError] = ContainerConflictError,
        parse: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``func(api, *args, **kwargs)`` on the bridge, its answer through ``parse`` there too;
        every failure of either comes out as one of our errors naming ``what``."""

        def invoke() -> Any:
            answer = func(self._api(), *args, **kwargs)
            if parse is None:
                return answer
            try:
                return parse(answer)
            except Exception as exc:
                raise RuntimeOperationError(
                    f"{what}: malformed docker answer: {type(exc).__name__}: {exc}"
                ) from exc

        try:
            return await self._bridge.run(invoke)
        except AgentError:
            self.call_errors += 1
            raise
        except Exception as exc:
            translated = _translate(exc, what, conflict)
            if not isinstance(translated, NotFoundError):
                self.call_errors += 1
            raise translated from exc

    async def ping(self) -> str:
        version: str = await self._call(
            "ping",
            lambda api: api.version(),
            parse=lambda info: str(info.get("Version", "unknown")),
        )
        return version

    async def image_fs_usage(self) -> dict[str, int]:
        """The data root's filesystem (psutil: statvfs). The data root itself is asked of the
        engine at most every DATA_ROOT_TTL_S: GC measures before and after each run and the
        disk loop every few seconds, and ``docker info`` costs the engine far more than the
        statvfs."""

        def usage(api: docker.APIClient) -> dict[str, int]:
            now = time.monotonic()
            if self._data_root is None or now >= self._data_root[1]:
                root = api.info().get("DockerRootDir") or "/var/lib/docker"
                self._data_root = (str(root), now + DATA_ROOT_TTL_S)
            disk = psutil.disk_usage(self._data_root[0])
            return {
                "capacityBytes": disk.total,
                "usedBytes": disk.used,
                "availableBytes": disk.free,
            }

        result: dict[str, int] = await self._call("image filesystem usage", usage)
        return result

    async def image_ids_in_use(self) -> dict[str, str]:
        def users(api: docker.APIClient) -> dict[str, str]:
            found: dict[str, str] = {}
            for summary in api.containers(all=True):  # every container, not only ours
                names = summary.get("Names") or [summary.get("Id", "")[:12]]
                image_id = summary.get("ImageID") or ""
                if image_id:
                    found.setdefault(image_id, str(names[0]).lstrip("/"))
            return found

        result: dict[str, str] = await self._call("list containers' images", users)
        return result

    async def list_containers(self, pod_uid: str | None = None) -> list[ContainerRecord]:
        labels = [self._node_filter]
        if pod_uid is not None:
            labels.append(f"{LABEL_POD_UID}={pod_uid}")

        def list_and_inspect(api: docker.APIClient) -> list[dict[str, Any]]:
            found = []
            for summary in api.containers(all=True, filters={"label": labels}):
                try:
                    found.append(api.inspect_container(summary["Id"]))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect
            return found

        records: list[ContainerRecord] = await self._call(
            "list containers", list_and_inspect, parse=_each(record_from_inspect)
        )
        return records

    async def list_container_summaries(self, pod_uid: str) -> list[ContainerRecord]:
        """One pod's containers from a single list call (no inspect per container): what a
        stream needs to find its container, at a third of the cost for a two-container pod."""
        labels = [self._node_filter, f"{LABEL_POD_UID}={pod_uid}"]
        records: list[ContainerRecord] = await self._call(
            "list containers",
            lambda api: api.containers(all=True, filters={"label": labels}),
            parse=_each(record_from_summary),
        )
        return records

    async def list_pod_uids(self) -> dict[str, set[str]]:
        pods: dict[str, set[str]] = await self._call(
            "relist",
            lambda api: api.containers(all=True, filters={"label": [self._node_filter]}),
            parse=_pod_uids,
        )
        return pods

    async def inspect_container(self, container_id: str) -> ContainerRecord:
        record: ContainerRecord = await self._call(
            f"inspect container {container_id[:12]}",
            lambda api: api.inspect_container(container_id),
            parse=record_from_inspect,
        )
        return record

    # -- images --------------------------------------------------------------------------------

    async def list_images(self) -> list[ImageRecord]:
        images: list[ImageRecord] = await self._call(
            "list images", lambda api: api.images(), parse=_each(image_from_summary)
        )
        return images

    async def inspect_image(self, ref: str) -> ImageRecord | None:
        try:
            image: ImageRecord = await self._call(
                f"inspect image {ref}", lambda api: api.inspect_image(ref), parse=image_from_inspect
            )
        except NotFoundError:
            return None
        return image

    async def resolve_image(self, ref: str) -> ResolvedImage:
        found = await self.inspect_image(ref)
        if found is None:
            raise NotFoundError(f"image {ref!r} is not present")
        return ResolvedImage(
            reference=ref, image_id=found.id, repo_digest=repo_digest_for(ref, found.repo_digests)
        )

    async def pull_image(
        self,
        ref: str,
        progress: PullProgressCallback | None = None,
        auth: RegistryAuth | None = None,
    ) -> ImageRecord:
        repo, tag = split_reference(ref)
        auth_config = _auth_config(auth)

        def open_pull() -> Iterator[dict[str, Any]]:
            return iter(
                self._api().pull(
                    repo, tag=tag or None, stream=True, decode=True, auth_config=auth_config
                )
            )

        try:
            async for message in self._bridge.stream(open_pull, name="docker-pull"):
                if message.get("error"):
                    raise ImageUnavailableError(
                        f"image {ref!r} could not be pulled: {message['error']}"
                    )
                if progress is not None:
                    progress(_pull_progress(message))
        except AgentError:
            raise
        except Exception as exc:
            translated = _translate(exc, f"pull {ref}")
            if isinstance(translated, RuntimeUnavailableError):
                raise translated from exc
            raise ImageUnavailableError(f"image {ref!r} could not be pulled: {translated}") from exc
        found = await self.inspect_image(ref)
        if found is None:
            raise ImageUnavailableError(f"image {ref!r} is still absent after pulling")
        return found

    async def remove_image(self, ref_or_id: str) -> None:
        """Never forced; absent is not an error. On a Unix socket the call goes over the lean
        client on the loop (GC deletes many images at once: a bridge hop plus the SDK's
        machinery per image was most of a run's time, BENCHMARKS.md "image GC")."""
        what = f"remove image {ref_or_id}"
        try:
            if self._engine is not None:
                await self._engine_call(
                    self._engine,
                    what,
                    "DELETE",
                    f"/images/{quote(ref_or_id, safe=_REFERENCE_SAFE)}?force=0&noprune=0",
                    conflict=ImageConflictError,
                )
                return
            await self._call(
                what,
                lambda api: api.remove_image(ref_or_id, force=False, noprune=False),
                conflict=ImageConflictError,
            )
        except NotFoundError:
            return

    async def ensure_image(self, image: str, pull: str) -> ImageRecord:
        return await ensure_image(self, image, pull)

    async def ensure_sandbox_image(self, image: str) -> ImageRecord:
        present = await self.inspect_image(image)
        if present is not None:
            return present
        try:
            return await self.pull_image(image)
        except ImageUnavailableError as exc:
            log.info(
                "sandbox image cannot be pulled, building it locally",
                extra=kv(image=image, reason=str(exc)),
            )
        repo, tag = split_reference(image)
        tarball = pause_rootfs_tar()
        await self._call(
            f"import sandbox image {image}",
            lambda api: api.import_image_from_data(
                tarball,
                repository=repo,
                tag=tag,
                changes=[f'ENTRYPOINT ["{PAUSE_PATH}"]'],
            ),
        )
        built = await self.inspect_image(image)
        if built is None:
            raise ImageUnavailableError(f"sandbox image {image!r} absent after local build")
        log.info("built sandbox image locally", extra=kv(image=image, id=built.id[:19]))
        return built

    # -- containers ------------------------------------------------------------------------

    async def create_container(self, spec: ContainerSpec) -> str:
        def create(api: docker.APIClient) -> str:
            host_config = api.create_host_config(**_host_config_kwargs(spec))
            result = api.create_container(
                image=spec.image,
                name=spec.name,
                labels=dict(spec.labels),
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                command=list(spec.cmd) if spec.cmd is not None else None,
                environment=dict(spec.env),
                working_dir=spec.working_dir,
                hostname=spec.hostname,
                ports=[f"{p.container_port}/{p.protocol.lower()}" for p in spec.port_bindings]
                or None,
                host_config=host_config,
            )
            return str(result["Id"])

        created: str = await self._call(f"create container {spec.name}", create)
        return created

    async def start_container(self, container_id: str) -> None:
        await self._call(
            f"start container {container_id[:12]}", lambda api: api.start(container_id)
        )

    async def stop_container(self, container_id: str, grace_s: int) -> None:
        # The SDK extends its HTTP timeout by the grace period itself: past some 292 years
        # (2**63 - 1 is a valid grace period) that is an OverflowError, and Docker's own
        # time.Duration overflows there too. Bounded, it still means "as long as it takes".
        grace_s = min(grace_s, STOP_GRACE_MAX_S)
        try:
            await self._call(
                f"stop container {container_id[:12]}",
                lambda api: api.stop(container_id, timeout=grace_s),
            )
        except NotFoundError:
            return

    async def remove_container(self, container_id: str) -> None:
        try:
            await self._call(
                f"remove container {container_id[:12]}",
                lambda api: api.remove_container(container_id, force=True, v=True),
            )
        except NotFoundError:
            return
        except RuntimeOperationError as exc:
            if "already in progress" in str(exc):
                return
            raise

    async def events(self) -> AsyncIterator[RuntimeEvent]:
        def open_stream() -> Iterator[dict[str, Any]]:
            api = self._api()
            return iter(
                api.events(
                    decode=True,
                    # Docker filters the actions: the execs of probes and hooks never
                    # cross into the agent (nor cost dockerd an encode).
                    filters={
                        "type": "container",
                        "label": [self._node_filter],
                        "event": sorted(LIFECYCLE_ACTIONS),
                    },
                )
            )

        try:
            async for event in self._bridge.stream(open_stream, name="docker-events"):
                actor = event.get("Actor") or {}
                attributes = actor.get("Attributes") or {}
                action = str(event.get("Action") or event.get("status") or "")
                yield RuntimeEvent(
                    action=action.split(":", 1)[0],
                    container_id=str(actor.get("ID") or event.get("id") or ""),
                    pod_uid=str(attributes.get(LABEL_POD_UID, "")),
                )
        except AgentError:
            raise
        except Exception as exc:
            raise _translate(exc, "docker events") from exc

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()
        client, self._client = self._client, None
        if client is not None:
            await self._bridge.run(client.close)

    # -- processes in containers -----------------------------------------------------------

    async def exec_start(
        self, container_id: str, command: Sequence[str], *, stdin: bool, tty: bool
    ) -> DockerExecSession:
        """Create and start an exec on the hijacked attach socket (set non-blocking, for the
        event loop): two Docker calls, as ``docker exec``."""
        if self._engine is not None:
            return await self._lean_exec_start(self._engine, container_id, command, stdin, tty)

        def start(api: docker.APIClient) -> tuple[str, socket.socket]:
            created = api.exec_create(
                container_id, list(command), stdin=stdin, stdout=True, stderr=True, tty=tty
            )
            exec_id = str(created["Id"])
            handle = api.exec_start(exec_id, tty=tty, socket=True)
            raw = getattr(handle, "_sock", handle)
            if not isinstance(raw, socket.socket):
                raise RuntimeOperationError(f"exec {exec_id[:12]}: no raw attach socket")
            # Our own descriptor: the SDK's wrapper may close its one when collected.
            own = socket.socket(fileno=os.dup(raw.fileno()))
            own.setblocking(False)
            with contextlib.suppress(Exception):
                handle.close()
            return exec_id, own

        exec_id, sock = await self._call(
            f"exec in {container_id[:12]}", start, conflict=NotRunningError
        )
        return DockerExecSession(self, exec_id, sock, tty=tty)

    async def _engine_call(
        self,
        engine: EngineClient,
        what: str,
        method: str,
        target: str,
        body: Any = None,
        *,
        conflict: type[AgentError] = RuntimeOperationError,
    ) -> Any:
        """One lean Engine call judged by its status; failures counted as ``_call`` does."""
        try:
            return judge(what, await engine.call(what, method, target, body), conflict=conflict)
        except NotFoundError:
            raise
        except AgentError:
            self.call_errors += 1
            raise

    async def _lean_exec_start(
        self,
        engine: EngineClient,
        container_id: str,
        command: Sequence[str],
        stdin: bool,
        tty: bool,
    ) -> DockerExecSession:
        what = f"exec in {container_id[:12]}"
        created = await self._engine_call(
            engine,
            what,
            "POST",
            f"/containers/{quote(container_id, safe='')}/exec",
            {
                "AttachStdin": stdin,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": tty,
                "Cmd": list(command),
            },
            conflict=NotRunningError,
        )
        exec_id = created.get("Id") if isinstance(created, dict) else None
        if not isinstance(exec_id, str) or not _EXEC_ID.fullmatch(exec_id):
            self.call_errors += 1
            raise RuntimeOperationError(f"{what}: malformed docker answer: no exec id")
        try:
            status, body, sock, rest = await engine.upgrade(
                what, f"/exec/{exec_id}/start", {"Detach": False, "Tty": tty}
            )
            if status not in (101, 200):
                judge(what, Answer(status, {}, body), conflict=NotRunningError)
                raise RuntimeOperationError(f"{what}: docker answered {status}")
        except NotFoundError:
            raise
        except AgentError:
            self.call_errors += 1
            raise
        return DockerExecSession(self, exec_id, sock, tty=tty, initial=rest)

    async def _exec_resize(self, exec_id: str, cols: int, rows: int) -> None:
        if self._engine is not None:
            await self._lean_exec_resize(self._engine, exec_id, cols, rows)
            return
        try:
            await self._call(
                f"resize exec {exec_id[:12]}",
                lambda api: api.exec_resize(exec_id, height=rows, width=cols),
            )
        except NotFoundError:
            return  # Docker forgets an exec soon after its process ends
        except RuntimeOperationError:
            # Docker answers 500 once the process has ended ("cannot resize a stopped
            # container"); ask whether it still runs rather than trust the wording.
            try:
                running = await self._call(
                    f"inspect exec {exec_id[:12]}",
                    lambda api: api.exec_inspect(exec_id),
                    parse=lambda data: bool(data.get("Running")),
                )
            except NotFoundError:
                return
            if running:
                raise

    async def _lean_exec_resize(
        self, engine: EngineClient, exec_id: str, cols: int, rows: int
    ) -> None:
        what = f"resize exec {exec_id[:12]}"
        try:
            await self._engine_call(
                engine, what, "POST", f"/exec/{exec_id}/resize?h={int(rows)}&w={int(cols)}"
            )
        except NotFoundError:
            return  # Docker forgets an exec soon after its process ends
        except RuntimeOperationError:
            # As on the SDK path: a 500 once the process has ended; ask whether it runs.
            try:
                data = await self._engine_call(
                    engine, f"inspect exec {exec_id[:12]}", "GET", f"/exec/{exec_id}/json"
                )
            except NotFoundError:
                return
            if isinstance(data, dict) and data.get("Running"):
                raise

    async def _exec_exit_code(self, exec_id: str) -> int | None:
        """The exit code once the process ended (None if Docker does not know it yet)."""
        if self._engine is not None:
            what = f"inspect exec {exec_id[:12]}"
            data = await self._engine_call(self._engine, what, "GET", f"/exec/{exec_id}/json")
            if not isinstance(data, dict):
                self.call_errors += 1
                raise RuntimeOperationError(f"{what}: malformed docker answer: not an object")
            return _exit_code(data)
        code: int | None = await self._call(
            f"inspect exec {exec_id[:12]}", lambda api: api.exec_inspect(exec_id), parse=_exit_code
        )
        return code

    async def container_pid(self, container_id: str) -> int:
        pid: int = await self._call(
            f"inspect {container_id[:12]}",
            lambda api: api.inspect_container(container_id),
            parse=lambda data: int((data.get("State") or {}).get("Pid") or 0),
        )
        if pid <= 0:
            raise NotRunningError(f"container {container_id[:12]} is not running")
        return pid

    async def logs(
        self,
        container_id: str,
        *,
        follow: bool,
        tail: int | None,
        timestamps: bool,
        since_s: float | None,
    ) -> AsyncIterator[bytes]:
        """The container's output (stdout and stderr merged, in order). Following stops when
        the container does or when the consumer goes away (the SDK stream is closed, which
        unblocks its thread)."""
        kwargs: dict[str, Any] = {
            "stream": True,
            "follow": follow,
            "timestamps": timestamps,
            "tail": tail if tail is not None else "all",
        }
        if since_s is not None:
            kwargs["since"] = int(time.time() - since_s)
        opened = await self._call(
            f"logs of {container_id[:12]}", lambda api: api.logs(container_id, **kwargs)
        )
        try:
            async for chunk in self._bridge.stream(lambda: iter(opened), name="logs"):
                yield bytes(chunk)
        except AgentError:
            raise
        except Exception as exc:
            raise _translate(exc, f"logs of {container_id[:12]}") from exc
        finally:
            close = getattr(opened, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await self._bridge.run(close)


def _host_config_kwargs(spec: ContainerSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "log_config": docker.types.LogConfig(
            type="json-file",
            config={"max-size": spec.log_max_size, "max-file": str(spec.log_max_files)},
        ),
        "restart_policy": {"Name": "no"},
    }
    if spec.network_of is not None:
        kwargs["network_mode"] = f"container:{spec.network_of}"
        kwargs["ipc_mode"] = f"container:{spec.network_of}"
    else:
        kwargs["ipc_mode"] = "shareable"
        if spec.host_network:
            kwargs["network_mode"] = "host"
    if spec.mounts:
        kwargs["binds"] = [
            f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts
        ]
    if spec.port_bindings:
        kwargs["port_bindings"] = {
            f"{p.container_port}/{p.protocol.lower()}": (p.host_ip or "0.0.0.0", p.host_port)
            for p in spec.port_bindings
        }
    if spec.nano_cpus is not None:
        kwargs["nano_cpus"] = spec.nano_cpus
    if spec.cpu_shares is not None:
        kwargs["cpu_shares"] = spec.cpu_shares
    if spec.memory_bytes is not None:
        kwargs["mem_limit"] = spec.memory_bytes
        kwargs["memswap_limit"] = spec.memory_bytes  # no swap beyond the limit, as kubelet
    if spec.memory_reservation_bytes is not None:
        kwargs["mem_reservation"] = spec.memory_reservation_bytes
    return kwargs


def image_from_summary(summary: dict[str, Any]) -> ImageRecord:
    created = summary.get("Created")
    return ImageRecord(
        id=str(summary["Id"]),
        repo_tags=_references(summary.get("RepoTags")),
        repo_digests=_references(summary.get("RepoDigests")),
        size_bytes=int(summary.get("Size") or 0),
        created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
    )


def image_from_inspect(data: dict[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=str(data["Id"]),
        repo_tags=_references(data.get("RepoTags")),
        repo_digests=_references(data.get("RepoDigests")),
        size_bytes=int(data.get("Size") or 0),
        created_at=_parse_time(data.get("Created")),
    )


def _each(parse: Callable[[dict[str, Any]], T]) -> Callable[[list[dict[str, Any]]], list[T]]:
    """A parser of a list of answers from a parser of one."""
    return lambda items: [parse(item) for item in items]


def _pod_uids(summaries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Container ``id:state`` by pod uid, from Docker's container list."""
    pods: dict[str, set[str]] = {}
    for summary in summaries:
        uid = (summary.get("Labels") or {}).get(LABEL_POD_UID, "")
        pods.setdefault(uid, set()).add(f"{summary['Id']}:{summary.get('State', '')}")
    return pods


def _exit_code(data: dict[str, Any]) -> int | None:
    """An exec's exit code from its inspect; None while it runs or when Docker has none."""
    if data.get("Running"):
        return None
    code = data.get("ExitCode")
    return int(code) if isinstance(code, int) else None


def _references(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v for v in values or () if v not in _NO_REFERENCE)


def _auth_config(auth: RegistryAuth | None) -> dict[str, str] | None:
    """The SDK's ``auth_config`` for ``auth``: None lets the SDK look credentials up itself;
    an empty dict is an anonymous pull (the SDK then looks nothing up)."""
    if auth is None:
        return None
    config = {
        "serveraddress": auth.server_address,
        "username": auth.username,
        "password": auth.password,
        "identitytoken": auth.identity_token,
    }
    return {key: value for key, value in config.items() if value}


def _pull_progress(message: dict[str, Any]) -> PullProgress:
    detail = message.get("progressDetail") or {}
    current, total = detail.get("current"), detail.get("total")
    return PullProgress(
        layer_id=str(message.get("id") or ""),
        status=str(message.get("status") or ""),
        current_bytes=current if isinstance(current, int) else None,
        total_bytes=total if isinstance(total, int) else None,
    )


class DockerExecSession:
    """An exec on Docker's attach socket: stdout and stderr arrive multiplexed (8-byte frame
    headers) unless there is a TTY; a write-side shutdown of the socket is stdin EOF."""

    __slots__ = ("_demux", "_pending", "_reading", "_runtime", "_sink", "_sock", "id")

    def __init__(
        self,
        runtime: DockerRuntime,
        exec_id: str,
        sock: socket.socket,
        *,
        tty: bool,
        initial: bytes = b"",
    ) -> None:
        self.id = exec_id
        self._runtime = runtime
        self._sock = sock
        self._demux = None if tty else DockerStreamDemux()
        self._pending: deque[tuple[OutputChannel, bytes]] = deque()
        self._sink: ExecOutputSink | None = None
        self._reading = False  # a reader registered for the sink
        if initial:  # stream bytes that came with the answer's head
            if self._demux is None:
                self._pending.append((OutputChannel.STDOUT, initial))
            else:
                self._pending.extend(self._demux.feed(initial))

    async def read(self) -> tuple[OutputChannel, bytes]:
        loop = asyncio.get_running_loop()
        while not self._pending:
            try:
                data = await loop.sock_recv(self._sock, EXEC_READ_CHUNK_BYTES)
            except OSError as exc:
                raise RuntimeOperationError(f"exec {self.id[:12]} output: {exc}") from exc
            if not data or self._demux is None:
                return OutputChannel.STDOUT, data
            self._pending.extend(self._demux.feed(data))
        return self._pending.popleft()

    def attach_output(self, sink: ExecOutputSink) -> None:
        """One reader registered on the socket for the session, each read demultiplexed and
        handed to ``sink`` in that callback (``read`` adds and removes a reader per call and
        wakes a task: a loop iteration per piece of output)."""
        self._sink = sink
        more = True
        while self._pending:
            more = sink.exec_output(*self._pending.popleft()) and more
        if more:
            self.resume_output()

    def resume_output(self) -> None:
        if self._sink is not None and not self._reading and self._sock.fileno() >= 0:
            asyncio.get_running_loop().add_reader(self._sock, self._readable)
            self._reading = True

    def _pause_output(self) -> None:
        if self._reading:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._sock)

    def _readable(self) -> None:
        sink = self._sink
        assert sink is not None
        try:
            data = self._sock.recv(EXEC_READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._pause_output()
            self._sink = None  # ended: nothing to resume
            sink.exec_output_ended(RuntimeOperationError(f"exec {self.id[:12]} output: {exc}"))
            return
        if not data:
            self._pause_output()
            self._sink = None
            sink.exec_output_ended(None)
            return
        pieces = [(OutputChannel.STDOUT, data)] if self._demux is None else self._demux.feed(data)
        more = True
        for channel, payload in pieces:
            more = sink.exec_output(channel, payload) and more
        if not more:
            self._pause_output()

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, data)
        except OSError as exc:
            raise RuntimeOperationError(f"exec {self.id[:12]} input: {exc}") from exc

    async def close_stdin(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    async def resize(self, cols: int, rows: int) -> None:
        await self._runtime._exec_resize(self.id, cols, rows)

    async def exit_code(self, wait_s: float) -> int | None:
        deadline = time.monotonic() + wait_s
        pause_s = EXIT_CODE_FIRST_POLL_S
        while True:
            code = await self._runtime._exec_exit_code(self.id)
            if code is not None or time.monotonic() > deadline:
                return code
            # The attach stream ends a moment before Docker records the exit: usually a
            # millisecond or two, so poll fast first (a short exec's wall time is the product).
            await asyncio.sleep(pause_s)
            pause_s = min(pause_s * 2, EXIT_CODE_MAX_POLL_S)

    async def close(self) -> None:
        self._pause_output()
        self._sock.close()
