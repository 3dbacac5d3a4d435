"""``nodectl describe`` in kubectl's human layout (agent.cli.nodectl_describe), on status
fixtures: the rows and their alignment as Go's tabwriter gives kubectl's, the container states,
probes, environment, mounts, conditions, volumes; a node's conditions, addresses, capacity,
the pods on it with their requests against its capacity; every server value escaped."""

from __future__ import annotations

from typing import Any

from agent.cli.nodectl_describe import Layout, describe_node, describe_pod

NOW = 1_796_299_200.0  # 2026-12-03T12:00:00Z


def pod(**status: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "busybox:1",
        "command": ["sh", "-c", "sleep 1"],
        "ports": [{"containerPort": 80, "name": "http"}],
        "resources": {"limits": {"cpu": "200m", "memory": "64Mi"}, "requests": {"cpu": "100m"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5},
        "readinessProbe": {"exec": {"command": ["cat", "/tmp/ok"]}, "initialDelaySeconds": 2},
        "startupProbe": {"tcpSocket": {"port": 53}, "failureThreshold": 30},
        "env": [
            {"name": "FOO", "value": "bar\x1b[2J"},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        ],
        "volumeMounts": [
            {"name": "data", "mountPath": "/data"},
            {"name": "host", "mountPath": "/h", "readOnly": True, "subPath": "x"},
        ],
    }
    return {
        "metadata": {
            "name": "web",
            "namespace": "default",
            "labels": {"app": "web", "tier": "front\nforged: row"},
            "annotations": {"node-agent.io/mirror": "true"},
            "creationTimestamp": "2026-12-03T11:50:00Z",
        },
        "spec": {
            "nodeName": "n1",
            "initContainers": [{"name": "setup", "image": "busybox:1"}],
            "containers": [container],
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "host", "hostPath": {"path": "/srv", "type": "Directory"}},
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.5",
            "podIP": "172.17.0.2",
            "podIPs": [{"ip": "172.17.0.2"}],
            "startTime": "2026-12-03T11:50:01Z",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "False"},
                {"type": "PodScheduled", "status": "True"},
            ],
            "initContainerStatuses": [
                {
                    "name": "setup",
                    "state": {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": "2026-12-03T11:50:02Z",
                            "finishedAt": "2026-12-03T11:50:03Z",
                        }
                    },
                    "ready": True,
                    "restartCount": 0,
                }
            ],
            "containerStatuses": [
                {
                    "name": "main",
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                    "lastState": {
                        "terminated": {
                            "exitCode": 3,
                            "reason": "Error",
                            "startedAt": "2026-12-03T11:58:00Z",
                            "finishedAt": "2026-12-03T11:58:01Z",
                        }
                    },
                    "ready": False,
                    "restartCount": 2,
                    "imageID": "docker-pullable://busybox@sha256:ab",
                    "containerID": "docker://0123",
                }
            ],
            **status,
        },
    }


def test_tabwriter_alignment_as_kubectl() -> None:
    out = Layout()
    out.add(0, "Name:\tweb")
    out.add(0, "Service Account:\tdefault")
    out.add(0, "IPs:")
    out.add(1, "IP:\t10.0.0.1")
    assert out.render().splitlines() == [
        "Name:             web",
        "Service Account:  default",
        "IPs:",
        "  IP:  10.0.0.1",
    ]


def test_describe_pod_rows() -> None:
    text = describe_pod(pod(), [], NOW)
    lines = text.splitlines()
    assert lines[:12] == [
        "Name:         web",
        "Namespace:    default",
        "Node:         n1/10.0.0.5",
        "Start Time:   Thu, 03 Dec 2026 11:50:01 +0000",
        "Labels:       app=web",
        "              tier=front\\nforged: row",
        "Annotations:  node-agent.io/mirror: true",
        "Status:       Running",
        "IP:           172.17.0.2",
        "IPs:",
        "  IP:  172.17.0.2",
        "Init Containers:",
    ]
    main = lines[lines.index("Containers:") + 1 :]
    assert main[:20] == [
        "  main:",
        "    Container ID:  docker://0123",
        "    Image:         busybox:1",
        "    Image ID:      docker-pullable://busybox@sha256:ab",
        "    Port:          80/TCP (http)",
        "    Host Port:     0/TCP",
        "    Command:",
        "      sh",
        "      -c",
        "      sleep 1",
        "    State:          Waiting",
        "      Reason:       CrashLoopBackOff",
        "      Message:      back-off 10s",
        "    Last State:     Terminated",
        "      Reason:       Error",
        "      Exit Code:    3",
        "      Started:      Thu, 03 Dec 2026 11:58:00 +0000",
        "      Finished:     Thu, 03 Dec 2026 11:58:01 +0000",
        "    Ready:          False",
        "    Restart Count:  2",
    ]
    assert (
        "    Liveness:   http-get http://:8080/healthz delay=0s timeout=1s period=5s "
        "#success=1 #failure=3" in lines
    )
    assert (
        "    Readiness:  exec [cat /tmp/ok] delay=2s timeout=1s period=10s #success=1 #failure=3"
        in lines
    )
    assert (
        "    Startup:    tcp-socket :53 delay=0s timeout=1s period=10s #success=1 #failure=30"
        in lines
    )
    assert "      FOO:   bar\\x1b[2J" in lines and "      NODE:   (v1:spec.nodeName)" in lines
    assert "      /data from data (rw)" in lines and '      /h from host (ro,path="x")' in lines
    assert "      cpu:     200m" in lines and "      memory:  64Mi" in lines
    setup = lines[lines.index("Init Containers:") + 1 : lines.index("Containers:")]
    assert "    State:          Terminated" in setup and "      Reason:       Completed" in setup
    assert "      Exit Code:    0" in setup and "    Ready:          True" in setup
    conditions = lines[lines.index("Conditions:") + 1 : lines.index("Volumes:")]
    assert conditions == [
        "  Type          Status",
        "  Initialized   True",
        "  Ready         False",
        "  PodScheduled  True",
    ]
    volumes = lines[lines.index("Volumes:") + 1 : lines.index("Events:  <none>")]
    assert volumes == [
        "  data:",
        "    Type:       EmptyDir (a temporary directory that shares a pod's lifetime)",
        "    Medium:",
        "    SizeLimit:  <unset>",
        "  host:",
        "    Type:          HostPath (bare host directory volume)",
        "    Path:          /srv",
        "    HostPathType:  Directory",
    ]
    assert all(line.isprintable() for line in lines)
    # Fields the cluster does not have are left out, not invented.
    for absent in ("Priority:", "Service Account:", "QoS Class:", "Tolerations:"):
        assert absent not in text


