"""agent.doctor.master on a data dir made by ``node-master init``: the store read without
creating a file, the private files' modes, the certificates, the listen address."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from agent.aio.bridge import ThreadBridge
from agent.cli import node_master
from agent.doctor.core import CheckResult
from agent.doctor.master import MasterDoctor, load_result, read_store
from agent.master.config import MasterConfig, load_master_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def config(tmp_path: Path) -> MasterConfig:
    data = tmp_path / "data"
    listen = f"127.0.0.1:{free_port()}"
    assert node_master.main(["init", "--data-dir", str(data), "--listen", listen]) == 0
    return load_master_config(data / "master.toml")


async def doctor(config: MasterConfig, tmp_path: Path) -> dict[str, CheckResult]:
    bridge = ThreadBridge(4, name="test-doctor")
    try:
        checker = MasterDoctor(
            config, bridge, environ={}, systemctl=(str(tmp_path / "no-systemctl"),)
        )
        return {r.name: r for r in await checker.run()}
    finally:
        bridge.close()


def listing(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*"))


@pytest.mark.usefixtures("blockbuster")
async def test_a_fresh_cluster_passes_and_nothing_is_created(
    config: MasterConfig, tmp_path: Path
) -> None:
    before = await asyncio.to_thread(listing, tmp_path)
    results = await doctor(config, tmp_path)
    assert await asyncio.to_thread(listing, tmp_path) == before
    assert all(r.ok for r in results.values()), results
    assert "revision" in results["store"].detail and "0 nodes" in results["store"].detail
    assert "days left" in results["CA certificate"].detail
    assert "days left" in results["serving certificate"].detail
    assert results["listen"].detail.endswith("is free")
    assert "not running" in results["nodes"].detail


@pytest.mark.usefixtures("blockbuster")
async def test_loose_modes_name_the_chmod(config: MasterConfig, tmp_path: Path) -> None:
    key = config.pki_dir / "ca.key"
    await asyncio.to_thread(key.chmod, 0o644)
    await asyncio.to_thread(config.pki_dir.chmod, 0o755)
    result = (await doctor(config, tmp_path))["files"]
    assert not result.ok
    assert f"{key} is 0644 (holds a private key)" in result.detail
    assert f"chmod 600 {key}" in result.fix and f"chmod 700 {config.pki_dir}" in result.fix


@pytest.mark.usefixtures("blockbuster")
async def test_a_missing_or_broken_store(config: MasterConfig, tmp_path: Path) -> None:
    store = config.data_dir / "store.db"
    await asyncio.to_thread(store.unlink)
    result = (await doctor(config, tmp_path))["store"]
    assert not result.ok and "does not exist" in result.detail and "init" in result.fix
    assert not await asyncio.to_thread(store.exists)
    await asyncio.to_thread(store.write_bytes, b"not a database" * 100)
    result = (await doctor(config, tmp_path))["store"]
    assert not result.ok and "does not answer" in result.detail


@pytest.mark.usefixtures("blockbuster")
async def test_a_listen_address_held_by_another_program(
    config: MasterConfig, tmp_path: Path
) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((config.host, config.port))
        server.listen()
        results = await doctor(config, tmp_path)
    assert not results["listen"].ok and "is in use by pid" in results["listen"].detail
    assert "not running" in results["nodes"].detail


@pytest.mark.usefixtures("blockbuster")
async def test_missing_certificates(config: MasterConfig, tmp_path: Path) -> None:
    await asyncio.to_thread((config.pki_dir / "master.crt").unlink)
    result = (await doctor(config, tmp_path))["serving certificate"]
    assert not result.ok and "master.crt does not exist" in result.detail


@pytest.mark.usefixtures("blockbuster")
async def test_a_fifo_in_place_of_a_certificate(config: MasterConfig, tmp_path: Path) -> None:
    """A FIFO is named, never read: a reader would wait for a writer for ever."""
    crt = config.pki_dir / "master.crt"
    await asyncio.to_thread(crt.unlink)
    await asyncio.to_thread(os.mkfifo, crt, 0o600)
    try:
        result = (await doctor(config, tmp_path))["serving certificate"]
    finally:
        with contextlib.suppress(OSError):  # ENXIO: no reader waits (the fixed doctor)
            await asyncio.to_thread(os.close, os.open(crt, os.O_WRONLY | os.O_NONBLOCK))
    assert not result.ok and "not a regular file" in result.detail, result


def test_the_store_is_opened_read_only(
    config: MasterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's immutable=1 alone opens the file read-write with O_CREAT: a store removed
    between the existence check and the open would be created by the doctor."""
    opened: list[str] = []
    connect = sqlite3.connect

    def spy(database: str, **kw: Any) -> sqlite3.Connection:
        opened.append(database)
        conn: sqlite3.Connection = connect(database, **kw)
        return conn

    monkeypatch.setattr(sqlite3, "connect", spy)
    read_store(config.data_dir / "store.db")
    [uri] = opened
    assert "mode=ro" in uri, uri


def test_read_store_while_a_master_writes_creates_nothing_more(config: MasterConfig) -> None:
    store = config.data_dir / "store.db"
    writer = sqlite3.connect(store, isolation_level=None)
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        writer.execute("INSERT INTO kv VALUES ('/nodes/n1', x'7b7d', 2, 2)")
        before = listing(config.data_dir)
        assert read_store(store)[1] == 1  # the WAL's content is seen
        assert listing(config.data_dir) == before
    finally:
        writer.close()
    before = listing(config.data_dir)
    assert read_store(store)[1] == 1
    assert listing(config.data_dir) == before  # no -wal, no -shm made by doctor


def test_a_config_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "master.toml"
    path.write_text("[master]\nlisten = 5\n")
    config, result = load_result(path)
    assert config is None and not result.ok and "listen" in result.detail
