"""The pod manifest parser: the supported subset, defaults, and every rejection path."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import parse_manifests, parse_pod
from agent.types import FieldRef, PullPolicy, RestartPolicy

FULL = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  uid: 11111111-2222-3333-4444-555555555555
  labels: {app: web, example.com/tier: front}
  annotations: {note: "any text at all"}
  resourceVersion: "42"
spec:
  restartPolicy: OnFailure
  terminationGracePeriodSeconds: 5
  hostNetwork: false
  nodeName: node-1
  volumes:
    - name: data
      emptyDir: {sizeLimit: 1Gi}
    - name: host
      hostPath: {path: /var/log, type: Directory}
  containers:
    - name: web
      image: registry.local:5000/web:1.2
      command: [httpd]
      args: [-f, -p, "8080"]
      workingDir: /srv
      env:
        - {name: PLAIN, value: "1"}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP, apiVersion: v1}}
      ports:
        - {containerPort: 8080, name: http, hostPort: 18080, hostIP: 127.0.0.1}
        - {containerPort: 53, protocol: UDP}
      resources:
        limits: {cpu: 500m, memory: 128Mi}
        requests: {cpu: "0.1", memory: 64Mi}
      volumeMounts:
        - {name: data, mountPath: /data}
        - {name: host, mountPath: /host-logs, readOnly: true}
    - name: sidecar
      image: busybox
status:
  phase: Running
"""


def base() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
    }


def test_full_manifest_parses_into_the_model() -> None:
    [pod] = parse_manifests(FULL, source="test.yaml")
    assert pod.full_name == "shop/web"
    assert pod.uid == "11111111-2222-3333-4444-555555555555"
    assert dict(pod.metadata.labels) == {"app": "web", "example.com/tier": "front"}
    spec = pod.spec
    assert spec.restart_policy is RestartPolicy.ON_FAILURE
    assert spec.termination_grace_period_s == 5
    assert spec.node_name == "node-1"
    web, sidecar = spec.containers
    assert web.command == ("httpd",)
    assert web.args == ("-f", "-p", "8080")
    assert web.working_dir == "/srv"
    assert web.image_pull_policy is PullPolicy.IF_NOT_PRESENT
    assert sidecar.image_pull_policy is PullPolicy.ALWAYS  # no tag means latest
    assert web.env[1].field_ref is FieldRef.POD_IP
    assert web.ports[0].host_port == 18080
    assert web.ports[1].protocol == "UDP"
    assert web.resources.cpu_limit_millis == 500
    assert web.resources.cpu_request_millis == 100
    assert web.resources.memory_limit_bytes == 128 * 2**20
    assert web.volume_mounts[1].read_only
    assert spec.volumes[0].empty_dir is not None
    assert spec.volumes[0].empty_dir.size_limit_bytes == 2**30
    assert spec.volumes[1].host_path is not None
    assert spec.volumes[1].host_path.type == "Directory"
    # Output-only fields are dropped from the normalised manifest.
    assert "status" not in pod.manifest
    assert "resourceVersion" not in pod.manifest["metadata"]
    json.dumps(pod.manifest)  # plain JSON


def test_defaults_and_json_input() -> None:
    [pod] = parse_manifests(json.dumps(base()), source="p.json", node_name="n1")
    assert pod.metadata.namespace == "default"
    assert pod.spec.restart_policy is RestartPolicy.ALWAYS
    assert pod.spec.termination_grace_period_s == 30
    assert pod.spec.node_name == "n1"
    assert pod.manifest["spec"]["nodeName"] == "n1"
    assert pod.manifest["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert pod.manifest["metadata"]["uid"] == pod.uid


def test_limits_default_requests() -> None:
    doc = base()
    doc["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2", "memory": "1G"}}
    res = parse_pod(doc, source="t").spec.containers[0].resources
    assert res.cpu_request_millis == 2000
    assert res.memory_request_bytes == 10**9


def test_multi_document_and_list() -> None:
    a, b = base(), base()
    b["metadata"]["name"] = "q"
    text = "---\n" + json.dumps(a) + "\n---\n\n---\n" + json.dumps(b)
    assert [p.metadata.name for p in parse_manifests(text, source="m")] == ["p", "q"]
    listed = {"apiVersion": "v1", "kind": "List", "items": [a, b]}
    assert len(parse_manifests(json.dumps(listed), source="l")) == 2
    assert parse_manifests("", source="empty") == []


def test_duplicate_pod_in_one_file_rejected() -> None:
    text = json.dumps(base()) + "\n---\n" + json.dumps(base())
    with pytest.raises(ManifestError, match="defined twice"):
        parse_manifests(text, source="d")


