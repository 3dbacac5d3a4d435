"""``node-master migrate``'s bad arguments: usage errors (exit 2) naming the argument, before
any store is opened (the migration itself, on a real etcd: tests/etcd/test_migrate.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import node_master


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--from", "sqlite:{tmp}/none.db", "--to", "etcd:http://127.0.0.1:2379"],
            "does not exist",
        ),
        (["--from", "{tmp}/s.db", "--to", "etcd:http://127.0.0.1:2379"], "expected sqlite:PATH"),
        (["--from", "sqlite:{tmp}/s.db", "--to", "http://127.0.0.1:2379"], "expected etcd:URL"),
        (["--from", "sqlite:{tmp}/s.db", "--to", "etcd:"], "expected etcd:URL"),
        (["--from", "sqlite:{tmp}/s.db", "--to", "etcd:127.0.0.1:2379"], "is not a URL like"),
        (
            ["--from", "sqlite:{tmp}/s.db", "--to", "etcd:https://e:2379,http://f:2379"],
            "all https:// or all http://",
        ),
        (
            ["--from", "sqlite:{tmp}/s.db", "--to", "etcd:https://e:2379", "--cert-file", "/c"],
            "key_file: cert_file and key_file go together",
        ),
        (
            ["--from", "sqlite:{tmp}/s.db", "--to", "etcd:http://e:2379", "--ca-file", "/ca"],
            "ca_file needs https://",
        ),
        (
            ["--from", "sqlite:{tmp}/s.db", "--to", "etcd:https://e:2379", "--prefix", "nope"],
            "prefix 'nope' must",
        ),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "s.db").write_bytes(b"")
    code = node_master.main(["migrate", *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err, err
