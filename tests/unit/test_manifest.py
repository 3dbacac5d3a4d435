"""The pod manifest parser: the supported subset, defaults, uids and every rejection path."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml

from agent.errors import ManifestError
from agent.manifest import parse_manifests, parse_pod
from agent.types import (
    Container,
    ContainerPort,
    EmptyDirVolume,
    EnvVar,
    FieldRef,
    HostPathVolume,
    PullPolicy,
    Resources,
    RestartPolicy,
    Volume,
    VolumeMount,
)

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

FULL = """
# What `kubectl get pod web -o yaml` could print, trimmed: output-only fields included.
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  uid: 11111111-2222-3333-4444-555555555555
  labels: {app: web, example.com/tier: front, empty: ""}
  annotations: {note: "any text at all", example.com/owner: team-a}
  resourceVersion: "42"
  generation: 3
  creationTimestamp: 2024-05-01T10:00:00Z
  selfLink: /api/v1/namespaces/shop/pods/web
  managedFields: [{manager: kubectl, operation: Update}]
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
    - name: scratch
      emptyDir: {}
  containers:
    - name: web
      image: registry.local:5000/web:1.2
      command: [httpd]
      args: [-f, -p, "8080", ""]
      workingDir: /srv
      env:
        - {name: PLAIN, value: "1"}
        - {name: EMPTY}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP, apiVersion: v1}}
        - {name: PLAIN, value: "2"}
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
      imagePullPolicy: Never
      volumeMounts:
        - {name: data, mountPath: /data, readOnly: false}
status:
  phase: Running
  podIP: 10.0.0.5
