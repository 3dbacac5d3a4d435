"""A second Docker engine of the test's own for image GC: its data root on a small tmpfs, its
own socket, exec root, pidfile and containerd namespace, no bridge and no iptables rules — the
machine's engine is untouched. ``make test-imagegc`` runs this directory (root, dockerd).

It runs in a network namespace of its own: a dockerd started with ``--bridge=none`` deletes
the ``docker0`` interface it finds (moby's removeDefaultBridgeInterface), which in the host's
namespace is the machine's engine's bridge — every container of that engine would lose its
network."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.helpers import TEST_IMAGE, ensure_test_image, wait_for
from tests.integration.conftest import docker_client, make_agent, make_master

__all__ = ["docker_client", "make_agent", "make_master"]

DATA_ROOT_BYTES = 400 * 1024 * 1024  # the tmpfs the engine's images live on
MB = 1024 * 1024


@dataclass
class Engine:
    root: Path
    data_root: Path
    socket: Path
    client: docker.DockerClient

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def usage_percent(self) -> float:
        st = os.statvfs(self.data_root)
        total = st.f_blocks * st.f_frsize
        free = st.f_bfree * st.f_frsize
        return 100.0 * (total - free) / total

    def import_image(self, ref: str, pad_bytes: int) -> str:
        """A runnable image (busybox) of about ``pad_bytes`` more (random, incompressible)."""
        repo, tag = ref.rsplit(":", 1)
        self.client.api.import_image_from_data(
            _busybox_tar(pad_bytes), repository=repo, tag=tag, changes=["ENV PATH=/bin"]
        )
        return str(self.client.images.get(ref).id)


def _busybox_tar(pad_bytes: int) -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in ("sh", "sleep", "true"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        pad = os.urandom(pad_bytes)
        info = tarfile.TarInfo("pad")
        info.size = len(pad)
        tar.addfile(info, io.BytesIO(pad))
    return buf.getvalue()


@pytest.fixture
def engine(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Engine]:
    root = Path(f"/tmp/imagegc-{uuid.uuid4().hex[:8]}")  # short: the socket path has a limit
    data_root = root / "data"
    data_root.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DATA_ROOT_BYTES}", "tmpfs", str(data_root)],
        check=True,
    )
    sock = root / "docker.sock"
    log = (root / "dockerd.log").open("wb")
    ns = f"imagegc-{root.name}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = subprocess.Popen(
        [
            "nsenter", f"--net=/run/netns/{ns}",  # not ip netns exec: it remounts /sys
            "dockerd",
            "--data-root", str(data_root),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"),
            "-H", f"unix://{sock}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--containerd-namespace", ns,
            "--containerd-plugins-namespace", f"{ns}-plugins",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    # A fixed API version: the client asks for none before the engine answers.
    client = docker.DockerClient(base_url=f"unix://{sock}", timeout=120, version="1.41")
    try:

        def answers() -> bool:
            assert proc.poll() is None, (root / "dockerd.log").read_text()[-2000:]
            return bool(client.ping())

        wait_for(answers, timeout_s=60, what="the second dockerd answers")
        # The test image, for pods of the agent under test (from the machine's engine).
        ensure_test_image(docker_client)
        client.images.load(b"".join(docker_client.images.get(TEST_IMAGE).save()))
        yield Engine(root, data_root, sock, client)
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            for container in client.containers.list(all=True):
                container.remove(force=True)
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for _ in range(40):  # the engine's mounts go a moment after it exits
            umount = subprocess.run(["umount", str(data_root)], check=False, capture_output=True)
            if umount.returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(data_root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)
