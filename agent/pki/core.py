"""Keys, CSRs, the cluster CA, certificate issuing, pins and chain checks (``cryptography``).

Everything here is synchronous and CPU-bound (a P-256 signature is well under a millisecond);
file writes are done by the callers through the thread bridge. Private keys are written 0600
and never leave the host that generated them: nodes send CSRs, the master signs them.

Identities follow Kubernetes so operators can read them: nodes are
``CN=system:node:<name>, O=system:nodes``, admins carry ``O=system:masters``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import PkiError
from agent.names import is_host_name
from agent.pki.names import (
    MASTER_URI,
    MASTERS_GROUP,
    NODE_CN_PREFIX,
    NODES_GROUP,
    PROXIES_GROUP,
    VIEWERS_GROUP,
)
from agent.proto.authz import ANONYMOUS, GROUPS_HEADER, USER_HEADER, Principal, Role

CA_LIFETIME_DAYS = 3650
SERVING_LIFETIME_DAYS = 825
ADMIN_LIFETIME_DAYS = 365
CLOCK_SKEW_S = 300  # certificates start a little in the past so skewed clocks accept them
PIN_PREFIX = "sha256:"

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate says its holder is."""

    common_name: str
    groups: tuple[str, ...]

    @property
    def node_name(self) -> str | None:
        if NODES_GROUP in self.groups and self.common_name.startswith(NODE_CN_PREFIX):
            return self.common_name.removeprefix(NODE_CN_PREFIX)
        return None

    @property
    def is_admin(self) -> bool:
        return MASTERS_GROUP in self.groups


def subject_problem(common_name: str, groups: Sequence[str]) -> str:
    """Why a subject cannot name a user unambiguously ('' when it can). The master's proxy
    carries a user's groups to the node as one comma-separated header (``GROUPS_HEADER``), so a
    group holding ``,`` would become several groups there (``x,system:masters``); names with
    control characters cannot travel in a header or a log line as they are."""
    if any("," in group for group in groups):
        return "a group name contains ','"
    if not all(text.isprintable() for text in (common_name, *groups)):
        return "the common name or a group name contains control characters"
    return ""


def generate_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("private key is not an EC key")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"not PEM certificates: {exc}") from exc
    return certs


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only, atomically (blocking)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def spki_pin(cert: x509.Certificate) -> str:
    """``sha256:<hex>`` of the SubjectPublicKeyInfo, as ``kubeadm join`` pins the CA."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def public_key_id(key: ec.EllipticCurvePublicKey) -> str:
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def check_pins(bundle: Sequence[x509.Certificate], pins: Iterable[str]) -> x509.Certificate:
    """The CA in ``bundle`` that matches one of ``pins``; PkiError when none does."""
    wanted = {p.strip().lower() for p in pins}
    for pin in wanted:
        if not pin.startswith(PIN_PREFIX) or len(pin) != len(PIN_PREFIX) + 64:
            raise PkiError(f"pin {pin!r} is not sha256:<64 hex digits>")
    for cert in bundle:
        if spki_pin(cert) in wanted:
            return cert
    seen = ", ".join(spki_pin(c) for c in bundle) or "no certificate"
    raise PkiError(f"the master's CA does not match any pinned hash (it presented {seen})")


def _name(common_name: str, groups: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    return x509.Name(attributes)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def create_ca(common_name: str = "node-agent cluster CA") -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key()
    now = _now()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(seconds=CLOCK_SKEW_S))
        .not_valid_after(now + dt.timedelta(days=CA_LIFETIME_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _general_name(name: str) -> x509.GeneralName | None:
    """``name`` as an IP address or DNS name entry; None when it is neither (a wildcard, a
    URI, anything with characters a host name cannot hold)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    return x509.DNSName(name) if is_host_name(name) else None


def certifiable(name: str) -> bool:
    """Whether a certificate may name ``name``: an IP address or a DNS name (no wildcard)."""
    return _general_name(name) is not None


