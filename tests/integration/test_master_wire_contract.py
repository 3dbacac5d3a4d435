"""The master's wire contract (tests/contracts/master_wire.py) against a real ``node-master``
process: pods are applied and deleted with ``nodectl``, registrations approved with ``nodectl
approve``, and the history compacted by writing through the admin's certificate to a master
that keeps only ``HISTORY_REVISIONS`` store changes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import client_context
from agent.node.masterlink.client import MasterClient
from tests.contracts.master_wire import MasterWireContract, pod
from tests.helpers import REPO_ROOT, MasterProcess

HISTORY_REVISIONS = 3  # the store changes the master keeps for watches
COMPACTING_WRITES = 4 * HISTORY_REVISIONS  # enough to push any older revision out
NODECTL_TIMEOUT_S = 60.0


class RealMasterWire:
    def __init__(self, process: MasterProcess, admin_dir: Path) -> None:
        self.process = process
        self.url = process.url
        self.pin = process.pin
        admin = tomllib.loads(process.admin_conf.read_text())
        admin_dir.mkdir(parents=True, exist_ok=True)
        self._admin_cert, self._admin_key = admin_dir / "admin.crt", admin_dir / "admin.key"
        self._admin_cert.write_text(admin["client_cert"])
        self._admin_key.write_text(admin["client_key"])
        self._ca_pem = admin["ca"].strip().encode()

    async def nodectl(self, *args: str, stdin: str | None = None) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent.cli.nodectl",
            "--config",
            str(self.process.admin_conf),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        )
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), NODECTL_TIMEOUT_S
        )
        assert proc.returncode == 0, f"nodectl {' '.join(args)}: {err.decode()}"
        return out.decode()

    async def apply_pod(self, manifest: dict[str, Any], node: str) -> None:
        bound = {**manifest, "spec": {**manifest["spec"], "nodeName": node}}
        await self.nodectl("apply", "-f", "-", stdin=json.dumps(bound))

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.nodectl("delete", "pod", name, "-n", namespace)

    async def approve(self, node: str) -> None:
        await self.nodectl("approve", node)

    async def compact(self) -> None:
        """Writes (a pod created and deleted, over and over) until the history is gone."""
        tls = await asyncio.to_thread(
            client_context,
            self._ca_pem,
            cert_file=self._admin_cert,
            key_file=self._admin_key,
        )
        filler = pod("compactor")
        filler["spec"]["nodeName"] = "no-such-node"
        bridge = ThreadBridge(1, name="compact")
        try:
            async with MasterClient(self.url, bridge).session(tls) as admin:
                for _ in range(COMPACTING_WRITES // 2):
                    await admin.call("POST", "/v1/pods", filler)
                    await admin.call("DELETE", "/v1/namespaces/default/pods/compactor")
        finally:
            bridge.close()


class RealMasters:
    def __init__(self, make_master: Callable[..., MasterProcess], directory: Path) -> None:
        self.make_master = make_master
        self.directory = directory
        self.count = 0

    async def start(self, *, approval: bool = False) -> RealMasterWire:
        def start() -> RealMasterWire:
            process = self.make_master(store_history_revisions=HISTORY_REVISIONS)
            if approval:
                process.configure(trust=["approval"])
            process.start()
            self.count += 1
            return RealMasterWire(process, self.directory / f"admin-{self.count}")

        # Starting a process and waiting for it to serve blocks: off the event loop.
        return await asyncio.to_thread(start)


class TestRealMasterWire(MasterWireContract):
    @pytest.fixture
    def masters(
        self, make_master: Callable[..., MasterProcess], tmp_path: Path
    ) -> Iterator[RealMasters]:
        yield RealMasters(make_master, tmp_path / "admins")
