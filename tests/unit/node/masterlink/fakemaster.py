"""A master on loopback for the master link's unit tests: aiohttp over TLS with a CA made in
the test, the routes the link uses, and knobs for what a test needs — registration answers,
identity rejection, outages (every request 503, or the port closed, or no answer at all),
hostile answers, pods with resource versions, junk lines on the pod watch, 410 Gone.

It speaks the master's wire format (docs/master.md), not its logic: no trust policy, no store.
What it answers is held to the real master's by one contract suite (tests/contracts/
master_wire.py), run against this fake in tests/unit/node/masterlink/test_fakemaster_contract.py
and against a real ``node-master`` in tests/integration/test_master_wire_contract.py. Who may
call a route is the real authorization table (``agent.proto.authz``), with node certificates
current while they carry the key the node registered (or rotated to) last.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from agent.aio.edge import error_body
from agent.aio.tls import server_context
from agent.errors import BadRequestError, PkiError
from agent.master.nodeevents import ReportedEvent, parse_report
from agent.pki.core import (
    cert_to_pem,
    create_ca,
    generate_key,
    issue,
    key_to_pem,
    load_csr,
    principal_of,
    public_key_id,
    spki_pin,
)
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from agent.proto.authz import Decision, Principal, caller_of, decide

NODE = "n1"
LEASE_RENEW_S = 1.0
MIRROR_ANNOTATION = "node-agent.io/mirror"


@dataclass
class Recorded:
    leases: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    mirrors_put: list[str] = field(default_factory=list)
    mirrors_deleted: list[str] = field(default_factory=list)
    registrations: list[dict[str, Any]] = field(default_factory=list)
    polls: int = 0
    lists: int = 0
    watches: list[int] = field(default_factory=list)  # resourceVersion of each watch
    rotations: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # filed as the master files them
    refused: list[tuple[str, int]] = field(default_factory=list)  # (path, 401 or 403)
    requests: list[str] = field(default_factory=list)  # "METHOD /path" of every request
    ca_fetches: int = 0


def pod_manifest(name: str, *, image: str = "busybox:1", uid: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": uid or str(uuid.uuid4())},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never"}],
        },
    }


def _error(status: int, message: str) -> web.Response:
    return web.json_response(error_body(status, message), status=status)


def _full_name(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}"


class FakeMaster:
    def __init__(self, directory: Path, *, cert_lifetime_s: float = 3600.0) -> None:
        self.directory = directory
        self.cert_lifetime_s = cert_lifetime_s
        self.ca_key, self.ca_cert = create_ca("fake master CA")
        self.ca_pem = cert_to_pem(self.ca_cert)
        self.pin = spki_pin(self.ca_cert)
        key = generate_key()
        cert = issue(
            self.ca_key,
            self.ca_cert,
            key.public_key(),
            common_name="fake-master",
            groups=[],
            sans=["127.0.0.1"],
            lifetime_s=3600,
            client=False,
            server=True,
            master=True,  # agents refuse a server without the master's mark
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "master.crt").write_bytes(cert_to_pem(cert))
        (directory / "master.key").write_bytes(key_to_pem(key))
        self.record = Recorded()
        # Knobs.
        self.registration: Callable[[int], tuple[int, dict[str, Any]]] = self.admit
        self.approval_required = False  # new registrations wait for approve_node()
        self.reject_identity = False  # 401 to every mTLS route
        self.unavailable = False  # 503 to every route
        self.gone_once = False  # the next watch answers 410 (in-band, as the real master)
        # A status report changes the pod, so the real master sends it back on the watch (and
        # the revision moves); off for a test whose revisions must move only by its own hand.
        self.echo_status = True
        self.lease_renew_s = LEASE_RENEW_S
        # A master gone silent without a reset: a request whose "METHOD /path" starts with one
        # of these gets no answer (until stop()). And paths answered with these raw bytes
        # instead (status, body): hostile answers.
        self.stalled: set[str] = set()
        self.raw_answers: dict[str, tuple[int, bytes]] = {}
        # Set: a rotation's answer waits for it (the new certificate is issued, the old one
        # superseded, the node does not know yet).
        self.hold_rotation: asyncio.Event | None = None
        self._unstalled = asyncio.Event()
        # Pods: full name -> object; which node each is bound to (NODE when not said: a test
        # may put a bare object in ``pods``). Every change takes the next resource version and
        # is kept in ``history`` for watches to resume from (until compact()).
        self.pods: dict[str, dict[str, Any]] = {}
        self.bound: dict[str, str] = {}
        self.mirrors: dict[str, dict[str, Any]] = {}  # full name -> the manifest its node put
        self.revision = 1
        self.history: list[tuple[int, str, bytes]] = []  # (revision, node, event line)
        self.compacted_to = 0  # watches from before this revision get 410
        # Nodes: name -> the public key id of its current certificate (registered or rotated).
        self.keys: dict[str, str] = {}
        self.approved: set[str] = set()
        self._pending: dict[str, tuple[str, str]] = {}  # request id -> (node name, CSR)
        self._watchers: list[tuple[str, asyncio.Queue[bytes | None]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------

    def tls(self) -> ssl.SSLContext:
        ctx = server_context(
            self.directory / "master.crt",
            self.directory / "master.key",
            client_ca_pems=[self.ca_pem],
            alpn=("http/1.1",),
        )
        return ctx

    async def start(self) -> FakeMaster:
        app = web.Application(middlewares=[self._knobs])
        self._unstalled = asyncio.Event()
        app.router.add_get("/v1/ca", self._ca)
        app.router.add_post("/v1/registrations", self._register)
        app.router.add_get("/v1/registrations/{rid}", self._poll)
        app.router.add_put("/v1/nodes/{name}/lease", self._lease)
        app.router.add_get("/v1/nodes/{name}/pods", self._node_pods)
        app.router.add_put("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self._put_mirror)
        app.router.add_delete("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self._delete_mirror)
        app.router.add_put("/v1/namespaces/{ns}/pods/{pod}/status", self._status)
        app.router.add_post("/v1/nodes/{name}/certificate", self._rotate)
        app.router.add_post("/v1/nodes/{name}/events", self._events)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # The port of a previous run is reused, so a "restarted" master is the same URL.
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.tls())
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        self.end_watches()
        self._unstalled.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- pods -----------------------------------------------------------------------------

    def node_of(self, full: str) -> str:
        return self.bound.get(full, NODE)

    def _pod_object(self, full: str) -> dict[str, Any]:
        obj = self.pods[full]
        if full not in self.mirrors:
            return obj
        meta = obj["metadata"]
        annotations = {**meta.get("annotations", {}), MIRROR_ANNOTATION: "true"}
        return {**obj, "metadata": {**meta, "annotations": annotations}}

    def _event(self, kind: str, full: str, obj: dict[str, Any], *, notify: bool) -> None:
        """A change: the next resource version, kept in the history; ``notify``: also sent to
        the watches open now (False: they miss it, as if the event were lost on the way)."""
        self.revision += 1
        node = self.node_of(full)
        line = json.dumps({"type": kind, "object": obj, "resourceVersion": self.revision})
        self.history.append((self.revision, node, line.encode() + b"\n"))
        if notify:
            for watcher_node, queue in self._watchers:
                if watcher_node == node:
                    queue.put_nowait(line.encode() + b"\n")

    def add_pod(
        self, manifest: dict[str, Any], *, notify: bool = True, node: str = NODE
    ) -> dict[str, Any]:
        meta = manifest["metadata"]
        full = f"{meta['namespace']}/{meta['name']}"
        known = self.pods.get(full)
        kind = "MODIFIED" if known is not None else "ADDED"
        uid = meta.get("uid") or (known or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
        obj = {**manifest, "metadata": {**meta, "uid": uid}, "status": {"phase": "Pending"}}
        self.pods[full] = obj
        self.bound[full] = node
        self._event(kind, full, self._pod_object(full), notify=notify)
        return obj

    def delete_pod(self, full: str, *, notify: bool = True) -> None:
        obj = self._pod_object(full)
        del self.pods[full]
        self._event("DELETED", full, obj, notify=notify)
        self.bound.pop(full, None)
        self.mirrors.pop(full, None)

    def set_status(self, full: str, status: dict[str, Any]) -> None:
        obj = self.pods[full]
        if obj.get("status") == status:
            return  # as the real master: an unchanged status is no change
        obj["status"] = status
        if self.echo_status:
            self._event("MODIFIED", full, self._pod_object(full), notify=True)

    def compact(self) -> None:
        """Forget the history: a watch from any revision before now gets 410."""
        self.history.clear()
        self.compacted_to = self.revision

    def send(self, line: bytes) -> None:
        """A raw line (newline added) to every open watch."""
        self.send_raw(line + b"\n")

    def send_raw(self, data: bytes) -> None:
        for _, queue in self._watchers:
            queue.put_nowait(data)

    def end_watches(self) -> None:
        for _, queue in self._watchers:
            queue.put_nowait(None)

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # -- registration answers -------------------------------------------------------------

    def admit(self, attempt: int) -> tuple[int, dict[str, Any]]:
        """The default answer: admitted by the open rule (the certificate is added)."""
        return 200, {"status": "Approved", "admittedBy": "open"}

    def approve_node(self, name: str) -> None:
        """An administrator's approval of a pending registration."""
        self.approved.add(name)

    # -- handlers -------------------------------------------------------------------------

    @web.middleware
    async def _knobs(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.record.requests.append(f"{request.method} {request.path}")
        if any(f"{request.method} {request.path}".startswith(s) for s in self.stalled):
            await self._unstalled.wait()  # set by stop(), so its clean-up need not wait
            return _error(503, "stalled")
        if request.path in self.raw_answers:
            status, body = self.raw_answers[request.path]
            return web.Response(status=status, body=body)
        return await handler(request)

    def _csr_key(self, name: str, csr_pem: str) -> ec.EllipticCurvePublicKey:
        """The CSR's key; PkiError when it is not a valid CSR for node ``name``."""
        csr = load_csr(csr_pem.encode())
        common_names = [a.value for a in csr.subject]
        if NODE_CN_PREFIX + name not in common_names:
            raise PkiError(f"the CSR's CN must be {NODE_CN_PREFIX}{name}")
        key = csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # load_csr refuses other keys
        return key

    def _sign(self, name: str, key: ec.EllipticCurvePublicKey) -> str:
        cert = issue(
            self.ca_key,
            self.ca_cert,
            key,
            common_name=NODE_CN_PREFIX + name,
            groups=[NODES_GROUP],
            lifetime_s=self.cert_lifetime_s,
        )
        self.keys[name] = public_key_id(key)
        return cert_to_pem(cert).decode()

    def _principal(self, request: web.Request) -> Principal:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return principal_of(der, [self.ca_cert])

    def _refuse(
        self, request: web.Request, route: str | None = None, node: str | None = None
    ) -> web.Response | None:
        """None when the request may go on; else the answer. ``route``: the authorization
        table's route name (None: anyone), ``node``: the node the request is about."""
        if self.unavailable:
            return _error(503, "down")
        if route is None:
            return None
        if self.reject_identity:
            return self._refused(request, 401, "who are you")
        principal = self._principal(request)
        current = self.keys.get(principal.node) == principal.key_id
        caller = caller_of(principal, node, current)
        decision = decide(route, caller.kind)
        if decision is Decision.UNAUTHENTICATED:
            return self._refused(request, 401, "a client certificate from this cluster is required")
        if decision is Decision.FORBIDDEN:
            message = caller.note or f"node {principal.node!r} may not {request.path}"
            return self._refused(request, 403, message)
        return None

    def _refused(self, request: web.Request, status: int, message: str) -> web.Response:
        self.record.refused.append((request.path, status))
        return _error(status, message)

    async def _json(self, request: web.Request) -> Any:
        try:
            return await request.json()
        except ValueError:
            return None

    async def _ca(self, request: web.Request) -> web.Response:
        self.record.ca_fetches += 1
        if refused := self._refuse(request):
            return refused
        return web.Response(body=self.ca_pem, content_type="application/x-pem-file")

    async def _register(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        body = await self._json(request)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        name, csr = body.get("nodeName"), body.get("csr")
        if not isinstance(name, str) or not isinstance(csr, str):
            return _error(400, "nodeName and csr (PEM) are required strings")
        try:
            key = self._csr_key(name, csr)
        except PkiError as exc:
            return _error(400, str(exc))
        self.record.registrations.append(body)
        if self.keys.get(name, public_key_id(key)) != public_key_id(key):
            return _error(409, f"node {name!r} is registered with a different key")
        if self.approval_required and name not in self.approved:
            rid = uuid.uuid4().hex
            self._pending[rid] = (name, csr)
            return web.json_response({"status": "Pending", "requestId": rid}, status=202)
        return self._registration_answer(name, csr)

    def _registration_answer(self, name: str, csr: str) -> web.Response:
        status, answer = self.registration(len(self.record.registrations) + self.record.polls)
        if status == 200:
            answer = {
                **answer,
                "certificate": self._sign(name, self._csr_key(name, csr)),
                "caBundle": self.ca_pem.decode(),
                "leaseRenewSeconds": self.lease_renew_s,
            }
        elif status == 202:
            self._pending[str(answer.get("requestId"))] = (name, csr)
        return web.json_response(answer, status=status)

    async def _poll(self, request: web.Request) -> web.Response:
        self.record.polls += 1
        if refused := self._refuse(request):
            return refused
        pending = self._pending.get(request.match_info["rid"])
        if pending is None:
            return _error(404, f"registration request {request.match_info['rid']} not found")
        name, csr = pending
        if self.approval_required and name not in self.approved:
            rid = request.match_info["rid"]
            return web.json_response({"status": "Pending", "requestId": rid}, status=202)
        return self._registration_answer(name, csr)

    async def _lease(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if refused := self._refuse(request, "nodes.lease", name):
            return refused
        body = await self._json(request) if request.can_read_body else {}
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        self.record.leases.append(body)
        return web.json_response({"renewed": name, "leaseRenewSeconds": self.lease_renew_s})

    async def _node_pods(self, request: web.Request) -> web.StreamResponse:
        node = request.match_info["name"]
        if refused := self._refuse(request, "nodes.pods", node):
            return refused
        if request.query.get("watch") not in ("1", "true"):
            self.record.lists += 1
            return web.json_response(
                {
                    "kind": "PodList",
                    "resourceVersion": self.revision,
                    "items": [self._pod_object(f) for f in self.pods if self.node_of(f) == node],
                }
            )
        try:
            revision = int(request.query.get("resourceVersion", "0") or "0")
        except ValueError:
            return _error(400, "resourceVersion must be an integer")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        # Recorded once the stream is open: from here on, events reach this watch.
        self.record.watches.append(revision)
        if self.gone_once or revision > self.revision or revision < self.compacted_to:
            # As the real master: the watch is already a 200 stream, so 410 comes in-band.
            self.gone_once = False
            gone = {"type": "ERROR", "object": error_body(410, f"revision {revision} is gone")}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        for rev, watched, line in self.history:
            if rev > revision and watched == node:
                queue.put_nowait(line)
        self._watchers.append((node, queue))
        try:
            while (data := await queue.get()) is not None:
                await response.write(data)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove((node, queue))
        return response

    async def _put_mirror(self, request: web.Request) -> web.Response:
        node, ns, pod = (request.match_info[k] for k in ("name", "ns", "pod"))
        if refused := self._refuse(request, "mirrorpods.put", node):
            return refused
        full = f"{ns}/{pod}"
        body = await self._json(request)
        meta = body.get("metadata") if isinstance(body, dict) else None
        if not isinstance(meta, dict) or meta.get("namespace") != ns or meta.get("name") != pod:
            return _error(400, "the manifest's namespace/name must match the URL")
        if not pod.endswith(f"-{node}"):
            return _error(400, f"a mirror pod of node {node} is named <static pod name>-{node}")
        if full in self.pods and (full not in self.mirrors or self.node_of(full) != node):
            return _error(409, f"pod {full} already exists on the master")
        self.record.mirrors_put.append(full)
        if self.mirrors.get(full) != body:
            status = self.pods[full]["status"] if full in self.mirrors else {"phase": "Pending"}
            self.mirrors[full] = body
            self.bound[full] = node
            kind = "MODIFIED" if full in self.pods else "ADDED"
            self.pods[full] = {**body, "status": status}
            self._event(kind, full, self._pod_object(full), notify=True)
        return web.json_response({"mirrored": full})

    async def _delete_mirror(self, request: web.Request) -> web.Response:
        node, ns, pod = (request.match_info[k] for k in ("name", "ns", "pod"))
        if refused := self._refuse(request, "mirrorpods.delete", node):
            return refused
        full = f"{ns}/{pod}"
        if full in self.pods:
            if full not in self.mirrors or self.node_of(full) != node:
                return _error(409, f"pod {full} is not a mirror pod of node {node}")
            self.delete_pod(full)
        self.record.mirrors_deleted.append(full)
        return web.json_response({"deleted": full})

    async def _events(self, request: web.Request) -> web.Response:
        node = request.match_info["name"]
        if refused := self._refuse(request, "nodes.events", node):
            return refused
        try:  # the master's own parser: the report's shape is the real one
            reported = parse_report(await self._json(request), node)
        except BadRequestError as exc:
            return _error(400, str(exc))

        def bound(item: ReportedEvent) -> bool:
            if item.kind == "Node":
                return item.name == node
            full = f"{item.namespace}/{item.name}"
            return full in self.pods and self.node_of(full) == node

        accepted = [item.event for item in reported if bound(item)]
        self.record.events.extend(accepted)
        return web.json_response(
            {"accepted": len(accepted), "rejected": len(reported) - len(accepted)}
        )

    async def _status(self, request: web.Request) -> web.Response:
        full = f"{request.match_info['ns']}/{request.match_info['pod']}"
        # As the real master: a node's request about a pod is looked up before it is judged,
        # so an unknown pod is 404 to a node (and 401 to anyone without a certificate).
        node = self.node_of(full) if full in self.pods else self._principal(request).node
        if refused := self._refuse(request, "pods.status", node):
            return refused
        if full not in self.pods:
            return _error(404, f"pod {full} not found")
        body = await self._json(request)
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        flag = request.query.get("mirror")
        if flag is not None and (flag in ("1", "true")) != (full in self.mirrors):
            return _error(
                409, f"pod {full} is {'not ' if full not in self.mirrors else ''}a mirror"
            )
        self.record.statuses.append((full, body))
        self.set_status(full, body)
        return web.json_response({"updated": full})

    async def _rotate(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if refused := self._refuse(request, "nodes.certificate", name):
            return refused
        body = await self._json(request)
        csr = body.get("csr") if isinstance(body, dict) else None
        try:
            key = self._csr_key(name, str(csr or ""))
        except PkiError as exc:
            return _error(400, str(exc))
        self.record.rotations += 1
        certificate = self._sign(name, key)
        if self.hold_rotation is not None:
            await self.hold_rotation.wait()
        return web.json_response({"certificate": certificate, "caBundle": self.ca_pem.decode()})
