"""``node-agent check FILE…`` (issue 17 item 6): every error of a static manifest with its path,
the API server's additions as warnings, or what the agent would run; non-zero on any error."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import node_agent

FIXTURES = Path(__file__).parent.parent.parent / "fixtures" / "kubectl"

BAD = (
    "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
    "spec:\n  restartPolicy: Sometimes\n  containers:\n  - {name: C, image: 'a b'}\n"
)


def test_valid_files_say_what_the_agent_would_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = node_agent.main(["check", "--node-name", "n1", str(FIXTURES)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.splitlines() == [
        "ok: pod default/sleeper (1 container)",  # get-pod.yaml
        "ok: pod default/x (1 container)",  # run-dry-run.yaml
    ]
    assert len(err.splitlines()) == 3
    assert all(line.startswith(f"Warning: {FIXTURES}/get-pod.yaml: ") for line in err.splitlines())


def test_every_error_of_every_file_and_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    two = tmp_path / "two.yaml"
    two.write_text((FIXTURES / "run-dry-run.yaml").read_text() + "---\n" + BAD)
    code = node_agent.main(["check", str(bad), str(two), str(tmp_path / "missing.yaml")])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""  # a file with an error runs none of its pods
    lines = err.splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["error", f"{bad}"],
        ["error", f"{bad}"],
        ["error", f"{bad}"],
        ["error", f"{two} (document 2)"],
        ["error", f"{two} (document 2)"],
        ["error", f"{two} (document 2)"],
        ["error", f"{tmp_path}/missing.yaml"],
    ]
    assert lines[0].startswith(f"error: {bad}: spec.containers[0].name: ")
    assert lines[2].startswith(f"error: {bad}: spec.restartPolicy: ")
    assert lines[-1].endswith("No such file or directory")