"""

FULL_NORMALISED = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "web",
        "namespace": "shop",
        "uid": "11111111-2222-3333-4444-555555555555",
        "labels": {"app": "web", "example.com/tier": "front", "empty": ""},
        "annotations": {"note": "any text at all", "example.com/owner": "team-a"},
    },
    "spec": {
        "containers": [
            {
                "name": "web",
                "image": "registry.local:5000/web:1.2",
                "imagePullPolicy": "IfNotPresent",
                "command": ["httpd"],
                "args": ["-f", "-p", "8080", ""],
                "env": [
                    {"name": "PLAIN", "value": "1"},
                    {"name": "EMPTY", "value": ""},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "PLAIN", "value": "2"},
                ],
                "ports": [
                    {
                        "containerPort": 8080,
                        "protocol": "TCP",
                        "name": "http",
                        "hostPort": 18080,
                        "hostIP": "127.0.0.1",
                    },
                    {"containerPort": 53, "protocol": "UDP"},
                ],
                "resources": {
                    "limits": {"cpu": "500m", "memory": "128Mi"},
                    "requests": {"cpu": "0.1", "memory": "64Mi"},
                },
                "workingDir": "/srv",
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "host", "mountPath": "/host-logs", "readOnly": True},
                ],
            },
            {
                "name": "sidecar",
                "image": "busybox",
                "imagePullPolicy": "Never",
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            },
        ],
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": 5,
        "volumes": [
            {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "host", "hostPath": {"path": "/var/log", "type": "Directory"}},
            {"name": "scratch", "emptyDir": {}},
        ],
        "nodeName": "node-1",
    },
}


def base() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
    }


def with_container(**fields: Any) -> dict[str, Any]:
    doc = base()
    doc["spec"]["containers"][0].update(fields)
    return doc


def reject(doc: object, source: str = "pods/web.yaml") -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source=source)
    return info.value


# --- the happy path ---------------------------------------------------------------------------


def test_full_manifest_parses_into_the_model() -> None:
    [pod] = parse_manifests(FULL, source="file:/etc/node-agent/pods/web.yaml", node_name="n9")
    assert pod.source == "file:/etc/node-agent/pods/web.yaml"
    assert pod.full_name == "shop/web"
    assert pod.uid == "11111111-2222-3333-4444-555555555555"
    assert dict(pod.metadata.labels) == {"app": "web", "example.com/tier": "front", "empty": ""}
    assert dict(pod.metadata.annotations) == {
        "note": "any text at all",
        "example.com/owner": "team-a",
    }
    with pytest.raises(TypeError):
        pod.metadata.labels["x"] = "y"  # type: ignore[index]
    spec = pod.spec
    assert spec.restart_policy is RestartPolicy.ON_FAILURE
    assert spec.termination_grace_period_s == 5
    assert spec.host_network is False
    # kubectl get output (status, resourceVersion): its nodeName, chosen by that cluster's
    # scheduler, is dropped with a warning and the node's own name is used.
    assert spec.node_name == "n9"
    assert spec.volumes == (
        Volume("data", empty_dir=EmptyDirVolume(size_limit_bytes=2**30)),
        Volume("host", host_path=HostPathVolume("/var/log", "Directory")),
        Volume("scratch", empty_dir=EmptyDirVolume()),
    )
    assert spec.containers == (
        Container(
            name="web",
            image="registry.local:5000/web:1.2",
            image_pull_policy=PullPolicy.IF_NOT_PRESENT,
            command=("httpd",),
            args=("-f", "-p", "8080", ""),
            env=(
                EnvVar("PLAIN", "1"),
                EnvVar("EMPTY", ""),
                EnvVar("POD_IP", field_ref=FieldRef.POD_IP),
                EnvVar("PLAIN", "2"),  # duplicates are kept; the last one wins, as in Kubernetes
            ),
            ports=(
                ContainerPort(8080, "TCP", "http", 18080, "127.0.0.1"),
                ContainerPort(53, "UDP"),
            ),
            resources=Resources(
                cpu_request_millis=100,
                cpu_limit_millis=500,
                memory_request_bytes=64 * 2**20,
                memory_limit_bytes=128 * 2**20,
            ),
            working_dir="/srv",
            volume_mounts=(
                VolumeMount("data", "/data"),
                VolumeMount("host", "/host-logs", read_only=True),
            ),
        ),
        Container(
            name="sidecar",
            image="busybox",
            image_pull_policy=PullPolicy.NEVER,
            volume_mounts=(VolumeMount("data", "/data"),),
        ),
    )
    # Output-only fields (status, resourceVersion, ...) are dropped; defaults are filled in.
    assert pod.manifest == {
        **FULL_NORMALISED,
        "spec": {**FULL_NORMALISED["spec"], "nodeName": "n9"},  # type: ignore[dict-item]
    }
    json.dumps(pod.manifest)  # plain JSON data


def test_json_and_yaml_give_the_same_pod() -> None:
    from_yaml = parse_manifests(FULL, source="a.yaml")
    as_json = json.dumps(yaml.safe_load(FULL), default=str)
    from_json = parse_manifests(as_json, source="a.json")
    assert from_yaml[0].manifest == from_json[0].manifest
    assert from_yaml[0].spec == from_json[0].spec


def test_normalised_manifest_parses_to_the_same_pod() -> None:
    # The checkpoint and the sandbox label store pod.manifest and parse it again on restore.
    for pod in (
        parse_manifests(FULL, source="a")[0],
        parse_pod(base(), source="a", node_name="n1"),
        parse_pod(with_container(ports=[{"containerPort": 80}]), source="a"),
    ):
        again = parse_pod(copy.deepcopy(dict(pod.manifest)), source="a")
        assert again == pod
        assert again.spec_hash == pod.spec_hash


# --- defaults -----------------------------------------------------------------------------


def test_defaults() -> None:
    pod = parse_pod(base(), source="p.json", node_name="n1")
    assert pod.metadata.namespace == "default"
    assert pod.spec.restart_policy is RestartPolicy.ALWAYS
    assert pod.spec.termination_grace_period_s == 30
    assert pod.spec.host_network is False
    assert pod.spec.volumes == ()
    assert pod.spec.node_name == "n1"
    assert pod.manifest == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "uid": pod.uid},
        "spec": {
            "containers": [{"name": "c", "image": "img:1", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "nodeName": "n1",
        },
    }
    container = pod.spec.containers[0]
    assert container == Container(name="c", image="img:1")
    assert container.resources == Resources()


def test_no_node_name_leaves_node_name_unset() -> None:
    pod = parse_pod(base(), source="api")
    assert pod.spec.node_name is None
    assert "nodeName" not in pod.manifest["spec"]


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("busybox", PullPolicy.ALWAYS),
        ("busybox:latest", PullPolicy.ALWAYS),
        ("busybox:1.36", PullPolicy.IF_NOT_PRESENT),
        ("library/busybox", PullPolicy.ALWAYS),
        ("registry.local:5000/busybox", PullPolicy.ALWAYS),
        ("registry.local:5000/busybox:1.36", PullPolicy.IF_NOT_PRESENT),
        ("busybox@sha256:" + "a" * 64, PullPolicy.IF_NOT_PRESENT),
    ],
)
def test_default_pull_policy_follows_kubernetes(image: str, policy: PullPolicy) -> None:
    pod = parse_pod(with_container(image=image), source="s")
    assert pod.spec.containers[0].image_pull_policy is policy
    assert pod.manifest["spec"]["containers"][0]["imagePullPolicy"] == policy.value


def test_explicit_pull_policy_wins() -> None:
    pod = parse_pod(with_container(image="busybox", imagePullPolicy="IfNotPresent"), source="s")
    assert pod.spec.containers[0].image_pull_policy is PullPolicy.IF_NOT_PRESENT


def test_limits_default_requests() -> None:
    doc = with_container(resources={"limits": {"cpu": "2", "memory": "1G"}})
    res = parse_pod(doc, source="t").spec.containers[0].resources
    assert res == Resources(2000, 2000, 10**9, 10**9)


def test_requests_without_limits() -> None:
    doc = with_container(resources={"requests": {"cpu": 0.25, "memory": 1024}})
    pod = parse_pod(doc, source="t")
    assert pod.spec.containers[0].resources == Resources(250, None, 1024, None)
    assert pod.manifest["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "0.25", "memory": "1024"}
    }


def test_host_network_host_port_defaults_to_container_port() -> None:
    doc = with_container(ports=[{"containerPort": 8080}, {"containerPort": 8081, "hostPort": 8081}])
    doc["spec"]["hostNetwork"] = True
    pod = parse_pod(doc, source="s")
    assert [p.host_port for p in pod.spec.containers[0].ports] == [8080, 8081]
    assert pod.spec.host_network is True
    assert pod.manifest["spec"]["hostNetwork"] is True


def test_null_fields_are_absent_as_in_kubernetes() -> None:
    text = """
apiVersion: v1
kind: Pod
metadata: {name: p, labels: null, annotations: null, uid: null}
spec:
  restartPolicy: null
  volumes: null
  initContainers: null
  containers:
    - name: c
      image: img:1
      env: [{name: A, value: null}, {name: B, value: }]
      ports: [{containerPort: 80, protocol: null, hostPort: null}]
      resources: {limits: null, requests: {cpu: 1}}
      livenessProbe: null
      command: null
