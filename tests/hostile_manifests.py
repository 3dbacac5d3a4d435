"""The hostile manifests of issue 14 (item 9 of "Why": found by fuzzing the parser and the two
paths into it), one corpus for the unit tests of the parser (tests/unit/test_manifest_loader.py)
and the integration test that drops them into a real agent's manifest directory and applies them
to a real master with ``nodectl`` (tests/integration/test_hostile_manifests.py), and the bench
that measures each one's time and memory (bench/hostile_manifests.py).

Each entry is the text of a file (YAML, as an operator would write it) and, where a JSON request
body can carry the same attack, that body for ``POST /v1/pods``; with the field path the error
must name and a piece of its problem. Every error must also be short and free of Python reprs
(:func:`assert_clear`).
"""

from __future__ import annotations

import dataclasses
import json
import re

from agent.errors import ManifestError
from agent.manifest_loader import load_yaml

MESSAGE_MAX_CHARS = 1000  # a clear error: bounded whatever the value (a 900 KB name, ...)
_REPRS = re.compile(r"\bNone\b|\bTrue\b|\bFalse\b|datetime\.|Decimal\(|Fraction\(|\bb'|\[\.\.\.\]")


def pod(
    spec_extra: str = "", meta_extra: str = "", container_extra: str = "", name: str = "hostile"
) -> str:
    """A valid pod's YAML with hostile pieces spliced in (each ends its own line)."""
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata:\n  name: {name}\n{meta_extra}"
        "spec:\n"
        f"{spec_extra}"
        "  containers:\n"
        "  - name: main\n    image: busybox:1\n"
        f"{container_extra}"
    )


@dataclasses.dataclass(frozen=True)
class Hostile:
    id: str
    text: str  # the file
    field: str  # the path the error names (a prefix of it: deep paths are shortened)
    problem: str  # a piece of the problem
    body: bytes | None = None  # the same attack as a JSON body for the master, if JSON can
    body_field: str | None = None  # the master's error, if not `field` and `problem`
    body_problem: str | None = None


def _body(text: str) -> bytes:
    """The JSON body carrying a YAML text that the strict loader reads (a pod-level attack)."""
    [document] = load_yaml(text, source="corpus")
    return json.dumps(document).encode()


_MANY_CONTAINERS = (
    "".join(f"  - name: c{i}\n    image: busybox:1\n" for i in range(1, 8000))
    + "  - name: c1\n    image: busybox:1\n"  # the 8,000th repeats the first
)
_BIG = "1" * 900_000
_ANCHORED = "x" * 100_000
_NAME = "a" * 900_000

