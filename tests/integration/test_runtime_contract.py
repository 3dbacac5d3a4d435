"""The Runtime contract suite (tests/contracts/runtime.py) against ``DockerRuntime`` on the real
dockerd. Every container carries this run's node label and the contract label and is removed
after each test, with every image reference the test made."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator

import docker
import pytest
from blockbuster import BlockBuster

from agent.aio.bridge import ThreadBridge
from agent.node.runtime.base import Runtime, split_reference
from agent.node.runtime.docker import DockerRuntime
from tests.contracts.runtime import (
    CONTRACT_LABEL,
    RuntimeContract,
    RuntimeExecContract,
    read_all,
)
from tests.helpers import TEST_IMAGE, remove_node_containers

pytestmark = pytest.mark.docker

BRIDGE_THREADS = 4
# Nothing listens on the discard port of loopback: the pull is refused at once.
UNPULLABLE = "127.0.0.1:9/node-agent-contract/absent:1"
NO_ENGINE = "unix:///nonexistent/node-agent-contract/docker.sock"


def _tiny_image_tar(content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


class DockerHarness:
    def __init__(self, client: docker.DockerClient, *, lean_exec: bool = True) -> None:
        self.client = client
        self.node_name = f"rt-contract-{uuid.uuid4().hex[:10]}"
        self.bridge = ThreadBridge(BRIDGE_THREADS, name="contract")
        self.runtime = DockerRuntime(self.bridge, self.node_name, lean_exec=lean_exec)
        self.image = TEST_IMAGE
        self.unpullable = UNPULLABLE
        self.refs: list[str] = []
        self._dead: list[DockerRuntime] = []

    async def make_exit(self, container_id: str, code: int) -> None:
        session = await self.runtime.exec_start(
            container_id, ["sh", "-c", f"echo {code} > /tmp/exit"], stdin=False, tty=False
        )
        try:
            await read_all(session)
        finally:
            await session.close()

    async def new_image(self, ref: str) -> str:
        repo, tag = split_reference(ref)
        tarball = _tiny_image_tar(f"{ref} {uuid.uuid4()}".encode())
        self.refs.append(ref)
        await asyncio.to_thread(
            self.client.api.import_image_from_data, tarball, repository=repo, tag=tag
        )
        found = await self.runtime.inspect_image(ref)
        assert found is not None
        return found.id

    async def tag(self, image: str, ref: str) -> None:
        repo, tag = split_reference(ref)
        self.refs.append(ref)
        await asyncio.to_thread(self.client.api.tag, image, repo, tag)

    def unreachable(self) -> Runtime:
        dead = DockerRuntime(self.bridge, self.node_name, docker_host=NO_ENGINE)
        self._dead.append(dead)
        return dead

    def clean_up(self) -> None:
        """Blocking: after the test's event loop, with the docker SDK."""
        for node in (self.node_name, f"{self.node_name}-other"):
            remove_node_containers(self.client, node)
        for container in self.client.containers.list(
            all=True, filters={"label": f"{CONTRACT_LABEL}=1"}
        ):
            if container.labels.get("io.node-agent.node", "").startswith(self.node_name):
                container.remove(force=True)
        for ref in self.refs:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_image(ref, force=True)


@contextlib.asynccontextmanager
async def docker_harness(
    client: docker.DockerClient, *, lean_exec: bool = True
) -> AsyncIterator[DockerHarness]:
    harness = DockerHarness(client, lean_exec=lean_exec)
    try:
        yield harness
    finally:
        await harness.runtime.close()
        await asyncio.to_thread(harness.clean_up)
        harness.bridge.close()


class TestDockerRuntime(RuntimeContract):
    """Exec on the loop (engine.py): the engine is on its Unix socket."""

    @pytest.fixture
    async def harness(
        self, docker_client: docker.DockerClient, blockbuster: BlockBuster
    ) -> AsyncIterator[DockerHarness]:
        async with docker_harness(docker_client) as harness:
            yield harness


class TestDockerRuntimeSdkExec(RuntimeExecContract):
    """Exec through docker-py, the path any ``docker_host`` other than a Unix socket takes."""

    @pytest.fixture
    async def harness(
        self, docker_client: docker.DockerClient, blockbuster: BlockBuster
    ) -> AsyncIterator[DockerHarness]:
        async with docker_harness(docker_client, lean_exec=False) as harness:
            yield harness


class TestDockerRuntimeSdkImageRemoval:
    """Image removal through docker-py too (image GC's deletions take the lean client on a Unix
    socket; any other ``docker_host`` scheme takes this path)."""

    harness = TestDockerRuntimeSdkExec.harness
    names = RuntimeContract.names
    test_remove_image_untags_then_removes = RuntimeContract.test_remove_image_untags_then_removes
    test_an_image_in_use_is_not_removed = RuntimeContract.test_an_image_in_use_is_not_removed