def _san(names: Iterable[str], *, master: bool = False) -> x509.SubjectAlternativeName:
    """IP addresses and DNS names, refusing anything else (PkiError): a wildcard, a URI, an
    empty or malformed name never reaches a certificate. The master's mark (``MASTER_URI``)
    is added only when ``master`` says so."""
    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # de-duplicated, order kept
        entry = _general_name(name)
        if entry is None:
            raise PkiError(f"name {name[:100]!r} is neither an IP address nor a DNS name")
        entries.append(entry)
    if master:
        entries.append(x509.UniformResourceIdentifier(MASTER_URI))
    return x509.SubjectAlternativeName(entries)


def build_csr(
    key: PrivateKey, common_name: str, groups: Sequence[str], sans: Iterable[str]
) -> bytes:
    # Only what can be a host's name is asked for (a CSR's names are a request the master
    # judges, never copied as they are).
    names = [n for n in sans if certifiable(n)]
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, groups))
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(pem)
        # Parsed lazily: a damaged key or signature shows only here, as ValueError too.
        valid, key = csr.is_signature_valid, csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PkiError(f"not a PEM certificate signing request: {exc}") from exc
    if not valid:
        raise PkiError("the CSR's signature does not verify")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PkiError("the CSR's key must be an EC key (P-256)")
    return csr


def _host_names(extensions: x509.Extensions) -> list[str]:
    """The IP addresses (first) and DNS names of a SubjectAlternativeName extension."""
    try:
        ext = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.IPAddress)] + list(
        ext.get_values_for_type(x509.DNSName)
    )


def csr_sans(csr: x509.CertificateSigningRequest) -> list[str]:
    """The IP addresses and DNS names a CSR asks for (a request: never issued as is)."""
    try:
        return _host_names(csr.extensions)
    except ValueError:  # a malformed extension: it asks for nothing
        return []


