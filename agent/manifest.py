"""Parsing Kubernetes ``v1 Pod`` manifests into the typed model of :mod:`agent.types`.

This is the only producer of :class:`~agent.types.Pod`. It accepts the subset documented in
``docs/manifests.md`` and rejects everything else with a :class:`ManifestError` naming the field
path (``spec.containers[1].livenessProbe: not supported yet``): a field we do not implement is
never silently ignored, because an operator who wrote a probe or a securityContext must not
believe it is in force. The only fields dropped are read-only output fields that
``kubectl get -o yaml`` prints (``status``, ``metadata.resourceVersion``, ...).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import uuid
from collections.abc import Mapping
from typing import Any

import yaml

from agent.errors import ManifestError
from agent.quantity import parse_cpu_millis, parse_memory_bytes
from agent.types import (
    Container,
    ContainerPort,
    EmptyDirVolume,
    EnvVar,
    FieldRef,
    HostPathVolume,
    ObjectMeta,
    Pod,
    PodSpec,
    PullPolicy,
    Resources,
    RestartPolicy,
    Volume,
    VolumeMount,
    _frozen_map,
    canonical_json,
)

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_VALUE_MAX = 63
PORT_NAME_MAX = 15
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_LABEL_HELP = "lowercase alphanumerics and '-', start and end alphanumeric, at most 63 characters"
_SUBDOMAIN_HELP = (
    "lowercase alphanumerics, '-' and '.', each dot-separated part starting and ending "
    "alphanumeric, at most 253 characters"
)

_TOP_FIELDS = {"apiVersion", "kind", "metadata", "spec"}
_TOP_DROPPED = {"status"}
_META_FIELDS = {"name", "namespace", "uid", "labels", "annotations"}
_META_DROPPED = {"creationTimestamp", "resourceVersion", "generation", "selfLink", "managedFields"}
_META_UNSUPPORTED = {
    "generateName",
    "ownerReferences",
    "finalizers",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
}
_SPEC_FIELDS = {
    "containers",
    "volumes",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostNetwork",
    "nodeName",
}
_SPEC_UNSUPPORTED = {
    "initContainers",
    "ephemeralContainers",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "dnsConfig",
    "nodeSelector",
    "serviceAccountName",
    "serviceAccount",
    "automountServiceAccountToken",
    "hostPID",
    "hostIPC",
    "hostUsers",
    "shareProcessNamespace",
    "securityContext",
    "imagePullSecrets",
    "hostname",
    "subdomain",
    "affinity",
    "schedulerName",
    "tolerations",
    "hostAliases",
    "priorityClassName",
    "priority",
    "readinessGates",
    "runtimeClassName",
    "enableServiceLinks",
    "preemptionPolicy",
    "overhead",
    "topologySpreadConstraints",
    "setHostnameAsFQDN",
    "os",
    "schedulingGates",
    "resourceClaims",
    "resources",
}
_CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "workingDir",
    "volumeMounts",
}
_CONTAINER_UNSUPPORTED = {
    "envFrom",
    "volumeDevices",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
    "resizePolicy",
    "restartPolicy",
}
_ENV_FIELDS = {"name", "value", "valueFrom"}
_VALUE_FROM_UNSUPPORTED = {"configMapKeyRef", "secretKeyRef", "resourceFieldRef", "fileKeyRef"}
_FIELD_REF_FIELDS = {"fieldPath", "apiVersion"}
_PORT_FIELDS = {"containerPort", "protocol", "name", "hostPort", "hostIP"}
_PROTOCOLS = ("TCP", "UDP", "SCTP")
_RESOURCES_FIELDS = {"limits", "requests"}
_RESOURCES_UNSUPPORTED = {"claims"}
_RESOURCE_NAMES = {"cpu", "memory"}
_MOUNT_FIELDS = {"name", "mountPath", "readOnly"}
_MOUNT_UNSUPPORTED = {"subPath", "subPathExpr", "mountPropagation", "recursiveReadOnly"}
_VOLUME_SOURCES = {"hostPath", "emptyDir"}
_VOLUME_UNSUPPORTED = {
    "configMap",
    "secret",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "nfs",
    "csi",
    "ephemeral",
    "iscsi",
    "gitRepo",
    "image",
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "glusterfs",
    "photonPersistentDisk",
    "portworxVolume",
    "quobyte",
    "rbd",
    "scaleIO",
    "storageos",
    "vsphereVolume",
}
_HOST_PATH_TYPES = (
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
)


def _fail(path: str, problem: str) -> ManifestError:
    return ManifestError(path, problem)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "integer"}.get(
        type(value), type(value).__name__
    )


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be an object, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {key!r}")
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, f"must be a list, got {_type_name(value)}")
    return value


def _string(value: object, path: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {_type_name(value)}")
    if not allow_empty and value == "":
        raise _fail(path, "must not be empty")
    return value


def _int(value: object, path: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"must be an integer, got {_type_name(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _fail(path, f"{value} is out of range (must be {bounds})")
    return value


def _bool(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"must be a boolean (true/false), got {_type_name(value)}")
    return value


def _strings(value: object, path: str) -> tuple[str, ...]:
    items = _list(value, path)
    return tuple(_string(item, f"{path}[{i}]", allow_empty=True) for i, item in enumerate(items))


def _check_fields(
    obj: Mapping[str, Any],
    path: str,
    allowed: set[str],
    unsupported: set[str] = frozenset(),  # type: ignore[assignment]
    dropped: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    prefix = f"{path}." if path else ""
    for key in obj:
        if key in allowed or key in dropped:
            continue
        if key in unsupported:
            raise _fail(f"{prefix}{key}", "not supported yet")
        raise _fail(f"{prefix}{key}", "unknown field")


def _dns_label(value: object, path: str) -> str:
    text = _string(value, path)
    if len(text) > DNS1123_LABEL_MAX or not _DNS1123_LABEL.match(text):
        raise _fail(path, f"{text!r} is not a valid DNS-1123 label ({_LABEL_HELP})")
    return text


def _dns_subdomain(value: object, path: str) -> str:
    text = _string(value, path)
    parts = text.split(".")
    if len(text) > DNS1123_SUBDOMAIN_MAX or not all(_DNS1123_LABEL.match(p) for p in parts):
        raise _fail(path, f"{text!r} is not a valid DNS-1123 subdomain ({_SUBDOMAIN_HELP})")
    return text


def _label_key(key: str, path: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            raise _fail(path, f"label key {key!r} has an empty prefix")
        _dns_subdomain(prefix, f"{path} (prefix of {key!r})")
    if not name or len(name) > LABEL_VALUE_MAX or not _LABEL_NAME.match(name):
        raise _fail(
            path,
            f"{key!r} is not a valid label key (name part: alphanumerics, '-', '_', '.', "
            f"start and end alphanumeric, at most 63 characters; optional DNS prefix and '/')",
        )


def _labels(value: object, path: str) -> dict[str, str]:
    labels = {}
    for key, item in _mapping(value, path).items():
        item_path = f"{path}[{key!r}]"
        _label_key(key, item_path)
        text = _string(item, item_path, allow_empty=True)
        if text and (len(text) > LABEL_VALUE_MAX or not _LABEL_NAME.match(text)):
            raise _fail(
                item_path,
                f"{text!r} is not a valid label value (alphanumerics, '-', '_', '.', start and "
                f"end alphanumeric, at most 63 characters, or empty)",
            )
        labels[key] = text
    return labels


def _annotations(value: object, path: str) -> dict[str, str]:
    return {
        key: _string(item, f"{path}[{key!r}]", allow_empty=True)
        for key, item in _mapping(value, path).items()
    }


def _absolute_path(value: object, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise _fail(path, f"{text!r} must be an absolute path")
    return text


def _default_pull_policy(image: str) -> PullPolicy:
    """Kubernetes' rule: ``Always`` for ``:latest`` or no tag, ``IfNotPresent`` otherwise."""
    if "@" in image:
        return PullPolicy.IF_NOT_PRESENT
    last = image.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    return PullPolicy.ALWAYS if tag in ("", "latest") else PullPolicy.IF_NOT_PRESENT


