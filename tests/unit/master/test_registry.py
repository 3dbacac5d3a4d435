"""The node registry on the memory store with a driven clock: registration under each trust
policy, approval and long polls, re-registration, key conflicts, rotation, deletion, leases and
readiness, and the Node object shown to operators."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from cryptography import x509

from agent.aio.clock import SystemClock
from agent.errors import (
    BadRequestError,
    KeyMismatchError,
    NameConflictError,
    NotFoundError,
    PkiError,
    RegistrationRefusedError,
    UpdateConflictError,
)
from agent.master.config import RegistrationPolicy
from agent.master.pki_files import ClusterPki
from agent.master.registry import (
    APPROVED,
    DENIED,
    MAX_CONDITION_TEXT,
    MAX_NODE_CONDITIONS,
    NODES_PREFIX,
    PENDING,
    NodeRegistry,
    request_id,
)
from agent.master.store.memory import MemoryStore
from agent.pki.core import (
    certs_from_pem,
    create_ca,
    identity_of,
    issue,
    verify_issued_by,
)
from tests.unit.master.rig import LEASE_GRACE_S, MasterRig, NodeKey, csr_for, make_rig
from tests.unit.node.asyncwait import until

pytestmark = pytest.mark.usefixtures("blockbuster")


def certificate(result_body: dict[str, Any]) -> x509.Certificate:
    return certs_from_pem(result_body["certificate"].encode())[0]


async def record(rig: MasterRig, name: str) -> dict[str, Any]:
    found = await rig.registry.get_record(name)
    assert found is not None
    return found[0]


async def store_revision(rig: MasterRig) -> int:
    return (await rig.store.list_prefix(""))[1]


# -- first registration under each trust policy ----------------------------------------------


async def test_open_registration_issues_a_node_certificate(
    rig: MasterRig, cluster_pki: ClusterPki
) -> None:
    node = NodeKey("n1")
    result = await rig.register(node)
    assert result.status == 200
    assert result.body["status"] == APPROVED and result.body["admittedBy"] == "open"
    cert = certificate(result.body)
    assert verify_issued_by(cert, [cluster_pki.ca_cert]) == cluster_pki.ca_cert
    assert identity_of(cert).node_name == "n1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Only the names the master verified: the node name and the address it registered from;
    # its host name waits for an administrator (tests/unit/master/test_servingnames.py).
    assert sans.get_values_for_type(x509.DNSName) == ["n1"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert result.body["caBundle"].startswith("-----BEGIN CERTIFICATE-----")
    assert result.body["leaseRenewSeconds"] == rig.registry.config.lease_renew_s
    stored = await record(rig, "n1")
    assert stored["registration"] == APPROVED and "csr" not in stored
    assert stored["certExpiry"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert stored["createdAt"] == "2027-01-15T08:00:00Z"  # the rig's clock, not the host's
    assert stored["capacity"] == {"cpu": "4", "memory": "8Gi", "pods": "110"}
    assert rig.registry.is_current_node("n1", node.key_id)
    assert not rig.registry.is_current_node("n1", NodeKey("n1").key_id)
    assert not rig.registry.is_current_node("n2", node.key_id)
    assert [reason for reason, _ in rig.events("Node", "n1")] == ["Registered"]


async def test_the_ip_allowlist_admits_its_networks_and_refuses_others(
    cluster_pki: ClusterPki,
) -> None:
    rig = make_rig(
        cluster_pki,
        registration=RegistrationPolicy(trust=("ip-allowlist",), allowed_cidrs=("10.0.0.0/8",)),
    )
    admitted = await rig.register(NodeKey("n1"), ip="10.1.2.3")
    assert (admitted.status, admitted.body["admittedBy"]) == (200, "ip-allowlist")
    with pytest.raises(RegistrationRefusedError, match=r"192\.168\.1\.1 is not in an allowed CIDR"):
        await rig.register(NodeKey("n2"), ip="192.168.1.1")
    assert await rig.registry.get_record("n2") is None  # a refusal leaves no record
    [(reason, message)] = rig.events("Node", "n2")
    assert reason == "RegistrationRefusedError" and "from 192.168.1.1" in message


async def test_a_client_certificate_from_a_fleet_ca_admits(cluster_pki: ClusterPki) -> None:
    fleet_key, fleet = create_ca("fleet")
    rig = make_rig(cluster_pki, trust=("client-cert",), client_cas=[fleet])
    node = NodeKey("n1")
    fleet_cert = issue(
        fleet_key, fleet, node.key.public_key(), common_name="n1", groups=[], lifetime_s=600
    )
    result = await rig.register(node, peer_cert=fleet_cert)
    assert (result.status, result.body["admittedBy"]) == (200, "client-cert")
    with pytest.raises(RegistrationRefusedError, match="no client certificate"):
        await rig.register(NodeKey("n2"))


async def test_approval_queues_until_an_administrator_decides(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    queued = await rig.register(node)
    rid = request_id("n1", node.key_id)
    assert (queued.status, queued.body) == (202, {"status": PENDING, "requestId": rid})
    assert (await record(rig, "n1"))["csr"].startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert not rig.registry.is_current_node("n1", node.key_id)
    # A retry of the same node is the same request.
    assert (await rig.register(node)).body["requestId"] == rid
    assert len(await rig.registry.records()) == 1
    assert (await rig.registry.poll(rid, 0)).status == 202
    approved = await rig.registry.approve("n1")
    assert approved["registration"] == APPROVED and approved["admittedBy"] == "approval"
    assert "csr" not in approved
    answer = await rig.registry.poll(rid, 0)
    assert answer.status == 200 and identity_of(certificate(answer.body)).node_name == "n1"
    assert rig.registry.is_current_node("n1", node.key_id)
    assert [r for r, _ in rig.events("Node", "n1")] == ["RegistrationQueued", "Approved"]


async def test_no_admitting_rule_is_a_refusal_with_every_reason(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("client-cert",))
    with pytest.raises(RegistrationRefusedError, match="no trust rule admits this node"):
        await rig.register(NodeKey("n1"))


# -- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nodeName": None}, "nodeName and csr"),
        ({"csr": 5}, "nodeName and csr"),
        ({"addresses": "10.0.0.1"}, "addresses must be a list of strings"),
        ({"addresses": [1]}, "addresses must be a list of strings"),
        ({"capacity": ["cpu"]}, "capacity must be an object"),
        ({"capacity": {"cpu": True}}, "capacity must be an object"),
        ({"labels": {"a": {"b": "c"}}}, "labels must be an object"),
    ],
)
async def test_a_malformed_registration_is_a_bad_request(
    rig: MasterRig, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        await rig.register(NodeKey("n1"), **change)
    assert await rig.registry.records() == []


async def test_the_csr_must_be_for_the_node_and_valid(rig: MasterRig) -> None:
    node = NodeKey("n1")
    with pytest.raises(BadRequestError, match="CN must be system:node:n1"):
        await rig.register(node, csr=csr_for("n1", node.key, cn="system:node:other"))
    with pytest.raises(PkiError, match="not a PEM certificate signing request"):
        await rig.register(node, csr="junk")


async def test_missing_facts_default_to_empty(rig: MasterRig) -> None:
    node = NodeKey("n1")
    body = {"nodeName": "n1", "csr": node.csr()}
    assert (await rig.registry.register(body, "10.0.0.5", None, None)).status == 200
    stored = await record(rig, "n1")
    assert (stored["addresses"], stored["capacity"], stored["labels"], stored["hostname"]) == (
        [],
        {},
        {},
        "",
    )


# -- re-registration ------------------------------------------------------------------------


async def test_a_trusted_node_is_readmitted_whatever_the_policy(rig: MasterRig) -> None:
    node = NodeKey("n1")
    first = await rig.register(node)
    rig.policy("approval")
    again = await rig.register(node, trusted=True, addresses=["10.0.0.9"])
    assert again.status == 200 and again.body["certificate"] != first.body["certificate"]
    assert (await record(rig, "n1"))["addresses"] == ["10.0.0.9"]


async def test_an_approved_node_without_its_certificate_goes_back_through_the_policy(
    rig: MasterRig,
) -> None:
    node = NodeKey("n1")
    await rig.register(node)
    rig.policy("ip-allowlist", "approval", allowed_cidrs=("10.0.0.0/24",))
    readmitted = await rig.register(node)  # certificate lost, but still an allowed source
    assert (readmitted.status, readmitted.body["admittedBy"]) == (200, "ip-allowlist")
    assert (await record(rig, "n1"))["admittedBy"] == "ip-allowlist"
    queued = await rig.register(node, ip="192.0.2.1")
    assert queued.status == 202
    stored = await record(rig, "n1")
    assert stored["registration"] == PENDING and "certificate" not in stored and stored["csr"]
    assert not rig.registry.is_current_node("n1", node.key_id)
    rig.policy("ip-allowlist", allowed_cidrs=("10.0.0.0/24",))
    refused = await rig.register(node, ip="192.0.2.1")
    assert refused.status == 403 and "not in an allowed CIDR" in refused.body["reason"]


async def test_a_pending_node_is_admitted_once_the_policy_admits_it(
    cluster_pki: ClusterPki,
) -> None:
    """docs/master.md: the trust rules are tried on every registration of a node that is not
    trusted, so a node queued before a reload that now admits it joins at its next retry."""
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    assert (await rig.register(node)).status == 202
    rig.policy("open")
    admitted = await rig.register(node)
    assert (admitted.status, admitted.body["admittedBy"]) == (200, "open")
    assert "csr" not in await record(rig, "n1")


async def test_a_denied_node_stays_denied_until_an_administrator_approves_it(
    rig: MasterRig,
) -> None:
    node = NodeKey("n1")
    await rig.register(node)
    denied = await rig.registry.deny("n1", "")
    assert denied["reason"] == "denied by an administrator" and "certificate" not in denied
    assert not rig.registry.is_current_node("n1", node.key_id)
    answer = await rig.register(node)  # the open policy does not undo a denial
    assert answer.status == 403 and answer.body == {
        "status": DENIED,
        "reason": "denied by an administrator",
    }
    approved = await rig.registry.approve("n1")  # with the CSR of the denied retry
    assert approved["registration"] == APPROVED
    assert (await rig.register(node, trusted=True)).status == 200
    assert [r for r, _ in rig.events("Node", "n1")] == ["Registered", "Denied", "Approved"]


async def test_deny_with_a_reason_and_poll_answers_403(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    rid = (await rig.register(node)).body["requestId"]
    await rig.registry.deny("n1", "unknown machine")
    answer = await rig.registry.poll(rid, 0)
    assert (answer.status, answer.body) == (403, {"status": DENIED, "reason": "unknown machine"})
    assert rig.events("Node", "n1")[-1] == ("Denied", "unknown machine")


# -- long polls -----------------------------------------------------------------------------


async def test_a_poll_returns_as_soon_as_the_request_is_decided(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    node = NodeKey("n1")
    rid = (await rig.register(node)).body["requestId"]
    polling = asyncio.create_task(rig.registry.poll(rid, 30))
    await rig.register(node)  # a change that decides nothing: the poll goes on waiting
    await asyncio.sleep(0)
    assert not polling.done()
    await rig.registry.approve("n1")
    assert (await asyncio.wait_for(polling, 10)).status == 200


async def test_a_poll_answers_pending_when_its_time_is_up(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    rid = (await rig.register(NodeKey("n1"))).body["requestId"]
    assert (await rig.registry.poll(rid, 0.01)).status == 202  # waited, nothing decided


@pytest.mark.parametrize("timeout_s", [math.nan, -1.0, -math.inf])
async def test_a_poll_with_no_time_to_wait_answers_at_once(
    cluster_pki: ClusterPki, timeout_s: float
) -> None:
    # min(nan, MAX_POLL_S) is nan: uvloop refuses to wait nan seconds (ValueError, a 500).
    rig = make_rig(cluster_pki, trust=("approval",))
    rid = (await rig.register(NodeKey("n1"))).body["requestId"]
    polling = asyncio.create_task(rig.registry.poll(rid, timeout_s))
    await until(polling.done, "the poll to answer without waiting")
    assert polling.result().status == 202
    assert "n1" not in rig.registry._changed  # it never parked


async def test_a_poll_of_a_deleted_node_is_not_found(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    rid = (await rig.register(NodeKey("n1"))).body["requestId"]
    polling = asyncio.create_task(rig.registry.poll(rid, 30))
    await asyncio.sleep(0)
    await rig.registry.delete("n1")
    with pytest.raises(NotFoundError, match=f"registration request {rid} not found"):
        await asyncio.wait_for(polling, 10)
    with pytest.raises(NotFoundError):
        await rig.registry.poll("0" * 32, 0)


# -- a new key for a known name -------------------------------------------------------------


async def test_a_new_key_for_a_registered_name_needs_force_replace(rig: MasterRig) -> None:
    old, new = NodeKey("n1"), NodeKey("n1")
    await rig.register(old)
    new_fp = f"sha256:{new.key_id}"
    with pytest.raises(
        NameConflictError, match=f"nodectl approve n1 --force-replace --fingerprint {new_fp}"
    ):
        await rig.register(new, ip="192.0.2.7")
    remembered = (await record(rig, "n1"))["replacement"]
    assert remembered["publicKeyId"] == new.key_id
    evidence = {
        "fingerprint": new_fp,
        "source": "192.0.2.7",
        "requestedAt": "2027-01-15T08:00:00Z",
        "admittedBy": "open",
    }
    shown = rig.registry.node_object(await record(rig, "n1"))["status"]["registration"]
    assert shown["replacement"] == evidence and shown["keyFingerprint"] == f"sha256:{old.key_id}"
    assert "csr" not in json.dumps(shown)
    [(reason, message)] = [e for e in rig.events("Node", "n1") if e[0] != "Registered"]
    assert reason == "KeyReplacementRequested"
    assert "from 192.0.2.7 (rule open)" in message and new_fp in message
    revision = await store_revision(rig)
    rig.clock.advance(60)
    with pytest.raises(NameConflictError):
        await rig.register(new, ip="192.0.2.8")  # retries do not rewrite the record
    assert await store_revision(rig) == revision
    assert (await record(rig, "n1"))["replacement"]["source"] == "192.0.2.7"  # the first's
    assert rig.registry.is_current_node("n1", old.key_id)  # nothing changes until approved
    with pytest.raises(BadRequestError, match="needs its fingerprint"):
        await rig.registry.approve("n1", force_replace=True)
    with pytest.raises(KeyMismatchError, match=f'waits with key {new_fp}, not "sha256:00'):
        await rig.registry.approve("n1", force_replace=True, fingerprint="sha256:00")
    assert rig.registry.is_current_node("n1", old.key_id)  # refused: nothing changed
    approved = await rig.registry.approve(
        "n1", force_replace=True, fingerprint=f" {new_fp.upper().replace('SHA256', 'sha256')} "
    )
    assert approved["publicKeyId"] == new.key_id and approved["pickup"] is True
    assert approved["requestId"] == request_id("n1", new.key_id)
    assert not rig.registry.is_current_node("n1", old.key_id)
    assert rig.registry.is_current_node("n1", new.key_id)
    handed = await rig.register(new)  # picks up the certificate issued at approval
    assert handed.status == 200 and handed.body["certificate"] == approved["certificate"]
    assert "pickup" not in await record(rig, "n1")
    assert rig.events("Node", "n1")[-1] == (
        "Approved",
        f"approved by an administrator (new key {new_fp} accepted)",
    )


async def test_a_second_replacement_key_replaces_the_first_with_a_new_event(
    rig: MasterRig,
) -> None:
    """The administrator sees every key that asked: approving the one they saw first is refused
    once another took its place."""
    await rig.register(NodeKey("n1"))
    first, second = NodeKey("n1"), NodeKey("n1")
    with pytest.raises(NameConflictError):
        await rig.register(first, ip="192.0.2.7")
    rig.clock.advance(5)
    with pytest.raises(NameConflictError):
        await rig.register(second, ip="198.51.100.9")
    waiting = rig.registry.node_object(await record(rig, "n1"))["status"]["registration"]
    assert waiting["replacement"]["fingerprint"] == f"sha256:{second.key_id}"
    assert waiting["replacement"]["source"] == "198.51.100.9"
    assert waiting["replacement"]["requestedAt"] == "2027-01-15T08:00:05Z"
    requests = [m for r, m in rig.events("Node", "n1") if r == "KeyReplacementRequested"]
    assert len(requests) == 2
    assert f"replaces the waiting request for sha256:{first.key_id}" in requests[1]
    with pytest.raises(KeyMismatchError, match="the request you saw was replaced"):
        await rig.registry.approve("n1", force_replace=True, fingerprint=f"sha256:{first.key_id}")
    approved = await rig.registry.approve(
        "n1", force_replace=True, fingerprint=f"sha256:{second.key_id}"
    )
    assert approved["publicKeyId"] == second.key_id


async def test_a_replacement_the_policy_refuses_is_not_remembered(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    rig.policy("ip-allowlist", allowed_cidrs=("10.0.0.0/8",))
    with pytest.raises(RegistrationRefusedError, match="not in an allowed CIDR"):
        await rig.register(NodeKey("n1"), ip="192.0.2.7")
    assert "replacement" not in await record(rig, "n1")


async def test_force_replace_needs_a_registration_from_a_new_key(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    with pytest.raises(BadRequestError, match="no registration from a new key"):
        await rig.registry.approve("n1", force_replace=True)


async def test_approving_twice_or_without_a_csr(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    before = await record(rig, "n1")
    again = await rig.registry.approve("n1")  # already approved: the same certificate
    assert again["certificate"] == before["certificate"]
    await rig.registry.deny("n1", "no")
    with pytest.raises(BadRequestError, match="no pending certificate request"):
        await rig.registry.approve("n1")  # denied before it asked again: nothing to sign


async def test_admin_actions_on_an_unknown_node_are_not_found_and_record_nothing(
    rig: MasterRig,
) -> None:
    for action in (
        rig.registry.approve("ghost"),
        rig.registry.deny("ghost", "x"),
        rig.registry.set_unschedulable("ghost", True),
        rig.registry.rotate("ghost", NodeKey("ghost").csr()),
        rig.registry.delete("ghost"),
    ):
        with pytest.raises(NotFoundError, match="node 'ghost' not found"):
            await action
    assert rig.events("Node", "ghost") == []


# -- rotation, deletion, cordon --------------------------------------------------------------


async def test_rotation_issues_for_a_new_key_without_approval(rig: MasterRig) -> None:
    old, new = NodeKey("n1"), NodeKey("n1")
    await rig.register(old)
    pem = await rig.registry.rotate("n1", new.csr())
    assert certs_from_pem(pem.encode())[0].public_key() == new.key.public_key()
    assert rig.registry.is_current_node("n1", new.key_id)
    assert not rig.registry.is_current_node("n1", old.key_id)
    assert (await record(rig, "n1"))["requestId"] == request_id("n1", new.key_id)
    await rig.registry.deny("n1", "")
    with pytest.raises(RegistrationRefusedError, match="node 'n1' is Denied"):
        await rig.registry.rotate("n1", new.csr())
    with pytest.raises(BadRequestError, match="CN must be"):
        await rig.registry.rotate("n1", NodeKey("n2").csr())


async def test_delete_forgets_the_node_its_key_and_its_lease(rig: MasterRig) -> None:
    node = NodeKey("n1")
    await rig.register(node)
    rig.registry.renew_lease("n1")
    await rig.registry.delete("n1")
    assert await rig.registry.get_record("n1") is None
    assert not rig.registry.is_current_node("n1", node.key_id)
    assert "n1" not in rig.registry.leases
    assert await rig.store.get(NODES_PREFIX + "n1") is None
    assert (await rig.register(NodeKey("n1"))).status == 200  # the name is free again


async def test_cordon_and_uncordon(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    cordoned = await rig.registry.set_unschedulable("n1", True)
    assert rig.registry.node_object(cordoned)["spec"] == {"unschedulable": True}
    uncordoned = await rig.registry.set_unschedulable("n1", False)
    assert rig.registry.node_object(uncordoned)["spec"] == {"unschedulable": False}


async def test_records_survive_a_master_restart(rig: MasterRig, cluster_pki: ClusterPki) -> None:
    node = NodeKey("n1")
    await rig.register(node)
    restarted = NodeRegistry(rig.store, cluster_pki, rig.registry.config, [], clock=rig.clock)
    assert await restarted.records() == []
    await restarted.load()
    assert [r["name"] for r in await restarted.records()] == ["n1"]
    assert restarted.is_current_node("n1", node.key_id)
    found = await restarted.get_record("n1")
    assert found is not None and found[0] == await record(rig, "n1")
    found[0]["registration"] = DENIED  # a private copy
    assert restarted.is_current_node("n1", node.key_id)


class _ChangedBehindEverySwap(MemoryStore):
    """Another writer (a second master) changes every node record just before each swap."""

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        current = await self.get(key)
        if current is not None and key.startswith(NODES_PREFIX):
            await self.put(key, current.value)
        return await super().compare_and_swap(key, value, expected_mod_revision)


async def test_a_record_changed_behind_the_registry_is_read_again(rig: MasterRig) -> None:
    """Another writer changed the record: the failed swap refreshes the cache from the store and
    the next attempt succeeds."""
    node = NodeKey("n1")
    await rig.register(node)
    stored = await rig.store.get(NODES_PREFIX + "n1")
    assert stored is not None
    await rig.store.put(NODES_PREFIX + "n1", stored.value)
    assert (await rig.registry.set_unschedulable("n1", True))["unschedulable"] is True


async def test_a_record_changing_behind_every_swap_gives_up_with_an_error(
    cluster_pki: ClusterPki,
) -> None:
    """A record that changes before each of its swaps ends the request with an error, not a
    loop."""
    rig = make_rig(cluster_pki, store=_ChangedBehindEverySwap())
    node = NodeKey("n1")
    await rig.register(node)
    with pytest.raises(UpdateConflictError, match="node 'n1' kept changing; retry") as caught:
        await rig.registry.set_unschedulable("n1", True)
    assert caught.value.http_status == 409  # the client may retry, as after any conflict
    with pytest.raises(UpdateConflictError, match="kept conflicting with concurrent changes"):
        await rig.register(node, addresses=["10.0.0.9"])


# -- node status ----------------------------------------------------------------------------


async def test_status_updates_write_only_changes(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    status = {
        "addresses": ["10.0.0.7"],
        "capacity": {"cpu": 8, "memory": "16Gi"},
        "agentVersion": "1.2.4",
        "imageFs": {"capacityBytes": 100, "usedBytes": 40},
        "conditions": [
            {"type": "Ready", "status": "True"},  # the master's to judge, never the node's
            {"type": "RuntimeReady", "status": "False", "reason": "DockerDown", "message": "x"},
            "not a condition",
            {"status": "no type"},
        ],
        "apiEndpoint": "10.0.0.7:10250",
    }
    await rig.registry.update_status("n1", status)
    stored = await record(rig, "n1")
    assert stored["capacity"] == {"cpu": "8", "memory": "16Gi"}
    assert stored["imageFs"] == {"capacityBytes": 100, "usedBytes": 40}
    assert stored["nodeConditions"] == [
        {"type": "RuntimeReady", "status": "False", "reason": "DockerDown", "message": "x"}
    ]
    assert stored["apiEndpoint"] == "10.0.0.7:10250"
    revision = await store_revision(rig)
    await rig.registry.update_status("n1", status)
    assert await store_revision(rig) == revision
    await rig.registry.update_status("ghost", status)  # unknown: nothing to update
    assert await store_revision(rig) == revision


async def test_node_conditions_are_bounded(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    many = [{"type": f"C{i}", "message": "m" * 5000} for i in range(MAX_NODE_CONDITIONS + 5)]
    await rig.registry.update_status("n1", {"conditions": many})
    conditions = (await record(rig, "n1"))["nodeConditions"]
    assert len(conditions) == MAX_NODE_CONDITIONS
    assert {len(c["message"]) for c in conditions} == {MAX_CONDITION_TEXT}
    assert conditions[0] == {"type": "C0", "status": "", "reason": "", "message": "m" * 1024}
    await rig.registry.update_status("n1", {"conditions": "not a list"})
    assert (await record(rig, "n1"))["nodeConditions"] == []


@pytest.mark.parametrize(
    ("status", "message"),
    [
        ({"addresses": {"a": 1}}, "status.addresses must be a list"),
        ({"capacity": "lots"}, "status.capacity must be an object"),
        ({"imageFs": {"usedBytes": "40"}}, "status.imageFs must be an object of integers"),
        ({"imageFs": [1]}, "status.imageFs must be an object of integers"),
    ],
)
async def test_a_malformed_status_is_a_bad_request(
    rig: MasterRig, status: dict[str, Any], message: str
) -> None:
    await rig.register(NodeKey("n1"))
    with pytest.raises(BadRequestError, match=message):
        await rig.registry.update_status("n1", status)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://10.0.0.7:10250",  # a URL, not HOST:PORT
        "10.0.0.7",
        ":10250",
        "10.0.0.7:",
        "10.0.0.7:0",
        "10.0.0.7:65536",
        "10.0.0.7:99999999999999999999",
        "10.0.0.7:-1",
        "10.0.0.7:\u0661\u0660",  # digits of another script, which int() would take
        "fd00::7:10250",  # IPv6 unbracketed: ambiguous
        "[n1.example]:10250",
        "[fd00::zz]:10250",
        "bad host:10250",
        "n1\x00.example:10250",
        "n1\n.example:10250",
        "under_score.example:10250",
        "-lead.example:10250",
        "trail-.example:10250",
        "two..dots:10250",
        "10.0.0.300:10250",  # all-numeric labels: not an address, not a DNS name
        "x" * 64 + ".example:10250",  # a label longer than 63
        "a." * 200 + "example:10250",
        10250,
        True,
    ],
)
async def test_a_reported_api_endpoint_must_be_host_and_port(
    rig: MasterRig, endpoint: object
) -> None:
    await rig.register(NodeKey("n1"))
    with pytest.raises(BadRequestError, match=r"status\.apiEndpoint"):
        await rig.registry.update_status("n1", {"apiEndpoint": endpoint})
    assert (await record(rig, "n1")).get("apiEndpoint") is None
    assert rig.registry.api_endpoint("n1") is None


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("10.0.0.7:10250", ("10.0.0.7", 10250)),
        ("[fd00::7]:1", ("fd00::7", 1)),
        ("n1.example:65535", ("n1.example", 65535)),
        ("N1-a.Example:443", ("N1-a.Example", 443)),
        ("n1:10250", ("n1", 10250)),
    ],
)
async def test_a_reported_api_endpoint_is_where_the_master_connects(
    rig: MasterRig, endpoint: str, expected: tuple[str, int]
) -> None:
    await rig.register(NodeKey("n1"))
    assert rig.registry.api_endpoint("n1") is None  # not reported yet
    await rig.registry.update_status("n1", {"apiEndpoint": endpoint})
    assert (await record(rig, "n1"))["apiEndpoint"] == endpoint
    assert rig.registry.api_endpoint("n1") == expected
    await rig.registry.update_status("n1", {"apiEndpoint": ""})  # no longer reported
    assert rig.registry.api_endpoint("n1") is None
    assert rig.registry.api_endpoint("ghost") is None


async def test_an_api_endpoint_stored_before_it_was_checked_counts_as_unreported(
    rig: MasterRig, cluster_pki: ClusterPki
) -> None:
    await rig.register(NodeKey("n1"))
    stored = await rig.store.get(NODES_PREFIX + "n1")
    assert stored is not None
    legacy = {**json.loads(stored.value), "apiEndpoint": "https://n1:99999"}
    await rig.store.put(NODES_PREFIX + "n1", json.dumps(legacy).encode())
    restarted = NodeRegistry(rig.store, cluster_pki, rig.registry.config, [], clock=rig.clock)
    await restarted.load()
    assert restarted.api_endpoint("n1") is None


# -- leases, readiness, the Node object -------------------------------------------------------


async def test_readiness_follows_the_lease_and_waits_out_a_master_restart(
    rig: MasterRig,
) -> None:
    await rig.register(NodeKey("n1"))
    registry, clock = rig.registry, rig.clock
    assert registry.readiness("n1") == ("Unknown", "MasterStarting")
    assert registry.not_ready_for_s("n1") is None
    clock.advance(LEASE_GRACE_S + 5)
    assert registry.readiness("n1") == ("False", "NodeLeaseExpired")
    assert registry.not_ready_for_s("n1") == pytest.approx(5)  # since the master's grace ended
    registry.renew_lease("n1")
    assert registry.readiness("n1") == ("True", "NodeLeaseCurrent")
    assert registry.not_ready_for_s("n1") is None
    clock.advance(LEASE_GRACE_S)
    assert registry.readiness("n1") == ("True", "NodeLeaseCurrent")  # the grace is inclusive
    clock.advance(30)
    assert registry.readiness("n1") == ("False", "NodeLeaseExpired")
    assert registry.not_ready_for_s("n1") == pytest.approx(30)


async def test_a_lease_counts_during_the_master_start(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    rig.registry.renew_lease("n1")
    assert rig.registry.readiness("n1") == ("True", "NodeLeaseCurrent")


async def test_the_node_object(rig: MasterRig) -> None:
    await rig.register(NodeKey("n1"))
    await rig.registry.update_status(
        "n1",
        {
            "addresses": ["10.0.0.5"],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "agentVersion": "1.2.3",
            "conditions": [{"type": "RuntimeReady", "status": "True"}],
            "apiEndpoint": "n1:10250",
        },
    )
    rig.clock.advance(100)
    rig.registry.renew_lease("n1")
    rig.clock.advance(4)
    stored = await record(rig, "n1")
    obj = rig.registry.node_object(stored)
    assert obj["metadata"] == {
        "name": "n1",
        "labels": {"zone": "a"},
        "creationTimestamp": "2027-01-15T08:00:00Z",
    }
    status = obj["status"]
    assert status["registration"] == {
        "phase": APPROVED,
        "admittedBy": "open",
        "reason": "open registration",
        "certificateExpiry": stored["certExpiry"],
        "keyFingerprint": f"sha256:{stored['publicKeyId']}",
        "servingNames": {"verified": ["n1", "10.0.0.5"], "pending": ["n1.example"]},
    }
    assert status["conditions"] == [
        {
            "type": "Ready",
            "status": "True",
            "reason": "NodeLeaseCurrent",
            "lastHeartbeatTime": "2027-01-15T08:01:40Z",  # when the lease came, not now
        },
        {"type": "RuntimeReady", "status": "True", "reason": "", "message": ""},
    ]
    assert status["addresses"] == [
        {"type": "InternalIP", "address": "10.0.0.5"},
        {"type": "Hostname", "address": "n1.example"},
    ]
    assert status["capacity"] == {"cpu": "4", "memory": "8Gi", "pods": "110"}
    assert status["nodeInfo"] == {"agentVersion": "1.2.3"}
    assert status["daemonEndpoints"] == {"nodeApi": "n1:10250"}
    assert obj["spec"] == {"unschedulable": False}
    json.dumps(obj)  # served as JSON as is


async def test_the_node_object_of_a_node_never_heard_from(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki, trust=("approval",))
    await rig.register(NodeKey("n1"), hostname="", addresses=[])
    obj = rig.registry.node_object(await record(rig, "n1"))
    assert obj["status"]["conditions"][0]["lastHeartbeatTime"] is None
    assert obj["status"]["addresses"] == []
    assert obj["status"]["registration"]["certificateExpiry"] is None


async def test_the_system_clock_is_the_default(cluster_pki: ClusterPki) -> None:
    rig = make_rig(cluster_pki)
    registry = NodeRegistry(MemoryStore(), cluster_pki, rig.registry.config, [])
    assert isinstance(registry.clock, SystemClock)
    assert registry.readiness("n1") == ("Unknown", "MasterStarting")


async def test_a_record_another_master_changed_is_read_again_not_fought_over(
    cluster_pki: ClusterPki,
) -> None:
    """Two masters on one store (etcd): B's cordon reaches A's cache at A's next conflicting
    write, which then succeeds (A's cache refreshed on the failed swap) instead of failing the
    same stale swap until UpdateConflictError."""
    rig = make_rig(cluster_pki)
    await rig.ready_node("n1")
    other = NodeRegistry(rig.store, cluster_pki, rig.registry.config, [], clock=rig.clock)
    await other.load()
    await other.set_unschedulable("n1", True)
    uncordoned = await rig.registry.set_unschedulable("n1", False)
    assert uncordoned["unschedulable"] is False
    found = await rig.store.get("/nodes/n1")
    assert found is not None and json.loads(found.value)["unschedulable"] is False
    # A record another master deleted: gone from this one's cache at its next write.
    await other.load()
    await other.delete("n1")
    with pytest.raises(NotFoundError):
        await rig.registry.set_unschedulable("n1", True)
    assert await rig.registry.get_record("n1") is None