def test_uid_is_stable_and_content_sensitive() -> None:
    one = parse_pod(base(), source="a", node_name="n1").uid
    assert one == parse_pod(base(), source="b", node_name="n1").uid
    assert one != parse_pod(base(), source="a", node_name="n2").uid
    changed = base()
    changed["spec"]["containers"][0]["args"] = ["x"]
    assert one != parse_pod(changed, source="a", node_name="n1").uid
    # Round trip: the normalised manifest parses to the same pod (what the checkpoint does).
    pod = parse_pod(base(), source="a", node_name="n1")
    again = parse_pod(copy.deepcopy(dict(pod.manifest)), source="a")
    assert again.uid == pod.uid
    assert again.spec_hash == pod.spec_hash


def test_yaml_syntax_error_names_file_and_line() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifests("apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n", source="bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: invalid YAML at line")


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last = parts[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()

REJECTIONS = [
    ("kind", "Deployment", "kind", 'must be "Pod"'),
    ("apiVersion", "apps/v1", "apiVersion", 'must be "v1"'),
    (
        "spec.containers.0.livenessProbe",
        {"exec": {}},
        "spec.containers[0].livenessProbe",
        "not supported yet",
    ),
    (
        "spec.containers.0.securityContext",
        {},
        "spec.containers[0].securityContext",
        "not supported yet",
    ),
    ("spec.containers.0.envFrom", [], "spec.containers[0].envFrom", "not supported yet"),
    ("spec.containers.0.bogus", 1, "spec.containers[0].bogus", "unknown field"),
    ("spec.initContainers", [], "spec.initContainers", "not supported yet"),
    ("spec.nodeSelector", {}, "spec.nodeSelector", "not supported yet"),
    ("spec.tolerations", [], "spec.tolerations", "not supported yet"),
    ("spec.whatever", 1, "spec.whatever", "unknown field"),
    ("metadata.generateName", "x-", "metadata.generateName", "not supported yet"),
    ("extra", 1, "extra", "unknown field"),
    ("metadata.name", "Web_1", "metadata.name", "not a valid DNS-1123 subdomain"),
    ("metadata.name", DELETE, "metadata.name", "required"),
    ("metadata.namespace", "a.b", "metadata.namespace", "not a valid DNS-1123 label"),
    ("metadata.labels", {"bad key!": "v"}, "metadata.labels['bad key!']", "not a valid label key"),
    ("metadata.labels", {"k": "bad value!"}, "metadata.labels['k']", "not a valid label value"),
    ("metadata.labels", {"k": 1}, "metadata.labels['k']", "must be a string"),
    ("metadata.annotations", {"k": 1}, "metadata.annotations['k']", "must be a string"),
    ("spec.containers", [], "spec.containers", "at least one container"),
    ("spec.containers", DELETE, "spec.containers", "required"),
    ("spec.containers.0.name", "Web_1", "spec.containers[0].name", "not a valid DNS-1123 label"),
    ("spec.containers.0.name", "x" * 64, "spec.containers[0].name", "at most 63"),
    ("spec.containers.0.image", DELETE, "spec.containers[0].image", "required"),
    ("spec.containers.0.image", "a b", "spec.containers[0].image", "whitespace"),
    (
        "spec.containers.0.imagePullPolicy",
        "Sometimes",
        "spec.containers[0].imagePullPolicy",
        "not one of",
    ),
    ("spec.containers.0.command", "sh -c x", "spec.containers[0].command", "must be a list"),
    ("spec.containers.0.args", [1], "spec.containers[0].args[0]", "must be a string"),
    ("spec.containers.0.workingDir", "rel", "spec.containers[0].workingDir", "absolute path"),
    ("spec.containers.0.env", [{"value": "x"}], "spec.containers[0].env[0].name", "required"),
    (
        "spec.containers.0.env",
        [{"name": "A=B"}],
        "spec.containers[0].env[0].name",
        "not a valid environment",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "value": "1", "valueFrom": {}}],
        "spec.containers[0].env[0]",
        "mutually exclusive",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"secretKeyRef": {}}}],
        "spec.containers[0].env[0].valueFrom.secretKeyRef",
        "not supported yet",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}}],
        "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath",
        "not supported yet",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "value": 1}],
        "spec.containers[0].env[0].value",
        "must be a string",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 0}],
        "spec.containers[0].ports[0].containerPort",
        "out of range",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": "80"}],
        "spec.containers[0].ports[0].containerPort",
        "must be an integer",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": True}],
        "spec.containers[0].ports[0].containerPort",
        "must be an integer",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "protocol": "ICMP"}],
        "spec.containers[0].ports[0].protocol",
        "not one of",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "name": "way-too-long-port-name"}],
        "spec.containers[0].ports[0].name",
        "not a valid port name",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostPort": 70000}],
        "spec.containers[0].ports[0].hostPort",
        "out of range",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostIP": "nope"}],
        "spec.containers[0].ports[0].hostIP",
        "not an IP",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81, "hostPort": 80}],
        "spec.containers[0].ports[1].hostPort",
        "already used",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "lots"}},
        "spec.containers[0].resources.limits.cpu",
        "not a Kubernetes quantity",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "0.0001"}},
        "spec.containers[0].resources.limits.cpu",
        "finer than 1m",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"memory": "-1Mi"}},
        "spec.containers[0].resources.limits.memory",
        "negative",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"nvidia.com/gpu": 1}},
        "spec.containers[0].resources.limits.nvidia.com/gpu",
        "not supported yet",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}},
        "spec.containers[0].resources.requests.cpu",
        "less than or equal",
    ),
    (
        "spec.containers.0.resources",
        {"claims": []},
        "spec.containers[0].resources.claims",
        "not supported yet",
    ),
    (
        "spec.containers.0.volumeMounts",
        [{"name": "nope", "mountPath": "/x"}],
        "spec.containers[0].volumeMounts[0].name",
        "no volume named",
    ),
    ("spec.restartPolicy", "Sometimes", "spec.restartPolicy", "not one of"),
    (
        "spec.terminationGracePeriodSeconds",
        -1,
        "spec.terminationGracePeriodSeconds",
        "out of range",
    ),
    (
        "spec.terminationGracePeriodSeconds",
        "30",
        "spec.terminationGracePeriodSeconds",
        "must be an integer",
    ),
    ("spec.hostNetwork", "yes", "spec.hostNetwork", "must be a boolean"),
    ("spec.nodeName", "Node_1", "spec.nodeName", "DNS-1123 subdomain"),
    ("spec.volumes", [{"name": "v"}], "spec.volumes[0]", "exactly one source"),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}],
        "spec.volumes[0]",
        "exactly one source",
    ),
    (
        "spec.volumes",
        [{"name": "v", "configMap": {"name": "x"}}],
        "spec.volumes[0].configMap",
        "not supported yet",
    ),
    (
        "spec.volumes",
        [{"name": "v", "persistentVolumeClaim": {}}],
        "spec.volumes[0].persistentVolumeClaim",
        "not supported yet",
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {"medium": "Memory"}}],
        "spec.volumes[0].emptyDir.medium",
        "not supported yet",
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "rel"}}],
        "spec.volumes[0].hostPath.path",
        "absolute path",
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "/x", "type": "Weird"}}],
        "spec.volumes[0].hostPath.type",
        "not one of",
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
        "spec.volumes[1].name",
        "duplicate volume name",
    ),
    ("spec", [], "spec", "must be an object"),
]