status: null
"""
    [pod] = parse_manifests(text, source="n")
    assert (
        pod.manifest
        == parse_pod(
            with_container(
                env=[{"name": "A", "value": ""}, {"name": "B", "value": ""}],
                ports=[{"containerPort": 80}],
                resources={"requests": {"cpu": "1"}},
            ),
            source="n",
        ).manifest
    )


def test_null_is_still_an_error_where_a_value_is_required() -> None:
    assert reject(_set(base(), "metadata.name", None)).problem == "required"
    assert reject(_set(base(), "spec.containers", None)).problem == "required"
    error = reject(_set(base(), "metadata.labels", {"k": None}))  # a string map, not an object
    assert (error.field, error.problem) == ('metadata.labels["k"]', "must be a string, got null")


def test_empty_dir_null_is_an_empty_object() -> None:
    doc = _set(base(), "spec.volumes", [{"name": "v", "emptyDir": None}])  # `emptyDir:` in YAML
    pod = parse_pod(doc, source="s")
    assert pod.spec.volumes == (Volume("v", empty_dir=EmptyDirVolume()),)


# --- files: YAML, JSON, several documents ----------------------------------------------------


def test_multi_document_yaml_skips_empty_documents() -> None:
    a, b = base(), base()
    b["metadata"]["name"] = "q"
    text = "---\n" + json.dumps(a) + "\n---\n\n---\n# only a comment\n---\n" + yaml.safe_dump(b)
    assert [p.metadata.name for p in parse_manifests(text, source="m")] == ["p", "q"]


@pytest.mark.parametrize("text", ["", "\n", "# nothing\n", "---\n---\n", "null\n"])
def test_empty_file_has_no_pods(text: str) -> None:
    assert parse_manifests(text, source="empty") == []


def test_v1_list_as_kubectl_prints_it() -> None:
    a, b = base(), base()
    b["metadata"]["name"] = "q"
    listed = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}}
    listed["items"] = [a, b]
    pods = parse_manifests(yaml.safe_dump(listed), source="l")
    assert [p.metadata.name for p in pods] == ["p", "q"]


def test_same_name_in_other_namespace_is_another_pod() -> None:
    other = base()
    other["metadata"]["namespace"] = "other"
    pods = parse_manifests(json.dumps(base()) + "\n---\n" + json.dumps(other), source="d")
    assert [p.full_name for p in pods] == ["default/p", "other/p"]


def test_duplicate_pod_in_one_file_rejected() -> None:
    text = json.dumps(base()) + "\n---\n" + json.dumps(base())
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source="d.yaml")
    assert str(info.value) == (
        "d.yaml (document 2): metadata.name: pod default/p is defined twice (first in document 1)"
    )


def test_duplicate_pod_in_a_list_rejected() -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": [base(), base()]}
    with pytest.raises(ManifestError, match=r"^l \(items\[1\]\): .*first in items\[0\]"):
        parse_manifests(json.dumps(listed), source="l")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
            "l.yaml: metadata[1]: invalid YAML (line 4, column 1): did not find expected",
        ),
        (
            "apiVersion: v1\nkind: Pod\nkind: Pod\n",
            'l.yaml: kind: duplicate key "kind" (line 3, column 1)',
        ),
        ("a:\n  b: 1\n  b: 2\n", 'l.yaml: a.b: duplicate key "b" (line 3, column 3)'),
        ("a: !!int x\n", 'l.yaml: a: "x" is not a valid int (line 1, column 4)'),
        (
            "a: !!python/object:os.system x\n",
            'l.yaml: a: the tag "tag:yaml.org,2002:python/object:os.system" is not supported',
        ),
        ("[" * 5000, "l.yaml: "),
        (
            '{"kind": "Pod", "kind": "Pod"}',
            'l.yaml: kind: duplicate key "kind" (line 1, column 17)',
        ),
    ],
)
def test_invalid_yaml_names_file_path_and_line(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source="l.yaml")
    assert info.value.source == "l.yaml"
    assert str(info.value).startswith(message)


def test_an_unquoted_date_is_a_string() -> None:
    """Kubernetes has no date type: `2024-01-01` in an annotation is the text, not a date."""
    doc = base()
    doc["metadata"]["annotations"] = {"released": "DATE"}
    text = yaml.safe_dump(doc).replace("'DATE'", "2024-01-01").replace("DATE", "2024-01-01")
    [pod] = parse_manifests(text, source="d.yaml")
    assert pod.metadata.annotations["released"] == "2024-01-01"


def test_yaml_merge_keys_may_override() -> None:
    text = """
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
    - &base {name: a, image: "img:1", workingDir: /a}
    - <<: *base
      name: b
