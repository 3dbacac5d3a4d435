"""The master's HTTPS API (aiohttp): routes, authentication from the TLS peer certificate, and
per-request authorization.

Anonymous callers may only use ``/healthz``, ``/metrics``, ``/v1/ca`` and registration. A
node certificate (``O=system:nodes``) may act only on its own node and its own pods (the
NodeRestriction idea) and only while its record is Approved with the same key — so
``nodectl delete node`` also revokes. An admin certificate (``O=system:masters``) may do
everything. Errors are ``{"error": {"code", "message", "details"}}`` with the status the error
carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent import __version__
from agent.aio.logs import kv
from agent.errors import (
    AgentError,
    BadRequestError,
    CompactedError,
    ForbiddenError,
    ManifestError,
    NotFoundError,
    PkiError,
    UnauthenticatedError,
)
from agent.master.pods import PodStore, pod_object
from agent.master.policy import effective_peer
from agent.master.registry import NodeRegistry
from agent.pki.core import cert_to_pem, identity_of, public_key_id, verify_issued_by

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: ``kind`` is anonymous, node, admin or external."""

    kind: str
    name: str = ""
    cert: x509.Certificate | None = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(status: int, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "details": details or {}}}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response(error_body(exc.status, exc.reason), status=exc.status)
    except ManifestError as exc:
        return web.json_response(error_body(422, str(exc), {"field": exc.field}), status=422)
    except PkiError as exc:
        return web.json_response(error_body(400, str(exc)), status=400)
    except AgentError as exc:
        return web.json_response(error_body(exc.http_status, str(exc)), status=exc.http_status)


LATENCY_SAMPLES = 20_000
LOOP_LAG_PROBE_S = 0.05


