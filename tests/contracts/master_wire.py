"""The master's wire contract as the node's master link relies on it (agent/node/masterlink/):
the routes it calls, the status codes it tells apart, the JSON fields it reads.

Written once against a small harness and run against every master the link is tested with: the
fake (tests/unit/node/masterlink/test_fakemaster_contract.py) and a real ``node-master``
(tests/integration/test_master_wire_contract.py), so the fake cannot drift from the truth. A test
module subclasses :class:`MasterWireContract` and provides a ``masters`` fixture yielding a
:class:`MasterFactory`. The suite talks to the master with the link's own pieces: the node's
identity files (``NodeIdentity``: key, CSR, pinned CA), its HTTP client, the watch's line reader
and decoders; a node's certificate always comes from a real registration over HTTP.

What the link reads, and so what is held here:

* ``GET /v1/ca``: anyone; a PEM bundle matching the pin, which verifies the master.
* ``POST /v1/registrations``: anyone; 200 with ``certificate`` (PEM, CN ``system:node:<name>``,
  O ``system:nodes``, from that CA, for the CSR's key); 202 with ``requestId``, polled at
  ``GET /v1/registrations/<id>?timeoutSeconds=`` (202 while pending, 200 once approved); 409
  for a name held by another key; errors as ``{"error": {"message": …}}``.
* With the node's certificate: ``PUT …/lease`` answers ``leaseRenewSeconds``; ``GET …/pods``
  answers ``items`` and ``resourceVersion``; ``?watch=1&resourceVersion=R`` streams NDJSON
  events after R, missing none (410 — status or in-band ERROR — once R is compacted); mirror pods
  carry ``node-agent.io/mirror``; pod status and rotation as below. Without a certificate 401,
  with another node's (or a superseded one) 403 — which the link takes for "register again".
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import client_context
from agent.manifest import parse_pod
from agent.node.masterlink.client import MasterClient, MasterSession, error_message
from agent.node.masterlink.identity import NodeIdentity
from agent.node.masterlink.watch import (
    GONE,
    MAX_EVENT_BYTES,
    MIRROR_ANNOTATION,
    SOURCE_API,
    WatchEvent,
    bounded_lines,
    decode_event,
    decode_listing,
)
from agent.pki.core import certs_from_pem, identity_of, key_from_pem, verify_issued_by
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

WAIT_S = 15.0  # a deadline for answers that come at once when the master works
IMAGE = "node-agent-test/busybox:latest"


class MasterWire(Protocol):
    """One running master, and the administrator's hands on it."""

    url: str
    pin: str  # the CA's SPKI pin, as ``node-master init`` prints it

    async def apply_pod(self, manifest: dict[str, Any], node: str) -> None:
        """Create the pod, bound to ``node``."""
        ...

    async def delete_pod(self, namespace: str, name: str) -> None: ...

    async def compact(self) -> None:
        """Make the history before now unavailable to watches."""
        ...

    async def approve(self, node: str) -> None:
        """Approve the node's pending registration."""
        ...


class MasterFactory(Protocol):
    async def start(self, *, approval: bool = False) -> MasterWire:
        """A fresh master; ``approval``: registrations wait for an administrator."""
        ...


def pod(name: str, *, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never"}],
        },
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def message(self) -> str:
        return error_message(self.body)


async def call(session: MasterSession, method: str, path: str, body: Any = None) -> Answer:
    async with session.http.request(method, session.url(path), json=body) as resp:
        return Answer(resp.status, await resp.json(content_type=None))


class Node:
    """A node's identity toward one master: its key, CSR and certificate files, as the link
    keeps them (``NodeIdentity``)."""

    def __init__(self, wire: Wire, name: str, directory: Path) -> None:
        self.wire = wire
        self.name = name
        self.identity = NodeIdentity(
            directory, wire.bridge, node_name=name, ca_pins=(wire.master.pin,)
        )

    async def csr(self) -> str:
        return self.identity.csr(await self.identity.ensure_key(), [self.name]).decode()

    async def registration_body(self) -> dict[str, Any]:
        return {
            "nodeName": self.name,
            "csr": await self.csr(),
            "addresses": ["127.0.0.1"],
            "hostname": self.name,
            "capacity": {"cpu": "2", "memory": "1024Mi", "pods": "10"},
            "labels": {"zone": "a"},
            "agentVersion": "contract",
        }

    async def register(self) -> Answer:
        """Register (open policy) and keep the certificate."""
        async with self.wire.anonymous() as session:
            answer = await call(
                session, "POST", "/v1/registrations", await self.registration_body()
            )
        assert answer.status == 200, answer
        await self.keep(answer)
        return answer

    async def keep(self, answer: Answer) -> None:
        certificate = answer.body["certificate"]
        assert isinstance(certificate, str)
        await self.identity.store_cert(certificate.encode())

    @asynccontextmanager
    async def session(self) -> AsyncIterator[MasterSession]:
        tls = await self.identity.client_tls(self.wire.ca_pem)
        async with self.wire.client.session(tls) as session:
            yield session

    async def lease(self, body: dict[str, Any] | None = None) -> Answer:
        async with self.session() as session:
            return await call(session, "PUT", f"/v1/nodes/{self.name}/lease", body or {})

    async def listing(self) -> tuple[list[dict[str, Any]], int]:
        async with self.session() as session:
            answer = await call(session, "GET", f"/v1/nodes/{self.name}/pods")
        assert answer.status == 200, answer
        return decode_listing(answer.body)

    async def listed(self) -> dict[str, dict[str, Any]]:
        items, _ = await self.listing()
        return {f"{i['metadata']['namespace']}/{i['metadata']['name']}": i for i in items}


