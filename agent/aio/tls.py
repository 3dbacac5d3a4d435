"""TLS contexts for our servers and clients (TLS 1.2+, ALPN, certificates from PEM files), and
checks of a server's certificate beyond its chain and host name (:func:`with_peer_check`).

No domain knowledge: which CA to trust, whether a client certificate is required and what else
a server's certificate must say is the caller's decision.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PeerCheck = Callable[[Mapping[str, Any]], None]
"""Judges a server's certificate, as ``getpeercert()`` decodes it (``subjectAltName`` etc.),
once its chain and host name verified; raises (an ``OSError``, so that asyncio, uvloop, aiohttp
and ``http.client`` take it as a failed connection) to refuse the server."""


def server_context(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca_pems: Sequence[bytes] = (),
    require_client_cert: bool = False,
    alpn: Sequence[str] = ("h2", "http/1.1"),
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_pems:
        ctx.load_verify_locations(cadata="\n".join(p.decode() for p in client_ca_pems))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def client_context(
    ca_pem: bytes | None,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    check_hostname: bool = True,
    alpn: Sequence[str] = ("http/1.1",),
) -> ssl.SSLContext:
    """Trust exactly ``ca_pem`` (never the system store); ``None`` only for the one
    unauthenticated fetch of the CA bundle, which the caller then checks against its pin."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cadata=ca_pem.decode())
        ctx.check_hostname = check_hostname
    if cert_file is not None and key_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    ctx.set_alpn_protocols(list(alpn))
    return ctx


def with_peer_check(ctx: ssl.SSLContext, check: PeerCheck) -> ssl.SSLContext:
    """``ctx`` (changed in place, and returned) running ``check`` at the end of every handshake
    it makes, before a byte of the application's is sent: in asyncio's and uvloop's TLS (SSL
    objects, ``sslobject_class``) and in blocking sockets (``sslsocket_class``, http.client).
    For a context that verifies its peer: an unverified one has no certificate to judge."""
    if ctx.verify_mode == ssl.CERT_NONE:
        raise ValueError("a peer check needs a context that verifies the peer")

    class CheckedObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            check(self.getpeercert() or {})

    class CheckedSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            check(self.getpeercert() or {})

    ctx.sslobject_class = CheckedObject
    ctx.sslsocket_class = CheckedSocket
    return ctx
