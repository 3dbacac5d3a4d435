"""Trust policy evaluation for registrations (pure).

Rules are tried in order; the first that admits wins. ``approval`` always "admits into the
queue". No rule admitting means 403. The decision records which rule admitted the node: it is
shown to operators as the node's trust fact.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from agent.errors import ConfigError, PkiError
from agent.master.config import TRUST_RULES, RegistrationPolicy
from agent.master.tokens import TokenCheck
from agent.pki.core import identity_of, verify_issued_by


class Verdict(StrEnum):
    ADMIT = "admit"
    QUEUE = "queue"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Caller:
    """What the master knows about who is registering."""

    node_name: str
    peer_ip: str
    client_cert: x509.Certificate | None = None
    # The join token presented, as the store judged it (None: none was presented).
    token: TokenCheck | None = None


def _in_networks(
    ip: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def _cert_names(cert: x509.Certificate) -> set[str]:
    names = {identity_of(cert).common_name}
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return names


def evaluate(
    policy: RegistrationPolicy, caller: Caller, client_cas: Sequence[x509.Certificate]
) -> Decision:
    reasons = []
    for rule in policy.trust:
        if rule == "open":
            return Decision(Verdict.ADMIT, rule, "open registration")
        if rule == "ip-allowlist":
            if _in_networks(caller.peer_ip, policy.networks()):
                return Decision(Verdict.ADMIT, rule, f"source {caller.peer_ip} is allowed")
            reasons.append(f"ip-allowlist: source {caller.peer_ip} is not in an allowed CIDR")
        elif rule == "client-cert":
            if caller.client_cert is None:
                reasons.append("client-cert: no client certificate was presented")
                continue
            try:
                verify_issued_by(caller.client_cert, client_cas)
            except PkiError as exc:
                reasons.append(f"client-cert: {exc}")
                continue
            if policy.client_cert_name_must_match and caller.node_name not in _cert_names(
                caller.client_cert
            ):
                reasons.append(f"client-cert: certificate is not for node {caller.node_name!r}")
                continue
            return Decision(Verdict.ADMIT, rule, "client certificate from a trusted fleet CA")
        elif rule == "token":
            if caller.token is None:
                reasons.append("token: no join token was presented")
            elif not caller.token.valid:
                reasons.append(f"token: {caller.token.reason}")
            else:
                return Decision(Verdict.ADMIT, rule, f"join token {caller.token.token_id}")
        elif rule == "approval":
            return Decision(Verdict.QUEUE, rule, "waiting for an administrator's approval")
        else:  # the config loader allows only TRUST_RULES; a policy built in code may not
            raise ConfigError(f"unknown trust rule {rule!r} (known: {', '.join(TRUST_RULES)})")
    return Decision(Verdict.REFUSE, "", "no trust rule admits this node: " + "; ".join(reasons))


def effective_peer(peer_ip: str, forwarded_for: str | None, trusted_proxies: Sequence[str]) -> str:
    """The client address: X-Forwarded-For only counts when the TCP peer is a trusted proxy."""
    if forwarded_for and trusted_proxies:
        nets = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        if _in_networks(peer_ip, nets):
            return forwarded_for.split(",")[-1].strip()
    return peer_ip
