"""Manifests people already have (issue 17 item 6): kubectl's own output applies unchanged,
fields at their Kubernetes default are normalised away, the API server's additions are dropped
with a warning, and a document's errors are reported all at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ManifestError
from agent.manifest import MAX_ERRORS, parse_manifests, parse_pod

FIXTURES = Path(__file__).parent.parent / "fixtures" / "kubectl"


def base() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "img:1"}]},
    }


def parsed(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    pod = parse_pod(doc, source="t", warnings=warnings)
    return dict(pod.manifest), warnings


BASE_MANIFEST, _ = parsed(base())


def test_kubectl_get_pod_output_parses_with_warnings_for_what_the_api_server_added() -> None:
    warnings: list[str] = []
    [pod] = parse_manifests(
        (FIXTURES / "get-pod.yaml").read_text(), source="get-pod.yaml", warnings=warnings
    )
    assert pod.full_name == "default/sleeper"
    [container] = pod.spec.containers
    assert container.image == "node-agent-test/busybox:latest"
    assert container.command == ("sleep", "3600")
    assert [p.container_port for p in container.ports] == [8080]
    assert container.volume_mounts == ()  # the token mount went with its volume
    assert pod.spec.volumes == ()
    assert pod.spec.node_name is None  # kind-worker: the other cluster's scheduler chose it
    spec = pod.manifest["spec"]
    assert set(spec) == {"containers", "restartPolicy", "terminationGracePeriodSeconds"}
    assert set(spec["containers"][0]) == {
        "name",
        "image",
        "imagePullPolicy",
        "command",
        "env",
        "ports",
    }
    assert len(warnings) == 3
    assert any(w.startswith("spec.tolerations: ") for w in warnings)
    assert any(w.startswith('spec.volumes[0]: "kube-api-access-9xq7c"') for w in warnings)
    assert any(w.startswith('spec.nodeName: "kind-worker"') for w in warnings)


def test_kubectl_run_dry_run_output_parses_without_warnings() -> None:
    warnings: list[str] = []
    [pod] = parse_manifests(
        (FIXTURES / "run-dry-run.yaml").read_text(), source="run.yaml", warnings=warnings
    )
    assert pod.full_name == "default/x"
    assert pod.spec.containers[0].image == "busybox"
    assert warnings == []


def test_a_node_name_in_a_manifest_of_ones_own_is_a_pin() -> None:
    doc = base()
    doc["spec"]["nodeName"] = "n1"
    manifest, warnings = parsed(doc)
    assert manifest["spec"]["nodeName"] == "n1"
    assert warnings == []


DEFAULTS: list[tuple[str, str, Any]] = [
    *(
        ("spec", key, value)
        for key, value in [
            ("dnsPolicy", "ClusterFirst"),
            ("enableServiceLinks", True),
            ("schedulerName", "default-scheduler"),
            ("priority", 0),
            ("preemptionPolicy", "PreemptLowerPriority"),
            ("serviceAccountName", "default"),
            ("serviceAccount", "default"),
            ("securityContext", {}),
            ("hostIPC", False),
            ("hostPID", False),
            ("shareProcessNamespace", False),
            ("setHostnameAsFQDN", False),
            ("tolerations", []),
            ("nodeSelector", {}),
            ("affinity", {}),
            ("imagePullSecrets", []),
            ("hostAliases", []),
            ("priorityClassName", ""),
            ("hostname", ""),
            ("subdomain", ""),
            ("dnsConfig", {}),
            ("readinessGates", []),
            ("topologySpreadConstraints", []),
        ]
    ),
    *(
        ("container", key, value)
        for key, value in [
            ("terminationMessagePath", "/dev/termination-log"),
            ("terminationMessagePolicy", "File"),
            ("securityContext", {}),
            ("stdin", False),
            ("stdinOnce", False),
            ("tty", False),
            ("envFrom", []),
            ("volumeDevices", []),
            ("resizePolicy", []),
        ]
    ),
    ("metadata", "finalizers", []),
    ("metadata", "ownerReferences", []),
    ("metadata", "generateName", ""),
]

# The same fields with a value asking for something we do not do: still refused.
NON_DEFAULTS: list[tuple[str, str, Any]] = [
    ("spec", "dnsPolicy", "None"),
    ("spec", "enableServiceLinks", False),
    ("spec", "schedulerName", "other"),
    ("spec", "priority", 1),
    ("spec", "priority", False),  # not 0: a boolean is not the integer default
    ("spec", "preemptionPolicy", "Never"),
    ("spec", "serviceAccountName", "builder"),
    ("spec", "serviceAccount", "builder"),
    ("spec", "securityContext", {"runAsUser": 0}),
    ("spec", "hostPID", True),
    ("spec", "nodeSelector", {"disk": "ssd"}),
    ("spec", "tolerations", [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]),
    ("container", "terminationMessagePath", "/tmp/x"),
    ("container", "terminationMessagePolicy", "FallbackToLogsOnError"),
    ("container", "tty", True),
    ("container", "stdin", True),
    ("container", "securityContext", {"privileged": True}),
    ("metadata", "finalizers", ["x"]),
]


def _with(where: str, key: str, value: Any) -> dict[str, Any]:
    doc = base()
    target = {
        "spec": doc["spec"],
        "container": doc["spec"]["containers"][0],
        "metadata": doc["metadata"],
    }[where]
    target[key] = copy.deepcopy(value)
    return doc


@pytest.mark.parametrize(
    ("where", "key", "value"), DEFAULTS, ids=[f"{w}.{k}" for w, k, _ in DEFAULTS]
)
def test_a_field_at_its_default_or_empty_is_accepted_and_normalised_away(
    where: str, key: str, value: Any
) -> None:
    manifest, warnings = parsed(_with(where, key, value))
    assert manifest == {
        **BASE_MANIFEST,
        "metadata": {**BASE_MANIFEST["metadata"], "uid": manifest["metadata"]["uid"]},
    }
    assert warnings == []


@pytest.mark.parametrize(
    ("where", "key", "value"), NON_DEFAULTS, ids=[f"{w}.{k}={v!r}" for w, k, v in NON_DEFAULTS]
)
def test_the_same_fields_asking_for_more_are_still_refused(
    where: str, key: str, value: Any
) -> None:
    with pytest.raises(ManifestError) as info:
        parse_pod(_with(where, key, value), source="t")
    path = {"spec": "spec", "container": "spec.containers[0]", "metadata": "metadata"}[where]
    assert (info.value.field, info.value.problem) == (f"{path}.{key}", "not supported yet")


def test_the_default_tolerations_are_dropped_with_a_warning_and_others_refused() -> None:
    added = [
        {
            "effect": "NoExecute",
            "key": f"node.kubernetes.io/{k}",
            "operator": "Exists",
            "tolerationSeconds": 300,
        }
        for k in ("not-ready", "unreachable")
    ]
    manifest, warnings = parsed(_with("spec", "tolerations", added))
    assert "tolerations" not in manifest["spec"]
    assert len(warnings) == 1
    longer = [{**added[0], "tolerationSeconds": 600}]
    with pytest.raises(ManifestError, match=r"spec\.tolerations: not supported yet"):
        parse_pod(_with("spec", "tolerations", longer), source="t")


def test_a_projected_volume_not_named_as_the_token_volume_is_still_refused() -> None:
    doc = _with("spec", "volumes", [{"name": "mine", "projected": {"sources": []}}])
    with pytest.raises(ManifestError, match=r"spec\.volumes\[0\]\.projected: not supported yet"):
        parse_pod(doc, source="t")


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("nginx:latest@sha256:" + "a" * 64, "Always"),  # the tag decides, as Kubernetes
        ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
        ("nginx:1.25@sha256:" + "a" * 64, "IfNotPresent"),
        ("nginx", "Always"),
        ("nginx:latest", "Always"),
        ("registry:5000/nginx", "Always"),
        ("registry:5000/nginx:1.25", "IfNotPresent"),
    ],
)
def test_the_pull_policy_defaults_as_kubernetes(image: str, policy: str) -> None:
    manifest, _ = parsed(_with("container", "image", image))
    assert manifest["spec"]["containers"][0]["imagePullPolicy"] == policy


THREE_ERRORS = """\
apiVersion: v1
kind: Pod
metadata:
  name: Bad_Name