@pytest.mark.parametrize(
    ("where", "value", "field", "problem"), REJECTIONS, ids=[r[2] + ":" + r[3] for r in REJECTIONS]
)
def test_rejections_name_the_field(where: str, value: Any, field: str, problem: str) -> None:
    doc = _set(base(), where, value)
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="pods/web.yaml")
    assert info.value.field == field
    assert problem in info.value.problem
    assert str(info.value).startswith(f"pods/web.yaml: {field}: ")


def test_duplicate_container_names() -> None:
    doc = base()
    doc["spec"]["containers"].append({"name": "c", "image": "x:1"})
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="s")
    assert info.value.field == "spec.containers[1].name"
    assert 'duplicate container name "c"' in str(
        info.value
    ) or "duplicate container name 'c'" in str(info.value)


def test_mount_twice_and_missing_mount_path() -> None:
    doc = base()
    doc["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    doc["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "v", "mountPath": "/a"},
        {"name": "v", "mountPath": "/a"},
    ]
    with pytest.raises(ManifestError, match=r"volumeMounts\[1\].mountPath: '/a' is mounted twice"):
        parse_pod(doc, source="s")
    doc["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "v", "subPath": "x", "mountPath": "/a"}
    ]
    with pytest.raises(ManifestError, match=r"volumeMounts\[0\].subPath: not supported yet"):
        parse_pod(doc, source="s")


def test_document_index_in_multi_document_errors() -> None:
    bad = base()
    bad["metadata"]["name"] = "q"
    bad["spec"]["containers"][0]["tty"] = True
    text = json.dumps(base()) + "\n---\n" + json.dumps(bad)
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source="two.yaml")
    assert str(info.value) == "two.yaml (document 2): spec.containers[0].tty: not supported yet"


@pytest.mark.parametrize("doc", [None, [], "text", 3])
def test_non_object_documents(doc: Any) -> None:
    with pytest.raises(ManifestError):
        parse_pod(doc, source="s")