def test_a_terminating_pod_and_one_not_yet_placed() -> None:
    terminating = pod()
    terminating["metadata"] |= {
        "deletionTimestamp": "2026-12-03T11:59:30Z",
        "deletionGracePeriodSeconds": 30,
    }
    lines = describe_pod(terminating, [], NOW).splitlines()
    assert "Status:                    Terminating (lasts 30s)" in lines
    assert "Termination Grace Period:  30s" in lines
    pending = {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Pending", "reason": "Evicted", "message": "node n1 NotReady"},
    }
    lines = describe_pod(pending, [], NOW).splitlines()
    assert "Node:         <none>" in lines and "Reason:       Evicted" in lines
    assert "    State:          Waiting" in lines and "      Reason:       Pending" in lines
    assert "    Environment:    <none>" in lines and "    Mounts:         <none>" in lines


def node() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "n1",
            "labels": {"zone": "a", "node-role.kubernetes.io/edge": ""},
            "creationTimestamp": "2026-12-03T10:00:00Z",
        },
        "spec": {"unschedulable": True},
        "status": {
            "registration": {
                "phase": "Approved",
                "admittedBy": "open",
                "keyFingerprint": "sha256:ab",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "LeaseCurrent",
                    "lastHeartbeatTime": "2026-12-03T11:59:59Z",
                },
                {"type": "RuntimeReady", "status": "False", "reason": "DockerDown", "message": "x"},
            ],
            "addresses": [
                {"type": "InternalIP", "address": "10.0.0.5"},
                {"type": "Hostname", "address": "n1.example"},
            ],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "nodeInfo": {"agentVersion": "0.1.0"},
        },
    }


def test_describe_node_rows() -> None:
    finished = pod(phase="Succeeded")
    finished["metadata"] = {**finished["metadata"], "name": "done"}
    text = describe_node(node(), [pod(), finished], [], NOW)
    lines = text.splitlines()
    assert lines[:6] == [
        "Name:               n1",
        "Roles:              edge",
        "Labels:             node-role.kubernetes.io/edge=",
        "                    zone=a",
        "CreationTimestamp:  Thu, 03 Dec 2026 10:00:00 +0000",
        "Unschedulable:      true",
    ]
    conditions = lines[lines.index("Conditions:") + 1 : lines.index("Addresses:")]
    assert conditions[0].split() == ["Type", "Status", "LastHeartbeatTime", "Reason", "Message"]
    assert conditions[2].startswith("  Ready         True    Thu, 03 Dec 2026 11:59:59 +0000")
    assert conditions[3].split() == ["RuntimeReady", "False", "DockerDown", "x"]
    assert "  InternalIP:  10.0.0.5" in lines and "  Hostname:    n1.example" in lines
    assert "  cpu:     4" in lines and "  pods:    110" in lines
    assert "  Node Agent Version:  0.1.0" in lines
    pods = lines[lines.index("Allocated resources:") - 4 : lines.index("Allocated resources:")]
    assert pods[0].split() == ["Non-terminated", "Pods:", "(1", "in", "total)"]
    assert pods[3].split() == [
        "default",
        "web",
        "100m",
        "(2%)",
        "200m",
        "(5%)",
        "64Mi",
        "(0%)",
        "64Mi",
        "(0%)",
        "10m",
    ]
    allocated = lines[lines.index("Allocated resources:") + 1 :]
    assert allocated[3].split() == ["cpu", "100m", "(2%)", "200m", "(5%)"]
    assert lines[-1] == "Events:  <none>"
    assert "Taints:" not in text and "Allocatable:" not in text  # not this cluster's
