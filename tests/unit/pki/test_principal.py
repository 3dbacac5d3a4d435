"""From a TLS peer certificate to the principal the authorization table sees: the one mapping
(``principal_of``), for the master and the node, with and without the proxy's user headers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from agent.errors import PkiError
from agent.pki.core import create_ca, generate_key, issue, principal_of, public_key_id
from agent.pki.names import MASTERS_GROUP, NODES_GROUP, PROXIES_GROUP, VIEWERS_GROUP
from agent.proto.authz import ANONYMOUS, GROUPS_HEADER, USER_HEADER, Principal, Role

CA_KEY, CA = create_ca()
FLEET_KEY, FLEET = create_ca("fleet CA")


def der(
    cn: str, groups: Sequence[str] = (), *, ca: tuple[object, x509.Certificate] | None = None
) -> tuple[bytes, str]:
    ca_key, ca_cert = ca or (CA_KEY, CA)
    key = generate_key()
    cert = issue(
        ca_key,  # type: ignore[arg-type]
        ca_cert,
        key.public_key(),
        common_name=cn,
        groups=list(groups),
        lifetime_s=3600,
    )
    return cert.public_bytes(Encoding.DER), public_key_id(key.public_key())


def test_no_certificate_is_anonymous() -> None:
    assert principal_of(None, [CA]) is ANONYMOUS
    assert principal_of(b"", [CA]) is ANONYMOUS


@pytest.mark.parametrize(
    ("cn", "groups", "role"),
    [
        ("root", [MASTERS_GROUP], Role.ADMIN),
        ("alice", [VIEWERS_GROUP], Role.VIEWER),
        ("system:node-proxy", [PROXIES_GROUP], Role.PROXY),
        ("someone", [], Role.USER),
        ("web-1", [NODES_GROUP], Role.USER),  # a node's group without a node's name
    ],
)
def test_cluster_certificates_say_their_role_by_group(
    cn: str, groups: list[str], role: Role
) -> None:
    got = principal_of(der(cn, groups)[0], [CA], [FLEET])
    assert (got.role, got.name, got.groups) == (role, cn, tuple(groups))


def test_any_of_several_cluster_cas_will_do() -> None:
    _, other_ca = create_ca("an older cluster CA")
    got = principal_of(der("root", [MASTERS_GROUP])[0], [other_ca, CA])
    assert got.role is Role.ADMIN
    assert principal_of(der("root", [MASTERS_GROUP])[0], [other_ca]).role is Role.ANONYMOUS


def test_a_node_certificate_names_its_node_and_key() -> None:
    cert, key_id = der("system:node:web-1", [NODES_GROUP])
    got = principal_of(cert, [CA])
    assert got == Principal(Role.NODE, "web-1", (NODES_GROUP,), "web-1", key_id)


def test_a_fleet_certificate_is_only_fleet_whatever_its_subject() -> None:
    cert, _ = der("admin", [MASTERS_GROUP], ca=(FLEET_KEY, FLEET))
    got = principal_of(cert, [CA], [FLEET])
    assert got == Principal(Role.FLEET, "admin", cert_der=cert)
    # Where no fleet CA is trusted (the node API) it counts as no certificate at all.
    foreign = principal_of(cert, [CA])
    assert foreign.role is Role.ANONYMOUS and "not signed by a trusted CA" in foreign.note


def test_the_proxy_is_believed_about_its_user_only_where_asked_to() -> None:
    proxy, _ = der("system:node-proxy", [PROXIES_GROUP])
    headers = {USER_HEADER: "alice", GROUPS_HEADER: f"{VIEWERS_GROUP},extra"}
    assert principal_of(proxy, [CA], proxied=None).role is Role.PROXY
    alice = principal_of(proxy, [CA], proxied=headers)
    assert alice == Principal(
        Role.VIEWER, "alice (via system:node-proxy)", (VIEWERS_GROUP, "extra")
    )
    root = principal_of(proxy, [CA], proxied={USER_HEADER: "root", GROUPS_HEADER: MASTERS_GROUP})
    assert root.role is Role.ADMIN
    nobody = principal_of(proxy, [CA], proxied={USER_HEADER: "bob"})
    assert nobody.role is Role.USER and nobody.groups == ()
    unnamed = principal_of(proxy, [CA], proxied={})
    assert unnamed.role is Role.PROXY and "must say which user" in unnamed.note


def test_user_headers_from_anyone_but_the_proxy_are_ignored() -> None:
    viewer, _ = der("mallory", [VIEWERS_GROUP])
    forged = {USER_HEADER: "root", GROUPS_HEADER: MASTERS_GROUP}
    got = principal_of(viewer, [CA], proxied=forged)
    assert (got.role, got.name) == (Role.VIEWER, "mallory")


def raw_der(cn: str, groups: Sequence[str]) -> bytes:
    """A certificate from the cluster CA with any subject at all: what ``issue`` refuses to
    make, but another tool holding the CA key (or an older version) could have made."""
    now = dt.datetime.now(dt.UTC)
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(CA.subject)
        .public_key(generate_key().public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .sign(CA_KEY, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


AMBIGUOUS_SUBJECTS = [
    # The proxy sends a user's groups to the node as one comma-separated header: this viewer
    # would be an administrator there.
    ("mallory", [VIEWERS_GROUP, f"x,{MASTERS_GROUP}"]),
    ("mallory", [MASTERS_GROUP, "a,b"]),
    ("mallory", [VIEWERS_GROUP, "line\nbreak"]),
    ("mallory", [VIEWERS_GROUP, "nul\x00"]),
    ("mal\rlory", [MASTERS_GROUP]),
    ("mallory\x7f", [VIEWERS_GROUP]),
]


@pytest.mark.parametrize(("cn", "groups"), AMBIGUOUS_SUBJECTS)
def test_a_certificate_whose_groups_cannot_travel_in_a_header_is_refused(
    cn: str, groups: list[str]
) -> None:
    got = principal_of(raw_der(cn, groups), [CA], [FLEET])
    # Known (signed by the cluster CA) but allowed nothing: a 403 that says why.
    assert (got.role, got.groups) == (Role.USER, ())
    assert "not accepted" in got.note


@pytest.mark.parametrize(("cn", "groups"), AMBIGUOUS_SUBJECTS)
def test_such_a_certificate_is_never_issued(cn: str, groups: list[str]) -> None:
    with pytest.raises(PkiError, match="not accepted"):
        der(cn, groups)


def test_printable_names_beyond_ascii_are_fine() -> None:
    got = principal_of(der("zoë", [VIEWERS_GROUP, "équipe nord"])[0], [CA])
    assert (got.role, got.name, got.groups) == (Role.VIEWER, "zoë", (VIEWERS_GROUP, "équipe nord"))
