"""The names on a node's certificate are the master's to verify (issue 14, item 1): the node
name and the address its registration or rotation came from; anything else it asks for waits
for an administrator (``agent.master.servingnames`` through the registry, on the memory store
with a driven clock)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.errors import BadRequestError, ConflictError, NameConflictError, NotFoundError
from agent.master import servingnames
from agent.master.config import RegistrationPolicy
from agent.master.pki_files import ClusterPki
from agent.master.registry import APPROVED, PENDING
from agent.pki.core import PrivateKey, build_csr, certs_from_pem, has_master_mark
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.unit.master.rig import MasterRig, NodeKey, make_rig

pytestmark = pytest.mark.usefixtures("blockbuster")

# What the fake master of issue 14 asked for: the master's address, a wildcard, a host name.
GREEDY = ["127.0.0.1", "*.example.com", "master.example"]


def raw_csr(key: PrivateKey, name: str, entries: list[x509.GeneralName]) -> str:
    """A CSR a hostile node builds by hand (build_csr would drop the wildcard and the URI)."""
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, NODES_GROUP),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, NODE_CN_PREFIX + name),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.SubjectAlternativeName(entries), critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def greedy_csr(node: NodeKey, *extra: str) -> str:
    sans = [node.name, *extra]
    return build_csr(node.key, NODE_CN_PREFIX + node.name, [NODES_GROUP], sans).decode()


def names_on(pem: str) -> set[str]:
    cert = certs_from_pem(pem.encode())[0]
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert not has_master_mark(cert)
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == []
    return {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(
        sans.get_values_for_type(x509.DNSName)
    )


async def stored(rig: MasterRig, name: str) -> dict[str, Any]:
    found = await rig.registry.get_record(name)
    assert found is not None
    return found[0]


async def request_of(rig: MasterRig, name: str) -> dict[str, Any] | None:
    return servingnames.request_object(await stored(rig, name))


# -- what a node asks for ----------------------------------------------------------------------


def test_asked_names_keep_only_what_a_certificate_may_hold() -> None:
    node = NodeKey("n1")
    csr = raw_csr(
        node.key,
        "n1",
        [
            x509.DNSName("n1"),
            x509.DNSName("*.example.com"),
            x509.UniformResourceIdentifier("urn:node-agent:master"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    asked = servingnames.asked_names(csr, "10.0.0.5", "", "*", "host.example", "10.0.0.5")
    assert asked == ["127.0.0.1", "n1", "10.0.0.5", "host.example"]


def test_asked_names_are_bounded_and_an_unreadable_csr_asks_for_nothing() -> None:
    many = [f"10.1.{n // 256}.{n % 256}" for n in range(100)]
    assert len(servingnames.asked_names("not a csr", *many)) == servingnames.MAX_REQUESTED_NAMES
    assert servingnames.asked_names("-----BEGIN \ud800", "a.example") == ["a.example"]


# -- registration ------------------------------------------------------------------------------


async def test_a_node_gets_only_verified_names_and_the_rest_waits(rig: MasterRig) -> None:
    node = NodeKey("n1")
    result = await rig.register(
        node,
        ip="10.0.0.5",
        csr=greedy_csr(node, *GREEDY),
        addresses=["10.0.0.5", "192.168.7.7"],
        hostname="n1.example",
    )
    assert result.status == 200
    assert names_on(result.body["certificate"]) == {"n1", "10.0.0.5"}
    request = await request_of(rig, "n1")
    assert request is not None
    assert request["spec"] == {
        "node": "n1",
        "names": ["127.0.0.1", "master.example", "192.168.7.7", "n1.example"],
        "source": "10.0.0.5",
    }
    assert request["status"]["condition"] == PENDING
    assert request["status"]["pending"] == request["spec"]["names"]
    assert request["metadata"]["creationTimestamp"] == "2027-01-15T08:00:00Z"
    node_object = rig.registry.node_object(await stored(rig, "n1"))
    assert node_object["status"]["registration"]["servingNames"] == {
        "verified": ["n1", "10.0.0.5"],
        "pending": request["spec"]["names"],
    }


async def test_a_node_asking_for_nothing_more_has_no_request(rig: MasterRig) -> None:
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=["10.0.0.5"], hostname="")
    assert await request_of(rig, "n1") is None
    with pytest.raises(BadRequestError, match='node "n1" has no serving names waiting'):
        await rig.registry.decide_serving_names("n1", approve=True)


async def test_a_node_named_like_an_address_gets_no_address_from_its_name(
    rig: MasterRig,
) -> None:
    node = NodeKey("127.0.0.1")
    result = await rig.register(node, ip="10.0.0.5", addresses=[], hostname="")
    assert names_on(result.body["certificate"]) == {"10.0.0.5"}


async def test_a_pending_registration_approved_by_an_admin_gets_verified_names_only(
    cluster_pki: ClusterPki,
) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    queued = await rig.register(node, ip="10.0.0.9", csr=greedy_csr(node, *GREEDY))
    assert queued.status == 202
    approved = await rig.registry.approve("n1")
    assert names_on(approved["certificate"]) == {"n1", "10.0.0.9"}
    request = await request_of(rig, "n1")
    assert request is not None and request["status"]["condition"] == PENDING


async def test_an_admitted_node_re_registering_with_new_names_gets_none_of_them(
    cluster_pki: ClusterPki,
) -> None:
    # The attack under approval: an admitted node registers again (over its mTLS
    # session, so it stays trusted) asking for the master's address.
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=["10.0.0.5"], hostname="")
    await rig.registry.approve("n1")
    again = await rig.register(
        node,
        ip="10.0.0.5",
        trusted=True,
        csr=greedy_csr(node, "127.0.0.1"),
        addresses=["127.0.0.1"],
    )
    assert again.status == 200
    assert names_on(again.body["certificate"]) == {"n1", "10.0.0.5"}
    assert servingnames.pending(await stored(rig, "n1")) == ["127.0.0.1", "n1.example"]


# -- an administrator's decision ---------------------------------------------------------------


async def test_approved_names_are_on_the_next_certificate(rig: MasterRig) -> None:
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=["10.0.0.5", "192.168.7.7"], hostname="")
    decided = await rig.registry.decide_serving_names("n1", approve=True)
    assert decided["servingNames"]["approved"] == ["192.168.7.7"]
    request = servingnames.request_object(decided)
    assert request is not None
    assert request["status"] == {
        "condition": APPROVED,
        "pending": [],
        "approved": ["192.168.7.7"],
        "denied": [],
    }
    assert rig.events("Node", "n1")[-1] == (
        "ServingNamesApproved",
        "serving names approved by an administrator: 192.168.7.7",
    )
    rotated = await rig.registry.rotate("n1", NodeKey("n1").csr(), "10.0.0.5")
    assert names_on(rotated) == {"n1", "10.0.0.5", "192.168.7.7"}
    with pytest.raises(BadRequestError, match="no serving names waiting"):
        await rig.registry.decide_serving_names("n1", approve=False)


async def test_denied_names_are_never_issued_nor_asked_for_again(rig: MasterRig) -> None:
    node = NodeKey("n1")
    csr = greedy_csr(node, "127.0.0.1")
    await rig.register(node, ip="10.0.0.5", csr=csr, addresses=[], hostname="")
    await rig.registry.decide_serving_names("n1", approve=False)
    assert rig.events("Node", "n1")[-1][0] == "ServingNamesDenied"
    request = await request_of(rig, "n1")
    assert request is not None
    assert request["status"]["condition"] == "Denied"
    assert request["status"]["denied"] == ["127.0.0.1"]
    rotated = await rig.registry.rotate("n1", csr, None)
    assert names_on(rotated) == {"n1", "10.0.0.5"}
    again = await rig.register(node, ip="10.0.0.5", csr=csr, addresses=[], hostname="")
    assert names_on(again.body["certificate"]) == {"n1", "10.0.0.5"}
    assert servingnames.pending(await stored(rig, "n1")) == []
    # A name it never asked for before is a new request.
    await rig.register(node, ip="10.0.0.5", csr=csr, addresses=["10.9.9.9"], hostname="")
    assert servingnames.pending(await stored(rig, "n1")) == ["10.9.9.9"]


async def test_a_decision_covers_exactly_the_names_the_administrator_saw(
    rig: MasterRig,
) -> None:
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=["10.0.0.8", "10.0.0.9"], hostname="")
    await rig.registry.decide_serving_names("n1", approve=True, names=["10.0.0.9"])
    assert servingnames.pending(await stored(rig, "n1")) == ["10.0.0.8"]
    # The node changed its request after the administrator looked: nothing is decided.
    await rig.register(node, ip="10.0.0.5", addresses=["127.0.0.1"], hostname="")
    with pytest.raises(ConflictError, match=r'does not ask for "10\.0\.0\.8" now'):
        await rig.registry.decide_serving_names("n1", approve=True, names=["10.0.0.8"])
    with pytest.raises(ConflictError, match="does not ask for nothing"):
        await rig.registry.decide_serving_names("n1", approve=True, names=[])
    assert servingnames.pending(await stored(rig, "n1")) == ["127.0.0.1"]
    rotated = await rig.registry.rotate("n1", node.csr(), "10.0.0.5")
    assert names_on(rotated) == {"n1", "10.0.0.5", "10.0.0.9"}


async def test_decisions_on_an_unknown_node_are_not_found(rig: MasterRig) -> None:
    with pytest.raises(NotFoundError):
        await rig.registry.decide_serving_names("ghost", approve=True)


# -- renewal -----------------------------------------------------------------------------------


async def test_rotation_adds_no_name_the_master_did_not_verify(rig: MasterRig) -> None:
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=["10.0.0.5"], hostname="")
    # The lease reports new addresses; the rotation's CSR asks for the master's address.
    await rig.registry.update_status("n1", {"addresses": ["127.0.0.1", "10.0.0.5"]})
    rotated = await rig.registry.rotate("n1", greedy_csr(NodeKey("n1"), *GREEDY), "10.0.0.5")
    assert names_on(rotated) == {"n1", "10.0.0.5"}
    assert servingnames.pending(await stored(rig, "n1")) == ["127.0.0.1", "master.example"]
    # A rotation asking for nothing keeps the request an administrator has yet to decide.
    bare = build_csr(node.key, NODE_CN_PREFIX + "n1", [NODES_GROUP], []).decode()
    await rig.registry.rotate("n1", bare)
    assert servingnames.pending(await stored(rig, "n1")) == ["127.0.0.1", "master.example"]


async def test_a_rotation_from_a_new_address_names_that_address_instead(rig: MasterRig) -> None:
    # The node proved its current key over mTLS from the new address: the same evidence a
    # registration gives, so that address is verified (and the old one no longer is).
    node = NodeKey("n1")
    await rig.register(node, ip="10.0.0.5", addresses=[], hostname="")
    moved = await rig.registry.rotate("n1", NodeKey("n1").csr(), "10.0.0.6")
    assert names_on(moved) == {"n1", "10.0.0.6"}
    unknown = await rig.registry.rotate("n1", NodeKey("n1").csr(), None)
    assert names_on(unknown) == {"n1", "10.0.0.6"}  # no address seen: the last one stands


async def test_an_accepted_replacement_key_names_the_address_it_came_from(
    rig: MasterRig,
) -> None:
    await rig.register(NodeKey("n1"), ip="10.0.0.5", addresses=[], hostname="")
    reinstalled = NodeKey("n1")
    rig.policy("approval")
    with pytest.raises(NameConflictError, match="different key"):
        await rig.register(reinstalled, ip="10.0.0.7", addresses=[], hostname="")
    fingerprint = rig.registry.node_object(await stored(rig, "n1"))["status"]["registration"][
        "replacement"
    ]["fingerprint"]
    accepted = await rig.registry.approve("n1", force_replace=True, fingerprint=fingerprint)
    assert names_on(accepted["certificate"]) == {"n1", "10.0.0.7"}


# -- the list nodectl shows --------------------------------------------------------------------


async def test_reading_the_request_never_writes_to_a_shared_record(rig: MasterRig) -> None:
    old_record: dict[str, Any] = {"name": "n1", "registration": APPROVED}
    assert servingnames.request_object(old_record) is None
    assert servingnames.shown(old_record) == {"verified": ["n1"], "pending": []}
    assert servingnames.certificate_names(old_record) == ["n1"]
    assert old_record == {"name": "n1", "registration": APPROVED}


async def test_registration_policy_does_not_change_the_rule(cluster_pki: ClusterPki) -> None:
    rig = make_rig(
        cluster_pki,
        registration=RegistrationPolicy(trust=("ip-allowlist",), allowed_cidrs=("10.0.0.0/8",)),
    )
    node = NodeKey("n1")
    result = await rig.register(node, ip="10.1.2.3", csr=greedy_csr(node, "10.1.2.4"))
    assert names_on(result.body["certificate"]) == {"n1", "10.1.2.3"}
