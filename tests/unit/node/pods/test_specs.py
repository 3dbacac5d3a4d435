"""Pod → runtime-neutral container specs: names, labels, resources, env, mounts, sandbox."""

from __future__ import annotations

from pathlib import Path

from agent.node.pods.specs import (
    app_spec,
    container_name,
    pod_volume_dir,
    resolve_env,
    sandbox_spec,
)
from agent.types import canonical_json
from tests.unit.node.pods.builders import UID, container, make_ctx, make_pod

CTX = make_ctx()


def full_pod() -> object:
    return make_pod(
        container(
            "app",
            command=["run"],
            args=["--x"],
            workingDir="/w",
            ports=[
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "protocol": "UDP", "hostPort": 5353, "hostIP": "127.0.0.1"},
                {"containerPort": 9090},
            ],
            env=[
                {"name": "A", "value": "1"},
                {"name": "A", "value": "2"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            ],
            resources={
                "limits": {"cpu": "250m", "memory": "64Mi"},
                "requests": {"cpu": "1m", "memory": "32Mi"},
            },
            volumeMounts=[
                {"name": "data", "mountPath": "/data"},
                {"name": "logs", "mountPath": "/l", "readOnly": True},
            ],
        ),
        container("side", image="side:2"),
        volumes=[
            {"name": "data", "emptyDir": {}},
            {"name": "logs", "hostPath": {"path": "/var/log"}},
        ],
    )


def test_container_names_are_readable_and_per_attempt() -> None:
    pod = make_pod()
    assert container_name(pod, "app", 3) == "app_web_shop_abcdef12_3"
    assert container_name(pod, "app", 4) != container_name(pod, "app", 3)


def test_pod_volume_dir_is_under_the_state_dir() -> None:
    assert pod_volume_dir(make_ctx(Path("/s")), "u-1") == Path("/s/pods/u-1/volumes")


def test_app_spec_maps_kubernetes_to_docker() -> None:
    pod = full_pod()
    spec = app_spec(CTX, pod, pod.spec.containers[0], 2, "sandbox-id", "172.17.0.9")  # type: ignore[attr-defined,arg-type]
    assert spec.name == "app_web_shop_abcdef12_2"
    assert spec.image == "img:1"
    assert spec.entrypoint == ("run",)
    assert spec.cmd == ("--x",)
    assert spec.working_dir == "/w"
    assert spec.env == {
        "A": "2",  # later duplicates win
        "IP": "172.17.0.9",
        "HOST": "10.1.2.3",
        "NODE": "n1",
        "NAME": "web",
        "NS": "shop",
        "UID": UID,
    }
    assert spec.nano_cpus == 250_000_000
    assert spec.cpu_shares == 2  # 1m → the kernel minimum
    assert spec.memory_bytes == 64 * 2**20
    assert spec.memory_reservation_bytes == 32 * 2**20
    assert spec.network_of == "sandbox-id"
    assert spec.host_network is False
    assert spec.port_bindings == ()  # ports are published by the sandbox
    assert [(m.source, m.target, m.read_only) for m in spec.mounts] == [
        (f"/state/pods/{UID}/volumes/data", "/data", False),
        ("/var/log", "/l", True),
    ]
    assert (spec.log_max_size, spec.log_max_files) == ("10m", 5)


def test_app_spec_labels_carry_identity_hash_and_attempt() -> None:
    pod = full_pod()
    spec = app_spec(CTX, pod, pod.spec.containers[1], 5, "sb", "")  # type: ignore[attr-defined,arg-type]
    assert spec.labels == {
        "io.node-agent.node": "n1",
        "io.node-agent.pod.uid": UID,
        "io.node-agent.pod.name": "web",
        "io.node-agent.pod.namespace": "shop",
        "io.node-agent.container": "side",
        "io.node-agent.kind": "app",
        "io.node-agent.attempt": "5",
        "io.node-agent.pod.hash": pod.spec_hash,  # type: ignore[attr-defined]
        "io.node-agent.pod.source": "file:/m/web.yaml",
    }


def test_app_spec_without_command_resources_or_mounts_leaves_image_defaults() -> None:
    pod = full_pod()
    spec = app_spec(CTX, pod, pod.spec.containers[1], 0, "sb", "")  # type: ignore[attr-defined,arg-type]
    assert spec.entrypoint is None and spec.cmd is None
    assert spec.working_dir is None
    assert spec.env == {}
    assert spec.mounts == ()
    assert (spec.nano_cpus, spec.cpu_shares, spec.memory_bytes) == (None, None, None)
    assert spec.memory_reservation_bytes is None


def test_cpu_request_maps_to_shares_by_the_kubelet_formula() -> None:
    pod = make_pod(container(resources={"requests": {"cpu": "1500m"}}))
    spec = app_spec(CTX, pod, pod.spec.containers[0], 0, "sb", "")
    assert spec.cpu_shares == 1536
    assert spec.nano_cpus is None


def test_env_node_name_comes_from_the_pod_spec_when_set() -> None:
    pod = make_pod(
        container(env=[{"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]),
        nodeName="elsewhere",
    )
    assert resolve_env(pod, pod.spec.containers[0], CTX, "") == {"N": "elsewhere"}


def test_sandbox_spec_carries_manifest_and_host_ports() -> None:
    pod = full_pod()
    spec = sandbox_spec(CTX, pod, 0)  # type: ignore[arg-type]
    assert spec.name == "POD_web_shop_abcdef12_0"
    assert spec.image == "pause:1"
    assert spec.hostname == "web"
    assert spec.host_network is False
    assert spec.network_of is None
    assert [(p.container_port, p.protocol, p.host_port, p.host_ip) for p in spec.port_bindings] == [
        (80, "TCP", 8080, ""),
        (53, "UDP", 5353, "127.0.0.1"),
    ]
    assert spec.labels["io.node-agent.pod.manifest"] == canonical_json(pod.manifest)  # type: ignore[attr-defined]
    assert spec.labels["io.node-agent.kind"] == "sandbox"
    assert spec.labels["io.node-agent.container"] == "POD"
    assert spec.labels["io.node-agent.attempt"] == "0"
    assert spec.labels["io.node-agent.pod.hash"] == pod.spec_hash  # type: ignore[attr-defined]


def test_host_network_sandbox_has_no_hostname_and_publishes_nothing() -> None:
    pod = make_pod(container(ports=[{"containerPort": 80, "hostPort": 80}]), hostNetwork=True)
    spec = sandbox_spec(CTX, pod, 3)
    assert spec.host_network is True
    assert spec.hostname is None
    assert spec.port_bindings == ()
    assert spec.name.endswith("_3")


def test_sandbox_hostname_is_cut_to_63_characters() -> None:
    name = "a" * 40 + "." + "b" * 40
    assert sandbox_spec(CTX, make_pod(name=name), 0).hostname == name[:63]
