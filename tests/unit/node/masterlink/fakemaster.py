"""A master on loopback for the master link's unit tests: aiohttp over TLS with a CA made in
the test, the routes the link uses, and knobs for what a test needs — registration answers,
identity rejection, outages (every request 503, or the port closed), pods with resource
versions, junk lines on the pod watch, 410 Gone.

It speaks the master's wire format (docs/master.md), not its logic: no trust policy, no store.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from agent.aio.tls import server_context
from agent.pki.core import (
    cert_to_pem,
    create_ca,
    generate_key,
    issue,
    key_to_pem,
    load_csr,
    spki_pin,
)
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

NODE = "n1"
LEASE_RENEW_S = 1.0


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
        )
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "master.crt").write_bytes(cert_to_pem(cert))
        (directory / "master.key").write_bytes(key_to_pem(key))
        self.record = Recorded()
        # Knobs.
        self.registration: Callable[[int], tuple[int, dict[str, Any]]] = self.approve
        self.reject_identity = False  # 401 to every mTLS route
        self.unavailable = False  # 503 to every route
        self.gone_once = False  # the next watch answers 410
        self.lease_renew_s = LEASE_RENEW_S
        # Pods of node n1: full name -> object; resource versions grow by one per change.
        self.pods: dict[str, dict[str, Any]] = {}
        self.revision = 1
        self._watchers: list[asyncio.Queue[bytes | None]] = []
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
        app = web.Application()
        app.router.add_get("/v1/ca", self._ca)
        app.router.add_post("/v1/registrations", self._register)
        app.router.add_get("/v1/registrations/{rid}", self._poll)
        app.router.add_put("/v1/nodes/{name}/lease", self._lease)
        app.router.add_get("/v1/nodes/{name}/pods", self._node_pods)
        app.router.add_put("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self._put_mirror)
        app.router.add_delete("/v1/nodes/{name}/mirrorpods/{ns}/{pod}", self._delete_mirror)
        app.router.add_put("/v1/namespaces/{ns}/pods/{pod}/status", self._status)
        app.router.add_post("/v1/nodes/{name}/certificate", self._rotate)
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- pods -----------------------------------------------------------------------------

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        self.revision += 1
        line = json.dumps({"type": kind, "object": obj, "resourceVersion": self.revision})
        self.send(line.encode())

    def add_pod(self, manifest: dict[str, Any], *, notify: bool = True) -> dict[str, Any]:
        meta = manifest["metadata"]
        full = f"{meta['namespace']}/{meta['name']}"
        kind = "MODIFIED" if full in self.pods else "ADDED"
        obj = {**manifest, "status": {"phase": "Pending"}}
        self.pods[full] = obj
        if notify:
            self._event(kind, obj)
        else:
            self.revision += 1
        return obj

    def delete_pod(self, full: str, *, notify: bool = True) -> None:
        obj = self.pods.pop(full)
        if notify:
            self._event("DELETED", obj)
        else:
            self.revision += 1

    def send(self, line: bytes) -> None:
        """A raw line (newline added) to every open watch."""
        for queue in self._watchers:
            queue.put_nowait(line + b"\n")

    def send_raw(self, data: bytes) -> None:
        for queue in self._watchers:
            queue.put_nowait(data)

    def end_watches(self) -> None:
        for queue in self._watchers:
            queue.put_nowait(None)

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # -- registration answers -------------------------------------------------------------

    def approve(self, attempt: int) -> tuple[int, dict[str, Any]]:
        return 200, {"certificate": "", "admittedBy": "open"}

    # -- handlers -------------------------------------------------------------------------

    def _sign(self, csr_pem: str) -> str:
        csr = load_csr(csr_pem.encode())
        cert = issue(
            self.ca_key,
            self.ca_cert,
            csr.public_key(),  # type: ignore[arg-type]
            common_name=NODE_CN_PREFIX + NODE,
            groups=[NODES_GROUP],
            lifetime_s=self.cert_lifetime_s,
        )
        return cert_to_pem(cert).decode()

    def _refuse(self, request: web.Request, *, mtls: bool = True) -> web.Response | None:
        if self.unavailable:
            return web.json_response({"error": {"message": "down"}}, status=503)
        if mtls and (self.reject_identity or request.transport is None):
            return web.json_response({"error": {"code": 401, "message": "who are you"}}, status=401)
        if mtls:
            assert request.transport is not None
            if request.transport.get_extra_info("peercert") is None:
                return web.json_response({"error": {"message": "client cert required"}}, 401)
        return None

    async def _ca(self, request: web.Request) -> web.Response:
        self.record.ca_fetches += 1
        if refused := self._refuse(request, mtls=False):
            return refused
        return web.Response(body=self.ca_pem)

    async def _register(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request, mtls=False):
            return refused
        body = await request.json()
        self.record.registrations.append(body)
        return self._registration_answer(body["csr"])

    def _registration_answer(self, csr: str) -> web.Response:
        status, answer = self.registration(len(self.record.registrations) + self.record.polls)
        if status == 200:
            answer = {**answer, "certificate": self._sign(csr)}
        elif status == 202:
            self._pending_csr = csr
        return web.json_response(answer, status=status)

    async def _poll(self, request: web.Request) -> web.Response:
        self.record.polls += 1
        return self._registration_answer(self._pending_csr)

    async def _lease(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        self.record.leases.append(await request.json() if request.can_read_body else {})
        return web.json_response({"renewed": NODE, "leaseRenewSeconds": self.lease_renew_s})

    async def _node_pods(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        if request.query.get("watch") != "1":
            self.record.lists += 1
            return web.json_response(
                {
                    "kind": "PodList",
                    "resourceVersion": self.revision,
                    "items": list(self.pods.values()),
                }
            )
        revision = int(request.query["resourceVersion"])
        if self.gone_once:
            self.gone_once = False
            self.record.watches.append(revision)
            return web.json_response({"error": {"code": 410, "message": "compacted"}}, status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._watchers.append(queue)
        # Recorded once the stream is open: from here on, events reach this watch.
        self.record.watches.append(revision)
        try:
            while (data := await queue.get()) is not None:
                await response.write(data)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(queue)
        return response

    async def _put_mirror(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        self.record.mirrors_put.append(f"{request.match_info['ns']}/{request.match_info['pod']}")
        return web.json_response({"mirrored": "ok"})

    async def _delete_mirror(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        self.record.mirrors_deleted.append(
            f"{request.match_info['ns']}/{request.match_info['pod']}"
        )
        return web.json_response({"deleted": "ok"})

    async def _status(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        full = f"{request.match_info['ns']}/{request.match_info['pod']}"
        self.record.statuses.append((full, await request.json()))
        return web.json_response({"ok": True})

    async def _rotate(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        self.record.rotations += 1
        body = await request.json()
        return web.json_response({"certificate": self._sign(body["csr"])})
