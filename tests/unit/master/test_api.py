"""The master's API handlers (``agent.master.api``) on a master without a network (the memory
store, a driven clock): every handler called with ``ApiRequest`` values as the edge builds
them, success and error paths; then every route family once over each real front-end on
loopback with TLS (aiohttp for HTTP/1.1, ``agent.aio.h2conn`` for HTTP/2) and certificates
issued here from the cluster CA, so that both protocols give the same answers.

Which caller may use which route is tests/unit/master/test_api_routes.py and
tests/unit/proto/test_authz.py; here every caller is one that is allowed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.core import Metric

from agent import __version__
from agent.aio.edge import MAX_BODY_BYTES, ApiRequest, ApiResponse, Edge, error_response
from agent.errors import (
    AgentError,
    BadRequestError,
    KeyMismatchError,
    ManifestError,
    MirrorConflictError,
    NameConflictError,
    NotFoundError,
    PkiError,
    RegistrationRefusedError,
)
from agent.master import api as master_api
from agent.master.api import NDJSON_TYPE, MasterApi
from agent.master.pki_files import ClusterPki
from agent.master.pods import MIRROR_ANNOTATION
from agent.master.store.memory import MemoryStore
from agent.pki.core import (
    cert_to_pem,
    certs_from_pem,
    create_ca,
    generate_key,
    issue,
    public_key_id,
)
from agent.pki.names import MASTERS_GROUP, NODES_GROUP, VIEWERS_GROUP
from agent.proto.authz import Caller, CallerKind, Principal, Role
from agent.proto.routes import MASTER_ROUTES
from tests.unit.master import wire
from tests.unit.master.rig import MasterRig, NodeKey, csr_for, make_rig, registration
from tests.unit.master.wire import H1, H2, PROTOCOLS, Client, Reply
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")

PROXY_IP = "127.0.0.1"
NODE_IP = "10.0.0.5"
ADMIN = Caller(Principal(Role.ADMIN, "admin", (MASTERS_GROUP,)), CallerKind.ADMIN)
VIEWER = Caller(Principal(Role.VIEWER, "viewer", (VIEWERS_GROUP,)), CallerKind.VIEWER)
NOBODY = Caller(Principal(Role.ANONYMOUS), CallerKind.ANONYMOUS)
LONG_POLL_S = 30


def node_caller(node: NodeKey) -> Caller:
    principal = Principal(Role.NODE, node.name, (NODES_GROUP,), node.name, node.key_id)
    return Caller(principal, CallerKind.NODE_SELF)


def pod(
    name: str, *, node: str | None = None, namespace: str = "default", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox:1"}], **spec}
    if node is not None:
        body["nodeName"] = node
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def _body(body: object) -> bytes:
    if body is None:
        return b""
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def call(
    api: MasterApi,
    method: str,
    target: str,
    body: object = None,
    *,
    caller: Caller = ADMIN,
    headers: dict[str, str] | None = None,
    peer_ip: str = NODE_IP,
) -> ApiResponse:
    """The handler of ``method target``, given the request the edge would have admitted."""
    match = MASTER_ROUTES.match(method, target)
    request = ApiRequest(match, caller, headers or {}, _body(body), peer_ip)
    return await api.handlers[match.route.name](request)


async def fails(
    api: MasterApi, method: str, target: str, body: object = None, **kw: Any
) -> tuple[AgentError, dict[str, Any]]:
    """The error a handler raises, and the error body the edge makes of it."""
    with pytest.raises(AgentError) as caught:
        await call(api, method, target, body, **kw)
    response = error_response(caught.value)
    error: dict[str, Any] = json.loads(response.body)["error"]
    assert error["code"] == response.status == caught.value.http_status
    return caught.value, error


def loads(response: ApiResponse) -> Any:
    assert response.content_type == "application/json"
    return json.loads(response.body)


async def lines(stream: AsyncIterator[bytes] | None, count: int) -> list[dict[str, Any]]:
    """The first ``count`` NDJSON events of a streamed response (each chunk one line)."""
    assert stream is not None
    events = []
    for _ in range(count):
        chunk = await anext(stream)
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1
        events.append(json.loads(chunk))
    return events


def samples(exposition: bytes) -> dict[str, float]:
    """``name{labels}`` → value, from a Prometheus text exposition."""
    found = {}
    for line in exposition.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


@pytest.fixture
def api(rig: MasterRig) -> MasterApi:
    return MasterApi(rig.registry, rig.pods, (f"{PROXY_IP}/32",))


@pytest.fixture(scope="session")
def n1() -> NodeKey:
    return NodeKey("n1")


# -- public routes -----------------------------------------------------------------------------


async def test_healthz_and_the_ca_bundle(api: MasterApi, cluster_pki: ClusterPki) -> None:
    health = await call(api, "GET", "/healthz", caller=NOBODY)
    assert (health.status, health.body) == (200, b"ok")
    assert health.content_type.startswith("text/plain")
    ca = await call(api, "GET", "/v1/ca", caller=NOBODY)
    assert ca.content_type == "application/x-pem-file"
    assert certs_from_pem(ca.body) == [cluster_pki.ca_cert]


async def test_version_is_kubernetes_version_info_for_anyone(api: MasterApi) -> None:
    response = await call(api, "GET", "/version", caller=NOBODY)
    assert response.status == 200
    info = json.loads(response.body)
    assert info["gitVersion"] == f"v{__version__}"
    assert f"{info['major']}.{info['minor']}." in __version__ + "."
    assert set(info) == {"major", "minor", "gitVersion", "pythonVersion", "platform"}
    assert info["platform"].startswith(f"{sys.platform}/")


async def test_metrics_count_nodes_by_state_ready_nodes_and_lease_handling(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    rig.policy("approval")
    assert (await rig.register(NodeKey("n2"))).status == 202
    await call(api, "PUT", "/v1/nodes/n1/lease", caller=node_caller(n1))
    response = await call(api, "GET", "/metrics", caller=NOBODY)
    assert response.status == 200 and response.content_type.startswith("text/plain")
    got = samples(response.body)
    assert got['node_master_nodes{registration="Approved"}'] == 1
    assert got['node_master_nodes{registration="Pending"}'] == 1
    assert got["node_master_nodes_ready"] == 1
    assert got["node_master_lease_handling_seconds_count"] == 1
    assert "node_master_loop_lag_seconds_count" in got


async def test_metrics_quantiles_are_computed_off_the_event_loop(
    api: MasterApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # /metrics is open to anyone: sorting 2 x 20k samples per scrape must not stall the loop.
    real_summary = master_api.summary
    on_loop: list[bool] = []

    def spy(name: str, doc: str, samples: Iterable[float]) -> Metric:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            on_loop.append(False)
        else:
            on_loop.append(True)
        return real_summary(name, doc, samples)

    monkeypatch.setattr(master_api, "summary", spy)
    api.lease_seconds.extend([0.5, 0.25, 1.0])
    response = await call(api, "GET", "/metrics", caller=NOBODY)
    assert on_loop == [False, False]
    got = samples(response.body)
    assert got["node_master_lease_handling_seconds_count"] == 3
    assert got['node_master_lease_handling_seconds{quantile="1"}'] == 1.0


# -- registration ------------------------------------------------------------------------------


async def test_an_open_policy_admits_at_once_with_a_certificate_for_the_csr_key(
    api: MasterApi, rig: MasterRig, cluster_pki: ClusterPki, n1: NodeKey
) -> None:
    response = await call(api, "POST", "/v1/registrations", registration(n1), caller=NOBODY)
    body = loads(response)
    assert response.status == 200 and body["status"] == "Approved"
    assert body["admittedBy"] == "open"
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert public_key_id(cert.public_key()) == n1.key_id  # type: ignore[arg-type]
    assert certs_from_pem(body["caBundle"].encode()) == [cluster_pki.ca_cert]
    assert rig.registry.is_current_node("n1", n1.key_id)


async def test_registration_is_queued_then_long_polled_until_approved(
    api: MasterApi, rig: MasterRig
) -> None:
    rig.policy("approval")
    node = NodeKey("n2")
    queued = await call(api, "POST", "/v1/registrations", registration(node), caller=NOBODY)
    assert queued.status == 202
    rid = loads(queued)["requestId"]
    now = await call(api, "GET", f"/v1/registrations/{rid}?timeoutSeconds=0", caller=NOBODY)
    assert (now.status, loads(now)) == (202, {"status": "Pending", "requestId": rid})
    target = f"/v1/registrations/{rid}?timeoutSeconds={LONG_POLL_S}"
    poll = asyncio.create_task(call(api, "GET", target, caller=NOBODY))
    # Parked on the node's change event, not answered yet.
    await until(lambda: "n2" in rig.registry._changed, "the poll to wait for a decision")
    assert not poll.done()
    approved = await call(api, "POST", "/v1/nodes/n2/approve")
    assert loads(approved)["status"]["registration"]["phase"] == "Approved"
    answer = await poll
    assert answer.status == 200 and loads(answer)["status"] == "Approved"
    assert loads(answer)["admittedBy"] == "approval"


async def test_a_long_poll_answers_404_once_the_node_is_deleted(
    api: MasterApi, rig: MasterRig
) -> None:
    rig.policy("approval")
    queued = await call(api, "POST", "/v1/registrations", registration(NodeKey("n2")))
    rid = loads(queued)["requestId"]
    target = f"/v1/registrations/{rid}?timeoutSeconds={LONG_POLL_S}"
    poll = asyncio.create_task(call(api, "GET", target, caller=NOBODY))
    await until(lambda: "n2" in rig.registry._changed, "the poll to wait for a decision")
    await call(api, "DELETE", "/v1/nodes/n2")
    with pytest.raises(NotFoundError, match=rid):
        await poll


async def test_registration_errors(api: MasterApi, rig: MasterRig) -> None:
    _, error = await fails(api, "POST", "/v1/registrations", b"{not json", caller=NOBODY)
    assert error["code"] == 400 and "not JSON" in error["message"]
    _, error = await fails(api, "POST", "/v1/registrations", [1, 2], caller=NOBODY)
    assert error["message"] == "request body must be a JSON object"
    _, error = await fails(api, "POST", "/v1/registrations", {"nodeName": "n1"}, caller=NOBODY)
    assert error["code"] == 400 and "csr" in error["message"]
    _, error = await fails(api, "GET", "/v1/registrations/nope?timeoutSeconds=soon")
    assert error["message"] == "timeoutSeconds must be a number"
    _, error = await fails(api, "GET", "/v1/registrations/nope")
    assert error["code"] == 404
    rig.policy("ip-allowlist", allowed_cidrs=("192.0.2.0/24",))
    exc, error = await fails(api, "POST", "/v1/registrations", registration(NodeKey("n3")))
    assert isinstance(exc, RegistrationRefusedError) and error["code"] == 403


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "-1", "-0.5"])
async def test_a_poll_timeout_that_is_not_a_finite_duration_is_refused(
    api: MasterApi, rig: MasterRig, value: str
) -> None:
    # float() accepts all of these; none is a time to wait (min(nan, MAX_POLL_S) is nan,
    # which uvloop refuses to wait: a 500). Refused before the request is even looked up.
    rig.policy("approval")
    queued = await call(api, "POST", "/v1/registrations", registration(NodeKey("n2")))
    for rid in (loads(queued)["requestId"], "nope"):
        target = f"/v1/registrations/{rid}?timeoutSeconds={value}"
        exc, error = await fails(api, "GET", target, caller=NOBODY)
        assert isinstance(exc, BadRequestError) and error["code"] == 400
        assert "timeoutSeconds" in error["message"]
    assert rig.registry._changed == {}  # nobody parked


async def test_a_poll_timeout_above_the_ceiling_waits_the_ceiling(
    api: MasterApi, rig: MasterRig
) -> None:
    rig.policy("approval")
    queued = await call(api, "POST", "/v1/registrations", registration(NodeKey("n2")))
    rid = loads(queued)["requestId"]
    target = f"/v1/registrations/{rid}?timeoutSeconds=1e300"
    poll = asyncio.create_task(call(api, "GET", target, caller=NOBODY))
    await until(lambda: "n2" in rig.registry._changed, "the poll to wait for a decision")
    assert not poll.done()
    await call(api, "POST", "/v1/nodes/n2/approve")
    assert (await poll).status == 200


async def test_x_forwarded_for_counts_from_a_trusted_proxy_only(
    api: MasterApi, rig: MasterRig
) -> None:
    rig.policy("ip-allowlist", allowed_cidrs=("192.0.2.0/24",))
    forwarded = {"x-forwarded-for": "198.51.100.1, 192.0.2.7"}
    # From an untrusted peer the header is ignored: the peer's own address is refused.
    await fails(api, "POST", "/v1/registrations", registration(NodeKey("n2")), headers=forwarded)
    admitted = await call(
        api,
        "POST",
        "/v1/registrations",
        registration(NodeKey("n2")),
        headers=forwarded,
        peer_ip=PROXY_IP,
    )
    assert admitted.status == 200 and loads(admitted)["admittedBy"] == "ip-allowlist"


async def test_a_fleet_certificate_is_handed_to_the_client_cert_rule(
    cluster_pki: ClusterPki,
) -> None:
    fleet_key, fleet_ca = create_ca("fleet CA")
    rig = make_rig(cluster_pki, trust=("client-cert",), client_cas=[fleet_ca])
    api = MasterApi(rig.registry, rig.pods, ())
    holder = generate_key()
    der = issue(
        fleet_key, fleet_ca, holder.public_key(), common_name="n2", groups=[], lifetime_s=600
    ).public_bytes(Encoding.DER)
    principal = Principal(Role.FLEET, "n2", cert_der=der)
    body = registration(NodeKey("n2"))
    # The same certificate, but the caller is not in the fleet column: not handed over.
    await fails(api, "POST", "/v1/registrations", body, caller=Caller(principal, CallerKind.USER))
    fleet = Caller(principal, CallerKind.FLEET)
    admitted = await call(api, "POST", "/v1/registrations", body, caller=fleet)
    assert admitted.status == 200 and loads(admitted)["admittedBy"] == "client-cert"


async def test_a_node_re_registering_with_its_current_certificate_stays_trusted(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    rig.policy("approval")
    again = await call(api, "POST", "/v1/registrations", registration(n1), caller=node_caller(n1))
    assert again.status == 200 and loads(again)["status"] == "Approved"
    # Anyone else presenting the same CSR goes through the policy as it is now.
    queued = await call(api, "POST", "/v1/registrations", registration(n1), caller=NOBODY)
    assert queued.status == 202


# -- nodes -------------------------------------------------------------------------------------


async def test_nodes_list_get_and_delete(api: MasterApi, rig: MasterRig, n1: NodeKey) -> None:
    await rig.register(n1)
    listed = loads(await call(api, "GET", "/v1/nodes", caller=VIEWER))
    assert listed["kind"] == "NodeList"
    assert [n["metadata"]["name"] for n in listed["items"]] == ["n1"]
    node = loads(await call(api, "GET", "/v1/nodes/n1", caller=VIEWER))
    assert node["kind"] == "Node" and node["metadata"]["labels"] == {"zone": "a"}
    _, error = await fails(api, "GET", "/v1/nodes/n9", caller=VIEWER)
    assert (error["code"], error["message"]) == (404, "node 'n9' not found")
    assert loads(await call(api, "DELETE", "/v1/nodes/n1")) == {"deleted": "n1"}
    assert not rig.registry.is_current_node("n1", n1.key_id)
    _, error = await fails(api, "DELETE", "/v1/nodes/n1")
    assert error["code"] == 404


async def test_approve_deny_cordon_uncordon(api: MasterApi, rig: MasterRig) -> None:
    rig.policy("approval")
    await rig.register(NodeKey("n2"))

    async def phase(action: str, body: object = None) -> dict[str, Any]:
        obj: dict[str, Any] = loads(await call(api, "POST", f"/v1/nodes/n2/{action}", body))
        return obj

    denied = await phase("deny", {"reason": "unknown hardware"})
    assert denied["status"]["registration"]["phase"] == "Denied"
    assert denied["status"]["registration"]["reason"] == "unknown hardware"
    assert (await phase("deny"))["status"]["registration"]["reason"] == "denied by an administrator"
    assert (await phase("approve"))["status"]["registration"]["phase"] == "Approved"
    _, error = await fails(api, "POST", "/v1/nodes/n2/approve", {"forceReplace": True})
    assert error["code"] == 400 and "no registration from a new key" in error["message"]
    assert (await phase("cordon"))["spec"]["unschedulable"] is True
    assert not rig.pods.kick.is_set()
    assert (await phase("uncordon"))["spec"]["unschedulable"] is False
    assert rig.pods.kick.is_set()  # pending pods may fit now
    _, error = await fails(api, "POST", "/v1/nodes/n9/cordon")
    assert error["code"] == 404
    _, error = await fails(api, "POST", "/v1/nodes/n2/deny", b"[]")
    assert error["code"] == 400


async def test_a_new_key_conflicts_until_an_administrator_accepts_it(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    new_key = NodeKey("n1")
    exc, error = await fails(api, "POST", "/v1/registrations", registration(new_key))
    assert isinstance(exc, NameConflictError) and error["code"] == 409
    fingerprint = f"sha256:{new_key.key_id}"
    waiting = loads(await call(api, "GET", "/v1/nodes/n1"))["status"]["registration"]
    assert waiting["replacement"]["fingerprint"] == fingerprint
    exc, error = await fails(api, "POST", "/v1/nodes/n1/approve", {"forceReplace": True})
    assert error["code"] == 400 and "--fingerprint" in error["message"]
    wrong = {"forceReplace": True, "fingerprint": f"sha256:{n1.key_id}"}
    exc, error = await fails(api, "POST", "/v1/nodes/n1/approve", wrong)
    assert isinstance(exc, KeyMismatchError) and error["code"] == 409
    _, error = await fails(
        api, "POST", "/v1/nodes/n1/approve", {"forceReplace": True, "fingerprint": 1}
    )
    assert error["message"] == "fingerprint must be a string (sha256:<hex>)"
    body = {"forceReplace": True, "fingerprint": fingerprint}
    await call(api, "POST", "/v1/nodes/n1/approve", body)
    picked = await call(api, "POST", "/v1/registrations", registration(new_key))
    assert picked.status == 200 and loads(picked)["certificate"]
    assert rig.registry.is_current_node("n1", new_key.key_id)


async def test_lease_renewals_report_status_and_wake_the_scheduler_once(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    me = node_caller(n1)
    status = {"addresses": ["10.0.0.9"], "apiEndpoint": "10.0.0.9:10250"}
    first = loads(await call(api, "PUT", "/v1/nodes/n1/lease", {"status": status}, caller=me))
    assert first == {"renewed": "n1", "leaseRenewSeconds": rig.registry.config.lease_renew_s}
    assert rig.pods.kick.is_set()  # the node just became Ready
    rig.pods.kick.clear()
    node = loads(await call(api, "GET", "/v1/nodes/n1"))
    assert node["status"]["daemonEndpoints"] == {"nodeApi": "10.0.0.9:10250"}
    assert {"type": "InternalIP", "address": "10.0.0.9"} in node["status"]["addresses"]
    assert node["status"]["conditions"][0]["status"] == "True"
    await call(api, "PUT", "/v1/nodes/n1/lease", caller=me)  # an empty body renews too
    assert not rig.pods.kick.is_set()
    await fails(api, "PUT", "/v1/nodes/n1/lease", b"\xff", caller=me)
    _, error = await fails(
        api, "PUT", "/v1/nodes/n1/lease", {"status": {"addresses": "x"}}, caller=me
    )
    assert error["message"] == "status.addresses must be a list of strings"
    assert len(api.lease_seconds) == 4  # every renewal is timed, failed ones too


async def test_certificate_rotation_issues_for_the_new_key(
    api: MasterApi, rig: MasterRig, cluster_pki: ClusterPki, n1: NodeKey
) -> None:
    await rig.register(n1)
    fresh = NodeKey("n1")
    response = await call(
        api, "POST", "/v1/nodes/n1/certificate", {"csr": fresh.csr()}, caller=node_caller(n1)
    )
    body = loads(response)
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert public_key_id(cert.public_key()) == fresh.key_id  # type: ignore[arg-type]
    assert certs_from_pem(body["caBundle"].encode()) == [cluster_pki.ca_cert]
    assert rig.registry.is_current_node("n1", fresh.key_id)
    assert not rig.registry.is_current_node("n1", n1.key_id)
    exc, _ = await fails(api, "POST", "/v1/nodes/n1/certificate", {})
    assert isinstance(exc, PkiError) and exc.http_status == 400
    _, error = await fails(
        api, "POST", "/v1/nodes/n1/certificate", {"csr": csr_for("n1", fresh.key, cn="x")}
    )
    assert error["message"] == "the CSR's CN must be system:node:n1"
    await call(api, "POST", "/v1/nodes/n1/deny")
    exc, _ = await fails(api, "POST", "/v1/nodes/n1/certificate", {"csr": fresh.csr()})
    assert isinstance(exc, RegistrationRefusedError)


async def test_a_rotation_names_the_address_it_came_from(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1, addresses=[], hostname="")
    me = node_caller(n1)

    async def rotate(**kw: Any) -> set[str]:
        response = await call(
            api, "POST", "/v1/nodes/n1/certificate", {"csr": n1.csr()}, caller=me, **kw
        )
        cert = x509.load_pem_x509_certificate(loads(response)["certificate"].encode())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}

    assert await rotate(peer_ip="10.0.0.6") == {"10.0.0.6"}
    # X-Forwarded-For counts from a trusted proxy only.
    assert await rotate(peer_ip="10.0.0.7", headers={"x-forwarded-for": "10.9.9.9"}) == {"10.0.0.7"}
    forwarded = {"x-forwarded-for": "10.0.0.8"}
    assert await rotate(peer_ip=PROXY_IP, headers=forwarded) == {"10.0.0.8"}


async def test_serving_names_are_listed_and_decided_by_an_administrator(
    api: MasterApi, rig: MasterRig
) -> None:
    await rig.register(NodeKey("n1"), addresses=[NODE_IP, "127.0.0.1"], hostname="n1.example")
    n2 = NodeKey("n2")
    await rig.register(n2, addresses=[NODE_IP], hostname="")  # asks for nothing more
    listed = loads(await call(api, "GET", "/v1/certificaterequests", caller=VIEWER))
    assert listed["kind"] == "ServingNamesRequestList"
    [request] = listed["items"]
    assert request["kind"] == "ServingNamesRequest"
    assert request["spec"] == {
        "node": "n1",
        "names": ["127.0.0.1", "n1.example"],
        "source": NODE_IP,
    }
    assert request["status"]["condition"] == "Pending"
    denied = loads(await call(api, "POST", "/v1/nodes/n1/servingnames/deny"))
    assert denied["status"]["condition"] == "Denied"
    assert denied["status"]["denied"] == ["127.0.0.1", "n1.example"]
    _, error = await fails(api, "POST", "/v1/nodes/n1/servingnames/approve")
    assert error["code"] == 400 and "no serving names waiting" in error["message"]
    _, error = await fails(api, "POST", "/v1/nodes/ghost/servingnames/approve")
    assert error["code"] == 404
    await rig.register(n2, addresses=[NODE_IP, "10.0.0.9", "10.0.0.10"], hostname="")
    for bad in ({"names": "10.0.0.9"}, {"names": [1]}):
        _, error = await fails(api, "POST", "/v1/nodes/n2/servingnames/approve", bad)
        assert error["message"].startswith("names must be a list of strings")
    _, error = await fails(
        api, "POST", "/v1/nodes/n2/servingnames/approve", {"names": ["127.0.0.1"]}
    )
    assert error["code"] == 409 and "its request changed" in error["message"]
    approved = loads(
        await call(api, "POST", "/v1/nodes/n2/servingnames/approve", {"names": ["10.0.0.9"]})
    )
    assert approved["status"]["approved"] == ["10.0.0.9"]
    assert approved["status"]["pending"] == ["10.0.0.10"]
    [reason] = [r for r, _ in rig.events("Node", "n2") if r.startswith("ServingNames")]
    assert reason == "ServingNamesApproved"


# -- a node's pods and its watch ---------------------------------------------------------------


async def test_a_nodes_pod_list_and_watch_resumed_from_its_resource_version(
    api: MasterApi, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.ready_node("n1")
    await rig.ready_node("n2")
    await call(api, "POST", "/v1/pods", pod("a", node="n1"))
    await call(api, "POST", "/v1/pods", pod("b", node="n2"))
    listed = loads(await call(api, "GET", "/v1/nodes/n1/pods"))
    assert listed["kind"] == "PodList"
    assert [p["metadata"]["name"] for p in listed["items"]] == ["a"]
    rev = listed["resourceVersion"]
    await call(api, "POST", "/v1/pods", pod("c", node="n1"))
    await call(api, "DELETE", "/v1/namespaces/default/pods/a")
    watch = await call(api, "GET", f"/v1/nodes/n1/pods?watch=1&resourceVersion={rev}")
    assert watch.content_type == NDJSON_TYPE
    try:
        events = await lines(watch.stream, 2)
        # c exists when the watch starts: a resumed watch calls it modified (PodStore.watch_node).
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("MODIFIED", "c"),
            ("DELETED", "a"),
        ]
        assert events[0]["resourceVersion"] < events[1]["resourceVersion"]
        await call(api, "POST", "/v1/pods", pod("d", node="n1"))
        [live] = await lines(watch.stream, 1)
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "d")
    finally:
        assert watch.stream is not None
        await watch.stream.aclose()  # type: ignore[attr-defined]
    from_start = await call(api, "GET", "/v1/nodes/n1/pods?watch=true")
    assert len(await lines(from_start.stream, 4)) == 4  # a added, c added, a deleted, d added
    await from_start.stream.aclose()  # type: ignore[union-attr]
    _, error = await fails(api, "GET", "/v1/nodes/n1/pods?watch=1&resourceVersion=x")
    assert error["message"] == "resourceVersion must be an integer"


async def test_a_watch_from_a_compacted_revision_ends_with_410_and_the_node_relists(
    cluster_pki: ClusterPki,
) -> None:
    rig = make_rig(cluster_pki, store=MemoryStore(history=5))
    api = MasterApi(rig.registry, rig.pods, ())
    await rig.ready_node("n1")
    for i in range(12):  # the history is compacted up to revision 5 at revision 10
        await call(api, "POST", "/v1/pods", pod(f"p{i}", node="n1"))
    old = await call(api, "GET", "/v1/nodes/n1/pods?watch=1&resourceVersion=1")
    assert old.status == 200 and old.stream is not None
    chunks = [chunk async for chunk in old.stream]  # the stream ends after the error
    assert len(chunks) == 1
    error = json.loads(chunks[0])
    assert error["type"] == "ERROR" and error["object"]["error"]["code"] == 410
    # What the node does then: list, and watch from the list's revision.
    listed = loads(await call(api, "GET", "/v1/nodes/n1/pods"))
    assert len(listed["items"]) == 12
    watch = await call(
        api, "GET", f"/v1/nodes/n1/pods?watch=1&resourceVersion={listed['resourceVersion']}"
    )
    await call(api, "DELETE", "/v1/namespaces/default/pods/p0")
    [deleted] = await lines(watch.stream, 1)
    assert (deleted["type"], deleted["object"]["metadata"]["name"]) == ("DELETED", "p0")
    await watch.stream.aclose()  # type: ignore[union-attr]


# -- mirror pods -------------------------------------------------------------------------------


async def test_mirror_pods_of_a_node(api: MasterApi, rig: MasterRig) -> None:
    node = await rig.ready_node("n1")
    me = node_caller(node)
    static = pod("static-web-n1", node="n1")
    url = "/v1/nodes/n1/mirrorpods/default/static-web-n1"
    put = await call(api, "PUT", url, static, caller=me)
    assert loads(put) == {"mirrored": "default/static-web-n1"}
    got = loads(await call(api, "GET", "/v1/namespaces/default/pods/static-web-n1"))
    assert got["metadata"]["annotations"][MIRROR_ANNOTATION] == "true"
    _, error = await fails(api, "PUT", "/v1/nodes/n1/mirrorpods/default/other", static, caller=me)
    assert error["message"] == "the manifest's namespace/name must match the URL"
    _, error = await fails(api, "PUT", "/v1/nodes/n1/mirrorpods/default/x", b"", caller=me)
    assert error["code"] == 400
    unsuffixed = pod("static-web", node="n1")
    _, error = await fails(
        api, "PUT", "/v1/nodes/n1/mirrorpods/default/static-web", unsuffixed, caller=me
    )
    assert error["code"] == 400 and "<static pod name>-n1" in error["message"]
    # The node's status reports say which kind of pod they mean.
    status_url = "/v1/namespaces/default/pods/static-web-n1/status"
    await call(api, "PUT", status_url + "?mirror=true", {"phase": "Running"}, caller=me)
    exc, _ = await fails(api, "PUT", status_url + "?mirror=false", {"phase": "x"}, caller=me)
    assert isinstance(exc, MirrorConflictError)
    # The mirror is not deleted through the API, and a mirror never takes an API pod's name.
    exc, _ = await fails(api, "DELETE", "/v1/namespaces/default/pods/static-web-n1")
    assert isinstance(exc, MirrorConflictError)
    await call(api, "POST", "/v1/pods", pod("api-made-n1", node="n1"))
    exc, _ = await fails(
        api, "PUT", "/v1/nodes/n1/mirrorpods/default/api-made-n1", pod("api-made-n1"), caller=me
    )
    assert isinstance(exc, MirrorConflictError)
    exc, _ = await fails(api, "DELETE", "/v1/nodes/n1/mirrorpods/default/api-made-n1", caller=me)
    assert isinstance(exc, MirrorConflictError)
    gone = await call(api, "DELETE", url, caller=me)
    assert loads(gone) == {"deleted": "default/static-web-n1"}
    await fails(api, "GET", "/v1/namespaces/default/pods/static-web-n1")


async def test_an_apply_wins_over_a_mirror_and_deleting_a_node_removes_its_mirrors(
    api: MasterApi, rig: MasterRig
) -> None:
    node = await rig.ready_node("n1")
    me = node_caller(node)
    for name in ("a-n1", "b-n1"):
        await call(api, "PUT", f"/v1/nodes/n1/mirrorpods/default/{name}", pod(name), caller=me)
    applied = await call(api, "POST", "/v1/pods", pod("a-n1", node="n1"))
    assert applied.status == 201
    assert MIRROR_ANNOTATION not in loads(applied)["metadata"].get("annotations", {})
    assert loads(await call(api, "DELETE", "/v1/nodes/n1")) == {"deleted": "n1"}
    listed = loads(await call(api, "GET", "/v1/pods"))["items"]
    assert [p["metadata"]["name"] for p in listed] == ["a-n1"]  # the API's pod stays


# -- pods --------------------------------------------------------------------------------------


async def test_apply_creates_then_updates_and_names_the_bad_field(
    api: MasterApi, rig: MasterRig
) -> None:
    created = await call(api, "POST", "/v1/pods", pod("web"))
    obj = loads(created)
    assert created.status == 201 and obj["kind"] == "Pod"
    assert obj["status"]["phase"] == "Pending"
    newer = pod("web")
    newer["spec"]["containers"][0]["image"] = "busybox:2"  # the one change a pod takes
    updated = await call(api, "POST", "/v1/pods", newer)
    assert updated.status == 200
    assert loads(updated)["metadata"]["uid"] == obj["metadata"]["uid"]
    exc, error = await fails(api, "POST", "/v1/pods", pod("web", restartPolicy="Never"))
    assert error["code"] == 422 and error["details"]["field"] == "spec"
    assert "changed: spec.restartPolicy;" in error["message"]
    bad = pod("bad")
    bad["spec"]["containers"] = []
    exc, error = await fails(api, "POST", "/v1/pods", bad)
    assert isinstance(exc, ManifestError) and error["code"] == 422
    assert error["details"]["field"] == exc.field and exc.field.startswith("spec.containers")
    # Every error of the document, in the body (the message: the first and how many more).
    bad = pod("Bad_Name", restartPolicy="Sometimes")
    exc, error = await fails(api, "POST", "/v1/pods", bad)
    assert [c["field"] for c in error["details"]["causes"]] == [
        "metadata.name",
        "spec.restartPolicy",
    ]
    assert error["message"].endswith(" (and 1 more error)")


async def test_a_server_dry_run_answers_without_storing(api: MasterApi, rig: MasterRig) -> None:
    answer = await call(api, "POST", "/v1/pods?dryRun=All", pod("web"))
    assert answer.status == 201 and loads(answer)["metadata"]["name"] == "web"
    assert loads(await call(api, "GET", "/v1/pods", caller=VIEWER))["items"] == []
    _, error = await fails(api, "POST", "/v1/pods?dryRun=Yes", pod("web"))
    assert error["code"] == 400 and "dryRun" in error["message"]
    bad = pod("web", restartPolicy="Sometimes")
    _, error = await fails(api, "POST", "/v1/pods?dryRun=All", bad)
    assert error["code"] == 422
    _, error = await fails(api, "POST", "/v1/pods", b"")
    assert error["code"] == 400


async def test_pods_list_get_delete_and_events(api: MasterApi, rig: MasterRig) -> None:
    await call(api, "POST", "/v1/pods", pod("a"))
    await call(api, "POST", "/v1/pods", pod("b", namespace="other"))
    everything = loads(await call(api, "GET", "/v1/pods", caller=VIEWER))
    assert everything["kind"] == "PodList" and everything["resourceVersion"] > 0
    assert sorted(p["metadata"]["name"] for p in everything["items"]) == ["a", "b"]
    other = loads(await call(api, "GET", "/v1/pods?namespace=other", caller=VIEWER))
    assert [p["metadata"]["name"] for p in other["items"]] == ["b"]
    got = loads(await call(api, "GET", "/v1/namespaces/other/pods/b", caller=VIEWER))
    assert got["metadata"]["namespace"] == "other"
    _, error = await fails(api, "GET", "/v1/namespaces/default/pods/b", caller=VIEWER)
    assert (error["code"], error["message"]) == (404, "pod default/b not found")
    assert loads(await call(api, "DELETE", "/v1/namespaces/other/pods/b")) == {"deleted": "other/b"}
    _, error = await fails(api, "DELETE", "/v1/namespaces/other/pods/b")
    assert error["code"] == 404
    await rig.register(NodeKey("n1"))
    await rig.register(NodeKey("n2"))
    events = loads(await call(api, "GET", "/v1/events?kind=Node&name=n2", caller=VIEWER))
    assert events["kind"] == "EventList"
    assert [(e["involvedObject"]["name"], e["reason"]) for e in events["items"]] == [
        ("n2", "Registered")
    ]
    everything = loads(await call(api, "GET", "/v1/events", caller=VIEWER))
    assert len(everything["items"]) >= 2


def node_event(kind: str, name: str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    return {
        "involvedObject": {"kind": kind, "name": name, "namespace": namespace, "uid": "u-1"},
        "reason": "BackOff",
        "message": "back-off 10s restarting failed container=c",
        "type": "Warning",
        "firstTimestamp": "2026-12-03T10:00:00Z",
        "lastTimestamp": "2026-12-03T10:00:40Z",
        "count": 3,
        **extra,
    }


async def test_a_node_files_events_about_itself_and_its_pods_only(
    api: MasterApi, rig: MasterRig
) -> None:
    node = await rig.ready_node("n1")
    await rig.ready_node("n2")
    await call(api, "POST", "/v1/pods", pod("mine", node="n1"))
    await call(api, "POST", "/v1/pods", pod("theirs", node="n2"))
    report = {
        "items": [
            node_event("Pod", "mine"),
            node_event("Pod", "theirs"),  # bound to another node: not filed
            node_event("Pod", "ghost"),  # no such pod: not filed
            node_event("Node", "n1", namespace=""),
            node_event("Node", "n2", namespace=""),  # another node: not filed
            # The source is the caller's, whatever the body says.
            node_event("Pod", "mine", reason="Pulled", source={"host": "n2"}),
        ]
    }
    me = node_caller(node)
    answer = loads(await call(api, "POST", "/v1/nodes/n1/events", report, caller=me))
    assert answer == {"accepted": 3, "rejected": 3}
    again = loads(await call(api, "POST", "/v1/nodes/n1/events", report, caller=me))
    assert again == answer
    filed = loads(await call(api, "GET", "/v1/events?kind=Pod&name=mine"))["items"]
    assert [(e["reason"], e["count"], e["source"]["host"]) for e in filed] == [
        ("BackOff", 3, "n1"),
        ("Pulled", 3, "n1"),
    ]  # sent twice, filed once
    assert loads(await call(api, "GET", "/v1/events?kind=Pod&name=theirs"))["items"] == []
    about_n1 = loads(await call(api, "GET", "/v1/events?kind=Node&name=n1"))["items"]
    assert [e["source"]["host"] for e in about_n1 if e["reason"] == "BackOff"] == ["n1"]


@pytest.mark.parametrize(
    ("report", "field"),
    [
        ({"items": "x"}, "items"),
        ({"items": [node_event("Pod", "mine")] * 101}, "items"),
        ({"items": [node_event("Secret", "mine")]}, "items[0].involvedObject.kind"),
        ({"items": [node_event("Pod", "Bad_Name")]}, "items[0].involvedObject.name"),
        ({"items": [node_event("Pod", "mine", reason="two words")]}, "items[0].reason"),
        ({"items": [node_event("Pod", "mine", type="Fatal")]}, "items[0].type"),
        ({"items": [node_event("Pod", "mine", count=0)]}, "items[0].count"),
        ({"items": [node_event("Pod", "mine", count=True)]}, "items[0].count"),
        ({"items": [node_event("Pod", "mine", lastTimestamp="now")]}, "items[0].lastTimestamp"),
        ({"items": [node_event("Pod", "mine", message=None)]}, "items[0].message"),
    ],
)
async def test_a_malformed_event_report_is_a_400_naming_the_field(
    api: MasterApi, rig: MasterRig, report: dict[str, Any], field: str
) -> None:
    node = await rig.ready_node("n1")
    _, error = await fails(api, "POST", "/v1/nodes/n1/events", report, caller=node_caller(node))
    assert error["message"].startswith(f"{field}: "), error
    assert loads(await call(api, "GET", "/v1/events?kind=Pod&name=mine"))["items"] == []


async def test_pod_status_from_its_node_and_from_an_administrator(
    api: MasterApi, rig: MasterRig
) -> None:
    node = await rig.ready_node("n1")
    await call(api, "POST", "/v1/pods", pod("bound", node="n1"))
    running = {"phase": "Running", "podIP": "10.1.0.4"}
    put = await call(
        api,
        "PUT",
        "/v1/namespaces/default/pods/bound/status",
        running,
        caller=node_caller(node),
    )
    assert loads(put) == {"updated": "default/bound"}
    got = loads(await call(api, "GET", "/v1/namespaces/default/pods/bound"))
    assert got["status"] == running
    # The same status again is no change (and no error).
    await call(api, "PUT", "/v1/namespaces/default/pods/bound/status", running)
    _, error = await fails(api, "PUT", "/v1/namespaces/default/pods/nope/status", running)
    assert error["code"] == 404
    _, error = await fails(api, "PUT", "/v1/namespaces/default/pods/bound/status", b"[]")
    assert error["code"] == 400


async def test_a_node_cannot_write_the_status_of_a_pod_rebound_while_its_body_was_read(
    api: MasterApi, rig: MasterRig
) -> None:
    # The edge admitted node n1 when the headers arrived (the pod was bound to n1); while
    # the body trickled in the pod was evicted and bound to n2. The write is judged by the
    # caller's node, not by wherever the pod is bound now.
    n1, n2 = await rig.ready_node("n1"), await rig.ready_node("n2")
    await call(api, "POST", "/v1/pods", pod("moved", node="n2"))
    target = "/v1/namespaces/default/pods/moved/status"
    exc, error = await fails(api, "PUT", target, {"phase": "Failed"}, caller=node_caller(n1))
    assert isinstance(exc, NotFoundError) and error["code"] == 404
    assert "not bound to n1" in error["message"]
    got = loads(await call(api, "GET", "/v1/namespaces/default/pods/moved"))
    assert got["status"] == {"phase": "Pending"}
    # Its own node still writes it.
    await call(api, "PUT", target, {"phase": "Running"}, caller=node_caller(n2))
    got = loads(await call(api, "GET", "/v1/namespaces/default/pods/moved"))
    assert got["status"] == {"phase": "Running"}


async def test_an_administrator_sets_the_status_of_a_pod_bound_to_no_node(
    api: MasterApi, rig: MasterRig
) -> None:
    created = loads(await call(api, "POST", "/v1/pods", pod("pending")))  # no node: unbound
    assert created["spec"].get("nodeName") is None
    failed = {"phase": "Failed", "reason": "Unschedulable"}
    put = await call(api, "PUT", "/v1/namespaces/default/pods/pending/status", failed)
    assert loads(put) == {"updated": "default/pending"}
    got = loads(await call(api, "GET", "/v1/namespaces/default/pods/pending"))
    assert got["status"] == failed


async def test_the_edge_questions_about_callers(api: MasterApi, rig: MasterRig) -> None:
    await call(api, "POST", "/v1/pods", pod("unbound"))  # no node to place it on yet
    node = await rig.ready_node("n1")
    principal = node_caller(node).principal
    assert api.is_current(principal)
    await call(api, "POST", "/v1/pods", pod("bound", node="n1"))
    assert await api.pod_node("default", "bound") == "n1"
    assert await api.pod_node("default", "unbound") is None
    with pytest.raises(NotFoundError):
        await api.pod_node("default", "nope")
    assert api.principal(None, {}).role is Role.ANONYMOUS


# -- over the wire: both front-ends on loopback with TLS ---------------------------------------


@pytest.fixture(scope="session")
def tls(
    cluster_pki: ClusterPki, tmp_path_factory: pytest.TempPathFactory, n1: NodeKey
) -> wire.TlsSet:
    return wire.tls_set(cluster_pki, tmp_path_factory.mktemp("identities"), n1.key)


@dataclass
class Wire:
    protocol: str
    port: int
    tls: wire.TlsSet
    clients: list[Client]

    def as_(self, who: str) -> Client:
        client = Client(self.protocol, self.port, self.tls.client(who, self.protocol))
        self.clients.append(client)
        return client


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def served(api: MasterApi, protocol: str, tls: wire.TlsSet) -> AsyncIterator[Wire]:
    edge = Edge(MASTER_ROUTES, api.handlers, gate=api)
    async with wire.serve(edge, tls.master) as port:
        on = Wire(protocol, port, tls, [])
        try:
            yield on
        finally:
            for client in on.clients:
                await client.close()


def ok(reply: Reply, status: int = 200) -> Any:
    assert reply.status == status, reply.body
    return reply.json()


async def test_public_routes_over_the_wire(served: Wire, cluster_pki: ClusterPki) -> None:
    anonymous = served.as_("anonymous")
    health = await anonymous.call("GET", "/healthz")
    assert (health.status, health.body) == (200, b"ok")
    ca = await anonymous.call("GET", "/v1/ca")
    assert ca.headers["content-type"] == "application/x-pem-file"
    assert ca.body == cert_to_pem(cluster_pki.ca_cert)
    metrics = await anonymous.call("GET", "/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "node_master_nodes_ready" in samples(metrics.body)


async def test_registration_over_the_wire(served: Wire, rig: MasterRig) -> None:
    rig.policy("approval")
    anonymous = served.as_("anonymous")
    queued = await anonymous.call("POST", "/v1/registrations", registration(NodeKey("n2")))
    rid = ok(queued, 202)["requestId"]
    assert ok(await anonymous.call("GET", f"/v1/registrations/{rid}"), 202)["status"] == "Pending"
    poll = asyncio.create_task(
        anonymous.call("GET", f"/v1/registrations/{rid}?timeoutSeconds={LONG_POLL_S}")
    )
    await until(lambda: "n2" in rig.registry._changed, "the poll to wait for a decision")
    ok(await served.as_("admin").call("POST", "/v1/nodes/n2/approve"))
    answer = ok(await poll)
    assert answer["status"] == "Approved" and "BEGIN CERTIFICATE" in answer["certificate"]


async def test_nodes_over_the_wire(served: Wire, rig: MasterRig, n1: NodeKey) -> None:
    await rig.register(n1)
    node, viewer, admin = served.as_("node"), served.as_("viewer"), served.as_("admin")
    renewed = ok(await node.call("PUT", "/v1/nodes/n1/lease", {"status": {"agentVersion": "9"}}))
    assert renewed["renewed"] == "n1"
    listed = ok(await viewer.call("GET", "/v1/nodes"))
    assert [n["status"]["nodeInfo"]["agentVersion"] for n in listed["items"]] == ["9"]
    assert ok(await viewer.call("GET", "/v1/nodes/n1"))["metadata"]["name"] == "n1"
    assert ok(await admin.call("POST", "/v1/nodes/n1/cordon"))["spec"]["unschedulable"]
    assert not ok(await admin.call("POST", "/v1/nodes/n1/uncordon"))["spec"]["unschedulable"]
    fresh = NodeKey("n1")
    rotated = ok(await node.call("POST", "/v1/nodes/n1/certificate", {"csr": fresh.csr()}))
    assert "BEGIN CERTIFICATE" in rotated["certificate"]
    # The old key is no longer the node's: its certificate is refused from now on.
    refused = await node.call("PUT", "/v1/nodes/n1/lease")
    assert refused.status == 403 and "no longer" in refused.error["message"]
    assert ok(await admin.call("DELETE", "/v1/nodes/n1")) == {"deleted": "n1"}


async def test_serving_names_over_the_wire(served: Wire, rig: MasterRig, n1: NodeKey) -> None:
    await rig.register(n1, addresses=[NODE_IP, "127.0.0.1"], hostname="")
    node, viewer, admin = served.as_("node"), served.as_("viewer"), served.as_("admin")
    [request] = ok(await viewer.call("GET", "/v1/certificaterequests"))["items"]
    assert request["status"]["pending"] == ["127.0.0.1"]
    # A node never decides on its own names, nor does a viewer.
    for caller in (node, viewer):
        refused = await caller.call("POST", "/v1/nodes/n1/servingnames/approve")
        assert refused.status == 403, refused.body
    decided = ok(await admin.call("POST", "/v1/nodes/n1/servingnames/approve"))
    assert decided["status"]["approved"] == ["127.0.0.1"]


async def test_pods_mirrors_and_events_over_the_wire(
    served: Wire, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    rig.registry.renew_lease("n1")
    node, viewer, admin = served.as_("node"), served.as_("viewer"), served.as_("admin")
    created = ok(await admin.call("POST", "/v1/pods", pod("web", node="n1")), 201)
    assert created["spec"]["nodeName"] == "n1"
    status = {"phase": "Running"}
    ok(await node.call("PUT", "/v1/namespaces/default/pods/web/status", status))
    assert ok(await viewer.call("GET", "/v1/namespaces/default/pods/web"))["status"] == status
    static = pod("static-n1", node="n1")
    put = await node.call("PUT", "/v1/nodes/n1/mirrorpods/default/static-n1", static)
    assert ok(put) == {"mirrored": "default/static-n1"}
    names = [p["metadata"]["name"] for p in ok(await viewer.call("GET", "/v1/pods"))["items"]]
    assert sorted(names) == ["static-n1", "web"]
    ok(await node.call("DELETE", "/v1/nodes/n1/mirrorpods/default/static-n1"))
    ok(await admin.call("DELETE", "/v1/namespaces/default/pods/web"))
    events = ok(await viewer.call("GET", "/v1/events?kind=Node"))
    assert [e["reason"] for e in events["items"]] == ["Registered"]


async def test_the_pod_watch_streams_ndjson_over_the_wire(
    served: Wire, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    node, admin = served.as_("node"), served.as_("admin")
    rev = ok(await node.call("GET", "/v1/nodes/n1/pods"))["resourceVersion"]
    watch = await node.watch(f"/v1/nodes/n1/pods?watch=1&resourceVersion={rev}")
    assert watch.status == 200 and watch.headers["content-type"] == NDJSON_TYPE
    ok(await admin.call("POST", "/v1/pods", pod("web", node="n1")), 201)
    added = await watch.next()
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "web")
    ok(await admin.call("DELETE", "/v1/namespaces/default/pods/web"))
    assert (await watch.next())["type"] == "DELETED"


async def test_a_compacted_watch_over_the_wire_ends_with_an_in_band_410(
    protocol: str, cluster_pki: ClusterPki, tls: wire.TlsSet, n1: NodeKey
) -> None:
    rig = make_rig(cluster_pki, store=MemoryStore(history=3))
    api = MasterApi(rig.registry, rig.pods, ())
    await rig.register(n1)
    for i in range(5):
        await call(api, "POST", "/v1/pods", pod(f"p{i}", node="n1"))
    async with wire.serve(Edge(MASTER_ROUTES, api.handlers, gate=api), tls.master) as port:
        client = Client(protocol, port, tls.client("node", protocol))
        try:
            watch = await client.watch("/v1/nodes/n1/pods?watch=1&resourceVersion=1")
            assert watch.status == 200  # the stream started; the error is its one line
            [error] = [json.loads(line) for line in (await watch.rest()).splitlines()]
            assert error["type"] == "ERROR" and error["object"]["error"]["code"] == 410
        finally:
            await client.close()


async def test_a_watch_ends_cleanly_when_the_store_closes_under_it(
    served: Wire, rig: MasterRig, n1: NodeKey
) -> None:
    await rig.register(n1)
    await rig.pods.apply(pod("web", node="n1"))
    watch = await served.as_("node").watch("/v1/nodes/n1/pods?watch=1")
    assert watch.status == 200
    assert (await watch.next())["object"]["metadata"]["name"] == "web"
    await rig.store.close()  # the master stopping: the response ends, the node resumes later
    assert await watch.rest() == b""


async def test_request_errors_over_the_wire(served: Wire, rig: MasterRig) -> None:
    admin = served.as_("admin")
    bad = await admin.call("POST", "/v1/pods", b"{")
    assert bad.status == 400 and "not JSON" in bad.error["message"]
    assert bad.headers["content-type"] == "application/json"
    assert (await admin.call("POST", "/v1/pods", [])).error["code"] == 400
    big = await admin.call("POST", "/v1/pods", b" " * (MAX_BODY_BYTES + 1))
    assert big.status == 413 and str(MAX_BODY_BYTES) in big.error["message"]
    missing = await admin.call("GET", "/v1/widgets")
    assert missing.status == 404 and "no such route" in missing.error["message"]
    wrong = await admin.call("PATCH", "/v1/pods")
    assert wrong.status == 405 and wrong.headers["allow"] == "GET, POST"
    invalid = pod("bad")
    invalid["spec"]["containers"] = []
    unprocessable = await admin.call("POST", "/v1/pods", invalid)
    assert unprocessable.status == 422
    assert unprocessable.error["details"]["field"].startswith("spec.containers")
    assert (await admin.call("GET", "/v1/namespaces/default/pods/nope")).status == 404
    await rig.register(NodeKey("n1"))
    conflict = await admin.call("POST", "/v1/registrations", registration(NodeKey("n1")))
    assert conflict.status == 409 and "different key" in conflict.error["message"]


async def test_a_body_just_under_the_limit_reaches_the_handler(served: Wire) -> None:
    body = json.dumps(pod("big")).encode()
    body += b" " * (MAX_BODY_BYTES - len(body))
    assert len(body) == MAX_BODY_BYTES
    assert ok(await served.as_("admin").call("POST", "/v1/pods", body), 201)


async def test_stream_routes_need_http2_and_a_stream_handler(served: Wire) -> None:
    reply = await served.as_("admin").call("POST", "/v1/namespaces/default/pods/web/exec")
    if served.protocol == H1:
        assert reply.status == 426 and reply.headers["upgrade"] == "HTTP/2.0"
    else:
        assert served.protocol == H2
        assert reply.status == 503  # this edge serves no streams


async def test_the_loop_lag_probe_records_how_late_timers_run(api: MasterApi) -> None:
    probe = asyncio.create_task(api.sample_loop_lag())
    try:
        await until(lambda: len(api.loop_lag_seconds) >= 2, "two loop-lag samples")
    finally:
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
    assert all(lag >= 0 for lag in api.loop_lag_seconds)


async def test_a_deletions_grace_period_is_checked(api: MasterApi, rig: MasterRig) -> None:
    await call(api, "POST", "/v1/pods", pod("a"))
    for bad in ("-1", "x", "1.5", "9" * 20, "%EF%BC%91"):
        _, error = await fails(
            api, "DELETE", f"/v1/namespaces/default/pods/a?gracePeriodSeconds={bad}"
        )
        assert error["code"] == 400 and "gracePeriodSeconds" in error["message"]
    answer = await call(api, "DELETE", "/v1/namespaces/default/pods/a?gracePeriodSeconds=0")
    assert loads(answer) == {"deleted": "default/a"}
