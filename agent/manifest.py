"""TEMPORARY minimal parser (replaced by the full one)."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

import yaml

from agent.errors import ManifestError
from agent.quantity import parse_cpu_millis, parse_memory_bytes
from agent.types import (
    Container,
    ContainerPort,
    EnvVar,
    FieldRef,
    ObjectMeta,
    Pod,
    PodSpec,
    PullPolicy,
    Resources,
    RestartPolicy,
    _frozen_map,
)


def parse_manifests(text: str, *, source: str, node_name: str | None = None) -> list[Pod]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ManifestError("", f"invalid YAML: {exc}", source) from exc
    return [parse_pod(d, source=source, node_name=node_name) for d in docs]


def parse_pod(
    doc: Any, *, source: str, node_name: str | None = None, index: int | None = None
) -> Pod:
    doc = json.loads(json.dumps(doc))
    spec = doc["spec"]
    for i, c in enumerate(spec["containers"]):
        for k in c:
            if k not in (
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
            ):
                raise ManifestError(f"spec.containers[{i}].{k}", "not supported yet", source)
    meta = doc["metadata"]
    meta.setdefault("namespace", "default")
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    if node_name and "nodeName" not in spec:
        spec["nodeName"] = node_name
    if not meta.get("uid"):
        h = hashlib.sha256(((node_name or "") + json.dumps(doc, sort_keys=True)).encode()).digest()
        meta["uid"] = str(uuid.UUID(bytes=h[:16]))
    containers = []
    for c in spec["containers"]:
        env = []
        for e in c.get("env", []):
            if "valueFrom" in e:
                env.append(
                    EnvVar(e["name"], field_ref=FieldRef(e["valueFrom"]["fieldRef"]["fieldPath"]))
                )
            else:
                env.append(EnvVar(e["name"], e.get("value", "")))
        res = c.get("resources", {})
        lim, req = res.get("limits", {}), res.get("requests", {})
        containers.append(
            Container(
                name=c["name"],
                image=c["image"],
                image_pull_policy=PullPolicy(c.get("imagePullPolicy", "IfNotPresent")),
                command=tuple(c.get("command", ())),
                args=tuple(c.get("args", ())),
                env=tuple(env),
                ports=tuple(
                    ContainerPort(p["containerPort"], host_port=p.get("hostPort"))
                    for p in c.get("ports", [])
                ),
                resources=Resources(
                    cpu_request_millis=parse_cpu_millis(req["cpu"], "x") if "cpu" in req else None,
                    cpu_limit_millis=parse_cpu_millis(lim["cpu"], "x") if "cpu" in lim else None,
                    memory_request_bytes=parse_memory_bytes(req["memory"], "x")
                    if "memory" in req
                    else None,
                    memory_limit_bytes=parse_memory_bytes(lim["memory"], "x")
                    if "memory" in lim
                    else None,
                ),
            )
        )
    return Pod(
        metadata=ObjectMeta(
            meta["name"],
            meta["namespace"],
            meta["uid"],
            _frozen_map(meta.get("labels")),
            _frozen_map(meta.get("annotations")),
        ),
        spec=PodSpec(
            containers=tuple(containers),
            restart_policy=RestartPolicy(spec["restartPolicy"]),
            termination_grace_period_s=spec["terminationGracePeriodSeconds"],
            host_network=spec.get("hostNetwork", False),
            node_name=spec.get("nodeName"),
        ),
        manifest=doc,
        source=source,
    )
