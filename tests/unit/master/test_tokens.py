"""Join tokens on the master (agent.master.tokens) and the ``token`` trust rule in the registry
and the API: a valid token admits and labels the node; an expired, deleted, used-up, wrong or
unknown one is refused with a reason that never holds the secret; uses are counted through the
store (two nodes racing for the last use: one wins); a node that joined does not need its
token again; the token routes keep the secret to the one answer that creates it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from agent.aio.edge import ApiRequest, ApiResponse
from agent.errors import BadRequestError, NotFoundError, RegistrationRefusedError
from agent.jointoken import JoinToken, parse_token
from agent.master.api import MasterApi
from agent.master.config import RegistrationPolicy
from agent.master.pki_files import ClusterPki
from agent.master.policy import Caller, Verdict, evaluate
from agent.master.registry import APPROVED, PENDING
from agent.master.tokens import TOKENS_PREFIX, JoinTokens, TokenCheck
from agent.pki.names import MASTERS_GROUP
from agent.proto import authz
from agent.proto.authz import CallerKind, Principal, Role
from agent.proto.routes import MASTER_ROUTES
from tests.unit.master.rig import MasterRig, NodeKey, make_rig

pytestmark = pytest.mark.usefixtures("blockbuster")

DAY_S = 24 * 3600.0


def token_rig(cluster_pki: ClusterPki, *trust: str) -> MasterRig:
    return make_rig(cluster_pki, trust=trust or ("token",))


async def join(rig: MasterRig, name: str, token: JoinToken | str | None, **kw: Any) -> Any:
    facts: dict[str, Any] = {"token": str(token)} if token is not None else {}
    return await rig.register(NodeKey(name), **facts, **kw)


async def refusal(rig: MasterRig, name: str, token: JoinToken | str | None) -> str:
    with pytest.raises(RegistrationRefusedError) as caught:
        await join(rig, name, token)
    assert await rig.registry.get_record(name) is None  # a refusal leaves no record
    return str(caught.value)


# -- the rule (pure) ---------------------------------------------------------------------------


def test_the_token_rule_admits_a_valid_token_only_and_says_why_not() -> None:
    policy = RegistrationPolicy(trust=("token",))
    valid = TokenCheck("abc123", True, "", {"zone": "b"})
    admitted = evaluate(policy, Caller("n1", "10.0.0.5", token=valid), [])
    assert (admitted.verdict, admitted.rule) == (Verdict.ADMIT, "token")
    assert admitted.reason == "join token abc123"
    none = evaluate(policy, Caller("n1", "10.0.0.5"), [])
    assert none.verdict is Verdict.REFUSE and "no join token was presented" in none.reason
    bad = TokenCheck("abc123", False, "join token abc123 expired at 2027-01-16T08:00:00Z")
    refused = evaluate(policy, Caller("n1", "10.0.0.5", token=bad), [])
    assert refused.verdict is Verdict.REFUSE
    assert "token: join token abc123 expired" in refused.reason
    # An invalid token falls through to the next rule.
    queued = evaluate(
        RegistrationPolicy(trust=("token", "approval")), Caller("n", "1.2.3.4", token=bad), []
    )
    assert (queued.verdict, queued.rule) == (Verdict.QUEUE, "approval")


# -- the registry ------------------------------------------------------------------------------


async def test_a_valid_token_admits_and_its_labels_land_on_the_node(
    cluster_pki: ClusterPki,
) -> None:
    rig = token_rig(cluster_pki)
    token, shown = await rig.registry.tokens.create(
        labels={"zone": "b", "role": "edge"}, description="rack 4"
    )
    assert shown["expiresAt"] == "2027-01-16T08:00:00Z"  # 24 h by default
    assert shown["usesLeft"] is None and shown["labels"] == {"zone": "b", "role": "edge"}
    result = await join(rig, "n1", token)
    assert (result.status, result.body["admittedBy"]) == (200, "token")
    found = await rig.registry.get_record("n1")
    assert found is not None
    record = found[0]
    # The token's labels win over the node's own ("zone": "a" from the rig's body).
    assert record["labels"] == {"zone": "b", "role": "edge"}
    assert record["joinToken"] == token.id and record["reason"] == f"join token {token.id}"
    node = rig.registry.node_object(record)
    assert node["metadata"]["labels"] == {"zone": "b", "role": "edge"}
    assert node["status"]["registration"]["admittedBy"] == "token"
    # Nothing the master keeps or shows holds the secret.
    items, _ = await rig.store.list_prefix("")
    assert all(token.secret.encode() not in item.value for item in items)
    assert token.secret not in json.dumps(rig.registry.events.list(None, None))


async def test_expired_deleted_used_up_wrong_and_unknown_tokens_are_refused(
    cluster_pki: ClusterPki,
) -> None:
    rig = token_rig(cluster_pki)
    tokens = rig.registry.tokens
    expiring, _ = await tokens.create(ttl_s=60)
    rig.clock.advance(61)
    assert f"join token {expiring.id} expired at 2027-01-15T08:01:00Z" in await refusal(
        rig, "n1", expiring
    )
    deleted, _ = await tokens.create()
    await tokens.delete(deleted.id)
    unknown = f"join token {deleted.id} is unknown (deleted, or never made) or its secret is wrong"
    assert unknown in await refusal(rig, "n2", deleted)
    once, _ = await tokens.create(usages=1)
    assert (await join(rig, "n3", once)).status == 200
    assert f"join token {once.id} is used up (1 uses allowed)" in await refusal(rig, "n4", once)
    good, _ = await tokens.create()
    wrong = JoinToken(good.id, "0" * 16 if good.secret != "0" * 16 else "1" * 16)
    # A wrong secret learns nothing of the token: the same words as an unknown id.
    assert f"join token {good.id} is unknown" in await refusal(rig, "n5", wrong)
    assert "no join token was presented" in await refusal(rig, "n6", None)
    # The reasons are in the refusal events too, and no message holds a secret.
    messages = json.dumps(rig.registry.events.list(None, None))
    for token in (expiring, deleted, once, good):
        assert token.secret not in messages
    # The right secret of a live token still admits.
    assert (await join(rig, "n7", good)).status == 200


async def test_a_malformed_token_is_a_bad_request_that_does_not_repeat_it(
    cluster_pki: ClusterPki,
) -> None:
    rig = token_rig(cluster_pki)
    for value in ("abc123.SECRETSECRETSECRE", "nope", 5, ["x"], "a" * 100_000):
        with pytest.raises(BadRequestError, match="token") as caught:
            await rig.register(NodeKey("n1"), token=value)
        assert "SECRET" not in str(caught.value)


async def test_two_nodes_racing_for_the_last_use_one_wins(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki)
    token, _ = await rig.registry.tokens.create(usages=3)
    assert (await join(rig, "first", token)).status == 200
    assert (await join(rig, "second", token)).status == 200
    results = await asyncio.gather(
        *(join(rig, f"racer-{i}", token) for i in range(8)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, RegistrationRefusedError)]
    assert len(admitted) == 1 and len(refused) == 7, results
    assert all("is used up (3 uses allowed)" in str(r) for r in refused)
    [listed] = await rig.registry.tokens.list()
    assert (listed["used"], listed["usesLeft"]) == (3, 0)


async def test_a_use_lost_to_another_node_goes_on_to_the_next_rule(
    cluster_pki: ClusterPki,
) -> None:
    rig = token_rig(cluster_pki, "token", "approval")
    token, _ = await rig.registry.tokens.create(usages=1)
    results = await asyncio.gather(join(rig, "a", token), join(rig, "b", token))
    assert sorted(r.status for r in results) == [200, 202]
    records = [r for r in await rig.registry.records() if r["registration"] == PENDING]
    [queued] = records
    assert queued["admittedBy"] == "approval" and "joinToken" not in queued
    assert "is used up" not in queued["reason"]  # queued: the approval rule's words


async def test_rules_before_the_token_rule_take_no_use(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki, "ip-allowlist", "token")
    rig.policy("ip-allowlist", "token", allowed_cidrs=("10.0.0.0/8",))
    token, _ = await rig.registry.tokens.create(usages=1, labels={"zone": "b"})
    result = await join(rig, "n1", token)
    assert result.body["admittedBy"] == "ip-allowlist"
    [listed] = await rig.registry.tokens.list()
    assert listed["used"] == 0
    found = await rig.registry.get_record("n1")
    assert found is not None and found[0]["labels"] == {"zone": "a"}  # not the token's


async def test_a_joined_node_needs_its_token_no_more(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki)
    token, _ = await rig.registry.tokens.create(usages=1, labels={"zone": "b"})
    node = NodeKey("n1")
    assert (await rig.register(node, token=str(token))).status == 200
    await rig.registry.tokens.delete(token.id)
    # It renews (a new key, over its mTLS session) and re-registers with its certificate.
    assert (await rig.register(node, trusted=True, labels={"zone": "c"})).status == 200
    found = await rig.registry.get_record("n1")
    assert found is not None
    record = found[0]
    assert record["registration"] == APPROVED
    assert record["labels"] == {"zone": "b"}  # the token's labels stay the token's
    assert rig.registry.is_current_node("n1", node.key_id)


async def test_a_node_asking_again_with_its_key_takes_no_second_use(
    cluster_pki: ClusterPki,
) -> None:
    """The answer to a one-use token's registration is lost (or the agent restarts before it
    keeps the certificate): the same node and key asking again is admitted without a second
    use, instead of being turned Denied ("used up") by its own retry."""
    rig = token_rig(cluster_pki)
    token, _ = await rig.registry.tokens.create(usages=1, labels={"zone": "b"})
    node = NodeKey("n1")
    assert (await rig.register(node, token=str(token))).status == 200
    again = await rig.register(node, token=str(token))
    assert (again.status, again.body["admittedBy"]) == (200, "token"), again
    [listed] = await rig.registry.tokens.list()
    assert listed["used"] == 1
    found = await rig.registry.get_record("n1")
    assert found is not None and found[0]["registration"] == APPROVED
    assert found[0]["labels"] == {"zone": "b"}
    assert (await rig.registry.tokens.check(token)).valid is False  # spent for anyone else


async def test_a_retry_after_the_token_was_deleted_is_refused(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki)
    token, _ = await rig.registry.tokens.create(usages=1)
    node = NodeKey("n1")
    assert (await rig.register(node, token=str(token))).status == 200
    await rig.registry.tokens.delete(token.id)
    again = await rig.register(node, token=str(token))
    assert again.status == 403 and "unknown (deleted, or never made)" in again.body["reason"]


async def test_an_unknown_id_is_hashed_as_a_known_one(
    cluster_pki: ClusterPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The time of a refusal does not tell an unknown id from a wrong secret: both compare a
    digest."""
    rig = token_rig(cluster_pki)
    compared: list[str] = []
    real = JoinToken.matches

    def spy(self: JoinToken, digest: str) -> bool:
        compared.append(self.id)
        return real(self, digest)

    monkeypatch.setattr(JoinToken, "matches", spy)
    made, _ = await rig.registry.tokens.create()
    await rig.registry.tokens.check(JoinToken(made.id, "0" * 16))
    unknown = "zzzzzz" if made.id != "zzzzzz" else "yyyyyy"
    await rig.registry.tokens.check(JoinToken(unknown, "0" * 16))
    assert len(compared) == 2