class Wire:
    """The suite's view of one master: its URL and CA, and the nodes registered with it."""

    def __init__(self, master: MasterWire, bridge: ThreadBridge, directory: Path) -> None:
        self.master = master
        self.bridge = bridge
        self.directory = directory
        self.client = MasterClient(master.url, bridge)
        self.ca_pem = b""

    async def fetch_ca(self) -> bytes:
        """The CA as the link gets it: fetched anonymously, checked against the pin."""
        probe = NodeIdentity(
            self.directory / unique("ca"),
            self.bridge,
            node_name="probe",
            ca_pins=(self.master.pin,),
        )
        self.ca_pem = await probe.pinned_ca(self.client)
        return self.ca_pem

    def node(self, name: str | None = None) -> Node:
        name = name or unique("node")
        return Node(self, name, self.directory / unique(name))

    @asynccontextmanager
    async def anonymous(self) -> AsyncIterator[MasterSession]:
        async with self.client.session(client_context(self.ca_pem)) as session:
            yield session


async def watch_events(
    session: MasterSession, node: str, after: int, count: int
) -> tuple[int, list[WatchEvent]]:
    """The status of a pod watch from ``after`` and its first ``count`` events (fewer when
    the master ends the stream first), each decoded as the link decodes it."""
    path = f"/v1/nodes/{node}/pods?watch=1&resourceVersion={after}"

    async def read() -> tuple[int, list[WatchEvent]]:
        events: list[WatchEvent] = []
        async with session.http.get(session.url(path)) as resp:
            if resp.status != 200:
                return resp.status, events
            async for line in bounded_lines(resp.content, MAX_EVENT_BYTES):
                if line.strip():
                    events.append(decode_event(line))
                if len(events) == count:
                    break
        return 200, events

    return await asyncio.wait_for(read(), WAIT_S)


def gone(status: int, events: list[WatchEvent]) -> bool:
    """A 410, in the status or as the first event (in-band, as Kubernetes does)."""
    if status == GONE:
        return True
    return (
        bool(events) and events[0].type == "ERROR" and events[0].object["error"].get("code") == GONE
    )