class _Parser:
    """Parses one pod document; builds the typed model and the normalised manifest together."""

    def __init__(self, node_name: str | None) -> None:
        self.node_name = node_name

    def pod(self, doc: object) -> tuple[ObjectMeta, PodSpec, dict[str, Any]]:
        top = _mapping(doc, "")
        if not top:
            raise _fail("", "empty document")
        _check_fields(top, "", _TOP_FIELDS, dropped=_TOP_DROPPED)
        if top.get("apiVersion") != "v1":
            raise _fail("apiVersion", f'must be "v1", got {top.get("apiVersion")!r}')
        if top.get("kind") != "Pod":
            raise _fail("kind", f'must be "Pod", got {top.get("kind")!r}')
        if "metadata" not in top:
            raise _fail("metadata", "required")
        if "spec" not in top:
            raise _fail("spec", "required")
        meta, meta_out = self.metadata(top["metadata"])
        spec, spec_out = self.spec(top["spec"])
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": meta_out, "spec": spec_out}
        return meta, spec, manifest

    def metadata(self, value: object) -> tuple[ObjectMeta, dict[str, Any]]:
        path = "metadata"
        meta = _mapping(value, path)
        _check_fields(meta, path, _META_FIELDS, _META_UNSUPPORTED, _META_DROPPED)
        if "name" not in meta:
            raise _fail("metadata.name", "required")
        name = _dns_subdomain(meta["name"], "metadata.name")
        namespace = _dns_label(meta.get("namespace", "default"), "metadata.namespace")
        uid = _string(meta["uid"], "metadata.uid") if "uid" in meta else ""
        labels = _labels(meta.get("labels", {}), "metadata.labels")
        annotations = _annotations(meta.get("annotations", {}), "metadata.annotations")
        out: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid:
            out["uid"] = uid
        if labels:
            out["labels"] = labels
        if annotations:
            out["annotations"] = annotations
        return (
            ObjectMeta(
                name=name,
                namespace=namespace,
                uid=uid,
                labels=_frozen_map(labels),
                annotations=_frozen_map(annotations),
            ),
            out,
        )

    def spec(self, value: object) -> tuple[PodSpec, dict[str, Any]]:
        spec = _mapping(value, "spec")
        _check_fields(spec, "spec", _SPEC_FIELDS, _SPEC_UNSUPPORTED)
        volumes, volumes_out = self.volumes(spec.get("volumes", []))
        if "containers" not in spec:
            raise _fail("spec.containers", "required: at least one container")
        raw_containers = _list(spec["containers"], "spec.containers")
        if not raw_containers:
            raise _fail("spec.containers", "must list at least one container")
        volume_names = {v.name for v in volumes}
        containers = []
        containers_out = []
        seen: set[str] = set()
        for i, item in enumerate(raw_containers):
            container, container_out = self.container(item, f"spec.containers[{i}]", volume_names)
            if container.name in seen:
                raise _fail(
                    f"spec.containers[{i}].name", f"duplicate container name {container.name!r}"
                )
            seen.add(container.name)
            containers.append(container)
            containers_out.append(container_out)
        host_ports: dict[tuple[int, str], str] = {}
        for i, container in enumerate(containers):
            for j, port in enumerate(container.ports):
                if port.host_port is None:
                    continue
                key = (port.host_port, port.protocol)
                where = f"spec.containers[{i}].ports[{j}].hostPort"
                if key in host_ports:
                    raise _fail(
                        where,
                        f"{port.host_port}/{port.protocol} is already used by {host_ports[key]}",
                    )
                host_ports[key] = where
        restart = spec.get("restartPolicy", RestartPolicy.ALWAYS.value)
        try:
            restart_policy = RestartPolicy(_string(restart, "spec.restartPolicy"))
        except ValueError:
            raise _fail(
                "spec.restartPolicy",
                f"{restart!r} is not one of {', '.join(p.value for p in RestartPolicy)}",
            ) from None
        grace = _int(
            spec.get("terminationGracePeriodSeconds", 30),
            "spec.terminationGracePeriodSeconds",
            low=0,
        )
        host_network = _bool(spec.get("hostNetwork", False), "spec.hostNetwork")
        node_name = (
            _dns_subdomain(spec["nodeName"], "spec.nodeName")
            if "nodeName" in spec
            else self.node_name
        )
        out: dict[str, Any] = {
            "containers": containers_out,
            "restartPolicy": restart_policy.value,
            "terminationGracePeriodSeconds": grace,
        }
        if volumes_out:
            out["volumes"] = volumes_out
        if host_network:
            out["hostNetwork"] = True
        if node_name:
            out["nodeName"] = node_name
        return (
            PodSpec(
                containers=tuple(containers),
                volumes=tuple(volumes),
                restart_policy=restart_policy,
                termination_grace_period_s=grace,
                host_network=host_network,
                node_name=node_name,
            ),
            out,
        )

    def volumes(self, value: object) -> tuple[list[Volume], list[dict[str, Any]]]:
        volumes = []
        out = []
        seen: set[str] = set()
        for i, item in enumerate(_list(value, "spec.volumes")):
            path = f"spec.volumes[{i}]"
            raw = _mapping(item, path)
            _check_fields(raw, path, {"name"} | _VOLUME_SOURCES, _VOLUME_UNSUPPORTED)
            if "name" not in raw:
                raise _fail(f"{path}.name", "required")
            name = _dns_label(raw["name"], f"{path}.name")
            if name in seen:
                raise _fail(f"{path}.name", f"duplicate volume name {name!r}")
            seen.add(name)
            sources = [s for s in _VOLUME_SOURCES if s in raw]
            if len(sources) != 1:
                raise _fail(path, "must have exactly one source: hostPath or emptyDir")
            entry: dict[str, Any] = {"name": name}
            if "hostPath" in raw:
                hp = _mapping(raw["hostPath"], f"{path}.hostPath")
                _check_fields(hp, f"{path}.hostPath", {"path", "type"})
                if "path" not in hp:
                    raise _fail(f"{path}.hostPath.path", "required")
                host_path = _absolute_path(hp["path"], f"{path}.hostPath.path")
                kind = _string(hp.get("type", ""), f"{path}.hostPath.type", allow_empty=True)
                if kind not in _HOST_PATH_TYPES:
                    raise _fail(
                        f"{path}.hostPath.type",
                        f"{kind!r} is not one of {', '.join(repr(t) for t in _HOST_PATH_TYPES)}",
                    )
                volumes.append(Volume(name=name, host_path=HostPathVolume(host_path, kind)))
                entry["hostPath"] = {"path": host_path, "type": kind}
            else:
                ed = _mapping(raw["emptyDir"] or {}, f"{path}.emptyDir")
                _check_fields(ed, f"{path}.emptyDir", {"medium", "sizeLimit"})
                medium = _string(ed.get("medium", ""), f"{path}.emptyDir.medium", allow_empty=True)
                if medium:
                    raise _fail(
                        f"{path}.emptyDir.medium",
                        f'{medium!r} not supported yet (only the default disk medium "")',
                    )
                size = None
                entry["emptyDir"] = {}
                if "sizeLimit" in ed:
                    size = parse_memory_bytes(ed["sizeLimit"], f"{path}.emptyDir.sizeLimit")
                    entry["emptyDir"]["sizeLimit"] = str(ed["sizeLimit"])
                volumes.append(Volume(name=name, empty_dir=EmptyDirVolume(size)))
            out.append(entry)
        return volumes, out

    def container(
        self, value: object, path: str, volume_names: set[str]
    ) -> tuple[Container, dict[str, Any]]:
        raw = _mapping(value, path)
        _check_fields(raw, path, _CONTAINER_FIELDS, _CONTAINER_UNSUPPORTED)
        if "name" not in raw:
            raise _fail(f"{path}.name", "required")
        name = _dns_label(raw["name"], f"{path}.name")
        if "image" not in raw:
            raise _fail(f"{path}.image", "required")
        image = _string(raw["image"], f"{path}.image")
        if any(ch.isspace() for ch in image):
            raise _fail(f"{path}.image", f"{image!r} must not contain whitespace")
        if "imagePullPolicy" in raw:
            policy_raw = _string(raw["imagePullPolicy"], f"{path}.imagePullPolicy")
            try:
                pull = PullPolicy(policy_raw)
            except ValueError:
                raise _fail(
                    f"{path}.imagePullPolicy",
                    f"{policy_raw!r} is not one of {', '.join(p.value for p in PullPolicy)}",
                ) from None
        else:
            pull = _default_pull_policy(image)
        out: dict[str, Any] = {"name": name, "image": image, "imagePullPolicy": pull.value}
        command = _strings(raw.get("command", []), f"{path}.command")
        args = _strings(raw.get("args", []), f"{path}.args")
        if command:
            out["command"] = list(command)
        if args:
            out["args"] = list(args)
        env, env_out = self.env(raw.get("env", []), f"{path}.env")
        if env_out:
            out["env"] = env_out
        ports, ports_out = self.ports(raw.get("ports", []), f"{path}.ports")
        if ports_out:
            out["ports"] = ports_out
        resources, resources_out = self.resources(raw.get("resources", {}), f"{path}.resources")
        if resources_out:
            out["resources"] = resources_out
        working_dir = None
        if "workingDir" in raw:
            working_dir = _absolute_path(raw["workingDir"], f"{path}.workingDir")
            out["workingDir"] = working_dir
        mounts, mounts_out = self.mounts(
            raw.get("volumeMounts", []), f"{path}.volumeMounts", volume_names
        )
        if mounts_out:
            out["volumeMounts"] = mounts_out
        container = Container(
            name=name,
            image=image,
            image_pull_policy=pull,
            command=command,
            args=args,
            env=tuple(env),
            ports=tuple(ports),
            resources=resources,
            working_dir=working_dir,
            volume_mounts=tuple(mounts),
        )
        return container, out

    def env(self, value: object, path: str) -> tuple[list[EnvVar], list[dict[str, Any]]]:
        env = []
        out = []
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _mapping(item, item_path)
            _check_fields(raw, item_path, _ENV_FIELDS)
            if "name" not in raw:
                raise _fail(f"{item_path}.name", "required")
            name = _string(raw["name"], f"{item_path}.name")
            if "=" in name or not name.isprintable() or not name.isascii():
                raise _fail(
                    f"{item_path}.name",
                    f"{name!r} is not a valid environment variable name "
                    f"(printable ASCII characters except '=')",
                )
            if "value" in raw and "valueFrom" in raw:
                raise _fail(item_path, "value and valueFrom are mutually exclusive")
            if "valueFrom" in raw:
                vf_path = f"{item_path}.valueFrom"
                vf = _mapping(raw["valueFrom"], vf_path)
                _check_fields(vf, vf_path, {"fieldRef"}, _VALUE_FROM_UNSUPPORTED)
                if "fieldRef" not in vf:
                    raise _fail(vf_path, "must have fieldRef")
                fr_path = f"{vf_path}.fieldRef"
                fr = _mapping(vf["fieldRef"], fr_path)
                _check_fields(fr, fr_path, _FIELD_REF_FIELDS)
                if "apiVersion" in fr and fr["apiVersion"] != "v1":
                    raise _fail(f"{fr_path}.apiVersion", f'must be "v1", got {fr["apiVersion"]!r}')
                field_path = _string(fr.get("fieldPath"), f"{fr_path}.fieldPath")
                try:
                    ref = FieldRef(field_path)
                except ValueError:
                    raise _fail(
                        f"{fr_path}.fieldPath",
                        f"{field_path!r} not supported yet (supported: "
                        f"{', '.join(f.value for f in FieldRef)})",
                    ) from None
                env.append(EnvVar(name=name, field_ref=ref))
                out.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": ref.value}}})
            else:
                text = _string(raw.get("value", ""), f"{item_path}.value", allow_empty=True)
                env.append(EnvVar(name=name, value=text))
                out.append({"name": name, "value": text})
        return env, out

    def ports(self, value: object, path: str) -> tuple[list[ContainerPort], list[dict[str, Any]]]:
        ports = []
        out = []
        names: set[str] = set()
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _mapping(item, item_path)
            _check_fields(raw, item_path, _PORT_FIELDS)
            if "containerPort" not in raw:
                raise _fail(f"{item_path}.containerPort", "required")
            number = _int(raw["containerPort"], f"{item_path}.containerPort", low=1, high=65535)
            protocol = _string(raw.get("protocol", "TCP"), f"{item_path}.protocol")
            if protocol not in _PROTOCOLS:
                raise _fail(
                    f"{item_path}.protocol", f"{protocol!r} is not one of {', '.join(_PROTOCOLS)}"
                )
            entry: dict[str, Any] = {"containerPort": number, "protocol": protocol}
            name = None
            if "name" in raw:
                name = _string(raw["name"], f"{item_path}.name")
                if (
                    len(name) > PORT_NAME_MAX
                    or not _PORT_NAME.match(name)
                    or "--" in name
                    or not any(ch.isalpha() for ch in name)
                ):
                    raise _fail(
                        f"{item_path}.name",
                        f"{name!r} is not a valid port name (IANA_SVC_NAME: at most 15 "
                        f"lowercase alphanumerics and '-', at least one letter, no '--')",
                    )
                if name in names:
                    raise _fail(f"{item_path}.name", f"duplicate port name {name!r}")
                names.add(name)
                entry["name"] = name
            host_port = None
            if "hostPort" in raw:
                host_port = _int(raw["hostPort"], f"{item_path}.hostPort", low=1, high=65535)
                entry["hostPort"] = host_port
            host_ip = None
            if "hostIP" in raw:
                host_ip = _string(raw["hostIP"], f"{item_path}.hostIP")
                try:
                    ipaddress.ip_address(host_ip)
                except ValueError:
                    raise _fail(
                        f"{item_path}.hostIP", f"{host_ip!r} is not an IP address"
                    ) from None
                entry["hostIP"] = host_ip
            ports.append(ContainerPort(number, protocol, name, host_port, host_ip))
            out.append(entry)
        return ports, out

    def resources(self, value: object, path: str) -> tuple[Resources, dict[str, Any]]:
        raw = _mapping(value, path)
        _check_fields(raw, path, _RESOURCES_FIELDS, _RESOURCES_UNSUPPORTED)
        parsed: dict[str, dict[str, int]] = {}
        out: dict[str, Any] = {}
        for section in ("limits", "requests"):
            values = _mapping(raw.get(section, {}), f"{path}.{section}")
            parsed[section] = {}
            for resource, amount in values.items():
                where = f"{path}.{section}.{resource}"
                if resource not in _RESOURCE_NAMES:
                    raise _fail(where, "not supported yet (only cpu and memory)")
                if resource == "cpu":
                    parsed[section][resource] = parse_cpu_millis(amount, where)
                else:
                    parsed[section][resource] = parse_memory_bytes(amount, where)
                out.setdefault(section, {})[resource] = str(amount)
        limits, requests = parsed["limits"], parsed["requests"]
        for resource in _RESOURCE_NAMES:
            if resource in limits and resource not in requests:
                requests[resource] = limits[resource]  # Kubernetes defaults requests to limits
            if resource in limits and requests[resource] > limits[resource]:
                raise _fail(
                    f"{path}.requests.{resource}",
                    f"must be less than or equal to the {resource} limit",
                )
        resources = Resources(
            cpu_request_millis=requests.get("cpu"),
            cpu_limit_millis=limits.get("cpu"),
            memory_request_bytes=requests.get("memory"),
            memory_limit_bytes=limits.get("memory"),
        )
        return resources, out

    def mounts(
        self, value: object, path: str, volume_names: set[str]
    ) -> tuple[list[VolumeMount], list[dict[str, Any]]]:
        mounts = []
        out = []
        targets: set[str] = set()
        for i, item in enumerate(_list(value, path)):
            item_path = f"{path}[{i}]"
            raw = _mapping(item, item_path)
            _check_fields(raw, item_path, _MOUNT_FIELDS, _MOUNT_UNSUPPORTED)
            if "name" not in raw:
                raise _fail(f"{item_path}.name", "required")
            name = _string(raw["name"], f"{item_path}.name")
            if name not in volume_names:
                raise _fail(f"{item_path}.name", f"no volume named {name!r} in spec.volumes")
            if "mountPath" not in raw:
                raise _fail(f"{item_path}.mountPath", "required")
            target = _absolute_path(raw["mountPath"], f"{item_path}.mountPath")
            if target in targets:
                raise _fail(f"{item_path}.mountPath", f"{target!r} is mounted twice")
            targets.add(target)
            read_only = _bool(raw.get("readOnly", False), f"{item_path}.readOnly")
            mounts.append(VolumeMount(name, target, read_only))
            entry: dict[str, Any] = {"name": name, "mountPath": target}
            if read_only:
                entry["readOnly"] = True
            out.append(entry)
        return mounts, out


