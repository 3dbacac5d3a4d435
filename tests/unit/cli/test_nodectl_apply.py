"""``nodectl apply -f`` reads files with the strict loader the master and the agent use (issue
14, item 9): what the loader refuses (a repeated key, a tag, an alias bomb, 5,000-deep nesting,
a lone surrogate) is an exit 2 naming the path, nothing sent; what it takes is sent as read,
and the master's refusal names which document of the file it was."""

from __future__ import annotations

import argparse
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
    assert capsys.readouterr().out == "pod/a applied\n"


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