async def test_a_token_record_holds_a_digest_not_the_secret(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki)
    token, _ = await rig.registry.tokens.create(ttl_s=0, usages=2, description="never expires")
    found = await rig.store.get(TOKENS_PREFIX + token.id)
    assert found is not None
    stored = json.loads(found.value)
    assert token.matches(stored["digest"]) and token.secret not in found.value.decode()
    assert stored["expiresAt"] is None and stored["usages"] == 2 and stored["used"] == 0
    rig.clock.advance(100 * 365 * DAY_S)
    assert (await rig.registry.tokens.check(token)).valid  # ttl 0: never expires


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ttl_s": -1}, "ttlSeconds must be between"),
        ({"ttl_s": float("inf")}, "ttlSeconds must be between"),
        ({"ttl_s": "1h"}, "ttlSeconds must be a number"),
        ({"usages": 0}, "usages must be an integer"),
        ({"usages": True}, "usages must be an integer"),
        ({"labels": {"bad key!": "x"}}, "not a valid label key"),
        ({"labels": {"k": "v" * 64}}, "not a valid label value"),
        ({"description": "two\nlines"}, "description"),
    ],
)
async def test_a_token_is_made_only_from_valid_settings(
    cluster_pki: ClusterPki, options: dict[str, Any], message: str
) -> None:
    rig = token_rig(cluster_pki)
    with pytest.raises(BadRequestError, match=message):
        await rig.registry.tokens.create(**options)
    assert await rig.registry.tokens.list() == []