"""
    pods = parse_manifests(text, source="m")
    assert [c.name for c in pods[0].spec.containers] == ["a", "b"]
    assert pods[0].spec.containers[1].working_dir == "/a"


def test_document_index_in_multi_document_errors() -> None:
    bad = base()
    bad["metadata"]["name"] = "q"
    bad["spec"]["containers"][0]["tty"] = True
    text = json.dumps(base()) + "\n---\n" + json.dumps(bad)
    with pytest.raises(ManifestError) as info:
        parse_manifests(text, source="two.yaml")
    assert str(info.value) == "two.yaml (document 2): spec.containers[0].tty: not supported yet"
    assert info.value.field == "spec.containers[0].tty"


def test_parse_pod_index_names_the_document() -> None:
    doc = with_container(stdin=True)
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="f.yaml", index=2)
    assert str(info.value) == "f.yaml (document 3): spec.containers[0].stdin: not supported yet"


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ({"apiVersion": "v1", "kind": "List"}, "l: items: required"),
        ({"apiVersion": "v1", "kind": "List", "items": {}}, "l: items: must be a list"),
        ({"apiVersion": "v2", "kind": "List", "items": []}, 'l: apiVersion: must be "v1"'),
        ({"kind": "List", "items": [], "extra": 1}, "l: extra: unknown field"),
        (
            {"kind": "List", "items": [base(), 3]},
            "l (items[1]): a manifest must be an object (a v1 Pod), got integer",
        ),
    ],
)
def test_bad_lists(listed: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifests(json.dumps(listed), source="l")
    assert str(info.value).startswith(message)


# --- uid ----------------------------------------------------------------------------------


def test_uid_is_derived_stable_and_content_sensitive() -> None:
    one = parse_pod(base(), source="a", node_name="n1").uid
    assert UUID.fullmatch(one)
    assert one == parse_pod(base(), source="b", node_name="n1").uid  # not the file's path
    assert one != parse_pod(base(), source="a", node_name="n2").uid  # another node
    assert one != parse_pod(base(), source="a").uid  # no node
    changed = with_container(args=["x"])
    assert one != parse_pod(changed, source="a", node_name="n1").uid


def test_uid_ignores_formatting_and_spelled_out_defaults() -> None:
    plain = parse_pod(base(), source="a", node_name="n1")
    text = """
# a comment
kind: Pod
apiVersion: v1
metadata: {name: p, namespace: default, resourceVersion: "7"}
spec:
  restartPolicy: Always
  terminationGracePeriodSeconds: 30
  containers:
  - image: "img:1"
    name: c
    imagePullPolicy: IfNotPresent
