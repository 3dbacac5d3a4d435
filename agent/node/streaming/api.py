"""The node's streaming API over HTTP/2 (on ``api_addr``, beside the HTTP/1.1 API): exec,
port-forward and logs, one HTTP/2 stream per session.

* ``POST /v1/namespaces/{ns}/pods/{pod}/exec?container=C&command=…&stdin=1&tty=1``: request
  body = exec frames (stdin, resize; ``agent.proto.execframe``), end of the request stream =
  stdin EOF; response body = stdout/stderr frames; trailers ``exit-code`` (and ``error``).
* ``POST /v1/namespaces/{ns}/pods/{pod}/portforward?port=P``: raw bytes both ways to
  ``127.0.0.1:P`` inside the pod's network namespace; END_STREAM is a TCP half-close in either
  direction; a refused port fails this stream only (502), never the connection.
* ``GET /v1/namespaces/{ns}/pods/{pod}/logs?container=C&follow=1&tailLines=N&timestamps=1
  &sinceSeconds=S&previous=1``: the container's output, streamed.

The routes are ``agent.proto.routes.NODE_ROUTES``; every request reaches ``handle`` routed and
authorized by the node API's edge (``server.py``, ``agent.aio.edge``; the table is
docs/authorization.md). Every exec and port-forward session is audited in the agent log: who
(``alice (via system:node-proxy)`` through the master), pod, container, command or port,
duration, exit code. Errors before the session starts are JSON ``{"error": {"code", "message",
"details"}}`` with their status, before any stream data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.aio import hops
from agent.aio.edge import ApiRequest
from agent.aio.h2conn import H2Stream
from agent.aio.logs import kv
from agent.aio.splice import SocketSplice
from agent.errors import (
    AgentError,
    BadRequestError,
    NotFoundError,
    NotRunningError,
    PortUnreachableError,
    StreamingError,
)
from agent.node.pods.manager import PodManager
from agent.node.pods.sources import SOURCE_PREFIX as STATIC_SOURCE_PREFIX
from agent.node.pods.worker import PodWorker
from agent.node.runtime.base import ContainerRecord, ExecSession, OutputChannel, Runtime
from agent.proto import execframe
from agent.proto.execframe import Channel
from agent.proto.routes import RouteMatch

log = logging.getLogger(__name__)

# Blocking (runs in a bridge thread): a connected, non-blocking TCP socket to 127.0.0.1:port
# as seen from the network namespace of process pid, given (pid, port, timeout_s).
PortConnector = Callable[[int, int, float], socket.socket]

PORT_CONNECT_TIMEOUT_S = 5.0
EXIT_CODE_WAIT_S = 5.0
EXEC_CONTENT_TYPE = "application/vnd.node-agent.exec"


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    pod: str
    action: str
    query: Mapping[str, list[str]]

    @classmethod
    def of(cls, match: RouteMatch) -> Target:
        """A stream route's target: ``/v1/namespaces/{namespace}/pods/{pod}/<action>``."""
        return cls(
            match.param("namespace"), match.param("pod"), match.route.pattern[-1], match.query
        )


def _flag(query: Mapping[str, list[str]], name: str) -> bool:
    value = (query.get(name) or [""])[-1].lower()
    if value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequestError(f"query parameter {name}={value!r}: expected 1/0 or true/false")


def _int(query: Mapping[str, list[str]], name: str, low: int, high: int) -> int | None:
    raw = (query.get(name) or [""])[-1]
    if raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"query parameter {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequestError(f"query parameter {name}={value} is outside {low}..{high}")
    return value


MAX_SINCE_S = 10 * 365 * 86400  # logs ?sinceSeconds= bound (a decade)
MAX_TIME_CHARS = 40  # an RFC 3339 time with nanoseconds and an offset is 35