def issue(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    common_name: str,
    groups: Sequence[str],
    sans: Iterable[str] = (),
    lifetime_s: float,
    client: bool = True,
    server: bool = False,
    master: bool = False,
) -> x509.Certificate:
    """Sign a leaf certificate. The subject and names come from the caller (never from a CSR
    as is: the master decides the identity and the names, the node only proves possession of
    its key). ``sans`` are IP addresses and DNS names only (PkiError otherwise: no wildcard, no
    URI); ``master`` adds the master's mark (``MASTER_URI``), which only the master's own
    serving certificate may carry."""
    problem = subject_problem(common_name, groups)
    if problem:
        raise PkiError(f"subject {common_name!r} {list(groups)!r} not accepted: {problem}")
    now = _now()
    usages = []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, groups))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Backdated a little for skewed clocks, but never by a large share of a short lifetime.
        .not_valid_before(now - dt.timedelta(seconds=min(CLOCK_SKEW_S, lifetime_s / 10)))
        .not_valid_after(now + dt.timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    names = list(sans)
    if names or master:
        builder = builder.add_extension(_san(names, master=master), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def has_master_mark(cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries the master's mark (a URI SAN ``MASTER_URI``)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return MASTER_URI in ext.get_values_for_type(x509.UniformResourceIdentifier)


def cert_names(cert: x509.Certificate) -> list[str]:
    """The IP addresses (first) and DNS names a certificate is valid for."""
    return _host_names(cert.extensions)


def identity_of(cert: x509.Certificate) -> Identity:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return Identity(
        common_name=str(cns[0].value) if cns else "",
        groups=tuple(str(o.value) for o in orgs),
    )


def principal_of(
    der: bytes | None,
    cluster_cas: Sequence[x509.Certificate],
    fleet_cas: Sequence[x509.Certificate] = (),
    proxied: Mapping[str, str] | None = None,
) -> Principal:
    """Who a TLS peer is, from its DER client certificate, for the authorization table
    (``agent.proto.authz``): the one mapping from certificates to principals, used per request
    by the master's API and the node's API over both protocols.

    A certificate valid now and issued by a ``cluster_cas`` CA says its role by its groups; one
    from a ``fleet_cas`` CA is good for registering only, whatever its subject says; anything
    else counts as no certificate. ``proxied``: the request's headers (lower-case names) where
    the master's proxy is believed about the user it acts for (the node's API), else None.
    """
    if not der:
        return ANONYMOUS
    cert = x509.load_der_x509_certificate(der)
    try:
        verify_issued_by(cert, cluster_cas)
    except PkiError:
        try:
            verify_issued_by(cert, fleet_cas)
        except PkiError as exc:
            return Principal(Role.ANONYMOUS, note=str(exc))
        return Principal(Role.FLEET, identity_of(cert).common_name, cert_der=der)
    ident = identity_of(cert)
    problem = subject_problem(ident.common_name, ident.groups)
    if problem:
        # Signed by us, but not by ``issue`` (another tool, an older version): known, and
        # allowed nothing (403 with this note), whatever groups it claims.
        return Principal(Role.USER, ident.common_name, note=f"certificate not accepted: {problem}")
    if ident.is_admin:
        return Principal(Role.ADMIN, ident.common_name, ident.groups)
    if VIEWERS_GROUP in ident.groups:
        return Principal(Role.VIEWER, ident.common_name, ident.groups)
    if is_proxy_identity(ident):
        return _proxied_user(ident, proxied)
    if ident.node_name is not None:
        key = cert.public_key()
        key_id = public_key_id(key) if isinstance(key, ec.EllipticCurvePublicKey) else ""
        return Principal(Role.NODE, ident.node_name, ident.groups, ident.node_name, key_id)
    return Principal(Role.USER, ident.common_name, ident.groups)


def _proxied_user(proxy: Identity, headers: Mapping[str, str] | None) -> Principal:
    """The user the master's proxy names (where it is believed), audited as ``user (via
    system:node-proxy)``; the proxy itself where it is not, or names nobody."""
    if headers is None:
        return Principal(Role.PROXY, proxy.common_name, proxy.groups)
    user = headers.get(USER_HEADER, "")
    if not user:
        note = "the master's proxy must say which user it acts for"
        return Principal(Role.PROXY, proxy.common_name, proxy.groups, note=note)
    groups = tuple(g for g in headers.get(GROUPS_HEADER, "").split(",") if g)
    return Principal(role_of_groups(groups), f"{user} (via {proxy.common_name})", groups)


def is_proxy_identity(ident: Identity) -> bool:
    """Whether :func:`principal_of` takes a certificate of this identity for the master's
    streaming proxy (believed about the user it acts for; a ticket signer,
    ``agent.pki.tickets``): O=system:node-proxies, a subject without problem, and none of the
    groups ``principal_of`` ranks first (an administrator's, a viewer's)."""
    return (
        PROXIES_GROUP in ident.groups
        and not ident.is_admin
        and VIEWERS_GROUP not in ident.groups
        and not subject_problem(ident.common_name, ident.groups)
    )


def role_of_groups(groups: Sequence[str]) -> Role:
    """The role of a user the master vouches for (its proxy's headers, its tickets)."""
    if MASTERS_GROUP in groups:
        return Role.ADMIN
    return Role.VIEWER if VIEWERS_GROUP in groups else Role.USER


def verify_issued_by(
    cert: x509.Certificate, cas: Sequence[x509.Certificate], at: dt.datetime | None = None
) -> x509.Certificate:
    """The CA of ``cas`` that signed ``cert`` (valid at ``at``); PkiError otherwise."""
    moment = at or _now()
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise PkiError(
            f"certificate {identity_of(cert).common_name!r} is not valid now "
            f"(valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
            f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        public = ca.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    raise PkiError(f"certificate {identity_of(cert).common_name!r} is not signed by a trusted CA")


def rotation_due_at(cert: x509.Certificate, *, low: float = 0.7, high: float = 0.9) -> dt.datetime:
    """When to renew: a jittered 70-90 % of the lifetime, so a fleet never renews at once."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    fraction = low + (high - low) * (secrets.randbelow(10_000) / 10_000)
    return start + (end - start) * fraction
