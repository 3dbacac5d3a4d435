"""The master's wire contract (tests/contracts/master_wire.py) against the fake master the
master-link tests use; tests/integration/test_master_wire_contract.py runs it against a real
``node-master``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.contracts.master_wire import MasterWireContract
from tests.unit.node.masterlink.fakemaster import FakeMaster

pytestmark = pytest.mark.usefixtures("blockbuster")


class FakeMasterWire:
    def __init__(self, master: FakeMaster) -> None:
        self.fake = master
        self.url = master.url
        self.pin = master.pin

    async def apply_pod(self, manifest: dict[str, Any], node: str) -> None:
        self.fake.add_pod(manifest, node=node)

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.fake.delete_pod(f"{namespace}/{name}")

    async def compact(self) -> None:
        self.fake.compact()

    async def approve(self, node: str) -> None:
        self.fake.approve_node(node)


class FakeMasters:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[FakeMaster] = []

    async def start(self, *, approval: bool = False) -> FakeMasterWire:
        # The fake writes its certificate files when made: off the event loop.
        master = await asyncio.to_thread(FakeMaster, self.directory / f"m{len(self.started)}")
        master.approval_required = approval
        self.started.append(await master.start())
        return FakeMasterWire(master)


class TestFakeMasterWire(MasterWireContract):
    @pytest.fixture
    async def masters(self, tmp_path: Path) -> AsyncIterator[FakeMasters]:
        masters = FakeMasters(tmp_path / "masters")
        yield masters
        for master in masters.started:
            await master.stop()