async def test_deleting_an_unknown_token_is_not_found(cluster_pki: ClusterPki) -> None:
    tokens = JoinTokens(token_rig(cluster_pki).store, token_rig(cluster_pki).clock)
    with pytest.raises(NotFoundError, match="token abc123 not found"):
        await tokens.delete("abc123")
    with pytest.raises(BadRequestError, match="not 6 characters"):
        await tokens.delete("../x")


# -- the API -----------------------------------------------------------------------------------

ADMIN = authz.Caller(Principal(Role.ADMIN, "admin", (MASTERS_GROUP,)), CallerKind.ADMIN)


async def call(api: MasterApi, method: str, target: str, body: object = None) -> ApiResponse:
    match = MASTER_ROUTES.match(method, target)
    payload = json.dumps(body).encode() if body is not None else b""
    request = ApiRequest(match, ADMIN, {}, payload, "127.0.0.1")
    return await api.handlers[match.route.name](request)


def test_only_administrators_may_use_the_token_routes() -> None:
    for route in ("tokens.create", "tokens.list", "tokens.delete"):
        assert authz.RULES[route] == frozenset({CallerKind.ADMIN})


async def test_the_token_routes_show_the_secret_once(cluster_pki: ClusterPki) -> None:
    rig = token_rig(cluster_pki)
    api = MasterApi(rig.registry, rig.pods, ())
    made = await call(
        api, "POST", "/v1/tokens", {"ttlSeconds": 3600, "usages": 2, "labels": {"zone": "b"}}
    )
    assert made.status == 201
    body = json.loads(made.body)
    token = parse_token(body["token"])
    assert body["id"] == token.id and body["expiresAt"] == "2027-01-15T09:00:00Z"
    assert body["usesLeft"] == 2
    listed = await call(api, "GET", "/v1/tokens")
    assert token.secret.encode() not in listed.body and b"digest" not in listed.body
    [item] = json.loads(listed.body)["items"]
    assert item["id"] == token.id and item["labels"] == {"zone": "b"}
    assert (await join(rig, "n1", token)).status == 200
    [item] = json.loads((await call(api, "GET", "/v1/tokens")).body)["items"]
    assert item["usesLeft"] == 1
    assert (await call(api, "DELETE", f"/v1/tokens/{token.id}")).status == 200
    assert json.loads((await call(api, "GET", "/v1/tokens")).body)["items"] == []
    with pytest.raises(NotFoundError):
        await call(api, "DELETE", f"/v1/tokens/{token.id}")
    with pytest.raises(BadRequestError, match="usages"):
        await call(api, "POST", "/v1/tokens", {"usages": -1})
    defaults = json.loads((await call(api, "POST", "/v1/tokens")).body)
    assert defaults["expiresAt"] == "2027-01-16T08:00:00Z" and defaults["usages"] is None


