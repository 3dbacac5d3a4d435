"""The Runtime contract suite (tests/contracts/runtime.py) against ``FakeRuntime``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster

from agent.node.runtime.base import Runtime
from agent.node.runtime.fake import FakeRuntime
from tests.contracts.runtime import COMMANDS, RuntimeContract

NODE = "fake-contract-node"
IMAGE = "node-agent-test/busybox:latest"


class FakeHarness:
    def __init__(self) -> None:
        self.runtime = FakeRuntime(NODE)
        self.fake = self.runtime
        self.node_name = NODE
        self.image = IMAGE
        self.unpullable = "127.0.0.1:9/node-agent-contract/absent:1"
        self.fake.add_image(IMAGE)
        for command, script in COMMANDS.items():
            self.fake.script_command(command, script)

    async def make_exit(self, container_id: str, code: int) -> None:
        self.fake.exit_container(container_id, code)

    async def new_image(self, ref: str) -> str:
        return self.fake.add_image(ref).id

    async def tag(self, image: str, ref: str) -> None:
        found = await self.fake.inspect_image(image)
        assert found is not None
        self.fake.add_image(ref, image_id=found.id)

    def unreachable(self) -> Runtime:
        dead = FakeRuntime(NODE)
        dead.set_down()
        return dead


class TestFakeRuntime(RuntimeContract):
    @pytest.fixture
    def harness(self, blockbuster: BlockBuster) -> Iterator[FakeHarness]:
        yield FakeHarness()