spec:
  containers:
  - name: c
    image: "img 1"
  restartPolicy: Sometimes
"""


def test_a_document_with_three_errors_reports_all_three_with_their_paths() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifests(THREE_ERRORS, source="bad.yaml")
    error = info.value
    # In document order, in one pass.
    assert error.causes == (
        ("metadata.name", error.causes[0][1]),
        ("spec.containers[0].image", '"img 1" must not contain whitespace'),
        ("spec.restartPolicy", error.causes[2][1]),
    )
    assert "DNS-1123" in error.causes[0][1]
    assert "Sometimes" in error.causes[2][1]
    # The single-error API is the first of them; the message names the source once.
    assert (error.field, error.source) == (error.causes[0][0], "bad.yaml")
    assert str(error).startswith("bad.yaml: metadata.name: ")
    assert str(error).endswith(" (and 2 more errors)")


def test_errors_in_several_containers_and_volumes_are_all_reported() -> None:
    doc = base()
    doc["spec"]["containers"] = [
        {"name": "a", "image": "i", "tty": True},
        {"name": "b", "image": "i", "ports": [{"containerPort": 0}]},
        {"name": "c", "image": "i", "volumeMounts": [{"name": "v", "mountPath": "rel"}]},
    ]
    doc["spec"]["volumes"] = [{"name": "v", "nfs": {"server": "x"}}]
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="t")
    assert [field for field, _ in info.value.causes] == [
        "spec.volumes[0].nfs",
        "spec.containers[0].tty",
        "spec.containers[1].ports[0].containerPort",
        # the volume with an error is still a volume name: only the mount's own error
        "spec.containers[2].volumeMounts[0].mountPath",
    ]


def test_one_error_keeps_the_single_error_message() -> None:
    doc = _with("container", "tty", True)
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="pods/web.yaml")
    assert str(info.value) == "pods/web.yaml: spec.containers[0].tty: not supported yet"
    assert info.value.causes == (("spec.containers[0].tty", "not supported yet"),)


def test_errors_are_bounded() -> None:
    doc = base()
    doc["spec"]["containers"] = [{"name": f"c{i}", "image": "i", "tty": True} for i in range(80)]
    with pytest.raises(ManifestError) as info:
        parse_pod(doc, source="t")
    assert len(info.value.causes) == MAX_ERRORS + 1
    assert info.value.causes[-1] == ("", f"too many errors: stopped after {MAX_ERRORS}")
