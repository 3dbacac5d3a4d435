"""The node's identity toward the master: files in ``<state_dir>/pki`` and their rotation.

``node.key`` (generated once), ``node.crt`` (issued by the cluster CA at registration, rotated
before it expires, with a new key) and ``ca.crt`` (the master's CA, fetched once and checked
against the configured pins, then pinned on disk: trust on first use only when no pin is
configured); each file 0600 in a 0700 directory. Every file access goes through the thread
bridge.

A rotated pair replaces the current one without a moment where a crash leaves a key and a
certificate that do not belong together: both are first written beside it (``*.new``), then
moved over it, key first; the next load finishes a move a crash interrupted, or drops a pair
that was not complete. A certificate counts only with the key it was issued for: with any other
(say, the files were restored from different backups) the node registers again, and a TLS
context that cannot be built from the files is :class:`PkiError`, never ``ssl.SSLError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.aio.bridge import ThreadBridge
from agent.aio.logs import kv
from agent.aio.tls import client_context
from agent.errors import AgentError, IdentityRejectedError, MasterUnavailableError, PkiError
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
STAGED = ".new"  # suffix of a rotated key or certificate written, not yet moved in place
CA_FILE = "ca.crt"
CA_BUNDLE_MAX_BYTES = 1 << 20  # a CA bundle is a few KiB; more is not a CA bundle

RECONNECT_ROTATED = "reconnecting with the rotated certificate"

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
        except OSError as exc:
            raise PkiError(f"cannot read {self.pki_dir / name}: {exc}") from exc

    def _write(self, name: str, data: bytes) -> None:
        try:
            self.pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.pki_dir.chmod(0o700)  # it holds the private key, whoever made it first
            write_private(self.pki_dir / name, data)
        except OSError as exc:
            raise PkiError(f"cannot write {self.pki_dir / name}: {exc}") from exc

    def _move(self, name: str) -> None:
        """The staged ``name`` in place of ``name``."""
        os.replace(self.pki_dir / (name + STAGED), self.pki_dir / name)

    def _discard(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.pki_dir / name).unlink()

    def _sync_dir(self) -> None:
        fd = os.open(self.pki_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _store_pair(self, key_pem: bytes, cert_pem: bytes) -> None:
        # The certificate is staged first: a staged key always has its certificate beside it.
        self._write(CERT_FILE + STAGED, cert_pem)
        self._write(KEY_FILE + STAGED, key_pem)
        try:
            self._move(KEY_FILE)
            self._move(CERT_FILE)
            self._sync_dir()
        except OSError as exc:
            raise PkiError(f"cannot move the rotated pair in place: {exc}") from exc

    def _settle_rotation(self) -> None:
        """Finish a replacement a crash interrupted, or drop a staged pair never completed."""
        staged_cert = self._read(CERT_FILE + STAGED)
        if staged_cert is None:
            self._discard(KEY_FILE + STAGED)  # (cannot happen: the certificate is staged first)
            return
        staged_key = self._read(KEY_FILE + STAGED)
        key = staged_key if staged_key is not None else self._read(KEY_FILE)
        try:
            if key is not None and _pair_matches(key, staged_cert):
                if staged_key is not None:
                    self._move(KEY_FILE)
                self._move(CERT_FILE)
                log.warning("finished replacing the node's key and certificate after a crash")
            else:  # the crash came before the key was staged: the current pair stands
                self._discard(CERT_FILE + STAGED)
            self._sync_dir()
        except OSError as exc:
            raise PkiError(f"cannot settle the rotated pair: {exc}") from exc

    def _load_or_create_key(self) -> bytes:
        pem = self._read(KEY_FILE)
        if pem is None:
            pem = key_to_pem(generate_key())
            self._write(KEY_FILE, pem)
        return pem

    def _cert_valid(self, ca_pem: bytes) -> bool:
        self._settle_rotation()
        cert_pem = self._read(CERT_FILE)
        key_pem = self._read(KEY_FILE)
        if cert_pem is None or key_pem is None:
            return False
        try:
            verify_issued_by(certs_from_pem(cert_pem)[0], certs_from_pem(ca_pem))
        except PkiError:
            return False
        if not _pair_matches(key_pem, cert_pem):
            log.warning("the node certificate is not for the node key; registering again")
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
        """Whether ``node.crt`` exists, was issued by ``ca_pem`` and is for ``node.key`` (after
        finishing a rotation a crash interrupted)."""
        return await self._bridge.run(self._cert_valid, ca_pem)

    async def forget_cert(self) -> None:
        await self._bridge.run(self._forget_cert)

    async def store_cert(self, cert_pem: bytes) -> None:
        await self._bridge.run(self._write, CERT_FILE, cert_pem)

    async def store_rotated(self, key_pem: bytes, cert_pem: bytes) -> None:
        """Replace the key and certificate together (one bridge call: a cancelled wait does
        not stop it half-way)."""
        await self._bridge.run(self._store_pair, key_pem, cert_pem)

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
        return tls_context(ca_pem, cert_file=self.cert_path, key_file=self.key_path)

    async def client_tls(self, ca_pem: bytes) -> ssl.SSLContext:
        return await self._bridge.run(self.mtls, ca_pem)

    def csr(self, key_pem: bytes, sans: list[str]) -> bytes:
        return build_csr(
            key_from_pem(key_pem), NODE_CN_PREFIX + self.node_name, [NODES_GROUP], sans
        )


def tls_context(
    ca_pem: bytes, *, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting ``ca_pem``, presenting the pair if given; files that cannot
    make one (missing, unreadable, not PEM, a key that is not the certificate's) are
    :class:`PkiError`. Blocking: call through the bridge."""
    try:
        return client_context(ca_pem, cert_file=cert_file, key_file=key_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a CA not ASCII, ValueError
        raise PkiError(f"cannot build a TLS context from {cert_file}, {key_file}: {exc}") from exc


def _pair_matches(key_pem: bytes, cert_pem: bytes) -> bool:
    """Whether the certificate is for the key (unusable PEM: no)."""
    try:
        key = key_from_pem(key_pem).public_key()
        cert_key = certs_from_pem(cert_pem)[0].public_key()
    except (PkiError, IndexError):
        return False
    return _spki(key) == _spki(cert_key)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


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
        # The session's rotation stored a new pair: whatever else ended the session, the old
        # certificate is superseded (a 403 to a request made with it is no lost identity).
        self.rotated = False

    async def run(self, session: MasterSession) -> None:
        """Wait until rotation is due, rotate, then end the session (MasterUnavailableError):
        the link reconnects with the new certificate; the pods keep running meanwhile."""
        self.rotated = False
        cert = certs_from_pem(await self._identity.current_cert_pem())[0]
        wait_s = (rotation_due_at(cert) - self._now()).total_seconds()
        await self._sleep(max(wait_s, 0.0))
        renewal = asyncio.create_task(self._renew(session), name="certificate-renewal")
        try:
            await asyncio.shield(renewal)
        except asyncio.CancelledError:
            # The session is ending for another reason while the renewal is in flight — maybe
            # a 403 to a request made with the old certificate, which the master superseded on
            # issuing the new one. The new pair is stored before the session ends, or the
            # node would have neither. (At a stop, this waits for the renewal's time-out.)
            with contextlib.suppress(AgentError):
                await renewal
            raise
        raise MasterUnavailableError(RECONNECT_ROTATED)

    async def _renew(self, session: MasterSession) -> None:
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
        if not _pair_matches(key_pem, certificate.encode()):
            raise MasterUnavailableError("certificate rotation: the certificate is not for our key")
        await self._identity.store_rotated(key_pem, certificate.encode())
        self.rotated = True
        log.info("node certificate rotated", extra=kv(expires=str(issued.not_valid_after_utc)))