def _since_time(query: Mapping[str, list[str]]) -> float | None:
    """``?sinceTime=`` (RFC 3339, as Kubernetes' PodLogOptions) as seconds since the epoch."""
    raw = (query.get("sinceTime") or [""])[-1]
    if raw == "":
        return None
    from datetime import datetime

    moment = None
    if len(raw) <= MAX_TIME_CHARS and raw.isascii() and "T" in raw.upper():
        text = raw.upper().replace("Z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:  # fromisoformat takes at most microseconds; RFC 3339 allows nanoseconds
            digits = len(rest) - len(rest.lstrip("0123456789"))
            text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
    if moment is None or moment.tzinfo is None:
        raise BadRequestError(
            f"query parameter sinceTime={raw[:MAX_TIME_CHARS]!r} is not an RFC 3339 time"
        )
    return moment.timestamp()


def connect_in_netns(pid: int, port: int, timeout_s: float) -> socket.socket:
    """Blocking (a bridge thread): a TCP connection to ``127.0.0.1:port`` made inside the
    network namespace of process ``pid``. Only this thread changes namespace, and it is moved
    back before the thread returns to the pool."""
    from pyroute2.netns import setns

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            setns(target, flags=0)
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
            finally:
                setns(own, flags=0)
        finally:
            os.close(target)
    finally:
        os.close(own)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


class ExecOutput:
    """An exec's output onto its stream in the loop's callbacks (``ExecSession.
    attach_output``): each piece framed and queued on the stream as it is read. Reading
    pauses while the stream takes no more and resumes on its ``on_writable``, so a client
    that does not read stalls its own process only. ``done`` resolves once the output ended
    and fails with the stream's error (the client gone) or the engine's (the socket broke)."""

    def __init__(self, stream: H2Stream, session: ExecSession) -> None:
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._stream = stream
        stream.on_writable(session.resume_output)
        session.attach_output(self)

    def exec_output(self, channel: OutputChannel, data: bytes) -> bool:
        if self.done.done():
            return False
        kind = Channel.STDERR if channel is OutputChannel.STDERR else Channel.STDOUT
        try:
            return self._stream.write_nowait(execframe.encode(kind, data))
        except StreamingError as exc:
            self.done.set_exception(exc)
            return False

    def exec_output_ended(self, error: Exception | None) -> None:
        if not self.done.done():
            if error is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(error)


class StreamingApi:
    def __init__(
        self,
        *,
        pods: PodManager,
        runtime: Runtime,
        run_blocking: Callable[..., Any],
        connect: PortConnector = connect_in_netns,
    ) -> None:
        self._pods = pods
        self._runtime = runtime
        self._run_blocking = run_blocking
        self._connect = connect

    # -- entry -----------------------------------------------------------------------------

    async def handle(self, stream: H2Stream, request: ApiRequest) -> None:
        """One stream route, already authorized by the edge."""
        target = Target.of(request.match)
        who = request.principal.name
        worker = self._worker(target.namespace, target.pod)
        records = await self._runtime.list_container_summaries(worker.uid)
        if target.action == "exec":
            await self._exec(stream, who, worker.pod.full_name, worker.pod, records, target)
        elif target.action == "portforward":
            await self._port_forward(stream, who, worker.pod.full_name, records, target)
        else:
            await self._logs(stream, worker.pod, records, target, worker.deps.clock.time())

    def _worker(self, namespace: str, pod: str) -> PodWorker:
        """The live worker of ``namespace/pod``: a pod of that name, or else the static pod
        whose mirror pod on the master is named so (``<name>-<node>``,
        agent.node.masterlink.mirrors), since that is the name users see in ``nodectl get
        pods`` and the master's proxy relays unchanged. A pod of the exact name comes first
        (an administrator's pod may hold a mirror's name)."""
        live = [
            w
            for w in self._pods.workers.values()
            if not w.terminating and w.pod.metadata.namespace == namespace
        ]
        found = next((w for w in live if w.pod.metadata.name == pod), None)
        suffix = f"-{self._pods.node_name}"
        if found is None and pod.endswith(suffix):
            static = pod.removesuffix(suffix)
            found = next(
                (
                    w
                    for w in live
                    if w.pod.metadata.name == static
                    and w.pod.source.startswith(STATIC_SOURCE_PREFIX)
                ),
                None,
            )
        if found is None:
            raise NotFoundError(f"pod {namespace}/{pod} not found on this node")
        return found

    # -- responses -------------------------------------------------------------------------

    @staticmethod
    def _container_records(
        pod: Any, records: list[ContainerRecord], query: Mapping[str, list[str]]
    ) -> tuple[str, list[ContainerRecord]]:
        # An init container is named explicitly (kubectl logs -c init-x); the default is the
        # pod's one app container, as kubectl's.
        names = [c.name for c in pod.spec.containers]
        init_names = [c.name for c in pod.spec.init_containers]
        name = (query.get("container") or [""])[-1]
        if not name:
            if len(names) != 1:
                raise BadRequestError(
                    f"pod has several containers, choose one with container= {names}"
                )
            name = names[0]
        if name not in names and name not in init_names:
            known = f"containers: {names}" + (
                f", init containers: {init_names}" if init_names else ""
            )
            raise NotFoundError(f"container {name!r} not found in pod ({known})")
        mine = sorted(
            (r for r in records if not r.is_sandbox and r.container_name == name),
            key=lambda r: r.attempt,
        )
        return name, mine

    # -- exec ------------------------------------------------------------------------------

    async def _exec(
        self,
        stream: H2Stream,
        who: str,
        pod_name: str,
        pod: Any,
        records: list[ContainerRecord],
        target: Target,
    ) -> None:
        query = target.query
        command = query.get("command") or []
        if not command or not command[0]:
            raise BadRequestError("exec needs at least one command= parameter")
        stdin, tty = _flag(query, "stdin"), _flag(query, "tty")
        name, mine = self._container_records(pod, records, query)
        if not mine or not mine[-1].running:
            raise NotRunningError(f"container {name!r} of pod {pod_name} is not running")
        session = await self._runtime.exec_start(mine[-1].id, command, stdin=stdin, tty=tty)
        started = time.monotonic()
        exit_code: int | None = None
        error = ""
        try:
            await stream.respond(200, [("content-type", EXEC_CONTENT_TYPE)])
            loop = asyncio.get_running_loop()
            feeder = loop.create_task(self._exec_input(stream, session, stdin))
            # The output in the loop's callbacks, from the engine's socket straight onto the
            # stream (ExecOutput): no task woken per piece of output.
            output = ExecOutput(stream, session)
            try:
                await self._exec_pump(feeder, output.done)
            finally:
                feeder.cancel()
                output.done.cancel()
                await asyncio.gather(feeder, output.done, return_exceptions=True)
            exit_code = await session.exit_code(EXIT_CODE_WAIT_S)
            trailers = [("exit-code", str(exit_code if exit_code is not None else -1))]
            if exit_code is None:
                error = "exit code unknown"
                trailers.append(("error", error))
            await stream.end(trailers)
        except AgentError as exc:
            error = str(exc)
            raise
        finally:
            await session.close()
            log.info(
                "exec session",
                extra=kv(
                    who=who,
                    pod=pod_name,
                    container=name,
                    command=" ".join(command),
                    stdin=stdin,
                    tty=tty,
                    duration_s=round(time.monotonic() - started, 3),
                    exit_code=exit_code,
                    error=error,
                ),
            )

    @staticmethod
    async def _exec_pump(feeder: asyncio.Task[None], output: asyncio.Future[None]) -> None:
        """Until the process's output has ended. The client's side failing (its stream reset,
        its connection gone, a malformed frame) ends the session at once: the process may be
        waiting for input that will never come, and a quiet process would never notice. Failing
        to deliver stdin (the process is gone) only ends the input."""
        await asyncio.wait({feeder, output}, return_when=asyncio.FIRST_COMPLETED)
        if not output.done():
            error = feeder.exception()
            if isinstance(error, StreamingError):
                raise error
        await output

    async def _exec_input(self, stream: H2Stream, session: ExecSession, stdin: bool) -> None:
        decoder = execframe.FrameDecoder(frozenset({Channel.STDIN, Channel.RESIZE}))
        while chunk := await stream.read():
            for frame in decoder.feed(chunk):
                if frame.channel is Channel.RESIZE:
                    size = execframe.decode_resize(frame.payload)
                    await session.resize(size.cols, size.rows)
                elif stdin and frame.payload:
                    await session.write(frame.payload)
        if stdin:
            # The request stream ended: stdin EOF for the process; its output keeps flowing.
            await session.close_stdin()

    # -- port-forward ----------------------------------------------------------------------

    async def _port_forward(
        self,
        stream: H2Stream,
        who: str,
        pod_name: str,
        records: list[ContainerRecord],
        target: Target,
    ) -> None:
        port = _int(target.query, "port", 1, 65535)
        if port is None:
            raise BadRequestError("port-forward needs port=")
        sandbox = next((r for r in records if r.is_sandbox and r.running), None)
        if sandbox is None:
            raise NotRunningError(f"pod {pod_name} has no running sandbox")
        pid = await self._runtime.container_pid(sandbox.id)
        try:
            sock = await self._run_blocking(self._connect, pid, port, PORT_CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise PortUnreachableError(
                f"cannot connect to 127.0.0.1:{port} in pod {pod_name}: {exc.strerror or exc}"
            ) from exc
        started = time.monotonic()
        error = ""
        # Both directions in the loop's callbacks (agent/aio/splice.py): no task hand-off
        # between the stream and the pod's socket; the socket belongs to the transport now.
        splice = SocketSplice(read_point=hops.Point.POD_READ, write_point=hops.Point.POD_WRITE)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: splice, sock)
        except OSError as exc:
            sock.close()
            raise PortUnreachableError(
                f"cannot use the connection to 127.0.0.1:{port} in pod {pod_name}: {exc}"
            ) from exc
        try:
            await stream.respond(200, [("content-type", "application/octet-stream")])
            splice.send_from_socket(stream)
            splice.deliver_to_socket()
            await splice.done
            error = splice.error
        except (AgentError, OSError) as exc:
            error = str(exc)
            if not stream.failed:
                stream.reset()
        finally:
            splice.close()  # cancelled (the node API stopping) or failed: the socket ends
            log.info(
                "port-forward session",
                extra=kv(
                    who=who,
                    pod=pod_name,
                    port=port,
                    duration_s=round(time.monotonic() - started, 3),
                    bytes_in=splice.to_socket,
                    bytes_out=splice.from_socket,
                    error=error,
                ),
            )

    # -- logs ------------------------------------------------------------------------------

    async def _logs(
        self,
        stream: H2Stream,
        pod: Any,
        records: list[ContainerRecord],
        target: Target,
        now: float,
    ) -> None:
        """``now``: the node's clock (the one that stamped the lines), for ``sinceTime``."""
        query = target.query
        follow, timestamps = _flag(query, "follow"), _flag(query, "timestamps")
        previous = _flag(query, "previous")
        tail = _int(query, "tailLines", 0, 10_000_000)
        since: float | None = _int(query, "sinceSeconds", 1, MAX_SINCE_S)
        since_time = _since_time(query)
        if since_time is not None:
            if since is not None:
                raise BadRequestError("at most one of sinceTime or sinceSeconds may be specified")
            # The node's clock, which stamped the lines; a time to come: no line yet.
            since = now - since_time
        name, mine = self._container_records(pod, records, query)
        chosen = (
            mine[-2]
            if previous and len(mine) > 1
            else (mine[-1] if mine and not previous else None)
        )
        if chosen is None:
            which = "previous terminated" if previous else "current"
            raise NotFoundError(f"no {which} container {name!r} in pod {pod.full_name}")
        await stream.respond(200, [("content-type", "text/plain; charset=utf-8")])
        async for chunk in self._runtime.logs(
            chosen.id,
            follow=follow and not previous,
            tail=tail,
            timestamps=timestamps,
            since_s=since,
        ):
            await stream.write(chunk)
        await stream.end()
