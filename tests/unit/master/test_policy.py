"""Trust policy evaluation (pure): rule order, each rule, forwarded addresses."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.master.config import RegistrationPolicy
from agent.master.pods import eviction_allowed
from agent.master.policy import Caller, Verdict, effective_peer, evaluate
from agent.pki.core import create_ca, generate_key, issue


def decide(trust: tuple[str, ...], caller: Caller, **policy: object) -> tuple[Verdict, str, str]:
    decision = evaluate(RegistrationPolicy(trust=trust, **policy), caller, [])  # type: ignore[arg-type]
    return decision.verdict, decision.rule, decision.reason


def test_first_admitting_rule_wins() -> None:
    caller = Caller("n1", "10.1.2.3")
    assert decide(("ip-allowlist", "approval"), caller, allowed_cidrs=("10.0.0.0/8",))[:2] == (
        Verdict.ADMIT,
        "ip-allowlist",
    )
    assert decide(("ip-allowlist", "approval"), caller, allowed_cidrs=("192.168.0.0/16",))[:2] == (
        Verdict.QUEUE,
        "approval",
    )
    assert decide(("approval", "open"), caller)[:2] == (Verdict.QUEUE, "approval")
    assert decide(("open",), caller)[:2] == (Verdict.ADMIT, "open")


def test_refusal_lists_every_reason() -> None:
    verdict, _, reason = decide(
        ("ip-allowlist", "client-cert"), Caller("n1", "10.1.2.3"), allowed_cidrs=("fd00::/8",)
    )
    assert verdict is Verdict.REFUSE
    assert "source 10.1.2.3 is not in an allowed CIDR" in reason
    assert "no client certificate was presented" in reason


def test_ipv6_and_ipv4_mapped_peers() -> None:
    assert (
        decide(("ip-allowlist",), Caller("n", "fd00::5"), allowed_cidrs=("fd00::/8",))[0]
        is Verdict.ADMIT
    )
    assert (
        decide(("ip-allowlist",), Caller("n", "::ffff:10.0.0.7"), allowed_cidrs=("10.0.0.0/8",))[0]
        is Verdict.ADMIT
    )
    assert (
        decide(("ip-allowlist",), Caller("n", "not-an-ip"), allowed_cidrs=("10.0.0.0/8",))[0]
        is Verdict.REFUSE
    )


def test_client_cert_rule() -> None:
    ca_key, ca = create_ca("fleet")
    policy = RegistrationPolicy(trust=("client-cert",), client_cert_name_must_match=True)
    good = issue(
        ca_key, ca, generate_key().public_key(), common_name="n1", groups=[], lifetime_s=60
    )
    assert evaluate(policy, Caller("n1", "1.2.3.4", good), [ca]).verdict is Verdict.ADMIT
    assert "not for node 'n2'" in evaluate(policy, Caller("n2", "1.2.3.4", good), [ca]).reason
    loose = RegistrationPolicy(trust=("client-cert",), client_cert_name_must_match=False)
    assert evaluate(loose, Caller("n2", "1.2.3.4", good), [ca]).verdict is Verdict.ADMIT
    _, other = create_ca("other")
    assert evaluate(policy, Caller("n1", "1.2.3.4", good), [other]).verdict is Verdict.REFUSE


def test_a_client_certificate_names_its_node_in_the_cn_or_a_dns_san() -> None:
    ca_key, ca = create_ca("fleet")
    policy = RegistrationPolicy(trust=("client-cert",), client_cert_name_must_match=True)
    device = issue(
        ca_key,
        ca,
        generate_key().public_key(),
        common_name="device-7",
        groups=[],
        sans=["n1", "10.0.0.9"],
        lifetime_s=60,
    )
    assert evaluate(policy, Caller("n1", "1.2.3.4", device), [ca]).verdict is Verdict.ADMIT
    assert evaluate(policy, Caller("device-7", "1.2.3.4", device), [ca]).verdict is Verdict.ADMIT
    assert evaluate(policy, Caller("10.0.0.9", "1.2.3.4", device), [ca]).verdict is Verdict.REFUSE


def test_an_unknown_rule_is_an_error_not_skipped() -> None:
    with pytest.raises(ConfigError, match="unknown trust rule 'opne'"):
        decide(("opne", "approval"), Caller("n1", "10.0.0.1"))


def test_forwarded_for_only_from_trusted_proxies() -> None:
    assert effective_peer("10.0.0.1", "203.0.113.9", ("10.0.0.0/24",)) == "203.0.113.9"
    assert (
        effective_peer("10.0.0.1", "198.51.100.1, 203.0.113.9", ("10.0.0.0/24",)) == "203.0.113.9"
    )
    assert effective_peer("10.0.9.1", "203.0.113.9", ("10.0.0.0/24",)) == "10.0.9.1"
    assert effective_peer("10.0.0.1", "203.0.113.9", ()) == "10.0.0.1"
    assert effective_peer("10.0.0.1", None, ("10.0.0.0/24",)) == "10.0.0.1"


@pytest.mark.parametrize(
    ("nodes", "not_ready", "allowed"),
    [
        (5, 0, True),
        (5, 1, True),
        (5, 2, True),  # 40 % < 55 %
        (5, 3, False),  # 60 %: the master's own network, most likely
        (3, 1, True),
        (3, 2, False),
        (2, 1, True),  # two nodes: one down is a node problem
        (2, 2, False),  # every node NotReady: never evict
        (1, 1, False),
        (100, 54, True),
        (100, 55, False),
    ],
)
def test_eviction_stops_when_too_many_nodes_are_not_ready(
    nodes: int, not_ready: int, allowed: bool
) -> None:
    assert eviction_allowed(nodes, not_ready, 0.55) is allowed
