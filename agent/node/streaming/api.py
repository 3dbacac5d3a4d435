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
* ``GET /v1/pods``: the pod list, as on HTTP/1.1.

Every request is authorized on its own (client certificate of the cluster CA; administrators
only, for now) and every exec and port-forward session is audited in the agent log: who, pod,
container, command or port, duration, exit code. Errors before the session starts are JSON
``{"error": {"code", "message", "details"}}`` with their status, before any stream data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509

from agent.aio.h2conn import H2Stream
from agent.aio.logs import kv
from agent.errors import (
    AgentError,
    BadRequestError,
    ForbiddenError,
    NotFoundError,
    NotRunningError,
    PkiError,
    PortUnreachableError,
    UnauthenticatedError,
)
from agent.node.pods.manager import PodManager
from agent.node.runtime.base import ContainerRecord, ExecSession, OutputChannel, Runtime
from agent.pki.core import Identity, authenticate
from agent.proto import execframe
from agent.proto.execframe import Channel
from agent.proto.routes import CODE_EXECUTION_ACTIONS, STREAM_ROUTES

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 1 << 20
PORT_CONNECT_TIMEOUT_S = 5.0
EXIT_CODE_WAIT_S = 5.0
EXEC_CONTENT_TYPE = "application/vnd.node-agent.exec"
USER_HEADER = "node-agent-user"  # set by the master's proxy (PROXIES_GROUP) only
GROUPS_HEADER = "node-agent-groups"


# The name the master link still imports; the streaming API takes any Runtime.
StreamingRuntime = Runtime


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    pod: str
    action: str
    query: dict[str, list[str]]


def parse_target(path: str) -> Target | None:
    parts = urlsplit(path)
    segments = parts.path.strip("/").split("/")
    if len(segments) != 6 or segments[:2] != ["v1", "namespaces"] or segments[3] != "pods":
        return None
    return Target(
        namespace=segments[2],
        pod=segments[4],
        action=segments[5],
        query=parse_qs(parts.query, keep_blank_values=True),
    )


def _flag(query: dict[str, list[str]], name: str) -> bool:
    value = (query.get(name) or [""])[-1].lower()
    if value in ("", "0", "false"):
        return False
    if value in ("1", "true"):
        return True
    raise BadRequestError(f"query parameter {name}={value!r}: expected 1/0 or true/false")


def _int(query: dict[str, list[str]], name: str, low: int, high: int) -> int | None:
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


