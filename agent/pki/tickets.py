"""Signing and verifying direct-stream tickets (``agent.proto.tickets`` has the format).

The master signs with its streaming proxy's identity (``O=system:node-proxies``, issued from the
cluster CA at every master start, ``agent.master.pki_files.write_proxy_identity``) and puts that
certificate in the ticket; a node verifies the certificate against the cluster CA it already
holds and the signature against the certificate's key: offline, with nothing distributed at
registration, a new master key at every master start, and every master of an HA set able to
sign. The proxy identity is the one a node already believes about a user's identity and groups
(the ``node-agent-user`` headers of a relayed stream): a ticket is that statement, signed, for
one request. A node certificate, an administrator's, any key not certified for that group, or
a certificate from another CA cannot sign a ticket a node accepts.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from agent.errors import PkiError, TicketError
from agent.pki.core import PrivateKey, identity_of, is_proxy_identity, verify_issued_by
from agent.proto import tickets
from agent.proto.tickets import Ticket

_ALGORITHM = ec.ECDSA(hashes.SHA256())
_SIGNER_CACHE = 8  # verified signer certificates kept (one per master start, in practice)


def mint(
    *,
    signer_key: PrivateKey,
    signer_der: bytes,
    user: str,
    groups: Sequence[str],
    node: str,
    namespace: str,
    pod: str,
    action: str,
    query: Mapping[str, list[str]],
    now: float,
    lifetime_s: int = tickets.LIFETIME_S,
) -> tuple[str, Ticket]:
    """A new ticket (128 random bits of jti) and its token."""
    iat = int(now)
    ticket = Ticket(
        jti=secrets.token_hex(16),
        user=user,
        groups=tuple(groups),
        node=node,
        namespace=namespace,
        pod=pod,
        action=action,
        target=tickets.target_digest(namespace, pod, action, query),
        iat=iat,
        exp=iat + lifetime_s,
    )
    claims = tickets.encode_claims(ticket)
    signature = signer_key.sign(tickets.signed_part(claims), _ALGORITHM)
    return tickets.join(claims, signer_der, signature), ticket


class Verifier:
    """Checks tickets against the cluster CA(s): the signer's certificate (cached once
    verified, its validity checked every time) and the signature. Times, binding and single
    use are the caller's (``agent.proto.tickets``)."""

    def __init__(self, cluster_cas: Sequence[x509.Certificate]) -> None:
        self._cas = list(cluster_cas)
        self._signers: dict[bytes, x509.Certificate] = {}

    def _signer(self, der: bytes, now: float) -> ec.EllipticCurvePublicKey:
        cert = self._signers.get(der)
        moment = dt.datetime.fromtimestamp(now, dt.UTC)
        try:
            if cert is None:
                cert = x509.load_der_x509_certificate(der)
                verify_issued_by(cert, self._cas, at=moment)
            # Verified before: only its validity period can have changed.
            elif not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
                raise PkiError("the master's proxy certificate is not valid now")
        except (ValueError, TypeError, PkiError) as exc:
            raise TicketError(f"ticket not signed by this cluster's master: {exc}") from None
        ident = identity_of(cert)
        # As principal_of: a certificate that is also an administrator's or a viewer's is
        # that, never the proxy (its holder would sign itself tickets with any groups).
        if not is_proxy_identity(ident):
            raise TicketError(
                f"ticket not signed by this cluster's master ({ident.common_name!r} "
                f"is not the master's proxy identity)"
            )
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise TicketError("ticket not signed by this cluster's master (not an EC key)")
        if der not in self._signers:
            if len(self._signers) >= _SIGNER_CACHE:
                self._signers.pop(next(iter(self._signers)))
            self._signers[der] = cert
        return key

    def verify(self, token: str, now: float) -> Ticket:
        """The ticket's claims once its signature is the master's (by a certificate valid at
        ``now``, seconds since the epoch); TicketError otherwise."""
        envelope = tickets.split(token)
        key = self._signer(envelope.signer_der, now)
        try:
            key.verify(envelope.signature, envelope.signed, _ALGORITHM)
        except (InvalidSignature, ValueError):
            raise TicketError("ticket signature is not the master's") from None
        return tickets.parse_claims(envelope.claims)
