"""What one caller's watches may cost a real master (docs/security.md, "Watches"): a viewer
opening watches past WATCHES_PER_CALLER over HTTP/2 streams and HTTP/1.1 connections gets 429
with Retry-After, an administrator is not affected, and the slots come back when the viewer's
connection goes (nothing leaks: the viewer can watch again)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.aio.h2conn import H2Connection, connect
from agent.cli import node_master
from agent.master.watch import WATCH_RETRY_AFTER_S, WATCHES_PER_CALLER
from agent.proto import h2mux
from tests.helpers import MasterProcess
from tests.integration.test_authz_matrix import conf_cert, context

pytestmark = pytest.mark.docker


async def _watches(conn: H2Connection, count: int, path: str) -> list[int]:
    """Open ``count`` watches on ``conn`` (kept open); their statuses."""
    statuses = []
    for _ in range(count):
        stream = await conn.request("GET", path, [], end_stream=True)
        headers = await stream.response()
        statuses.append(stream.status)
        if stream.status != 200:
            body = json.loads(await stream.read_all(1 << 16))
            assert "watches already" in body["error"]["message"], body
            assert h2mux.header(headers, "retry-after") == str(WATCH_RETRY_AFTER_S)
    return statuses


async def _probe(
    master: MasterProcess, viewer: tuple[Path, Path], admin: tuple[Path, Path]
) -> None:
    ca = master.root / "pki" / "ca.crt"
    host, port = "127.0.0.1", master.port
    first = await connect(host, port, context(ca, viewer), server_hostname="")
    try:
        half = WATCHES_PER_CALLER // 2
        assert await _watches(first, half, "/v1/pods?watch=1") == [200] * half
        assert await _watches(first, half, "/v1/nodes?watch=1") == [200] * half
        assert await _watches(first, 2, "/v1/pods?watch=1") == [429, 429]
        # HTTP/1.1 too (each watch holds a connection there).
        tls = context(ca, viewer)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http1,
            http1.get(f"https://{host}:{port}/v1/pods?watch=1") as refused,
        ):
            assert refused.status == 429
            assert refused.headers["Retry-After"] == str(WATCH_RETRY_AFTER_S)
        admin_conn = await connect(host, port, context(ca, admin), server_hostname="")
        try:
            assert await _watches(admin_conn, 1, "/v1/pods?watch=1") == [200]
        finally:
            await admin_conn.shutdown(grace_s=0.1)
    finally:
        await first.shutdown(grace_s=0.1)
    # The connection gone, its watches end at their next write (a BOOKMARK, within
    # BOOKMARK_EVERY_S) and give their slots back: the viewer holds them all again.
    again = await connect(host, port, context(ca, viewer), server_hostname="")
    try:
        held = 0
        deadline = asyncio.get_running_loop().time() + 60
        while held < WATCHES_PER_CALLER:
            assert asyncio.get_running_loop().time() < deadline, f"{held} slots came back"
            stream = await again.request("GET", "/v1/pods?watch=1", [], end_stream=True)
            await stream.response()
            if stream.status == 200:
                held += 1  # kept open: counted
            else:
                assert stream.status == 429
                await stream.read_all(1 << 16)
                await asyncio.sleep(0.5)
    finally:
        await again.shutdown(grace_s=0.1)


def test_a_viewer_holds_at_most_its_share_of_watches(make_master: Any, tmp_path: Path) -> None:
    master = make_master().start()
    viewer_conf = tmp_path / "alice.conf"
    args = ["issue-user", "alice", "--data-dir", str(master.root), "--out", str(viewer_conf)]
    assert node_master.main(args) == 0
    viewer = conf_cert(tmp_path, "alice", viewer_conf)
    admin = conf_cert(tmp_path, "admin", master.admin_conf)
    asyncio.run(_probe(master, viewer, admin))