class StreamingApi:
    def __init__(
        self,
        *,
        pods: PodManager,
        runtime: Runtime,
        run_blocking: Callable[..., Any],
        node_name: str,
        cas: Callable[[], list[x509.Certificate]],
    ) -> None:
        self._pods = pods
        self._runtime = runtime
        self._run_blocking = run_blocking
        self._node_name = node_name
        self._cas = cas

    # -- entry -----------------------------------------------------------------------------

    async def handle(self, stream: H2Stream) -> None:
        try:
            who = self._authorize(stream)
            await self._route(stream, who)
        except AgentError as exc:
            await stream.respond_error(exc.http_status, str(exc))

    def _authorize(self, stream: H2Stream) -> Identity:
        try:
            ident = authenticate(stream.conn.peer_cert_der, self._cas())
        except PkiError as exc:
            raise UnauthenticatedError(str(exc)) from exc
        if ident.is_proxy:
            # The master relays a user's stream: that user is who is authorized and audited.
            user = stream.header(USER_HEADER) or ""
            groups = tuple(g for g in (stream.header(GROUPS_HEADER) or "").split(",") if g)
            if not user:
                raise ForbiddenError("the master's proxy must say which user it acts for")
            ident = Identity(common_name=f"{user} (via {ident.common_name})", groups=groups)
        if not ident.may_read:
            who = ident.node_name or ident.common_name
            raise ForbiddenError(f"{who!r} may not use node {self._node_name!r}'s API")
        return ident

    async def _route(self, stream: H2Stream, who: Identity) -> None:
        method, path = stream.method, stream.path
        if method == "GET" and urlsplit(path).path == "/v1/pods":
            await stream.respond_json(200, {"kind": "PodList", "items": self._pods.pod_list()})
            return
        target = parse_target(path)
        if target is None or (method, target.action) not in STREAM_ROUTES:
            raise NotFoundError(f"no such endpoint: {method} {urlsplit(path).path}")
        if target.action in CODE_EXECUTION_ACTIONS and not who.is_admin:
            # Read-only users (system:viewers) read logs and the pod list; running code in a
            # pod or reaching its ports is for administrators.
            raise ForbiddenError(f"{who.common_name!r} may read logs but not {target.action}")
        worker = next(
            (
                w
                for w in self._pods.workers.values()
                if not w.terminating
                and w.pod.metadata.namespace == target.namespace
                and w.pod.metadata.name == target.pod
            ),
            None,
        )
        if worker is None:
            raise NotFoundError(f"pod {target.namespace}/{target.pod} not found on this node")
        records = await self._runtime.list_container_summaries(worker.uid)
        if target.action == "exec":
            await self._exec(stream, who, worker.pod.full_name, worker.pod, records, target)
        elif target.action == "portforward":
            await self._port_forward(stream, who, worker.pod.full_name, records, target)
        else:
            await self._logs(stream, worker.pod, records, target)

    # -- responses -------------------------------------------------------------------------

    @staticmethod
    def _container_records(
        pod: Any, records: list[ContainerRecord], query: dict[str, list[str]]
    ) -> tuple[str, list[ContainerRecord]]:
        names = [c.name for c in pod.spec.containers]
        name = (query.get("container") or [""])[-1]
        if not name:
            if len(names) != 1:
                raise BadRequestError(
                    f"pod has several containers, choose one with container= {names}"
                )
            name = names[0]
        if name not in names:
            raise NotFoundError(f"container {name!r} not found in pod (containers: {names})")
        mine = sorted(
            (r for r in records if not r.is_sandbox and r.container_name == name),
            key=lambda r: r.attempt,
        )
        return name, mine

    # -- exec ------------------------------------------------------------------------------

    async def _exec(
        self,
        stream: H2Stream,
        who: Identity,
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
            feeder = asyncio.get_running_loop().create_task(
                self._exec_input(stream, session, stdin)
            )
            try:
                await self._exec_output(stream, session)
            finally:
                feeder.cancel()
                with contextlib.suppress(asyncio.CancelledError, AgentError, OSError):
                    await feeder
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
                    who=who.common_name,
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

    @staticmethod
    async def _exec_output(stream: H2Stream, session: ExecSession) -> None:
        while True:
            kind, payload = await session.read()
            if not payload:
                return
            channel = Channel.STDERR if kind is OutputChannel.STDERR else Channel.STDOUT
            await stream.write(execframe.encode(channel, payload))

    # -- port-forward ----------------------------------------------------------------------

    async def _port_forward(
        self,
        stream: H2Stream,
        who: Identity,
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
            sock = await self._run_blocking(connect_in_netns, pid, port, PORT_CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise PortUnreachableError(
                f"cannot connect to 127.0.0.1:{port} in pod {pod_name}: {exc.strerror or exc}"
            ) from exc
        started = time.monotonic()
        sent = received = 0
        error = ""
        loop = asyncio.get_running_loop()

        async def upstream() -> None:
            nonlocal sent
            while chunk := await stream.read():
                await loop.sock_sendall(sock, chunk)
                sent += len(chunk)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        async def downstream() -> None:
            nonlocal received
            while data := await loop.sock_recv(sock, READ_CHUNK_BYTES):
                received += len(data)
                await stream.write(data)
            await stream.end()

        tasks: list[asyncio.Task[None]] = []
        try:
            await stream.respond(200, [("content-type", "application/octet-stream")])
            tasks = [loop.create_task(upstream()), loop.create_task(downstream())]
            await asyncio.gather(*tasks)
        except (AgentError, OSError) as exc:
            error = str(exc)
            if not stream.failed:
                stream.reset()
        finally:
            for task in tasks:
                task.cancel()
            sock.close()
            log.info(
                "port-forward session",
                extra=kv(
                    who=who.common_name,
                    pod=pod_name,
                    port=port,
                    duration_s=round(time.monotonic() - started, 3),
                    bytes_in=sent,
                    bytes_out=received,
                    error=error,
                ),
            )

    # -- logs ------------------------------------------------------------------------------

    async def _logs(
        self, stream: H2Stream, pod: Any, records: list[ContainerRecord], target: Target
    ) -> None:
        query = target.query
        follow, timestamps = _flag(query, "follow"), _flag(query, "timestamps")
        previous = _flag(query, "previous")
        tail = _int(query, "tailLines", 0, 10_000_000)
        since = _int(query, "sinceSeconds", 1, 10 * 365 * 86400)
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
            since_s=float(since) if since is not None else None,
        ):
            await stream.write(chunk)
        await stream.end()
