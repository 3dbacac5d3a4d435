"""Docker records and references, the pause ELF (the pod → spec cases are in
tests/unit/node/pods/test_specs.py)."""

from __future__ import annotations

import io
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.errors import RuntimeOperationError
from agent.node.runtime.base import split_reference
from agent.node.runtime.docker import record_from_inspect, record_from_summary
from agent.node.runtime.pause import pause_elf, pause_rootfs_tar


@pytest.mark.parametrize(
    ("ref", "split"),
    [
        ("busybox", ("busybox", "latest")),
        ("a/b:1", ("a/b", "1")),
        ("reg:5000/a/b", ("reg:5000/a/b", "latest")),
        ("reg:5000/a:2", ("reg:5000/a", "2")),
    ],
)
def test_split_reference(ref: str, split: tuple[str, str]) -> None:
    assert split_reference(ref) == split


def test_record_from_inspect_parses_nanosecond_times() -> None:
    rec = record_from_inspect(
        {
            "Id": "abc",
            "Name": "/x_0",
            "Image": "sha256:1",
            "Created": "2026-01-01T00:00:00.123456789Z",
            "State": {
                "Status": "exited",
                "ExitCode": 3,
                "StartedAt": "2026-01-01T00:00:01.5Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
            },
            "Config": {"Labels": {"io.node-agent.attempt": "4"}, "Image": "img"},
            "NetworkSettings": {
                "IPAddress": "",
                "Networks": {"bridge": {"IPAddress": "172.17.0.3"}},
            },
        }
    )
    assert rec.name == "x_0"
    assert rec.exit_code == 3
    assert rec.attempt == 4
    assert rec.finished_at is None
    assert rec.started_at is not None and rec.started_at.microsecond == 500000
    assert rec.ip_address == "172.17.0.3"


def test_pause_elf_header_and_tarball() -> None:
    elf = pause_elf("x86_64")
    assert elf[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", elf, 18)[0] == 0x3E
    assert len(pause_elf("aarch64")) > len(elf) - 10
    with tarfile.open(fileobj=io.BytesIO(pause_rootfs_tar("x86_64"))) as tar:
        [member] = tar.getmembers()
        assert member.name == "pause" and member.mode == 0o755
    with pytest.raises(RuntimeOperationError, match="sandbox_image"):
        pause_elf("riscv64")


def test_pause_elf_runs_until_killed(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(pause_elf())
    binary.chmod(binary.stat().st_mode | stat.S_IEXEC)
    proc = subprocess.Popen([str(binary)])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.3)  # still pausing: it did not crash or exit
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9


def test_record_from_summary_keeps_what_a_stream_needs() -> None:
    rec = record_from_summary(
        {
            "Id": "abc",
            "Names": ["/n1_shop_web_app_2"],
            "State": "running",
            "Labels": {"io.node-agent.container": "app", "io.node-agent.attempt": "2"},
            "Image": "img",
            "ImageID": "sha256:1",
        }
    )
    assert (rec.id, rec.name, rec.container_name, rec.attempt, rec.running) == (
        "abc",
        "n1_shop_web_app_2",
        "app",
        2,
        True,
    )
    assert record_from_summary({"Id": "x", "State": "bogus"}).state.value == "dead"
