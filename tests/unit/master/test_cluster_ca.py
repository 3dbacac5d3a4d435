"""The cluster CA the store records (agent.master.cluster_ca, issue 19 item 5): recorded by
the first master, accepted from a master with the same CA, refused with both fingerprints
named from a master with another, and refused when the record is not one of ours; of two
masters starting on a new store at once, the second compares with the first's record.
tests/etcd/test_replica.py starts real replicas both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.master.cluster_ca import CA_KEY, check_cluster_ca, fingerprint
from agent.master.store.memory import MemoryStore
from agent.pki.core import create_ca


async def test_the_first_master_records_its_ca_and_the_same_ca_passes() -> None:
    store = MemoryStore()
    _, ca = create_ca()
    assert await check_cluster_ca(store, ca) == fingerprint(ca)
    record = await store.get(CA_KEY)
    assert record is not None
    assert json.loads(record.value)["fingerprint"] == fingerprint(ca)
    assert fingerprint(ca).startswith("sha256:") and len(fingerprint(ca)) == 7 + 64
    assert await check_cluster_ca(store, ca) == fingerprint(ca)  # a replica, or a restart
    after = await store.get(CA_KEY)
    assert after is not None and after.mod_revision == record.mod_revision  # not rewritten


async def test_another_ca_is_refused_naming_both_fingerprints() -> None:
    store = MemoryStore()
    _, first = create_ca()
    _, other = create_ca()
    await check_cluster_ca(store, first)
    with pytest.raises(ConfigError) as caught:
        await check_cluster_ca(store, other)
    message = str(caught.value)
    assert f"this master's CA ({fingerprint(other)}) is not the cluster's" in message
    assert f"the store records {fingerprint(first)}" in message
    assert "docs/operations.md" in message and message.endswith("refusing to start")


@pytest.mark.parametrize("value", [b"junk", b"[]", b'{"fingerprint": 7}', b'{"x": "sha256:1"}'])
async def test_a_record_not_of_ours_is_refused(value: bytes) -> None:
    store = MemoryStore()
    await store.put(CA_KEY, value)
    _, ca = create_ca()
    with pytest.raises(ConfigError, match=r"cluster CA record .* is not readable"):
        await check_cluster_ca(store, ca)


class RacingStore(MemoryStore):
    """Another master records its CA between this one's read and its swap."""

    def __init__(self, theirs: bytes) -> None:
        super().__init__()
        self.theirs = theirs

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        if self.theirs:
            await self.put(key, self.theirs)
            self.theirs = b""
        return await super().compare_and_swap(key, value, expected_mod_revision)


async def test_of_two_masters_starting_at_once_the_second_compares() -> None:
    _, first = create_ca()
    _, other = create_ca()
    theirs = json.dumps({"fingerprint": fingerprint(first)}).encode()
    with pytest.raises(ConfigError, match="is not the cluster's"):
        await check_cluster_ca(RacingStore(theirs), other)
    assert await check_cluster_ca(RacingStore(theirs), first) == fingerprint(first)


async def test_a_rotation_mark_naming_this_ca_replaces_the_record_and_no_other_does() -> None:
    """`node-master init --force` (the manual CA rotation) leaves the new CA's fingerprint as a
    mark: that CA replaces the record; a mark naming another CA changes nothing."""
    store = MemoryStore()
    _, old = create_ca()
    _, new = create_ca()
    _, stranger = create_ca()
    await check_cluster_ca(store, old)
    with pytest.raises(ConfigError):
        await check_cluster_ca(store, stranger, rotation=fingerprint(new))
    assert await check_cluster_ca(store, new, rotation=fingerprint(new)) == fingerprint(new)
    record = await store.get(CA_KEY)
    assert record is not None and json.loads(record.value)["fingerprint"] == fingerprint(new)
    with pytest.raises(ConfigError):  # the old CA is now the stranger
        await check_cluster_ca(store, old)


def test_init_force_over_an_existing_ca_leaves_the_rotation_mark(tmp_path: Path) -> None:
    from agent.master.cluster_ca import ROTATION_MARK
    from agent.master.pki_files import init_cluster
    from agent.pki.core import certs_from_pem

    def init(force: bool) -> None:
        init_cluster(
            tmp_path, server_names=[], listen="127.0.0.1:6443", force=force, render_config=""
        )

    init(False)
    mark = tmp_path / "pki" / ROTATION_MARK
    assert not mark.exists()  # a first init rotates nothing
    init(True)
    ca = certs_from_pem((tmp_path / "pki" / "ca.crt").read_bytes())[0]
    assert mark.read_text() == fingerprint(ca)
    assert mark.stat().st_mode & 0o777 == 0o600