def derive_uid(manifest: Mapping[str, Any], node_name: str | None) -> str:
    """kubelet's idea for static pods: the same file on the same node always gets the same uid,
    and any change to the file gives a new one (so a changed static pod is replaced)."""
    digest = hashlib.sha256(((node_name or "") + "\n" + canonical_json(manifest)).encode()).digest()
    return str(uuid.UUID(bytes=digest[:16]))


def parse_pod(
    doc: object, *, source: str, node_name: str | None = None, index: int | None = None
) -> Pod:
    """One pod document → :class:`Pod`; ``index`` names the document of a multi-doc file."""
    where = source if index is None else f"{source} (document {index + 1})"
    try:
        meta, spec, manifest = _Parser(node_name).pod(doc)
    except ManifestError as exc:
        raise ManifestError(exc.field, exc.problem, where) from None
    if not meta.uid:
        uid = derive_uid(manifest, node_name)
        meta = ObjectMeta(meta.name, meta.namespace, uid, meta.labels, meta.annotations)
        manifest["metadata"]["uid"] = uid
    return Pod(metadata=meta, spec=spec, manifest=manifest, source=source)


def parse_manifests(text: str, *, source: str, node_name: str | None = None) -> list[Pod]:
    """Every pod in a YAML or JSON text (several ``---`` documents, or a ``v1 List``)."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ManifestError("", f"invalid YAML{at}: {problem}", source) from None
    expanded: list[object] = []
    for document in documents:
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items")
            if not isinstance(items, list):
                raise ManifestError("items", "a v1 List must have a list of items", source)
            expanded.extend(items)
        else:
            expanded.append(document)
    multi = len(expanded) > 1
    pods: list[Pod] = []
    seen: dict[str, int] = {}
    for n, document in enumerate(expanded):
        pod = parse_pod(document, source=source, node_name=node_name, index=n if multi else None)
        if pod.full_name in seen:
            raise ManifestError(
                "metadata.name",
                f"pod {pod.full_name} is defined twice (documents {seen[pod.full_name] + 1} "
                f"and {n + 1})",
                source,
            )
        seen[pod.full_name] = n
        pods.append(pod)
    return pods
