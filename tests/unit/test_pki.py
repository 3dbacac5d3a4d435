"""The PKI core: CA, CSRs, issuing, identities, pins, chain checks, rotation timing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.errors import PkiError
from agent.pki.core import (
    build_csr,
    cert_to_pem,
    certs_from_pem,
    check_pins,
    create_ca,
    csr_sans,
    generate_key,
    identity_of,
    issue,
    key_from_pem,
    key_to_pem,
    load_csr,
    rotation_due_at,
    spki_pin,
    verify_issued_by,
    write_private,
)
from agent.pki.names import MASTERS_GROUP, NODES_GROUP


def test_ca_is_a_ca_and_pin_is_stable() -> None:
    _, ca = create_ca()
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca is True
    pin = spki_pin(ca)
    assert pin.startswith("sha256:") and len(pin) == 7 + 64
    assert spki_pin(certs_from_pem(cert_to_pem(ca))[0]) == pin
    assert check_pins([ca], [pin.upper().replace("SHA256:", "sha256:")]) == ca


def test_wrong_pin_is_refused() -> None:
    _, ca = create_ca()
    _, other = create_ca()
    with pytest.raises(PkiError, match="does not match any pinned hash"):
        check_pins([ca], [spki_pin(other)])
    with pytest.raises(PkiError, match="not sha256"):
        check_pins([ca], ["md5:abc"])


def test_node_certificate_from_csr() -> None:
    ca_key, ca = create_ca()
    node_key = generate_key()
    csr = load_csr(build_csr(node_key, "system:node:n1", [NODES_GROUP], ["n1", "10.0.0.5", "::1"]))
    assert sorted(csr_sans(csr)) == sorted(["n1", "10.0.0.5", "::1"])
    cert = issue(
        ca_key,
        ca,
        csr.public_key(),  # type: ignore[arg-type]
        common_name="system:node:n1",
        groups=[NODES_GROUP],
        sans=csr_sans(csr),
        lifetime_s=3600,
        client=True,
        server=True,
    )
    assert verify_issued_by(cert, [ca]) == ca
    ident = identity_of(cert)
    assert ident.node_name == "n1" and not ident.is_admin
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "n1" in sans.get_values_for_type(x509.DNSName)


def test_admin_identity_and_foreign_ca() -> None:
    ca_key, ca = create_ca()
    _, foreign = create_ca("someone else")
    admin = issue(
        ca_key,
        ca,
        generate_key().public_key(),
        common_name="admin",
        groups=[MASTERS_GROUP],
        lifetime_s=60,
    )
    assert identity_of(admin).is_admin and identity_of(admin).node_name is None
    with pytest.raises(PkiError, match="not signed by a trusted CA"):
        verify_issued_by(admin, [foreign])


def test_expired_certificate_is_refused() -> None:
    ca_key, ca = create_ca()
    cert = issue(ca_key, ca, generate_key().public_key(), common_name="x", groups=[], lifetime_s=60)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    with pytest.raises(PkiError, match="not valid now"):
        verify_issued_by(cert, [ca], at=later)


def test_tampered_csr_is_refused() -> None:
    pem = build_csr(generate_key(), "system:node:n1", [NODES_GROUP], [])
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    forged = der.replace(b"system:node:n1", b"system:node:n2")  # same length, new subject
    forged_pem = x509.load_der_x509_csr(forged).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(PkiError, match="signature does not verify"):
        load_csr(forged_pem)
    with pytest.raises(PkiError, match="not a PEM certificate signing request"):
        load_csr(b"garbage")


def test_rotation_is_jittered_between_70_and_90_percent() -> None:
    ca_key, ca = create_ca()
    cert = issue(
        ca_key, ca, generate_key().public_key(), common_name="x", groups=[], lifetime_s=1000
    )
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    fractions = {round((rotation_due_at(cert) - start) / (end - start), 3) for _ in range(50)}
    assert all(0.7 <= f <= 0.9 for f in fractions)
    assert len(fractions) > 5  # jittered, not one instant for the whole fleet


def test_private_key_files_are_0600(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "pki" / "node.key"
    write_private(path, key_to_pem(key))
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert key_from_pem(path.read_bytes()).public_key() == key.public_key()
    with pytest.raises(PkiError):
        key_from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
