"""``nodectl apply -f`` reads files with the strict loader the master and the agent use (issue
14, item 9): what the loader refuses (a repeated key, a tag, an alias bomb, 5,000-deep nesting,
a lone surrogate) is an exit 2 naming the path, nothing sent; what it takes is sent as read,
and the master's refusal names which document of the file it was."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import nodectl
from agent.errors import CliError
from agent.manifest import pod_documents
from tests.hostile_manifests import FILES, Hostile

POD = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec: {containers: [{name: c, image: x}]}\n"
)


class StubMaster:
    """Records the bodies posted; refuses the pods named in ``refuse``."""

    last_headers = {"x-apply-result": "created"}  # what the master says it did

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.posted: list[Any] = []
        self.refuse = refuse

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        assert (method, path) == ("POST", "/v1/pods")
        self.posted.append(body)
        name = body["metadata"]["name"]  # type: ignore[index]
        if name in self.refuse:
            raise CliError("Error from server (422): api: spec: a reason")
        return {"metadata": {"name": name}}


def _apply(master: StubMaster, path: Path) -> None:
    nodectl.cmd_apply(master, argparse.Namespace(filename=str(path)))  # type: ignore[arg-type]


@pytest.mark.parametrize("hostile", FILES, ids=lambda h: h.id)
def test_a_hostile_file_is_refused_here_or_sent_as_read(
    hostile: Hostile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(hostile.text.encode())
    master = StubMaster()
    try:
        _apply(master, path)
    except CliError as exc:
        assert exc.exit_code == 2 and master.posted == []
        message = str(exc)
        assert message.startswith(f"{path}: {hostile.field}"), message[:300]
        assert hostile.problem in message and len(message) < 1000
    else:  # valid YAML: the master's parser is the one that refuses it (its own tests)
        [(_, document)] = pod_documents(hostile.text, source="t")
        assert master.posted == [document]


def test_a_repeated_key_is_not_the_last_one_silently(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POD.replace("NAME", "a") + "spec: {containers: []}\n")
    with pytest.raises(
        CliError, match=r'p\.yaml: spec: duplicate key "spec" \(line 5, column 1\)$'
    ):
        _apply(StubMaster(), path)


def test_the_masters_refusal_names_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POD.replace("NAME", "a") + "---\n" + POD.replace("NAME", "b"))
    master = StubMaster(refuse=frozenset({"b"}))
    with pytest.raises(CliError) as caught:
        _apply(master, path)
    assert str(caught.value) == "document 2: Error from server (422): api: spec: a reason"
    assert capsys.readouterr().out == "pod/a created\n"


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"\xff", "not UTF-8 (at byte 0)"), (b"#" * (1 << 20) + b"\n", "larger than 1048576 bytes")],
)
def test_unreadable_files_are_usage_errors(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(data)
    with pytest.raises(CliError) as caught:
        _apply(StubMaster(), path)
    assert str(caught.value) == f"{path}: {problem}" and caught.value.exit_code == 2
    with pytest.raises(CliError, match="No such file"):
        _apply(StubMaster(), tmp_path / "missing.yaml")


# -- issue 17 items 6 and 7: dry runs, every error, warnings, --force -------------------------

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "kubectl"
FORBIDDEN = (
    "Forbidden: pod updates may not change fields other than spec.containers[*].image and "
    "spec.initContainers[*].image (changed: spec.containers[0].ports; ...)"
)


class Master:
    """Answers as the master would; ``forbid`` makes the first POST a 422 Forbidden update."""

    last_headers = {"x-apply-result": "created"}

    def __init__(self, forbid: bool = False, gone_after: int = 1) -> None:
        self.calls: list[tuple[str, str]] = []
        self.forbid = forbid
        self.gone_after = gone_after  # GETs still finding the deleted pod

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        self.calls.append((method, path))
        if method == "POST" and self.forbid:
            self.forbid = False
            raise nodectl.ServerError(
                422, "Invalid", f"api: spec: {FORBIDDEN}", (("spec", FORBIDDEN),)
            )
        if method == "GET":
            if self.gone_after == 0:
                raise nodectl.ServerError(404, "NotFound", "not found")
            self.gone_after -= 1
        return {"metadata": {"name": body["metadata"]["name"] if body else "x"}}  # type: ignore[index]


def _run(master: Any, path: Path, **flags: Any) -> None:
    args = argparse.Namespace(filename=str(path), dry_run="none", force=False, output=None)
    vars(args).update(flags)
    nodectl.cmd_apply(master, args)


THREE_ERRORS = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
    "spec:\n  restartPolicy: Sometimes\n  containers:\n  - {name: C, image: 'a b'}\n"
)


def test_dry_run_client_checks_here_and_sends_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    master = Master()
    _run(master, FIXTURES / "run-dry-run.yaml", dry_run="client")
    assert master.calls == []
    assert capsys.readouterr().out == "pod/x created (dry run)\n"
    _run(master, FIXTURES / "run-dry-run.yaml", dry_run="client", output="json")
    sent = json.loads(capsys.readouterr().out)
    assert sent["spec"]["containers"][0]["imagePullPolicy"] == "Always"
    assert master.calls == []


def test_every_error_is_printed_as_kubectl_does(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(THREE_ERRORS)
    master = Master()
    with pytest.raises(CliError) as caught:
        _run(master, path, dry_run="client")
    lines = str(caught.value).splitlines()
    assert lines[0] == 'The Pod "x" is invalid:'
    assert [line.split(":")[0] for line in lines[1:]] == [
        "* spec.containers[0].name",
        "* spec.containers[0].image",
        "* spec.restartPolicy",
    ]
    assert caught.value.exit_code == 1 and master.calls == []


def test_the_masters_causes_are_printed_all(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POD.replace("NAME", "a"))
    causes = (("spec.a", "one"), ("spec.b", "two"))

    class Refusing(Master):
        def call(self, method: str, path: str, body: object | None = None) -> Any:
            raise nodectl.ServerError(422, "Invalid", "api: spec.a: one (and 1 more error)", causes)

    with pytest.raises(CliError) as caught:
        _run(Refusing(), path)
    assert str(caught.value) == 'The Pod "a" is invalid:\n* spec.a: one\n* spec.b: two'


def test_the_api_servers_additions_are_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    master = Master()
    _run(master, FIXTURES / "get-pod.yaml")
    out, err = capsys.readouterr()
    assert out == "pod/sleeper created\n"
    assert [line.split(":")[1].strip() for line in err.splitlines()] == [
        "spec.tolerations",
        "spec.volumes[0]",
        "spec.nodeName",
    ]
    assert all(line.startswith("Warning: ") for line in err.splitlines())
    assert master.calls == [("POST", "/v1/pods")]


def test_dry_run_server_asks_the_master_not_to_store(
    capsys: pytest.CaptureFixture[str],
) -> None:
    master = Master()
    _run(master, FIXTURES / "run-dry-run.yaml", dry_run="server")
    assert master.calls == [("POST", "/v1/pods?dryRun=All")]
    assert capsys.readouterr().out == "pod/x created (server dry run)\n"


def test_a_forbidden_update_is_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(POD.replace("NAME", "a"))
    with pytest.raises(CliError) as caught:
        _run(Master(forbid=True), path)
    assert str(caught.value) == f'The Pod "a" is invalid: spec: {FORBIDDEN}'
    master = Master(forbid=True, gone_after=2)
    monkey = pytest.MonkeyPatch()
    monkey.setattr(nodectl, "FORCE_POLL_S", 0.0)
    try:
        _run(master, path, force=True)
    finally:
        monkey.undo()
    pod_path = "/v1/namespaces/default/pods/a"
    assert master.calls == [
        ("POST", "/v1/pods"),
        ("DELETE", pod_path),
        ("GET", pod_path),
        ("GET", pod_path),
        ("GET", pod_path),  # 404: gone
        ("POST", "/v1/pods"),
    ]
    assert capsys.readouterr().out == "pod/a replaced\n"
    # --force with a server dry run never deletes.
    master = Master(forbid=True)
    with pytest.raises(CliError):
        _run(master, path, force=True, dry_run="server")
    assert [m for m, _ in master.calls] == ["POST"]
