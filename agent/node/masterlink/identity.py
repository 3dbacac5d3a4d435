"""The node's identity toward the master: files in ``<state_dir>/pki`` and their rotation.

``node.key`` (0600, generated once), ``node.crt`` (issued by the cluster CA at registration,
rotated before it expires) and ``ca.crt`` (the master's CA, fetched once and checked against
the configured pins, then pinned on disk: trust on first use only when no pin is configured).
Every file access goes through the thread bridge.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.aio.tls import client_context
from agent.errors import IdentityRejectedError, MasterUnavailableError, PkiError
from agent.node.masterlink.client import MasterClient, MasterSession
from agent.pki.core import (
    build_csr,
    certs_from_pem,
    check_pins,
    generate_key,
    key_from_pem,
    key_to_pem,
    rotation_due_at,
    spki_pin,
    verify_issued_by,
    write_private,
)
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

log = logging.getLogger(__name__)

KEY_FILE = "node.key"
CERT_FILE = "node.crt"
CA_FILE = "ca.crt"
CA_BUNDLE_MAX_BYTES = 1 << 20  # a CA bundle is a few KiB; more is not a CA bundle

Sleep = Callable[[float], Awaitable[None]]


class NodeIdentity:
    def __init__(
        self,
        pki_dir: Path,
        bridge: ThreadBridge,
        *,
        node_name: str,
        ca_pins: tuple[str, ...] = (),
    ) -> None:
        self.pki_dir = pki_dir
        self.node_name = node_name
        self._bridge = bridge
        self._ca_pins = ca_pins

    @property
    def cert_path(self) -> Path:
        return self.pki_dir / CERT_FILE

    @property
    def key_path(self) -> Path:
        return self.pki_dir / KEY_FILE

    # -- files (blocking helpers run on the bridge) ---------------------------------------

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.pki_dir / name).read_bytes()
        except FileNotFoundError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        write_private(self.pki_dir / name, data)

    def _load_or_create_key(self) -> bytes:
        pem = self._read(KEY_FILE)
        if pem is None:
            pem = key_to_pem(generate_key())
            self._write(KEY_FILE, pem)
        return pem

    def _cert_valid(self, ca_pem: bytes) -> bool:
        cert_pem = self._read(CERT_FILE)
        if cert_pem is None:
            return False
        try:
            verify_issued_by(certs_from_pem(cert_pem)[0], certs_from_pem(ca_pem))
        except PkiError:
            return False
        return True

    def _forget_cert(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.cert_path.unlink()

    # -- operations -----------------------------------------------------------------------

    async def ensure_key(self) -> bytes:
        """The node's private key (PEM), generated on first use."""
        return await self._bridge.run(self._load_or_create_key)

    async def has_valid_cert(self, ca_pem: bytes) -> bool:
        """Whether ``node.crt`` exists and was issued by ``ca_pem``."""
        return await self._bridge.run(self._cert_valid, ca_pem)

    async def forget_cert(self) -> None:
        await self._bridge.run(self._forget_cert)

    async def store_cert(self, cert_pem: bytes) -> None:
        await self._bridge.run(self._write, CERT_FILE, cert_pem)

    async def store_rotated(self, key_pem: bytes, cert_pem: bytes) -> None:
        await self._bridge.run(self._write, KEY_FILE, key_pem)
        await self._bridge.run(self._write, CERT_FILE, cert_pem)

    async def current_cert_pem(self) -> bytes:
        pem = await self._bridge.run(self._read, CERT_FILE)
        if pem is None:
            raise IdentityRejectedError("node certificate disappeared")
        return pem

    async def pinned_ca(self, client: MasterClient) -> bytes:
        """The master's CA: from disk if pinned before, else fetched and checked against the
        pins (PkiError when it does not match: nothing else is sent to that master)."""
        stored = await self._bridge.run(self._read, CA_FILE)
        if stored is not None:
            return stored
        # Not authenticated yet (the pin check below is what trusts this master): its answer
        # is read bounded, and read whole within the time-out.
        async with client.session(client_context(None)) as session:
            answer = await session.request("GET", "/v1/ca", limit_bytes=CA_BUNDLE_MAX_BYTES)
        if answer.status != 200:
            raise MasterUnavailableError(f"GET /v1/ca answered {answer.status}")
        pem = answer.raw
        bundle = certs_from_pem(pem)
        if self._ca_pins:
            check_pins(bundle, self._ca_pins)
        else:
            log.warning(
                "NO CA PIN CONFIGURED: trusting the master's CA on first use; "
                "pin it with --ca-cert-hash",
                extra=kv(master=client.base_url, pin=spki_pin(bundle[0])),
            )
        await self._bridge.run(self._write, CA_FILE, pem)
        return pem

    def mtls(self, ca_pem: bytes) -> ssl.SSLContext:
        """Blocking (reads the key and certificate): call through the bridge."""
        return client_context(ca_pem, cert_file=self.cert_path, key_file=self.key_path)

    async def client_tls(self, ca_pem: bytes) -> ssl.SSLContext:
        return await self._bridge.run(self.mtls, ca_pem)

    def csr(self, key_pem: bytes, sans: list[str]) -> bytes:
        return build_csr(
            key_from_pem(key_pem), NODE_CN_PREFIX + self.node_name, [NODES_GROUP], sans
        )


class CertificateRotation:
    """Renews the node certificate when it reaches its rotation time (a fraction of its
    lifetime), with a new key, over the working mTLS session."""

    def __init__(
        self,
        identity: NodeIdentity,
        *,
        sleep: Sleep,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._identity = identity
        self._sleep = sleep
        self._now = now

    async def run(self, session: MasterSession) -> None:
        """Wait until rotation is due, rotate, then end the session (MasterUnavailableError):
        the link reconnects with the new certificate; the pods keep running meanwhile."""
        cert = certs_from_pem(await self._identity.current_cert_pem())[0]
        wait_s = (rotation_due_at(cert) - self._now()).total_seconds()
        await self._sleep(max(wait_s, 0.0))
        key = generate_key()
        key_pem = key_to_pem(key)
        answer = await session.call(
            "POST",
            f"/v1/nodes/{self._identity.node_name}/certificate",
            {"csr": self._identity.csr(key_pem, []).decode()},
        )
        certificate = answer.get("certificate") if isinstance(answer, dict) else None
        if not isinstance(certificate, str):
            raise MasterUnavailableError("certificate rotation: no certificate in the answer")
        issued = certs_from_pem(certificate.encode())[0]
        await self._identity.store_rotated(key_pem, certificate.encode())
        log.info("node certificate rotated", extra=kv(expires=str(issued.not_valid_after_utc)))
        raise MasterUnavailableError("reconnecting with the rotated certificate")
