"""The node's identity files: a rotated key and certificate replace the current pair so that no
crash leaves a pair that does not belong together in use, a certificate counts only with its
key, and a TLS context that cannot be built is PkiError (the defect: a crash between the two
writes of a rotation left a new key with the old certificate, and ssl.SSLError escaped the
link on every restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.errors import PkiError
from agent.node.masterlink.identity import CERT_FILE, KEY_FILE, STAGED, NodeIdentity
from agent.node.masterlink.registration import Registrar
from agent.node.masterlink.state import LinkCondition, LinkStatus
from agent.pki.core import cert_to_pem, generate_key, issue, key_to_pem
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP
from tests.unit.node.asyncwait import until
from tests.unit.node.masterlink.fakemaster import NODE, FakeMaster
from tests.unit.node.masterlink.rig import FixedFacts, link_rig

# The identity's own file access is on the bridge: blockbuster holds the tests on ``files`` to
# it (the link rig's fake master writes its files on the loop, so not those).
on_the_bridge = pytest.mark.usefixtures("blockbuster")


@dataclass
class Pair:
    key: bytes
    cert: bytes


@dataclass
class Files:
    """A node's pki directory and certificates from the fake master's CA, made off the loop."""

    identity: NodeIdentity
    master: FakeMaster
    old: Pair
    new: Pair

    def pki(self, name: str) -> Path:
        return self.identity.pki_dir / name

    def lay_out(self, layout: dict[str, str]) -> None:
        """Blocking: the directory holding ``layout`` (file name -> "old" or "new" pair)."""
        self.identity.pki_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, which in layout.items():
            pair = self.old if which == "old" else self.new
            self.pki(name).write_bytes(pair.key if ".key" in name else pair.cert)

    def staged(self) -> list[str]:
        """Blocking."""
        return sorted(p.name for p in self.identity.pki_dir.iterdir() if p.name.endswith(STAGED))


def _pair(master: FakeMaster) -> Pair:
    key = generate_key()
    cert = issue(
        master.ca_key,
        master.ca_cert,
        key.public_key(),
        common_name=NODE_CN_PREFIX + NODE,
        groups=[NODES_GROUP],
        lifetime_s=3600,
    )
    return Pair(key_to_pem(key), cert_to_pem(cert))


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[Files]:
    bridge = ThreadBridge(2, name="identity-test")
    master = await asyncio.to_thread(FakeMaster, tmp_path / "master")
    old, new = await asyncio.to_thread(lambda: (_pair(master), _pair(master)))
    yield Files(NodeIdentity(tmp_path / "pki", bridge, node_name=NODE), master, old, new)
    bridge.close()


async def _current(files: Files) -> Pair:
    def read() -> Pair:
        return Pair(files.pki(KEY_FILE).read_bytes(), files.pki(CERT_FILE).read_bytes())

    return await asyncio.to_thread(read)


@on_the_bridge
async def test_a_rotated_pair_replaces_the_current_one_private_to_the_owner(
    files: Files,
) -> None:
    await asyncio.to_thread(files.lay_out, {"node.key": "old", "node.crt": "old"})
    await files.identity.store_rotated(files.new.key, files.new.cert)
    assert await _current(files) == files.new
    assert await asyncio.to_thread(files.staged) == []
    modes = await asyncio.to_thread(
        lambda: [p.stat().st_mode & 0o777 for p in (files.pki(KEY_FILE), files.pki(CERT_FILE))]
    )
    assert modes == [0o600, 0o600]
    assert (await asyncio.to_thread(files.identity.pki_dir.stat)).st_mode & 0o777 == 0o700
    assert await files.identity.has_valid_cert(files.master.ca_pem)
    await asyncio.to_thread(files.identity.mtls, files.master.ca_pem)


@on_the_bridge
@pytest.mark.parametrize(
    ("crash", "layout", "outcome"),
    [
        ("while staging the certificate", {"node.key": "old", "node.crt": "old"}, "old"),
        (
            "after staging the certificate",
            {"node.key": "old", "node.crt": "old", "node.crt.new": "new"},
            "old",
        ),
        (
            "after staging both",
            {"node.key": "old", "node.crt": "old", "node.key.new": "new", "node.crt.new": "new"},
            "new",
        ),
        (
            "between the two moves",
            {"node.key": "new", "node.crt": "old", "node.crt.new": "new"},
            "new",
        ),
    ],
)
async def test_a_crash_during_a_rotation_leaves_one_valid_pair(
    files: Files, crash: str, layout: dict[str, str], outcome: str
) -> None:
    await asyncio.to_thread(files.lay_out, layout)
    assert await files.identity.has_valid_cert(files.master.ca_pem), crash
    assert await _current(files) == (files.old if outcome == "old" else files.new), crash
    assert await asyncio.to_thread(files.staged) == [], crash
    await asyncio.to_thread(files.identity.mtls, files.master.ca_pem)  # no ssl.SSLError


@on_the_bridge
async def test_a_certificate_for_another_key_means_registering_again(files: Files) -> None:
    # What a crash between the two writes of a rotation left before (nothing staged).
    await asyncio.to_thread(files.lay_out, {"node.key": "new", "node.crt": "old"})
    assert not await files.identity.has_valid_cert(files.master.ca_pem)


@on_the_bridge
async def test_a_tls_context_that_cannot_be_built_is_a_pki_error(files: Files) -> None:
    await asyncio.to_thread(files.lay_out, {"node.key": "new", "node.crt": "old"})
    with pytest.raises(PkiError, match="cannot build a TLS context"):
        await files.identity.client_tls(files.master.ca_pem)  # KEY_VALUES_MISMATCH
    await asyncio.to_thread(files.pki(CERT_FILE).unlink)
    with pytest.raises(PkiError):
        await files.identity.client_tls(files.master.ca_pem)  # no certificate


async def test_the_link_registers_again_with_a_mismatched_pair(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        ca_pem = await rig.identity.pinned_ca(rig.client)
        await rig.registrar.register(ca_pem)
        # What a crash between the two writes of a rotation left before this fix: the master
        # issued a certificate for a new key, the node wrote the key and not the certificate.
        new_key = await asyncio.to_thread(generate_key)
        rig.master._sign(NODE, new_key.public_key())  # the rotation, by hand
        await asyncio.to_thread(rig.identity.key_path.write_bytes, key_to_pem(new_key))

        attempt = asyncio.create_task(rig.link.attempt())
        await until(lambda: rig.status.connected or attempt.done(), "connected")
        if attempt.done():
            attempt.result()  # what escaped the attempt (before: ssl.SSLError)
        assert rig.status.condition is LinkCondition.CONNECTED, rig.status.message
        assert len(rig.master.record.registrations) == 2  # with the key it has
        assert await rig.identity.has_valid_cert(ca_pem)
        attempt.cancel()


async def test_an_unusable_bootstrap_certificate_is_a_pki_error(tmp_path: Path) -> None:
    async with link_rig(tmp_path) as rig:
        ca_pem = await rig.identity.pinned_ca(rig.client)
        bridge = ThreadBridge(1, name="bootstrap-test")
        registrar = Registrar(
            rig.identity,
            FixedFacts(),  # type: ignore[arg-type]
            rig.client,
            bridge,
            LinkStatus(),
            labels={},
            bootstrap_cert=tmp_path / "missing.crt",
            bootstrap_key=tmp_path / "missing.key",
        )
        try:
            with pytest.raises(PkiError, match="cannot build a TLS context"):
                await registrar.register(ca_pem)  # before: FileNotFoundError
        finally:
            bridge.close()
