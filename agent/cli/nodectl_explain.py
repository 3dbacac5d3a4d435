"""``nodectl explain pod.spec.containers``: the pod manifest's fields as ``kubectl explain``
prints them (KIND, VERSION, FIELD, DESCRIPTION, FIELDS; ``--recursive``), each saying what this
cluster does with it.

What is supported comes from one place, the parser's own table
(:data:`agent.manifest.SUBSET`): a field is *supported*, *accepted at its default only* (a
Kubernetes field we do not implement, accepted when it holds Kubernetes' default or is empty,
as ``kubectl get pod -o yaml`` prints it), *dropped* (read-only output), or *not supported* (a
manifest setting it is refused). This module adds what the parser does not know: each field's
type in kubectl's notation and a short description. ``tests/unit/cli/test_nodectl_explain.py``
holds the two together, so a field the parser learns fails the test until it is described here.

No master is asked: the subset is this nodectl's (the same release as the master's, or check
``nodectl version``). Stdlib only, imported by this command alone.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass

from agent.cli.nodectl import EXIT_USAGE
from agent.errors import CliError
from agent.manifest import SUBSET
from agent.names import quote

RESOURCES = ("pods", "pod", "po")
WIDTH = 80  # kubectl wraps descriptions at 80 columns


@dataclass(frozen=True, slots=True)
class Field:
    type: str  # kubectl's notation: string, []string, map[string]string, integer, Container…
    description: str = ""
    required: bool = False

    @property
    def kind(self) -> str | None:
        """The object type this field holds (its own fields to explain), if any."""
        name = self.type.removeprefix("[]")
        return name if name in SUBSET or name in DESCRIPTIONS else None


_STATUS_WORDS = {
    "supported": "",
    "empty": 'not supported: accepted only when empty ({}, [] or ""), as kubectl prints it',
    "dropped": "read-only: accepted and dropped",
    "unsupported": "not supported: a manifest that sets it is refused",
}
_SHORT = {
    "default": "default only",
    "empty": "not supported",
    "dropped": "dropped",
    "unsupported": "not supported",
}

# What each object is (DESCRIPTION of `nodectl explain pod`, `pod.spec`, …).
DESCRIPTIONS: Mapping[str, str] = {
    "Pod": "Pod is a collection of containers that run on one node, sharing its network "
    "namespace. This cluster runs the subset of the v1 Pod documented in docs/manifests.md "
    "on the Docker Engine; each field below says whether it is supported.",
    "ObjectMeta": "Standard object's metadata.",
    "PodSpec": "Specification of the desired behavior of the pod.",
    "Container": "A single application container that you want to run within a pod.",
    "EnvVar": "An environment variable present in a container.",
    "EnvVarSource": "Source for the environment variable's value. Exactly one of its fields.",
    "ObjectFieldSelector": "Selects a field of the pod.",
    "ResourceFieldSelector": "Selects a resource of the container (limits.cpu, "
    "limits.memory, requests.cpu, requests.memory).",
    "ContainerPort": "A network port in a single container.",
    "ResourceRequirements": "Compute resource requirements (cpu and memory only). Limits are "
    "enforced by the Docker Engine (CPU quota, memory limit).",
    "VolumeMount": "A mounting of a volume within a container.",
    "Volume": "A named volume in a pod that any container in the pod can mount: hostPath or "
    "emptyDir.",
    "HostPathVolumeSource": "A directory or file of the node, bind-mounted (the agent's "
    "allowed_host_paths limits which).",
    "EmptyDirVolumeSource": "An empty directory that lives as long as the pod, under the "
    "agent's state directory.",
    "Probe": "A health check of a container: one handler and its timing.",
    "ExecAction": "A command run in the container; exit status 0 is success.",
    "HTTPGetAction": "An HTTP GET request; a status from 200 to 399 is success.",
    "HTTPHeader": "A custom header of an HTTP request.",
    "TCPSocketAction": "A TCP connection; connecting is success.",
    "GRPCAction": "A call to the gRPC health service (grpc.health.v1.Health/Check).",
    "Lifecycle": "Actions taken in response to the container's lifecycle events.",
    "LifecycleHandler": "One action of a postStart or preStop hook: exactly one handler.",
    "SleepAction": "Sleeps for a number of seconds.",
    "PreStartHook": "A precondition checked before the container starts (this cluster's "
    "extension, docs/manifests.md): one handler, retried until it passes or its deadline.",
    "WaitForAction": "Waits until another pod reaches a condition.",
}

_QUANTITIES = "map[string]Quantity"

# Each object's fields: type and description. The unsupported ones carry their type only (their
# status line says the rest). test_nodectl_explain: exactly the fields of agent.manifest.SUBSET.
FIELDS: Mapping[str, Mapping[str, Field]] = {
    "Pod": {
        "apiVersion": Field("string", "APIVersion of this object: v1.", True),
        "kind": Field("string", "Kind of this object: Pod.", True),
        "metadata": Field("ObjectMeta", "Standard object's metadata.", True),
        "spec": Field("PodSpec", "Specification of the desired behavior of the pod.", True),
        "status": Field(
            "PodStatus",
            "Most recently observed status of the pod, written by "
            "the node (what `kubectl get -o yaml` prints).",
        ),
    },
    "ObjectMeta": {
        "name": Field(
            "string", "Name of the pod, unique in its namespace (a DNS-1123 subdomain).", True
        ),
        "namespace": Field("string", "Namespace of the pod (default: default)."),
        "uid": Field(
            "string",
            "Unique identifier; a static pod without one gets a uid "
            "derived from its node and manifest.",
        ),
        "labels": Field("map[string]string", "Labels, for -l selectors."),
        "annotations": Field(
            "map[string]string",
            "Annotations; io.node-agent/* ones "
            "configure this cluster's extensions (docs/manifests.md).",
        ),
        "creationTimestamp": Field("string"),
        "resourceVersion": Field("string"),
        "generation": Field("integer"),
        "selfLink": Field("string"),
        "managedFields": Field("[]ManagedFieldsEntry"),
        "generateName": Field("string"),
        "ownerReferences": Field("[]OwnerReference"),
        "finalizers": Field("[]string"),
        "deletionTimestamp": Field("string"),
        "deletionGracePeriodSeconds": Field("integer"),
    },
    "PodSpec": {
        "containers": Field(
            "[]Container",
            "List of containers belonging to the pod. There must be at least one.",
            True,
        ),
        "initContainers": Field(
            "[]Container",
            "Containers run to completion, one at a time "
            "and in order, before the containers start.",
        ),
        "volumes": Field(
            "[]Volume",
            "Volumes the containers can mount. The API server's "
            "kube-api-access-* token volume is accepted and dropped with a "
            "warning (no API token here).",
        ),
        "restartPolicy": Field(
            "string",
            "Always (default), OnFailure or Never: kubelet's restart policies, with its back-off.",
        ),
        "terminationGracePeriodSeconds": Field(
            "integer", "Seconds between SIGTERM and SIGKILL when the pod stops (default 30)."
        ),
        "hostNetwork": Field(
            "boolean",
            "Use the node's network namespace (if the agent's allow_host_network permits).",
        ),
        "nodeName": Field(
            "string",
            "The node to run on, bypassing the scheduler; unset: the master's scheduler picks one.",
        ),
        "activeDeadlineSeconds": Field("integer"),
        "affinity": Field("Affinity"),
        "automountServiceAccountToken": Field("boolean"),
        "dnsConfig": Field("PodDNSConfig"),
        "dnsPolicy": Field("string"),
        "enableServiceLinks": Field("boolean"),
        "ephemeralContainers": Field("[]EphemeralContainer"),
        "hostAliases": Field("[]HostAlias"),
        "hostIPC": Field("boolean"),
        "hostPID": Field("boolean"),
        "hostUsers": Field("boolean"),
        "hostname": Field("string"),
        "hostnameOverride": Field("string"),
        "imagePullSecrets": Field("[]LocalObjectReference"),
        "nodeSelector": Field("map[string]string"),
        "os": Field("PodOS"),
        "overhead": Field(_QUANTITIES),
        "preemptionPolicy": Field("string"),
        "priority": Field("integer"),
        "priorityClassName": Field("string"),
        "readinessGates": Field("[]PodReadinessGate"),
        "resourceClaims": Field("[]PodResourceClaim"),
        "resources": Field("ResourceRequirements"),
        "runtimeClassName": Field("string"),
        "schedulerName": Field("string"),
        "schedulingGates": Field("[]PodSchedulingGate"),
        "securityContext": Field("PodSecurityContext"),
        "serviceAccount": Field("string"),
        "serviceAccountName": Field("string"),
        "setHostnameAsFQDN": Field("boolean"),
        "shareProcessNamespace": Field("boolean"),
        "subdomain": Field("string"),
        "tolerations": Field(
            "[]Toleration",
            "Only the two the API server adds to every pod "
            "(not-ready and unreachable, 300 s) are accepted, and dropped with "
            "a warning: nodes here have no taints.",
        ),
        "topologySpreadConstraints": Field("[]TopologySpreadConstraint"),
    },
    "Container": {
        "name": Field(
            "string", "Name of the container, unique in the pod (a DNS-1123 label).", True
        ),
        "image": Field("string", "Image reference; a digest (@sha256:…) pins it.", True),
        "imagePullPolicy": Field(
            "string",
            "Always, IfNotPresent or Never; default Always "
            "for :latest or no tag, else IfNotPresent.",
        ),
        "command": Field(
            "[]string",
            "Entrypoint array (the image's ENTRYPOINT if unset), "
            "not run in a shell; $(VAR) references are not expanded.",
        ),
        "args": Field("[]string", "Arguments to the entrypoint (the image's CMD if unset)."),
        "env": Field("[]EnvVar", "Environment variables to set in the container."),
        "ports": Field(
            "[]ContainerPort",
            "Ports the container listens on (informational unless hostPort is set).",
        ),
        "resources": Field("ResourceRequirements", "CPU and memory requests and limits."),
        "workingDir": Field("string", "The container's working directory."),
        "volumeMounts": Field("[]VolumeMount", "Pod volumes to mount into the container."),
        "startupProbe": Field(
            "Probe", "Until it succeeds, the other probes wait; failing, the container restarts."
        ),
        "readinessProbe": Field("Probe", "Whether the container is Ready."),
        "livenessProbe": Field("Probe", "Failing, the container restarts."),
        "lifecycle": Field(
            "Lifecycle", "postStart, preStop and preStart hooks (not on init containers)."
        ),
        "envFrom": Field("[]EnvFromSource"),
        "resizePolicy": Field("[]ContainerResizePolicy"),
        "restartPolicy": Field("string"),
        "restartPolicyRules": Field("[]ContainerRestartRule"),
        "securityContext": Field("SecurityContext"),
        "stdin": Field("boolean"),
        "stdinOnce": Field("boolean"),
        "terminationMessagePath": Field("string"),
        "terminationMessagePolicy": Field("string"),
        "tty": Field("boolean"),
        "volumeDevices": Field("[]VolumeDevice"),
    },
    "EnvVar": {
        "name": Field("string", "Name of the variable.", True),
        "value": Field("string", "Its value, as written ($(VAR) is not expanded)."),
        "valueFrom": Field(
            "EnvVarSource", "Its value from the pod's fields or the container's resources."
        ),
    },
    "EnvVarSource": {
        "fieldRef": Field("ObjectFieldSelector", "A field of the pod (the downward API)."),
        "resourceFieldRef": Field(
            "ResourceFieldSelector", "A resource limit or request of a container."
        ),
        "configMapKeyRef": Field("ConfigMapKeySelector"),
        "secretKeyRef": Field("SecretKeySelector"),
        "fileKeyRef": Field("FileKeySelector"),
    },
    "ObjectFieldSelector": {
        "fieldPath": Field(
            "string",
            "metadata.name, metadata.namespace, metadata.uid, "
            "metadata.labels['<key>'], metadata.annotations['<key>'], "
            "spec.nodeName, spec.serviceAccountName, status.podIP(s), "
            "status.hostIP(s).",
            True,
        ),
        "apiVersion": Field("string", "Version of the schema the path is in: v1."),
    },
    "ResourceFieldSelector": {
        "resource": Field(
            "string", "limits.cpu, limits.memory, requests.cpu or requests.memory.", True
        ),
        "containerName": Field("string", "The container (default: this one)."),
        "divisor": Field("Quantity", "Unit of the value (default 1)."),
    },
    "ContainerPort": {
        "containerPort": Field("integer", "Port number in the pod's network namespace.", True),
        "protocol": Field("string", "TCP (default), UDP or SCTP."),
        "name": Field("string", "A name probes and hooks can use in place of the number."),
        "hostPort": Field(
            "integer", "Port of the node forwarded to it (if the agent's allow_host_ports permits)."
        ),
        "hostIP": Field("string", "Address of the node the hostPort binds."),
    },
    "ResourceRequirements": {
        "limits": Field(_QUANTITIES, "Most of cpu and memory the container may use."),
        "requests": Field(
            _QUANTITIES,
            "What the container is guaranteed (cpu shares; "
            "memory soft limit); default: the limits.",
        ),
        "claims": Field("[]ResourceClaim"),
    },
    "VolumeMount": {
        "name": Field("string", "The pod volume to mount.", True),
        "mountPath": Field("string", "Where in the container.", True),
        "readOnly": Field("boolean", "Mounted read-only (default false)."),
        "mountPropagation": Field("string"),
        "recursiveReadOnly": Field("string"),
        "subPath": Field("string"),
        "subPathExpr": Field("string"),
    },
    "Volume": {
        "name": Field("string", "Name of the volume, unique in the pod.", True),
        "hostPath": Field("HostPathVolumeSource", "A file or directory of the node."),
        "emptyDir": Field("EmptyDirVolumeSource", "A directory as long as the pod lives."),
        # The sources the parser refuses, from its own set (one list of them).
        **{
            source: Field(f"{source[0].upper()}{source[1:]}VolumeSource")
            for source in sorted(SUBSET["Volume"].unsupported)
        },
    },
    "HostPathVolumeSource": {
        "path": Field("string", "Path on the node.", True),
        "type": Field(
            "string",
            '"" (no check), DirectoryOrCreate, Directory, FileOrCreate, '
            "File, Socket, CharDevice or BlockDevice.",
        ),
    },
    "EmptyDirVolumeSource": {
        "medium": Field("string", '"" only (the node\'s disk); Memory is not supported yet.'),
        "sizeLimit": Field("Quantity", "Parsed, not enforced yet."),
    },
    "Probe": {
        "exec": Field("ExecAction", "Run a command in the container."),
        "httpGet": Field("HTTPGetAction", "An HTTP GET to the pod."),
        "tcpSocket": Field("TCPSocketAction", "A TCP connection to the pod."),
        "grpc": Field("GRPCAction", "The gRPC health check of the pod."),
        "initialDelaySeconds": Field(
            "integer", "Seconds after the start before the first probe (default 0)."
        ),
        "periodSeconds": Field("integer", "Seconds between probes (default 10)."),
        "timeoutSeconds": Field("integer", "Seconds one probe may take (default 1)."),
        "successThreshold": Field("integer", "Successes in a row to count as passing (default 1)."),
        "failureThreshold": Field("integer", "Failures in a row to count as failing (default 3)."),
        "terminationGracePeriodSeconds": Field(
            "integer", "Grace period of a restart this probe causes (default: the pod's)."
        ),
    },
    "ExecAction": {
        "command": Field("[]string", "The command, not run in a shell.", True),
    },
    "HTTPGetAction": {
        "port": Field("IntOrString", "Port number or name.", True),
        "path": Field("string", "Path of the request (default /)."),
        "host": Field("string", "Host to connect to (default: the pod's IP)."),
        "scheme": Field("string", "HTTP (default) or HTTPS (certificate not verified)."),
        "httpHeaders": Field("[]HTTPHeader", "Custom headers of the request."),
    },
    "HTTPHeader": {
        "name": Field("string", "Header name.", True),
        "value": Field("string", "Header value.", True),
    },
    "TCPSocketAction": {
        "port": Field("IntOrString", "Port number or name.", True),
        "host": Field("string", "Host to connect to (default: the pod's IP)."),
    },
    "GRPCAction": {
        "port": Field("integer", "Port number of the gRPC service.", True),
        "service": Field("string", 'Service name of the health check (default "").'),
    },
    "Lifecycle": {
        "postStart": Field(
            "LifecycleHandler",
            "Run right after the container starts; "
            "failing, the container is killed and restarted by its policy.",
        ),
        "preStop": Field(
            "LifecycleHandler", "Run before the container is stopped, within its grace period."
        ),
        "preStart": Field(
            "[]PreStartHook",
            "Preconditions checked in order before the "
            "container starts (this cluster's extension).",
        ),
    },
    "LifecycleHandler": {
        "exec": Field("ExecAction", "Run a command in the container."),
        "httpGet": Field("HTTPGetAction", "An HTTP GET to the pod."),
        "tcpSocket": Field(
            "TCPSocketAction", "A TCP connection (deprecated in Kubernetes; accepted)."
        ),
        "sleep": Field("SleepAction", "Sleep."),
    },
    "SleepAction": {
        "seconds": Field("integer", "Seconds to sleep.", True),
    },
    "PreStartHook": {
        "exec": Field(
            "ExecAction",
            "A command, in a helper container made from this "
            "container's spec, in the pod's network namespace.",
        ),
        "httpGet": Field("HTTPGetAction", "An HTTP GET, from the node."),
        "tcpSocket": Field("TCPSocketAction", "A TCP connection, from the node."),
        "waitFor": Field("WaitForAction", "Another pod's condition."),
        "timeoutSeconds": Field("integer", "Seconds one check may take (default 1)."),
        "periodSeconds": Field("integer", "Seconds between checks (default 2)."),
        "deadlineSeconds": Field("integer", "Seconds until the hook fails (default 300)."),
        "failureThreshold": Field(
            "integer", "Failed checks until the hook fails (default: only the deadline)."
        ),
    },
    "WaitForAction": {
        "pod": Field("string", "Name of the pod to wait for.", True),
        "namespace": Field("string", "Its namespace (default: this pod's)."),
        "condition": Field("string", "Ready (the default and the only one)."),
    },
}


def status(kind: str, name: str) -> str:
    """From the parser's table: ``supported``; ``default`` (not supported, accepted at its
    Kubernetes default or empty); ``empty`` (not supported, accepted empty); ``dropped``
    (read-only); ``unsupported`` (refused)."""
    subset = SUBSET[kind]
    if name in subset.supported:
        return "supported"
    if name in subset.dropped:
        return "dropped"
    if name in subset.unsupported and subset.defaults is not None:
        return "default" if name in subset.defaults else "empty"
    return "unsupported"


def status_text(kind: str, name: str) -> str:
    state = status(kind, name)
    if state != "default":
        return _STATUS_WORDS[state]
    default = json.dumps((SUBSET[kind].defaults or {})[name])
    return f"not supported: accepted at its Kubernetes default ({default}) or empty only"


def resolve(path: str) -> tuple[str, str | None, Field | None, str | None]:
    """``pod.spec.containers`` → (kind of the parent object, field name, field, kind the field
    holds). ``pod`` alone → ("Pod", None, None, "Pod")."""
    resource, *parts = path.split(".")
    if resource.lower() not in RESOURCES:
        raise CliError(
            f"unknown resource type {quote(resource)} (explain knows: pods (pod, po))",
            EXIT_USAGE,
        )
    kind, name, field = "Pod", None, None
    holds: str | None = "Pod"
    for part in parts:
        if holds is None or holds not in FIELDS or (name and status(kind, name) != "supported"):
            where = f"{name} <{field.type}>" if field and name else resource
            raise CliError(f"field {quote(part)} does not exist: {where} has no fields to explain")
        if part not in FIELDS[holds]:
            known = ", ".join(sorted(FIELDS[holds]))
            raise CliError(f"field {quote(part)} does not exist in {holds} (fields: {known})")
        kind, name, field = holds, part, FIELDS[holds][part]
        holds = field.kind
    return kind, name, field, holds


def explain(path: str, recursive: bool) -> str:
    kind, name, field, holds = resolve(path)
    lines = ["KIND:       Pod", "VERSION:    v1", ""]
    if field is not None and name is not None:
        lines += [f"FIELD: {name} <{field.type}>", ""]
        description = _describe(kind, name, field)
        if holds is not None and holds in DESCRIPTIONS and status(kind, name) == "supported":
            description += "\n" + DESCRIPTIONS[holds]
    else:
        description = DESCRIPTIONS["Pod"]
    lines += ["DESCRIPTION:", *_wrap(description, 4), ""]
    # The fields of a supported object only: an unsupported one's would read as supported.
    if (
        holds is not None
        and holds in FIELDS
        and (name is None or status(kind, name) == "supported")
    ):
        lines.append("FIELDS:")
        lines += _fields(holds, recursive, 2, set())
    return "\n".join(lines).rstrip("\n") + "\n"


def _describe(kind: str, name: str, field: Field) -> str:
    state = status_text(kind, name)
    text = field.description
    if state:
        text = f"{text}\n[{state}]" if text else f"[{state}]"
    return text


def _fields(kind: str, recursive: bool, indent: int, seen: set[str]) -> list[str]:
    out = []
    pad = " " * indent
    for name in sorted(FIELDS[kind], key=lambda n: (status(kind, n) != "supported", n)):
        field = FIELDS[kind][name]
        required = " -required-" if field.required else ""
        state = status(kind, name)
        note = "" if state == "supported" else f" [{_SHORT[state]}]"
        out.append(f"{pad}{name}\t<{field.type}>{required}{note}")
        if recursive:
            holds = field.kind
            if holds is not None and holds in FIELDS and state == "supported" and holds not in seen:
                out += _fields(holds, recursive, indent + 2, seen | {holds})
        else:
            if field.description:
                out += _wrap(field.description, indent + 2)
            out.append("")
    return out


def _wrap(text: str, indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, WIDTH - indent, initial_indent=pad, subsequent_indent=pad)
    return lines


def cmd_explain(args: argparse.Namespace) -> int:
    print(explain(args.path, args.recursive), end="")
    return 0