def public_der(pem: bytes) -> bytes:
    return (
        certs_from_pem(pem)[0]
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


class MasterWireContract:
    """The tests; a subclass provides the ``masters`` fixture."""

    @pytest.fixture
    async def wire_bridge(self) -> AsyncIterator[ThreadBridge]:
        bridge = ThreadBridge(4, name="wire-contract")
        yield bridge
        bridge.close()

    @pytest.fixture
    async def wire(self, masters: MasterFactory, wire_bridge: ThreadBridge, tmp_path: Path) -> Wire:
        wire = Wire(await masters.start(), wire_bridge, tmp_path / "nodes")
        await wire.fetch_ca()
        return wire

    # -- CA and registration ---------------------------------------------------------------

    async def test_the_ca_matches_the_pin_and_verifies_the_master(self, wire: Wire) -> None:
        assert certs_from_pem(wire.ca_pem)
        # The anonymous session trusts that CA only: the handshake verifies the master.
        async with wire.anonymous() as session, session.http.get(session.url("/v1/ca")) as resp:
            assert resp.status == 200
            assert certs_from_pem(await resp.read()) == certs_from_pem(wire.ca_pem)

    async def test_open_registration_issues_a_node_certificate(self, wire: Wire) -> None:
        node = wire.node()
        answer = await node.register()
        assert isinstance(answer.body.get("admittedBy"), str)
        cert_pem = answer.body["certificate"].encode()
        cert = certs_from_pem(cert_pem)[0]
        verify_issued_by(cert, certs_from_pem(wire.ca_pem))
        ident = identity_of(cert)
        assert ident.common_name == NODE_CN_PREFIX + node.name
        assert NODES_GROUP in ident.groups
        key_pem = await node.identity.ensure_key()
        assert public_der(cert_pem) == key_from_pem(key_pem).public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        assert (await node.lease()).status == 200  # the certificate works for mTLS

    async def test_a_registration_waiting_for_approval_is_polled_until_approved(
        self, masters: MasterFactory, wire_bridge: ThreadBridge, tmp_path: Path
    ) -> None:
        wire = Wire(await masters.start(approval=True), wire_bridge, tmp_path / "nodes")
        await wire.fetch_ca()
        node = wire.node()
        async with wire.anonymous() as session:
            first = await call(session, "POST", "/v1/registrations", await node.registration_body())
            assert first.status == 202, first
            request_id = first.body["requestId"]
            assert isinstance(request_id, str) and request_id
            poll = f"/v1/registrations/{request_id}?timeoutSeconds=0"
            waiting = await call(session, "GET", poll)
            assert waiting.status == 202, waiting
            assert waiting.body["requestId"] == request_id
            await wire.master.approve(node.name)
            approved = await call(session, "GET", poll)
        assert approved.status == 200, approved
        await node.keep(approved)
        assert (await node.lease()).status == 200

    async def test_a_name_held_by_another_key_is_a_conflict(self, wire: Wire) -> None:
        holder = wire.node()
        await holder.register()
        usurper = wire.node(holder.name)  # same name, another key
        async with wire.anonymous() as session:
            answer = await call(
                session, "POST", "/v1/registrations", await usurper.registration_body()
            )
        assert answer.status == 409, answer
        assert answer.message

    async def test_a_malformed_registration_is_a_client_error(self, wire: Wire) -> None:
        node = wire.node()
        async with wire.anonymous() as session:
            without_csr = await call(session, "POST", "/v1/registrations", {"nodeName": node.name})
            other_name = await call(
                session,
                "POST",
                "/v1/registrations",
                {**await node.registration_body(), "nodeName": unique("other")},
            )
        for answer in (without_csr, other_name):
            assert answer.status == 400, answer
            assert answer.message

    # -- the node's session ----------------------------------------------------------------

    async def test_the_lease_answers_its_renewal_interval(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        for body in ({}, {"status": {"addresses": ["127.0.0.1"], "conditions": []}}):
            answer = await node.lease(body)
            assert answer.status == 200, answer
            renew_s = answer.body["leaseRenewSeconds"]
            assert isinstance(renew_s, int | float) and renew_s > 0

    async def test_node_routes_need_the_nodes_own_current_certificate(self, wire: Wire) -> None:
        a, b = wire.node(), wire.node()
        await a.register()
        await b.register()
        async with wire.anonymous() as session:
            anonymous = [
                await call(session, "PUT", f"/v1/nodes/{a.name}/lease", {}),
                await call(session, "GET", f"/v1/nodes/{a.name}/pods"),
            ]
        async with b.session() as session:
            other = [
                await call(session, "PUT", f"/v1/nodes/{a.name}/lease", {}),
                await call(session, "GET", f"/v1/nodes/{a.name}/pods"),
            ]
        assert [x.status for x in anonymous] == [401, 401], anonymous
        assert [x.status for x in other] == [403, 403], other
        assert all(x.message for x in anonymous + other)

    async def test_the_listing_holds_the_nodes_pods_as_the_node_parses_them(
        self, wire: Wire
    ) -> None:
        a, b = wire.node(), wire.node()
        await a.register()
        await wire.master.apply_pod(pod("mine"), a.name)
        await wire.master.apply_pod(pod("theirs"), b.name)
        listed = await a.listed()
        assert set(listed) == {"default/mine"}
        item = listed["default/mine"]
        parsed = parse_pod(
            {k: item[k] for k in ("apiVersion", "kind", "metadata", "spec")}, source=SOURCE_API
        )
        assert parsed.uid  # the master gives every pod a uid
        assert parsed.spec.containers[0].image == IMAGE
        assert isinstance(item["status"], dict)

    async def test_a_watch_from_the_listing_misses_nothing(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        _, listed_at = await node.listing()
        await wire.master.apply_pod(pod("p"), node.name)  # between the listing and the watch
        async with node.session() as session:
            status, events = await watch_events(session, node.name, listed_at, 1)
            assert status == 200
            (added,) = events
            # The link applies ADDED and MODIFIED alike. (The real master calls a replayed
            # creation MODIFIED when the pod exists by the time the watch starts.)
            assert added.type in ("ADDED", "MODIFIED"), added
            assert added.full_name == "default/p", added
            assert added.resource_version is not None and added.resource_version > listed_at
            uid = added.object["metadata"]["uid"]

            reported = await call(
                session, "PUT", "/v1/namespaces/default/pods/p/status", {"phase": "Running"}
            )
            assert 200 <= reported.status < 300, reported
            await wire.master.delete_pod("default", "p")
            status, events = await watch_events(session, node.name, added.resource_version, 2)
        assert status == 200
        modified, deleted = events
        assert modified.type in ("ADDED", "MODIFIED"), events  # (the same remark)
        assert modified.full_name == "default/p", events
        assert modified.object["metadata"]["uid"] == uid
        assert modified.object["status"]["phase"] == "Running"
        assert (deleted.type, deleted.full_name) == ("DELETED", "default/p")
        revisions = [added.resource_version, modified.resource_version, deleted.resource_version]
        assert revisions == sorted(set(revisions))  # type: ignore[type-var]

    async def test_a_watch_from_a_compacted_or_unknown_revision_is_gone(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        _, listed_at = await node.listing()
        await wire.master.apply_pod(pod("p"), node.name)
        await wire.master.compact()
        async with node.session() as session:
            assert gone(*await watch_events(session, node.name, listed_at, 1))
            _, now = await node.listing()
            assert gone(*await watch_events(session, node.name, now + 1_000_000, 1))

    async def test_mirror_pods_are_marked_and_take_their_status(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        static = f"{unique('static')}-{node.name}"  # kubelet's <name>-<node>
        path = f"/v1/nodes/{node.name}/mirrorpods/default/{static}"
        unsuffixed = unique("static")
        async with node.session() as session:
            put = await call(session, "PUT", path, pod(static))
            again = await call(session, "PUT", path, pod(static))
            mismatch = await call(session, "PUT", path, pod("another-name"))
            misnamed = await call(
                session,
                "PUT",
                f"/v1/nodes/{node.name}/mirrorpods/default/{unsuffixed}",
                pod(unsuffixed),
            )
            listed = await node.listed()
            status_path = f"/v1/namespaces/default/pods/{static}/status"
            status = await call(session, "PUT", status_path + "?mirror=true", {"phase": "Running"})
            not_ours = await call(session, "PUT", status_path + "?mirror=false", {"phase": "x"})
            with_status = await node.listed()
            deleted = await call(session, "DELETE", path)
            after = await node.listed()
            deleted_again = await call(session, "DELETE", path)
        assert [put.status, again.status] == [200, 200], (put, again)
        assert mismatch.status == 400 and mismatch.message, mismatch
        assert misnamed.status == 400 and misnamed.message, misnamed
        assert not_ours.status == 409 and not_ours.message, not_ours
        mirror = listed[f"default/{static}"]
        assert mirror["metadata"]["annotations"][MIRROR_ANNOTATION]
        assert 200 <= status.status < 300, status
        assert with_status[f"default/{static}"]["status"]["phase"] == "Running"
        assert deleted.status == 200, deleted
        assert f"default/{static}" not in after
        assert deleted_again.status == 200, deleted_again

    async def test_a_node_reports_its_events_and_a_malformed_report_is_refused(
        self, wire: Wire
    ) -> None:
        node = wire.node()
        await node.register()
        event = {
            "involvedObject": {"kind": "Node", "name": node.name, "namespace": "", "uid": ""},
            "reason": "Starting",
            "message": "node-agent started",
            "type": "Normal",
            "firstTimestamp": "2026-12-03T10:00:00Z",
            "lastTimestamp": "2026-12-03T10:00:05Z",
            "count": 2,
        }
        async with node.session() as session:
            taken = await call(session, "POST", f"/v1/nodes/{node.name}/events", {"items": [event]})
            bad = await call(session, "POST", f"/v1/nodes/{node.name}/events", {"items": "x"})
        assert taken.status == 200 and taken.body["accepted"] == 1, taken
        assert bad.status == 400 and bad.message, bad

    async def test_the_status_of_an_unknown_pod_is_not_found(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        async with node.session() as session:
            answer = await call(
                session, "PUT", "/v1/namespaces/default/pods/ghost/status", {"phase": "Running"}
            )
        assert answer.status == 404 and answer.message, answer

    async def test_a_rotated_certificate_replaces_the_old_one(self, wire: Wire) -> None:
        node = wire.node()
        await node.register()
        rotated = wire.node(node.name)  # the new key
        async with node.session() as session:
            answer = await call(
                session,
                "POST",
                f"/v1/nodes/{node.name}/certificate",
                {"csr": await rotated.csr()},
            )
        assert answer.status == 200, answer
        cert_pem = answer.body["certificate"].encode()
        verify_issued_by(certs_from_pem(cert_pem)[0], certs_from_pem(wire.ca_pem))
        assert identity_of(certs_from_pem(cert_pem)[0]).common_name == NODE_CN_PREFIX + node.name
        await rotated.keep(answer)
        assert (await rotated.lease()).status == 200
        refused = await node.lease()  # the superseded certificate
        assert refused.status in (401, 403), refused  # the link registers again