CORPUS: list[Hostile] = [
    Hostile(
        "surrogate-in-annotation",
        pod(meta_extra='  annotations: {a: "\\ud800"}\n'),
        "metadata.annotations.a",
        "invalid Unicode character escape code",
        body=b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostile", '
        b'"annotations": {"a": "\\ud800"}}, "spec": {"containers": '
        b'[{"name": "main", "image": "busybox:1"}]}}',
        body_problem='"\\ud800" holds a lone surrogate',
    ),
    Hostile(
        "surrogate-in-env",
        pod(container_extra='    env: [{name: X, value: "\\udfff"}]\n'),
        "spec.containers[0].env[0].value",
        "invalid Unicode character escape code",
        body=b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostile"}, '
        b'"spec": {"containers": [{"name": "main", "image": "busybox:1", '
        b'"env": [{"name": "X", "value": "\\udfff"}]}]}}',
        body_problem='"\\udfff" holds a lone surrogate',
    ),
    Hostile(
        "timestamp-tag",
        pod().replace("name: hostile", "name: !!timestamp p"),
        "metadata.name",
        'the tag "tag:yaml.org,2002:timestamp" is not supported',
    ),
    Hostile(
        "empty-int-tag",
        pod(spec_extra="  terminationGracePeriodSeconds: !!int\n"),
        "spec.terminationGracePeriodSeconds",
        '"" is not a valid int',
    ),
    Hostile(
        "bool-tag-maybe",
        pod(spec_extra="  hostNetwork: !!bool maybe\n"),
        "spec.hostNetwork",
        '"maybe" is not a valid bool',
    ),
    Hostile(
        "python-tag",
        pod(spec_extra="  hostNetwork: !!python/object/apply:os.system [true]\n"),
        "spec.hostNetwork",
        "is not supported",
    ),
    Hostile(
        "binary-tag",
        pod(container_extra="    args: [!!binary aGVsbG8=]\n"),
        "spec.containers[0].args[0]",
        'the tag "tag:yaml.org,2002:binary" is not supported',
    ),
    Hostile(
        "8000-containers-one-duplicate",
        pod().replace("  - name: main\n    image: busybox:1\n", "  - name: c0\n    image: x\n")
        + _MANY_CONTAINERS,
        "spec.containers[8000].name",
        'duplicate container name "c1"',
        body=b"",  # filled below: the same pod as JSON
    ),
    Hostile(
        "900000-digit-memory",
        pod(container_extra=f"    resources:\n      limits: {{memory: {_BIG}}}\n"),
        "spec.containers[0].resources.limits.memory",
        "a number of 900000 characters",
    ),
    Hostile(
        "900000-digit-memory-quoted",
        pod(container_extra=f'    resources:\n      limits: {{memory: "{_BIG}"}}\n'),
        "spec.containers[0].resources.limits.memory",
        "(at most 64 characters)",
        body=b"",
    ),
    Hostile(
        "alias-bomb",
        pod(
            meta_extra=f"  annotations: {{s: &s {_ANCHORED}}}\n",
            container_extra="    args: [" + ", ".join(["*s"] * 3000) + "]\n",
        ),
        "spec.containers[0].args[",
        "expands to more than 1048576 characters",
    ),
    Hostile(
        "one-mib-flow-list",
        pod(container_extra="    args: [" + "x," * 500_000 + "]\n"),
        "spec.containers[0].args[",
        "more than 100000 values in one text",
    ),
    Hostile(
        "repeated-containers-key",
        pod() + "  containers: []\n",
        "spec.containers",
        'duplicate key "containers"',
        body=b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostile"}, '
        b'"spec": {"containers": [{"name": "main", "image": "busybox:1"}], "containers": []}}',
        body_problem='duplicate key "containers"',
    ),
    Hostile(
        "5000-deep-nesting",
        pod(container_extra="    args: " + "[" * 5000 + "]" * 5000 + "\n"),
        "spec.containers[0].args",
        "nest",
        body=b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostile"}, '
        b'"spec": {"containers": [{"name": "main", "image": "busybox:1", "args": '
        + b"[" * 5000
        + b"]" * 5000
        + b"}]}}",
        body_problem="nested more than 100 levels deep",
    ),
    Hostile(
        "mount-path-double-slash",
        pod(
            spec_extra="  volumes: [{name: v, emptyDir: {}}]\n",
            container_extra="    volumeMounts: [{name: v, mountPath: //}]\n",
        ),
        "spec.containers[0].volumeMounts[0].mountPath",
        "must not be '/'",
        body=b"",
    ),
    Hostile(
        "mount-paths-a-and-double-slash-a",
        pod(
            spec_extra="  volumes: [{name: v, emptyDir: {}}, {name: w, emptyDir: {}}]\n",
            container_extra="    volumeMounts: [{name: v, mountPath: /a}, {name: w, mountPath: //a}]\n",
        ),
        "spec.containers[0].volumeMounts[1].mountPath",
        '"//a" is already a mount point',
        body=b"",
    ),
    Hostile(
        "null-quantity",
        pod(container_extra="    resources:\n      limits: {memory: null}\n"),
        "spec.containers[0].resources.limits.memory",
        "got null",
        body=b"",
    ),
    Hostile(
        "date-as-grace-period",
        pod(spec_extra="  terminationGracePeriodSeconds: 2024-01-01\n"),
        "spec.terminationGracePeriodSeconds",
        "must be an integer, got string",
        body=b"",
    ),
    Hostile(
        "keys-1-and-true",
        pod(meta_extra="  labels: {1: a, true: b}\n"),
        "metadata.labels.true",
        'duplicate key true (equal to "1")',
    ),
    Hostile(
        "900-kb-name",
        pod(name=_NAME),
        "metadata.name",
        "(900000 characters) is not a valid DNS-1123 subdomain",
        body=b"",
    ),
    Hostile(
        "json-900000-digit-number",
        pod(),  # (the file is fine: this one is the body's)
        "",
        "",
        body=b'{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hostile"}, '
        b'"spec": {"terminationGracePeriodSeconds": ' + _BIG.encode() + b', "containers": '
        b'[{"name": "main", "image": "busybox:1"}]}}',
        body_field="spec.terminationGracePeriodSeconds",
        body_problem="a number of 900000 characters",
    ),
]
CORPUS = [dataclasses.replace(h, body=_body(h.text)) if h.body == b"" else h for h in CORPUS]
FILES = [h for h in CORPUS if h.field]  # the entries whose file is hostile
BODIES = [h for h in CORPUS if h.body is not None]


def assert_clear(error: ManifestError, field: str, problem: str) -> None:
    """The error names ``field`` (a prefix of its path), says ``problem``, is short and shows
    no Python repr."""
    message = str(error)
    assert error.field.startswith(field), (error.field[:200], field)
    assert problem in error.problem, (error.problem[:300], problem)
    assert len(message) < MESSAGE_MAX_CHARS, message[:300]
    assert not _REPRS.search(message), message[:300]
    message.encode("utf-8")  # never a lone surrogate


def body_expectation(hostile: Hostile) -> tuple[str, str]:
    """The field and problem the master's answer to ``hostile.body`` names."""
    return (
        hostile.field if hostile.body_field is None else hostile.body_field,
        hostile.problem if hostile.body_problem is None else hostile.body_problem,
    )