class MasterApi:
    def __init__(
        self, registry: NodeRegistry, pods: PodStore, trusted_proxies: tuple[str, ...]
    ) -> None:
        self.registry = registry
        self.pods = pods
        self.trusted_proxies = trusted_proxies
        self.requests_total = 0
        # Recent samples (seconds) for /metrics quantiles: lease handling time, and how late
        # the event loop runs a timer (queueing every request sees when the loop is busy).
        self.lease_seconds: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.loop_lag_seconds: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    async def sample_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_PROBE_S
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self.loop_lag_seconds.append(max(0.0, loop.time() - expected))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY_BYTES)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/ca", self.ca)
        r.add_post("/v1/registrations", self.register)
        r.add_get("/v1/registrations/{rid}", self.poll_registration)
        r.add_get("/v1/nodes", self.list_nodes)
        r.add_get("/v1/nodes/{name}", self.get_node)
        r.add_delete("/v1/nodes/{name}", self.delete_node)
        r.add_post("/v1/nodes/{name}/{action:approve|deny|cordon|uncordon}", self.node_action)
        r.add_put("/v1/nodes/{name}/lease", self.renew_lease)
        r.add_post("/v1/nodes/{name}/certificate", self.rotate_certificate)
        r.add_get("/v1/nodes/{name}/pods", self.node_pods)
        r.add_put("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self.put_mirror)
        r.add_delete("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self.delete_mirror)
        r.add_post("/v1/pods", self.apply_pod)
        r.add_get("/v1/pods", self.list_pods)
        r.add_get("/v1/events", self.list_events)
        r.add_get("/v1/namespaces/{ns}/pods/{pod}", self.get_pod)
        r.add_delete("/v1/namespaces/{ns}/pods/{pod}", self.delete_pod)
        r.add_put("/v1/namespaces/{ns}/pods/{pod}/status", self.put_pod_status)
        return app

    # -- authentication and authorization ---------------------------------------------------

    def _peer_cert(self, request: web.Request) -> x509.Certificate | None:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            return None
        der = ssl_object.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der) if der else None

    def _peer_ip(self, request: web.Request) -> str:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        ip = str(peer[0]) if peer else ""
        return effective_peer(ip, request.headers.get("X-Forwarded-For"), self.trusted_proxies)

    def principal(self, request: web.Request) -> Principal:
        cert = self._peer_cert(request)
        if cert is None:
            return Principal("anonymous")
        try:
            verify_issued_by(cert, [self.registry.pki.ca_cert])
        except PkiError:
            return Principal("external", cert=cert)  # a fleet CA's cert: only for registering
        ident = identity_of(cert)
        if ident.is_admin:
            return Principal("admin", ident.common_name, cert)
        if ident.may_read:
            return Principal("viewer", ident.common_name, cert)
        if ident.node_name is not None:
            return Principal("node", ident.node_name, cert)
        return Principal("external", cert=cert)

    def require_admin(self, request: web.Request) -> Principal:
        who = self.principal(request)
        if who.kind == "admin":
            return who
        if who.kind == "anonymous":
            raise UnauthenticatedError("a client certificate from this cluster is required")
        raise ForbiddenError(f"{who.kind} {who.name!r} may not {request.method} {request.path}")

    def require_reader(self, request: web.Request) -> Principal:
        """Reading nodes, pods and events: administrators and viewers (``system:viewers``)."""
        who = self.principal(request)
        if who.kind == "viewer" and request.method == "GET":
            return who
        return self.require_admin(request)

    async def require_node_or_admin(
        self, request: web.Request, node: str, *, viewers: bool = False
    ) -> Principal:
        who = self.principal(request)
        if who.kind == "admin" or (viewers and who.kind == "viewer"):
            return who
        if who.kind == "node" and who.name == node:
            key = who.cert.public_key() if who.cert else None
            if isinstance(key, ec.EllipticCurvePublicKey) and self.registry.is_current_node(
                node, public_key_id(key)
            ):
                return who
            raise ForbiddenError(f"node {node!r} is not (or no longer) approved with this key")
        if who.kind == "anonymous":
            raise UnauthenticatedError("a client certificate from this cluster is required")
        raise ForbiddenError(f"{who.kind} {who.name!r} may not act on node {node!r}")

    # -- handlers ---------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"request body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object")
        return body

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(self, request: web.Request) -> web.Response:
        records = await self.registry.records()
        by_phase: dict[str, int] = {}
        ready = 0
        for record in records:
            by_phase[record["registration"]] = by_phase.get(record["registration"], 0) + 1
            ready += self.registry.readiness(record["name"])[0] == "True"
        lines = ["# TYPE node_master_nodes gauge"]
        lines += [
            f'node_master_nodes{{registration="{p}"}} {n}' for p, n in sorted(by_phase.items())
        ]
        lines += ["# TYPE node_master_nodes_ready gauge", f"node_master_nodes_ready {ready}"]
        for metric, samples in (
            ("node_master_lease_handling_seconds", self.lease_seconds),
            ("node_master_loop_lag_seconds", self.loop_lag_seconds),
        ):
            lines.append(f"# TYPE {metric} summary")
            ordered = sorted(samples)
            for q in (0.5, 0.99, 1.0):
                value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0
                lines.append(f'{metric}{{quantile="{q:g}"}} {value:.6f}')
            lines.append(f"{metric}_count {len(ordered)}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def ca(self, request: web.Request) -> web.Response:
        return web.Response(
            text=cert_to_pem(self.registry.pki.ca_cert).decode(),
            content_type="application/x-pem-file",
        )

    async def register(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        who = self.principal(request)
        trusted = who.name if who.kind == "node" else None
        if trusted is not None:
            await self.require_node_or_admin(request, trusted)
        result = await self.registry.register(
            body,
            self._peer_ip(request),
            who.cert if who.kind == "external" else None,
            trusted,
        )
        return web.json_response(result.body, status=result.status)

    async def poll_registration(self, request: web.Request) -> web.Response:
        try:
            timeout_s = float(request.query.get("timeoutSeconds", "0"))
        except ValueError as exc:
            raise BadRequestError("timeoutSeconds must be a number") from exc
        result = await self.registry.poll(request.match_info["rid"], timeout_s)
        return web.json_response(result.body, status=result.status)

    async def list_nodes(self, request: web.Request) -> web.Response:
        self.require_reader(request)
        items = [self.registry.node_object(r) for r in await self.registry.records()]
        return web.json_response({"apiVersion": "v1", "kind": "NodeList", "items": items})

    async def get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.require_node_or_admin(request, name, viewers=True)
        found = await self.registry.get_record(name)
        if found is None:
            raise NotFoundError(f"node {name!r} not found")
        return web.json_response(self.registry.node_object(found[0]))

    async def delete_node(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        await self.registry.delete(request.match_info["name"])
        return web.json_response({"deleted": request.match_info["name"]})

    async def node_action(self, request: web.Request) -> web.Response:
        who = self.require_admin(request)
        name = request.match_info["name"]
        action = request.match_info["action"]
        if action == "approve":
            body = await self._json(request) if request.can_read_body else {}
            record = await self.registry.approve(name, force_replace=bool(body.get("forceReplace")))
        elif action == "deny":
            body = await self._json(request) if request.can_read_body else {}
            record = await self.registry.deny(name, str(body.get("reason", "")))
        else:
            record = await self.registry.set_unschedulable(name, action == "cordon")
            if action == "uncordon":
                self.pods.kick.set()
        log.info("node action", extra=kv(node=name, action=action, by=who.name))
        return web.json_response(self.registry.node_object(record))

    async def renew_lease(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            return await self._renew_lease(request)
        finally:
            self.lease_seconds.append(time.perf_counter() - started)

    async def _renew_lease(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.require_node_or_admin(request, name)
        first = name not in self.registry.leases
        self.registry.renew_lease(name)
        if request.can_read_body:
            body = await self._json(request)
            if isinstance(body.get("status"), dict):
                await self.registry.update_status(name, body["status"])
        if first:
            self.pods.kick.set()  # a node became Ready: retry pending pods, off this request
        return web.json_response(
            {"renewed": name, "leaseRenewSeconds": self.registry.config.lease_renew_s}
        )

    async def rotate_certificate(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        who = await self.require_node_or_admin(request, name)
        if who.kind != "node":
            raise ForbiddenError("only the node itself renews its certificate")
        body = await self._json(request)
        certificate = await self.registry.rotate(name, str(body.get("csr", "")))
        return web.json_response(
            {
                "certificate": certificate,
                "caBundle": cert_to_pem(self.registry.pki.ca_cert).decode(),
            }
        )

    async def node_pods(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        await self.require_node_or_admin(request, name)
        if request.query.get("watch") not in ("1", "true"):
            objs, rev = await self.pods.list(node=name)
            return web.json_response(
                {"kind": "PodList", "resourceVersion": rev, "items": [pod_object(o) for o in objs]}
            )
        try:
            after = int(request.query.get("resourceVersion", "0"))
        except ValueError as exc:
            raise BadRequestError("resourceVersion must be an integer") from exc
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for event in self.pods.watch_node(name, after):
                await response.write(json.dumps(event).encode() + b"\n")
        except CompactedError as exc:
            # In-band, as Kubernetes does: the client relists.
            with contextlib.suppress(ConnectionResetError):
                await response.write(
                    json.dumps({"type": "ERROR", "object": error_body(410, str(exc))}).encode()
                    + b"\n"
                )
        except ConnectionResetError:
            # The node went away (restart, partition healed onto a new connection): its next
            # watch resumes from the resource version it saw last.
            log.info("pod watch ended by the node", extra=kv(node=name))
        return response

    async def put_mirror(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        who = await self.require_node_or_admin(request, name)
        if who.kind != "node":
            raise ForbiddenError("mirror pods are written by their node only")
        body = await self._json(request)
        meta = body.get("metadata") or {}
        if (
            meta.get("namespace") != request.match_info["ns"]
            or meta.get("name") != request.match_info["pod"]
        ):
            raise BadRequestError("the manifest's namespace/name must match the URL")
        await self.pods.put_mirror(name, body)
        return web.json_response(
            {"mirrored": f"{request.match_info['ns']}/{request.match_info['pod']}"}
        )

    async def delete_mirror(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self.require_node_or_admin(request, name)
        await self.pods.delete_mirror(name, request.match_info["ns"], request.match_info["pod"])
        return web.json_response(
            {"deleted": f"{request.match_info['ns']}/{request.match_info['pod']}"}
        )

    async def apply_pod(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        obj, created = await self.pods.apply(await self._json(request))
        return web.json_response(pod_object(obj), status=201 if created else 200)

    async def list_pods(self, request: web.Request) -> web.Response:
        self.require_reader(request)
        objs, rev = await self.pods.list()
        namespace = request.query.get("namespace")
        items = [
            pod_object(o)
            for o in objs
            if namespace is None or o["manifest"]["metadata"]["namespace"] == namespace
        ]
        return web.json_response({"kind": "PodList", "resourceVersion": rev, "items": items})

    async def list_events(self, request: web.Request) -> web.Response:
        self.require_reader(request)
        items = self.registry.events.list(request.query.get("kind"), request.query.get("name"))
        return web.json_response({"apiVersion": "v1", "kind": "EventList", "items": items})

    async def get_pod(self, request: web.Request) -> web.Response:
        self.require_reader(request)
        obj = await self.pods.get(request.match_info["ns"], request.match_info["pod"])
        return web.json_response(pod_object(obj))

    async def delete_pod(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        await self.pods.delete(request.match_info["ns"], request.match_info["pod"])
        return web.json_response(
            {"deleted": f"{request.match_info['ns']}/{request.match_info['pod']}"}
        )

    async def put_pod_status(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["pod"]
        obj = await self.pods.get(ns, name)
        node = obj["nodeName"]
        who = (
            await self.require_node_or_admin(request, node) if node else self.require_admin(request)
        )
        body = await self._json(request)
        await self.pods.set_status(ns, name, body, node or who.name)
        return web.json_response({"updated": f"{ns}/{name}"})


def version_info() -> dict[str, str]:
    return {"version": __version__}