async def test_a_replayed_registration_never_demotes_an_approved_node(
    cluster_pki: ClusterPki,
) -> None:
    """The review of 2026-12-03's open finding: a registration body of an Approved node (a CSR
    its key signed, captured or taken from an old request) sent again without the node's
    certificate went through the policy again, and a refusal (the token deleted, used up,
    expired) or a queue turned the node Denied or Pending and dropped its certificate, with
    the replay's labels and addresses on it. Now a node whose certificate is valid keeps its
    record: the caller gets the refusal, or the node as it is."""
    rig = token_rig(cluster_pki)
    rig.clock.wall_s = time.time()  # certificates are issued on the real clock
    token, _ = await rig.registry.tokens.create(usages=1)
    node = NodeKey("n1")
    first = await rig.register(node, token=str(token))
    assert first.status == 200
    found = await rig.registry.get_record("n1")
    assert found is not None
    before = found[0]
    await rig.registry.tokens.delete(token.id)
    replay = await rig.register(node, token=str(token), labels={"zone": "evil"}, ip="10.9.9.9")
    assert replay.status == 403 and "unknown" in replay.body["reason"]
    rig.policy("approval")  # queued, not refused: the node as it is
    queued = await rig.register(node, labels={"zone": "evil"})
    assert queued.status == 200 and queued.body["certificate"] == first.body["certificate"]
    found = await rig.registry.get_record("n1")
    assert found is not None and found[0] == before
    assert rig.registry.is_current_node("n1", node.key_id)
    assert any(
        reason == "RegistrationRefusedError" and "from 10.9.9.9:" in message
        for reason, message in rig.events()
    )
    # Its certificate expired, the node goes through the policy as before (it cannot act).
    rig.clock.advance(rig.registry.config.node_cert_lifetime_s + 1)
    late = await rig.register(node)
    assert late.status == 202
    found = await rig.registry.get_record("n1")
    assert found is not None and found[0]["registration"] == "Pending"
