"""Pod → container specs: names, labels, resources, env, mounts, sandbox; the pause ELF."""

from __future__ import annotations

import io
import stat
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.errors import RuntimeOperationError
from agent.manifest import parse_pod
from agent.node.pods.specs import SpecContext, app_spec, container_name, sandbox_spec
from agent.node.runtime.docker import _split_reference, record_from_inspect, record_from_summary
from agent.node.runtime.pause import pause_elf, pause_rootfs_tar

CTX = SpecContext(
    node_name="n1", sandbox_image="pause:1", state_dir=Path("/state"), host_ip="10.1.2.3"
)


def make_pod() -> object:
    return parse_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web",
                "namespace": "shop",
                "uid": "abcdef12-0000-0000-0000-000000000000",
            },
            "spec": {
                "volumes": [
                    {"name": "data", "emptyDir": {}},
                    {"name": "logs", "hostPath": {"path": "/var/log"}},
                ],
                "containers": [
                    {
                        "name": "app",
                        "image": "img:1",
                        "command": ["run"],
                        "args": ["--x"],
                        "ports": [{"containerPort": 80, "hostPort": 8080}],
                        "env": [
                            {"name": "A", "value": "1"},
                            {"name": "A", "value": "2"},
                            {
                                "name": "IP",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                            },
                            {
                                "name": "HOST",
                                "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}},
                            },
                            {
                                "name": "NODE",
                                "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                            },
                        ],
                        "resources": {
                            "limits": {"cpu": "250m", "memory": "64Mi"},
                            "requests": {"cpu": "1m"},
                        },
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "logs", "mountPath": "/l", "readOnly": True},
                        ],
                    }
                ],
            },
        },
        source="file:/m/web.yaml",
        node_name="n1",
    )


def test_container_names_are_readable_and_per_attempt() -> None:
    pod = make_pod()
    assert container_name(pod, "app", 3) == "app_web_shop_abcdef12_3"  # type: ignore[arg-type]


def test_app_spec_maps_kubernetes_to_docker() -> None:
    pod = make_pod()
    spec = app_spec(CTX, pod, pod.spec.containers[0], 2, "sandbox-id", "172.17.0.9")  # type: ignore[attr-defined,arg-type]
    assert spec.entrypoint == ("run",)
    assert spec.cmd == ("--x",)
    assert spec.env == {"A": "2", "IP": "172.17.0.9", "HOST": "10.1.2.3", "NODE": "n1"}
    assert spec.nano_cpus == 250_000_000
    assert spec.cpu_shares == 2  # 1m → the kernel minimum
    assert spec.memory_bytes == 64 * 2**20
    assert spec.network_of == "sandbox-id"
    assert [(m.source, m.target, m.read_only) for m in spec.mounts] == [
        ("/state/pods/abcdef12-0000-0000-0000-000000000000/volumes/data", "/data", False),
        ("/var/log", "/l", True),
    ]
    assert spec.labels["io.node-agent.node"] == "n1"
    assert spec.labels["io.node-agent.attempt"] == "2"
    assert spec.labels["io.node-agent.kind"] == "app"
    assert spec.labels["io.node-agent.pod.source"] == "file:/m/web.yaml"


def test_sandbox_spec_carries_manifest_and_host_ports() -> None:
    pod = make_pod()
    spec = sandbox_spec(CTX, pod, 0)  # type: ignore[arg-type]
    assert spec.name == "POD_web_shop_abcdef12_0"
    assert spec.image == "pause:1"
    assert spec.hostname == "web"
    assert [(p.container_port, p.host_port) for p in spec.port_bindings] == [(80, 8080)]
    assert '"name":"web"' in spec.labels["io.node-agent.pod.manifest"]
    assert spec.labels["io.node-agent.kind"] == "sandbox"


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
    assert _split_reference(ref) == split


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
