"""Translation of a desired pod into runtime-neutral container specs (pure, no I/O).

Owns the container naming scheme, the ``io.node-agent.*`` labels and the Kubernetes → Docker
resource mapping (cpu limit → NanoCpus, cpu request → CpuShares, memory limit → Memory without
extra swap, memory request → MemoryReservation).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.annotations import NO_NOTIFY, notify_settings
from agent.errors import ManifestError
from agent.node.notify import wire as notify_wire
from agent.node.runtime.base import ContainerSpec, Mount, PortBinding
from agent.types import (
    KIND_APP,
    KIND_INIT,
    KIND_SANDBOX,
    LABEL_ATTEMPT,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_POD_HASH,
    LABEL_POD_MANIFEST,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_SOURCE,
    LABEL_POD_UID,
    SANDBOX_CONTAINER_NAME,
    Container,
    ContainerResource,
    FieldRef,
    Pod,
    ResourceFieldRef,
    canonical_json,
)

NANO_CPUS_PER_MILLI = 1_000_000
MIN_CPU_SHARES = 2
CPU_SHARES_PER_CPU = 1024
MILLIS_PER_CPU = 1000
POD_DIRS = "pods"  # <state_dir>/pods/<uid>/volumes: the pods' emptyDir volumes


@dataclass(frozen=True, slots=True)
class SpecContext:
    """Node facts every spec needs."""

    node_name: str
    sandbox_image: str
    state_dir: Path
    host_ip: str
    log_max_size: str = "10m"
    log_max_files: int = 5
    # The node's allocatable cpu (millicores) and memory (bytes): what a resourceFieldRef to an
    # unset limit gives, as kubelet does (defaultPodLimitsForDownwardAPI).
    node_cpu_millis: int = 0
    node_memory_bytes: int = 0


def container_name(pod: Pod, name: str, attempt: int) -> str:
    """Readable, unique per attempt: ``<container>_<pod>_<namespace>_<uid8>_<attempt>``.

    Docker refuses a second container with the same name, which makes creation idempotent
    across agent crashes: a retried create after ``kill -9`` can never duplicate a container.
    """
    uid8 = pod.uid.replace("-", "")[:8]
    return f"{name}_{pod.metadata.name}_{pod.metadata.namespace}_{uid8}_{attempt}"


def pod_volume_dir(ctx: SpecContext, pod_uid: str) -> Path:
    return ctx.state_dir / POD_DIRS / pod_uid / "volumes"


def _labels(ctx: SpecContext, pod: Pod, name: str, kind: str, attempt: int) -> dict[str, str]:
    return {
        LABEL_NODE: ctx.node_name,
        LABEL_POD_UID: pod.uid,
        LABEL_POD_NAME: pod.metadata.name,
        LABEL_POD_NAMESPACE: pod.metadata.namespace,
        LABEL_CONTAINER: name,
        LABEL_KIND: kind,
        LABEL_ATTEMPT: str(attempt),
        LABEL_POD_HASH: pod.spec_hash,
        LABEL_POD_SOURCE: pod.source,
    }


def sandbox_spec(ctx: SpecContext, pod: Pod, attempt: int) -> ContainerSpec:
    labels = _labels(ctx, pod, SANDBOX_CONTAINER_NAME, KIND_SANDBOX, attempt)
    # The sandbox carries the manifest so desired state can be rebuilt from the runtime alone
    # when the checkpoint is lost or corrupt.
    labels[LABEL_POD_MANIFEST] = canonical_json(pod.manifest)
    bindings = tuple(
        PortBinding(
            container_port=port.container_port,
            protocol=port.protocol,
            host_port=port.host_port,
            host_ip=port.host_ip or "",
        )
        for c in pod.spec.containers
        for port in c.ports
        if port.host_port is not None and not pod.spec.host_network
    )
    return ContainerSpec(
        name=container_name(pod, SANDBOX_CONTAINER_NAME, attempt),
        image=ctx.sandbox_image,
        labels=labels,
        hostname=None if pod.spec.host_network else pod.metadata.name[:63],
        host_network=pod.spec.host_network,
        port_bindings=bindings,
        log_max_size=ctx.log_max_size,
        log_max_files=ctx.log_max_files,
    )


def resource_value(ctx: SpecContext, container: Container, ref: ResourceFieldRef) -> str:
    """A request or limit divided by the divisor, rounded up, as kubelet computes it
    (``ExtractContainerResourceValue``): an unset limit is the node's allocatable, an unset
    request is 0."""
    res = container.resources
    amount = {
        ContainerResource.LIMITS_CPU: (
            res.cpu_limit_millis if res.cpu_limit_millis is not None else ctx.node_cpu_millis
        ),
        ContainerResource.LIMITS_MEMORY: (
            res.memory_limit_bytes if res.memory_limit_bytes is not None else ctx.node_memory_bytes
        ),
        ContainerResource.REQUESTS_CPU: res.cpu_request_millis or 0,
        ContainerResource.REQUESTS_MEMORY: res.memory_request_bytes or 0,
    }[ref.resource]
    return str(-(-amount // max(1, ref.divisor)))


def resolve_env(pod: Pod, container: Container, ctx: SpecContext, pod_ip: str) -> dict[str, str]:
    values = {
        FieldRef.POD_NAME: pod.metadata.name,
        FieldRef.POD_NAMESPACE: pod.metadata.namespace,
        FieldRef.POD_UID: pod.uid,
        FieldRef.NODE_NAME: pod.spec.node_name or ctx.node_name,
        # We have no service accounts: Kubernetes' value for a pod without one.
        FieldRef.SERVICE_ACCOUNT_NAME: "",
        FieldRef.POD_IP: pod_ip,
        FieldRef.POD_IPS: pod_ip,  # comma-separated in Kubernetes; a pod here has one address
        FieldRef.HOST_IP: ctx.host_ip,
        FieldRef.HOST_IPS: ctx.host_ip,
    }
    env: dict[str, str] = {}
    for var in container.env:  # later duplicates win, as in Kubernetes
        if var.resource_ref is not None:
            named = var.resource_ref.container_name
            target = pod.container(named) if named is not None else container
            # The parser checked the name; a pod built otherwise gets the container's own.
            env[var.name] = resource_value(ctx, target or container, var.resource_ref)
        elif var.field_ref is FieldRef.LABEL:
            env[var.name] = pod.metadata.labels.get(var.field_key, "")
        elif var.field_ref is FieldRef.ANNOTATION:
            env[var.name] = pod.metadata.annotations.get(var.field_key, "")
        elif var.field_ref is not None:
            env[var.name] = values[var.field_ref]
        else:
            env[var.name] = var.value
    return env


def notify_setup(
    ctx: SpecContext, pod: Pod, container: Container, env: dict[str, str]
) -> list[Mount]:
    """A notify container's socket directory, mounted read-only (the socket stays writable:
    a read-only mount refuses writes to files, not datagrams to a socket), and
    ``$NOTIFY_SOCKET`` (ours wins over one the manifest sets) with ``$WATCHDOG_USEC`` when it
    has a watchdog, as systemd sets them for a service."""
    try:
        settings = notify_settings(pod.metadata.annotations, {c.name for c in pod.spec.containers})
    except ManifestError:  # refused by the parser already; a pod built otherwise has none
        settings = NO_NOTIFY
    if not settings.wants(container.name):
        return []
    env[notify_wire.NOTIFY_SOCKET_ENV] = notify_wire.CONTAINER_SOCKET
    if settings.watchdog_s is not None:
        env[notify_wire.WATCHDOG_USEC_ENV] = str(settings.watchdog_s * notify_wire.USEC_PER_S)
    source = notify_wire.container_dir(pod_volume_dir(ctx, pod.uid).parent, container.name)
    return [Mount(source=str(source), target=notify_wire.CONTAINER_DIR, read_only=True)]


def app_spec(
    ctx: SpecContext,
    pod: Pod,
    container: Container,
    attempt: int,
    sandbox_id: str,
    pod_ip: str,
) -> ContainerSpec:
    volumes = {v.name: v for v in pod.spec.volumes}
    mounts = []
    for mount in container.volume_mounts:
        volume = volumes[mount.name]
        if volume.host_path is not None:
            source = volume.host_path.path
        else:
            source = str(pod_volume_dir(ctx, pod.uid) / volume.name)
        mounts.append(Mount(source=source, target=mount.mount_path, read_only=mount.read_only))
    env = resolve_env(pod, container, ctx, pod_ip)
    mounts.extend(notify_setup(ctx, pod, container, env))
    res = container.resources
    cpu_shares = None
    if res.cpu_request_millis is not None:
        cpu_shares = max(
            MIN_CPU_SHARES, res.cpu_request_millis * CPU_SHARES_PER_CPU // MILLIS_PER_CPU
        )
    return ContainerSpec(
        name=container_name(pod, container.name, attempt),
        image=container.image,
        labels=_labels(ctx, pod, container.name, KIND_APP, attempt),
        # Kubernetes semantics: command replaces ENTRYPOINT, args replace CMD.
        entrypoint=container.command or None,
        cmd=container.args or None,
        env=env,
        working_dir=container.working_dir,
        network_of=sandbox_id,
        mounts=tuple(mounts),
        nano_cpus=(
            res.cpu_limit_millis * NANO_CPUS_PER_MILLI if res.cpu_limit_millis is not None else None
        ),
        cpu_shares=cpu_shares,
        memory_bytes=res.memory_limit_bytes,
        memory_reservation_bytes=res.memory_request_bytes,
        log_max_size=ctx.log_max_size,
        log_max_files=ctx.log_max_files,
    )


def init_spec(
    ctx: SpecContext,
    pod: Pod,
    container: Container,
    attempt: int,
    sandbox_id: str,
    pod_ip: str,
) -> ContainerSpec:
    """An init container: made as an app container (same mounts, env, resources, network),
    told apart by its kind label, so that adoption after a restart, status and orphan
    cleanup see it for what it is. Its name needs no mark: container names are unique across
    init and app containers (the parser's rule)."""
    spec = app_spec(ctx, pod, container, attempt, sandbox_id, pod_ip)
    return replace(spec, labels={**spec.labels, LABEL_KIND: KIND_INIT})
