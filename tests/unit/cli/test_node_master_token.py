"""``node-master token`` and ``init``'s join line (agent.cli.node_master_token): durations,
labels, the join line, and init writing its first token into a fresh store (hashed). The
commands against a running master: tests/integration/test_join_tokens.py."""

from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pytest

from agent.cli import node_master
from agent.cli.node_master_token import join_line, parse_duration, parse_labels
from agent.jointoken import parse_token


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400.0),
        ("30m", 1800.0),
        ("90s", 90.0),
        ("7d", 604800.0),
        ("0", 0.0),
        ("1.5h", 5400.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "-1h", "1w", "1 h h", "inf", "nan"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


def test_labels() -> None:
    assert parse_labels("zone=b, role=edge,,empty=") == {"zone": "b", "role": "edge", "empty": ""}
    with pytest.raises(argparse.ArgumentTypeError, match="not KEY=VALUE"):
        parse_labels("zone")


def test_the_join_line_is_one_shell_line() -> None:
    line = join_line("https://10.0.0.1:6443", "sha256:ab", "abc123.0123456789abcdef")
    assert line == (
        "node-agent run --master https://10.0.0.1:6443 --ca-cert-hash sha256:ab "
        "--token abc123.0123456789abcdef"
    )


def test_the_join_line_quotes_what_the_master_answered() -> None:
    """The line is pasted into a shell: a token that is no token (a master's bug, or not our
    master) stays one word that runs nothing."""
    line = join_line("https://m:6443", "sha256:ab", "x; rm -rf /")
    assert line.endswith("--token 'x; rm -rf /'"), line


def test_bad_usages_and_ids_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before the credentials are read or the master asked (none exist here).
    conf = str(tmp_path / "absent.conf")
    assert node_master.main(["token", "delete", "../x", "--config", conf]) == 2
    assert "node-master: ../x is not a token id" in capsys.readouterr().err
    assert node_master.main(["token", "create", "--usages", "0", "--config", conf]) == 2
    assert "--usages must be at least 1" in capsys.readouterr().err
    assert node_master.main(["token", "list", "--config", conf]) == 2
    assert "no nodectl config" in capsys.readouterr().err


def stored_tokens(data_dir: Path) -> list[dict[str, object]]:
    with sqlite3.connect(data_dir / "store.db") as db:
        rows = db.execute("SELECT value FROM kv WHERE key LIKE '/tokens/%'").fetchall()
    return [json.loads(row[0]) for row in rows]


def test_init_prints_the_whole_join_line_with_a_first_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "master"
    args = ["init", "--data-dir", str(data_dir), "--server-name", "10.0.0.1"]
    assert node_master.main([*args, "--listen", "10.0.0.1:6443"]) == 0
    out = capsys.readouterr().out
    pin = next(line.split()[-1] for line in out.splitlines() if "CA pin:" in line)
    [line] = [line for line in out.splitlines() if "node-agent run" in line]
    token = parse_token(line.split("--token ")[1])
    assert line.strip() == join_line("https://10.0.0.1:6443", pin, str(token))
    [record] = stored_tokens(data_dir)
    assert record["id"] == token.id and token.matches(str(record["digest"]))
    assert token.secret not in json.dumps(record)
    assert record["description"] == "made by node-master init" and record["expiresAt"]
    assert oct((data_dir / "store.db").stat().st_mode & 0o777) == "0o600"
    # A re-init of an existing cluster (its master may run) leaves the store alone.
    assert node_master.main([*args, "--listen", "10.0.0.1:6443", "--force"]) == 0
    out = capsys.readouterr().out
    assert "--token" not in out and "node-master token create" in out
    assert len(stored_tokens(data_dir)) == 1