status: {phase: Running}
"""
    [verbose] = parse_manifests(text, source="b", node_name="n1")
    assert verbose.uid == plain.uid
    assert verbose.manifest == plain.manifest


def test_given_uid_is_kept() -> None:
    doc = base()
    doc["metadata"]["uid"] = "abcdef12-0000-0000-0000-000000000000"
    pod = parse_pod(doc, source="a", node_name="n1")
    assert pod.uid == "abcdef12-0000-0000-0000-000000000000"
    assert pod.manifest["metadata"]["uid"] == pod.uid


# --- rejections ---------------------------------------------------------------------------


def _set(doc: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    target: Any = doc
    parts = dotted.split(".")
    for part in parts[:-1]:
        target = target[int(part)] if part.isdigit() else target[part]
    last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()
C0 = "spec.containers[0]"

REJECTIONS: list[tuple[str, Any, str, str]] = [
    # (where to set in the base pod, value, expected field path, expected problem substring)
    ("kind", "Deployment", "kind", 'must be "Pod", got "Deployment"'),
    ("kind", DELETE, "kind", "required"),
    ("apiVersion", "apps/v1", "apiVersion", 'must be "v1", got "apps/v1"'),
    ("apiVersion", DELETE, "apiVersion", "required"),
    ("extra", 1, "extra", "unknown field"),
    ("metadata", DELETE, "metadata", "required"),
    ("metadata", "p", "metadata", "must be an object, got string"),
    ("spec", DELETE, "spec", "required"),
    ("spec", [], "spec", "must be an object, got list"),
    # metadata
    ("metadata.generateName", "x-", "metadata.generateName", "not supported yet"),
    ("metadata.ownerReferences", [{"kind": "X"}], "metadata.ownerReferences", "not supported yet"),
    ("metadata.finalizers", ["f"], "metadata.finalizers", "not supported yet"),
    ("metadata.clusterName", "x", "metadata.clusterName", "unknown field"),
    ("metadata.name", DELETE, "metadata.name", "required"),
    ("metadata.name", "Web_1", "metadata.name", '"Web_1" is not a valid DNS-1123 subdomain'),
    ("metadata.name", "a" * 254, "metadata.name", "at most 253 characters"),
    ("metadata.name", "a..b", "metadata.name", "not a valid DNS-1123 subdomain"),
    ("metadata.name", "", "metadata.name", "must not be empty"),
    ("metadata.name", 7, "metadata.name", "must be a string, got integer (quote it in YAML)"),
    ("metadata.namespace", "a.b", "metadata.namespace", "not a valid DNS-1123 label"),
    ("metadata.uid", "../../etc", "metadata.uid", "not a valid uid"),
    ("metadata.uid", "/", "metadata.uid", "not a valid uid"),
    ("metadata.uid", "a" * 129, "metadata.uid", "at most 128"),
    ("metadata.uid", "", "metadata.uid", "must not be empty"),
    ("metadata.labels", ["a"], "metadata.labels", "must be an object, got list"),
    ("metadata.labels", {"bad key!": "v"}, 'metadata.labels["bad key!"]', "not a valid label key"),
    ("metadata.labels", {"/x": "v"}, 'metadata.labels["/x"]', 'the prefix "" is not'),
    ("metadata.labels", {"A.b/x": "v"}, 'metadata.labels["A.b/x"]', 'the prefix "A.b" is not'),
    ("metadata.labels", {"x" * 64: "v"}, 'metadata.labels["' + "x" * 64 + '"]', "at most 63"),
    ("metadata.labels", {"k": "bad value!"}, 'metadata.labels["k"]', "not a valid label value"),
    ("metadata.labels", {"k": "v" * 64}, 'metadata.labels["k"]', "not a valid label value"),
    ("metadata.labels", {"k": 1}, 'metadata.labels["k"]', "must be a string, got integer"),
    ("metadata.labels", {"k": None}, 'metadata.labels["k"]', "must be a string, got null"),
    ("metadata.annotations", {"k": 1}, 'metadata.annotations["k"]', "must be a string"),
    ("metadata.annotations", {"a b": "x"}, 'metadata.annotations["a b"]', "not a valid annotation"),
    ("metadata.annotations", {"k": "x" * 262144}, "metadata.annotations", "more than the limit"),
    # spec
    ("spec.whatever", 1, "spec.whatever", "unknown field"),
    ("spec.containers", [], "spec.containers", "at least one container"),
    ("spec.containers", DELETE, "spec.containers", "required"),
    ("spec.containers", {"name": "c"}, "spec.containers", "must be a list, got object"),
    ("spec.containers.0", "c", C0, "must be an object, got string"),
    ("spec.restartPolicy", "Sometimes", "spec.restartPolicy", "is not one of Always"),
    ("spec.restartPolicy", 1, "spec.restartPolicy", "must be a string, got integer"),
    ("spec.terminationGracePeriodSeconds", -1, "spec.terminationGracePeriodSeconds", "range"),
    ("spec.terminationGracePeriodSeconds", 2**63, "spec.terminationGracePeriodSeconds", "range"),
    ("spec.terminationGracePeriodSeconds", "30", "spec.terminationGracePeriodSeconds", "integer"),
    ("spec.terminationGracePeriodSeconds", 1.5, "spec.terminationGracePeriodSeconds", "number"),
    ("spec.terminationGracePeriodSeconds", True, "spec.terminationGracePeriodSeconds", "boolean"),
    ("spec.hostNetwork", "yes", "spec.hostNetwork", "must be a boolean (true or false)"),
    ("spec.hostNetwork", 1, "spec.hostNetwork", "must be a boolean (true or false), got integer"),
    ("spec.nodeName", "Node_1", "spec.nodeName", "DNS-1123 subdomain"),
    ("spec.nodeName", "n" * 53, "spec.nodeName", "longer than 52 characters, the most a node"),
    # containers
    ("spec.containers.0.bogus", 1, f"{C0}.bogus", "unknown field"),
    ("spec.containers.0.name", DELETE, f"{C0}.name", "required"),
    ("spec.containers.0.name", "Web_1", f"{C0}.name", '"Web_1" is not a valid DNS-1123 label'),
    ("spec.containers.0.name", "x" * 64, f"{C0}.name", "at most 63"),
    ("spec.containers.0.name", "a.b", f"{C0}.name", "not a valid DNS-1123 label"),
    ("spec.containers.0.image", DELETE, f"{C0}.image", "required"),
    ("spec.containers.0.image", "", f"{C0}.image", "must not be empty"),
    ("spec.containers.0.image", "a b", f"{C0}.image", "whitespace"),
    ("spec.containers.0.image", "a\tb", f"{C0}.image", "whitespace"),
    ("spec.containers.0.imagePullPolicy", "Sometimes", f"{C0}.imagePullPolicy", "not one of"),
    ("spec.containers.0.command", "sh -c x", f"{C0}.command", "must be a list, got string"),
    ("spec.containers.0.args", [1], f"{C0}.args[0]", "must be a string"),
    ("spec.containers.0.args", [True], f"{C0}.args[0]", "got boolean (quote it in YAML)"),
    ("spec.containers.0.workingDir", "rel", f"{C0}.workingDir", "must be an absolute path"),
    ("spec.containers.0.workingDir", "/a\x00b", f"{C0}.workingDir", "NUL"),
    # env
    ("spec.containers.0.env", {"A": "1"}, f"{C0}.env", "must be a list, got object"),
    ("spec.containers.0.env", [{"value": "x"}], f"{C0}.env[0].name", "required"),
    ("spec.containers.0.env", [{"name": ""}], f"{C0}.env[0].name", "must not be empty"),
    ("spec.containers.0.env", [{"name": "A=B"}], f"{C0}.env[0].name", "not a valid environment"),
    ("spec.containers.0.env", [{"name": "Ä"}], f"{C0}.env[0].name", "printable ASCII"),
    ("spec.containers.0.env", [{"name": "A\n"}], f"{C0}.env[0].name", "printable ASCII"),
    ("spec.containers.0.env", [{"name": "A", "valuee": "1"}], f"{C0}.env[0].valuee", "unknown"),
    (
        "spec.containers.0.env",
        [{"name": "A", "value": "1", "valueFrom": {}}],
        f"{C0}.env[0]",
        "value and valueFrom are mutually exclusive",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"secretKeyRef": {}}}],
        f"{C0}.env[0].valueFrom.secretKeyRef",
        "not supported yet",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"configMapKeyRef": {}}}],
        f"{C0}.env[0].valueFrom.configMapKeyRef",
        "not supported yet",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"resourceFieldRef": {}}}],
        f"{C0}.env[0].valueFrom.resourceFieldRef.resource",
        "required",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {}}],
        f"{C0}.env[0].valueFrom",
        "must have exactly one source (fieldRef or resourceFieldRef), got 0",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"fieldRef": {}}}],
        f"{C0}.env[0].valueFrom.fieldRef.fieldPath",
        "required",
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}}],
        f"{C0}.env[0].valueFrom.fieldRef.fieldPath",
        '"metadata.labels" not supported yet (supported: metadata.name,',
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName", "apiVersion": 1}}}],
        f"{C0}.env[0].valueFrom.fieldRef.apiVersion",
        'must be "v1"',
    ),
    (
        "spec.containers.0.env",
        [{"name": "A", "value": 1}],
        f"{C0}.env[0].value",
        "must be a string, got integer (quote it in YAML)",
    ),
    # ports
    ("spec.containers.0.ports", [{"name": "x"}], f"{C0}.ports[0].containerPort", "required"),
    ("spec.containers.0.ports", [{"containerPort": 0}], f"{C0}.ports[0].containerPort", "range"),
    (
        "spec.containers.0.ports",
        [{"containerPort": 65536}],
        f"{C0}.ports[0].containerPort",
        "65536 is out of range (must be between 1 and 65535)",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": "80"}],
        f"{C0}.ports[0].containerPort",
        "must be an integer, got string",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": True}],
        f"{C0}.ports[0].containerPort",
        "must be an integer, got boolean",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "protocol": "ICMP"}],
        f"{C0}.ports[0].protocol",
        '"ICMP" is not one of TCP, UDP, SCTP',
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "protocol": "tcp"}],
        f"{C0}.ports[0].protocol",
        "is not one of",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "name": "way-too-long-port-name"}],
        f"{C0}.ports[0].name",
        "not a valid port name",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "name": "8080"}],
        f"{C0}.ports[0].name",
        "at least one letter",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "name": "a--b"}],
        f"{C0}.ports[0].name",
        "not a valid port name",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http"}],
        f"{C0}.ports[1].name",
        'duplicate port name "http"',
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostPort": 70000}],
        f"{C0}.ports[0].hostPort",
        "out of range",
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostIP": "nope"}],
        f"{C0}.ports[0].hostIP",
        '"nope" is not an IP address',
    ),
    (
        "spec.containers.0.ports",
        [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81, "hostPort": 80}],
        f"{C0}.ports[1].hostPort",
        f"80/TCP is already used by {C0}.ports[0].hostPort",
    ),
    # resources
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "lots"}},
        f"{C0}.resources.limits.cpu",
        '"lots" is not a Kubernetes quantity',
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "0.0001"}},
        f"{C0}.resources.limits.cpu",
        "finer than 1m",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"memory": "-1Mi"}},
        f"{C0}.resources.limits.memory",
        "must not be negative",
    ),
    (
        "spec.containers.0.resources",
        {"requests": {"memory": True}},
        f"{C0}.resources.requests.memory",
        "must be a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3, got boolean",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"nvidia.com/gpu": 1}},
        f'{C0}.resources.limits["nvidia.com/gpu"]',
        "not supported yet (only cpu and memory)",
    ),
    (
        "spec.containers.0.resources",
        {"requests": {"ephemeral-storage": "1Gi"}},
        f"{C0}.resources.requests.ephemeral-storage",
        "not supported yet",
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"cpu": "1"}, "requests": {"cpu": "2"}},
        f"{C0}.resources.requests.cpu",
        '"2" is more than the limit "1"',
    ),
    (
        "spec.containers.0.resources",
        {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}},
        f"{C0}.resources.requests.memory",
        "is more than the limit",
    ),
    (
        "spec.containers.0.resources",
        {"claims": []},
        f"{C0}.resources.claims",
        "not supported yet",
    ),
    ("spec.containers.0.resources", {"limit": {}}, f"{C0}.resources.limit", "unknown field"),
    ("spec.containers.0.resources", {"limits": []}, f"{C0}.resources.limits", "must be an object"),
    # volume mounts (the base pod has no volumes; see test_volume_mount_rejections)
    (
        "spec.containers.0.volumeMounts",
        [{"name": "nope", "mountPath": "/x"}],
        f"{C0}.volumeMounts[0].name",
        'no volume named "nope" in spec.volumes',
    ),
    # volumes
    ("spec.volumes", {}, "spec.volumes", "must be a list"),
    ("spec.volumes", [{"emptyDir": {}}], "spec.volumes[0].name", "required"),
    ("spec.volumes", [{"name": "V", "emptyDir": {}}], "spec.volumes[0].name", "DNS-1123 label"),
    ("spec.volumes", [{"name": "v"}], "spec.volumes[0]", "exactly one volume source"),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/x"}}],
        "spec.volumes[0]",
        "must have exactly one volume source (hostPath or emptyDir), got 2",
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}],
        "spec.volumes[1].name",
        'duplicate volume name "v"',
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {"medium": "Memory"}}],
        "spec.volumes[0].emptyDir.medium",
        'not supported yet (only the default disk medium "")',
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {"sizeLimit": "big"}}],
        "spec.volumes[0].emptyDir.sizeLimit",
        "not a Kubernetes quantity",
    ),
    (
        "spec.volumes",
        [{"name": "v", "emptyDir": {"size": "1Gi"}}],
        "spec.volumes[0].emptyDir.size",
        "unknown field",
    ),
    ("spec.volumes", [{"name": "v", "emptyDir": []}], "spec.volumes[0].emptyDir", "an object"),
    ("spec.volumes", [{"name": "v", "hostPath": {}}], "spec.volumes[0].hostPath.path", "required"),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "rel"}}],
        "spec.volumes[0].hostPath.path",
        '"rel" must be an absolute path',
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "/var/../etc"}}],
        "spec.volumes[0].hostPath.path",
        "must not contain '..'",
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "/a:/b"}}],
        "spec.volumes[0].hostPath.path",
        "must not contain ':'",
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "/x", "type": "Weird"}}],
        "spec.volumes[0].hostPath.type",
        '"Weird" is not one of "", "DirectoryOrCreate", "Directory"',
    ),
    (
        "spec.volumes",
        [{"name": "v", "hostPath": {"path": "/x", "readOnly": True}}],
        "spec.volumes[0].hostPath.readOnly",
        "unknown field",
    ),
    ("spec.volumes", [{"name": "v", "bogus": {}}], "spec.volumes[0].bogus", "unknown field"),
]


@pytest.mark.parametrize(
    ("where", "value", "field", "problem"),
    REJECTIONS,
    ids=[f"{r[2]}:{r[3]}"[:80] for r in REJECTIONS],
)
def test_rejections_name_the_field(where: str, value: Any, field: str, problem: str) -> None:
    error = reject(_set(base(), where, value))
    assert error.field == field
    assert problem in error.problem
    assert error.source == "pods/web.yaml"
    assert str(error) == f"pods/web.yaml: {field}: {error.problem}"


NOT_SUPPORTED_YET: list[tuple[str, Any]] = [
    # Kubernetes fields operators commonly write that we do not implement: never ignored.
    *(
        (f"spec.{name}", value)
        for name, value in [
            ("ephemeralContainers", [{"name": "debug"}]),
            ("affinity", {"nodeAffinity": {}}),
            ("tolerations", [{"key": "gpu", "operator": "Exists"}]),
            ("nodeSelector", {"disk": "ssd"}),
            ("serviceAccountName", "sa"),
            ("serviceAccount", "sa"),
            ("automountServiceAccountToken", True),
            ("imagePullSecrets", [{"name": "regcred"}]),
            ("dnsPolicy", "Default"),
            ("dnsConfig", {"nameservers": ["1.1.1.1"]}),
            ("hostPID", True),
            ("hostIPC", True),
            ("hostUsers", False),
            ("shareProcessNamespace", True),
            ("securityContext", {"runAsUser": 1000}),
            ("hostname", "h"),
            ("subdomain", "s"),
            ("hostAliases", [{"ip": "10.0.0.1"}]),
            ("schedulerName", "my-scheduler"),
            ("priorityClassName", "high"),
            ("priority", 1000),
            ("preemptionPolicy", "Never"),
            ("activeDeadlineSeconds", 10),
            ("readinessGates", [{"conditionType": "x"}]),
            ("runtimeClassName", "gvisor"),
            ("enableServiceLinks", False),
            ("overhead", {"cpu": "1"}),
            ("topologySpreadConstraints", [{"maxSkew": 1}]),
            ("setHostnameAsFQDN", True),
            ("os", {"name": "linux"}),
            ("schedulingGates", [{"name": "g"}]),
            ("resourceClaims", [{"name": "c"}]),
            ("resources", {"limits": {"cpu": "1"}}),
        ]
    ),
    *(
        (f"spec.containers.0.{name}", value)
        for name, value in [
            ("securityContext", {"privileged": True}),
            ("envFrom", [{"prefix": "X"}]),
            ("stdin", True),
            ("stdinOnce", True),
            ("tty", True),
            ("volumeDevices", [{"name": "d"}]),
            ("terminationMessagePath", "/tmp/msg"),
            ("terminationMessagePolicy", "FallbackToLogsOnError"),
            ("resizePolicy", [{"resourceName": "cpu"}]),
            ("restartPolicy", "Always"),
        ]
    ),
    *(
        (f"spec.volumes.0.{name}", {})
        for name in [
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
        ]
    ),
    ("metadata.deletionTimestamp", "2024-01-01T00:00:00Z"),
    ("metadata.deletionGracePeriodSeconds", 30),
]


def _bracketed(dotted: str) -> str:
    return re.sub(r"\.(\d+)", r"[\1]", dotted)


@pytest.mark.parametrize(
    ("where", "value"), NOT_SUPPORTED_YET, ids=[w for w, _ in NOT_SUPPORTED_YET]
)
def test_known_kubernetes_fields_are_not_supported_yet(where: str, value: Any) -> None:
    doc = base()
    if where.startswith("spec.volumes."):
        doc["spec"]["volumes"] = [{"name": "v"}]
    error = reject(_set(doc, where, value))
    assert (error.field, error.problem) == (_bracketed(where), "not supported yet")


@pytest.mark.parametrize(
    ("mount", "field", "problem"),
    [
        ({"mountPath": "/x"}, "name", "required"),
        ({"name": "v"}, "mountPath", "required"),
        ({"name": "v", "mountPath": "x"}, "mountPath", "must be an absolute path"),
        ({"name": "v", "mountPath": "/"}, "mountPath", "must not be '/'"),
        ({"name": "v", "mountPath": "/x:ro"}, "mountPath", "must not contain ':'"),
        ({"name": "v", "mountPath": "/x", "readOnly": "yes"}, "readOnly", "must be a boolean"),
        ({"name": "v", "mountPath": "/x", "subPath": "a"}, "subPath", "not supported yet"),
        ({"name": "v", "mountPath": "/x", "subPathExpr": "a"}, "subPathExpr", "not supported yet"),
        (
            {"name": "v", "mountPath": "/x", "mountPropagation": "HostToContainer"},
            "mountPropagation",
            "not supported yet",
        ),
        (
            {"name": "v", "mountPath": "/x", "recursiveReadOnly": "Enabled"},
            "recursiveReadOnly",
            "not supported yet",
        ),
        ({"name": "v", "mountPath": "/x", "bogus": 1}, "bogus", "unknown field"),
    ],
)
def test_volume_mount_rejections(mount: dict[str, Any], field: str, problem: str) -> None:
    doc = with_container(volumeMounts=[mount])
    doc["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    error = reject(doc)
    assert error.field == f"{C0}.volumeMounts[0].{field}"
    assert problem in error.problem


@pytest.mark.parametrize("second", ["/a", "/a/", "/a/."])
def test_mount_path_unique_per_container(second: str) -> None:
    doc = with_container(
        volumeMounts=[{"name": "v", "mountPath": "/a"}, {"name": "w", "mountPath": second}]
    )
    doc["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}]
    error = reject(doc)
    assert error.field == f"{C0}.volumeMounts[1].mountPath"
    assert error.problem == (
        f"{json.dumps(second)} is already a mount point ({C0}.volumeMounts[0])"
    )


def test_same_mount_path_in_two_containers_is_fine() -> None:
    doc = with_container(volumeMounts=[{"name": "v", "mountPath": "/a"}])
    doc["spec"]["containers"].append(
        {"name": "d", "image": "x:1", "volumeMounts": [{"name": "v", "mountPath": "/a"}]}
    )
    doc["spec"]["volumes"] = [{"name": "v", "emptyDir": {}}]
    assert len(parse_pod(doc, source="s").spec.containers) == 2


def test_duplicate_container_names() -> None:
    doc = base()
    doc["spec"]["containers"].append({"name": "c", "image": "x:1"})
    error = reject(doc)
    assert str(error) == 'pods/web.yaml: spec.containers[1].name: duplicate container name "c"'


def test_host_ports_conflict_across_containers() -> None:
    doc = with_container(ports=[{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}])
    doc["spec"]["containers"].append(
        {"name": "d", "image": "x:1", "ports": [{"containerPort": 80, "hostPort": 8080}]}
    )
    assert parse_pod(doc, source="s")  # same port, other protocol: fine
    doc["spec"]["containers"][1]["ports"][0]["protocol"] = "UDP"
    error = reject(doc)
    assert error.field == "spec.containers[1].ports[0].hostPort"
    assert error.problem == "8080/UDP is already used by spec.containers[0].ports[0].hostPort"


def test_host_network_host_port_must_equal_container_port() -> None:
    doc = with_container(ports=[{"containerPort": 80, "hostPort": 8080}])
    doc["spec"]["hostNetwork"] = True
    error = reject(doc)
    assert error.field == f"{C0}.ports[0].hostPort"
    assert error.problem == "must equal containerPort (80) when spec.hostNetwork is true"


def test_host_network_same_port_in_two_containers_conflicts() -> None:
    doc = with_container(ports=[{"containerPort": 80}])
    doc["spec"]["containers"].append(
        {"name": "d", "image": "x:1", "ports": [{"containerPort": 80}]}
    )
    assert parse_pod(doc, source="s")  # own network namespace: no host port, no conflict
    doc["spec"]["hostNetwork"] = True
    assert "already used" in reject(doc).problem


@pytest.mark.parametrize("doc", [None, [], "text", 3, True])
def test_non_object_documents(doc: Any) -> None:
    error = reject(doc, source="s")
    assert error.field == ""
    assert str(error).startswith("s: a manifest must be an object (a v1 Pod), got ")


def test_empty_object_document() -> None:
    assert str(reject({}, source="s")) == "s: empty document"


def test_non_string_keys_rejected() -> None:
    error = reject(_set(base(), "metadata.labels", {1: "a"}))
    assert error.field == "metadata.labels"
    assert error.problem == "keys must be strings, got integer 1"


def test_messages_quoted_in_the_docs() -> None:
    """The examples in docs/manifests.md are these exact messages."""

    def message(doc: dict[str, Any]) -> str:
        return str(reject(doc))

    assert (
        message(_set(base(), "spec.containers.0.securityContext", {"privileged": True}))
        == "pods/web.yaml: spec.containers[0].securityContext: not supported yet"
    )
    assert (
        message(_set(base(), "spec.containers.0.bogus", 1))
        == "pods/web.yaml: spec.containers[0].bogus: unknown field"
    )
    assert message(_set(base(), "spec.containers.0.name", "Web_1")) == (
        'pods/web.yaml: spec.containers[0].name: "Web_1" is not a valid DNS-1123 label '
        "(lowercase alphanumerics and '-', start and end alphanumeric, at most 63 characters)"
    )
    assert message(with_container(resources={"limits": {"cpu": "lots"}})) == (
        'pods/web.yaml: spec.containers[0].resources.limits.cpu: "lots" is not a Kubernetes '
        "quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3"
    )
    assert message(
        with_container(resources={"limits": {"cpu": "1"}, "requests": {"cpu": "2"}})
    ) == (
        'pods/web.yaml: spec.containers[0].resources.requests.cpu: "2" is more than the limit "1" '
        "(a request must be less than or equal to its limit)"
    )
    assert message(
        _set(base(), "spec.volumes", [{"name": "v", "emptyDir": {"medium": "Memory"}}])
    ) == (
        'pods/web.yaml: spec.volumes[0].emptyDir.medium: "Memory" not supported yet '
        '(only the default disk medium "")'
    )
    assert message(_set(base(), "spec.terminationGracePeriodSeconds", "30")) == (
        "pods/web.yaml: spec.terminationGracePeriodSeconds: must be an integer, got string"
    )
    assert message(with_container(env=[{"name": "MODE", "value": 755}])) == (
        "pods/web.yaml: spec.containers[0].env[0].value: must be a string, got integer "
        "(quote it in YAML)"
    )
    assert message(_set(base(), "metadata.uid", "../..")) == (
        'pods/web.yaml: metadata.uid: "../.." is not a valid uid (at most 128 alphanumerics, '
        "'-', '_' and '.', starting and ending alphanumeric, such as a UUID)"
    )
