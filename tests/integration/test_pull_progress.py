"""Pull progress on a real pull (issue 16 item 1): a registry of the test's own (Debian's
docker-registry, installed by bootstrap, on a loopback port: the engine pulls from 127.0.0.0/8
over plain HTTP without configuration) serves an image with one 8 MiB layer; pulled through
``DockerRuntime.pull_image``, the engine's progress reaches the callback with the layer's bytes
done / total — what the pull manager turns into ``Pulling`` events (their pacing is unit-tested
in tests/unit/node/images). ``docker load`` and imports report no bytes: only a registry does."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import requests

from agent.aio.bridge import ThreadBridge
from agent.node.runtime.base import PullProgress
from agent.node.runtime.docker import DockerRuntime
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.docker

LAYER_BYTES = 8 * 1024 * 1024  # random: the layer's compressed size is about this


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A throwaway registry; its address (host:port)."""
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: scripts/bootstrap.sh installs it"
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'data'}\n"
        f"http:\n  addr: {address}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "registry.log").read_text()[-2000:]
            try:
                return requests.get(f"http://{address}/v2/", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(answers, timeout_s=30, what="the registry answers")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        pad = os.urandom(LAYER_BYTES)
        info = tarfile.TarInfo("pad")
        info.size = len(pad)
        tar.addfile(info, io.BytesIO(pad))
    return buf.getvalue()


def test_a_registry_pull_reports_bytes_done_and_total(
    registry: str, docker_client: docker.DockerClient
) -> None:
    repo = f"{registry}/node-agent-test/progress-{uuid.uuid4().hex[:8]}"
    ref = f"{repo}:1"
    docker_client.api.import_image_from_data(_layer_tar(), repository=repo, tag="1")
    try:
        for message in docker_client.api.push(repo, tag="1", stream=True, decode=True):
            assert "error" not in message, message
        docker_client.api.remove_image(ref)
        seen: list[PullProgress] = []

        async def pull() -> tuple[str, ...]:
            bridge = ThreadBridge(2, name="pull-progress")
            runtime = DockerRuntime(bridge, f"pull-{uuid.uuid4().hex[:8]}")
            try:
                image = await runtime.pull_image(ref, progress=seen.append)
                return image.repo_digests
            finally:
                await runtime.close()
                bridge.close()

        digests = asyncio.run(pull())
        sized = [p for p in seen if p.status == "Downloading" and p.total_bytes]
        assert sized, seen
        assert all(p.layer_id for p in sized)
        total = sized[-1].total_bytes or 0
        assert LAYER_BYTES <= total <= LAYER_BYTES * 1.1, sized
        assert all(0 < (p.current_bytes or 0) <= total for p in sized), sized
        assert [d for d in digests if d.startswith(f"{repo}@sha256:")], digests
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_image(ref)
