"""``nodectl version`` and ``nodectl config view`` (agent.cli.nodectl_info): the version object's
shape, the redaction, and a ``--raw`` view that reads back as the same config, whatever the
strings hold (and with no control character left to reach the terminal)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent import __version__
from agent.cli import nodectl, nodectl_info
from agent.errors import CliError

PEM = "-----BEGIN CERTIFICATE-----\nMIIBhzCC\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"


def write_config(path: Path, server: str = "https://127.0.0.1:1") -> Path:
    path.write_text(
        nodectl_info.toml_document(
            {"server": server, "ca": PEM, "client_cert": PEM, "client_key": KEY}
        )
    )
    return path


def test_config_view_omits_the_certificate_and_key_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "config")
    assert nodectl.main(["--config", str(conf), "config", "view"]) == 0
    out = capsys.readouterr().out
    assert "BEGIN" not in out
    assert tomllib.loads(out) == {
        "server": "https://127.0.0.1:1",
        "ca": "DATA+OMITTED",
        "client_cert": "DATA+OMITTED",
        "client_key": "DATA+OMITTED",
        "session_idle_timeout_s": 600.0,
    }


@pytest.mark.parametrize("output", ["", "json", "yaml"])
def test_config_view_raw_is_the_config(
    output: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "config")
    flags = ["-o", output] if output else []
    assert nodectl.main(["--config", str(conf), "config", "view", "--raw", *flags]) == 0
    out = capsys.readouterr().out
    parse: Any = {"": tomllib.loads, "json": json.loads, "yaml": yaml.safe_load}[output]
    shown = parse(out)
    assert shown.pop("session_idle_timeout_s") == 600.0
    assert shown == tomllib.loads(conf.read_text())
    if not output:  # what node-master init writes: PEM as a multi-line string
        assert 'ca = """\n-----BEGIN CERTIFICATE-----\n' in out


def test_config_view_of_a_bad_config_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "config"
    conf.write_text('server = "x"\n')
    assert nodectl.main(["--config", str(conf), "config", "view"]) == 2
    assert "missing ca, client_cert, client_key" in capsys.readouterr().err


@given(st.text())
def test_any_string_reads_back_and_prints_no_control_character(value: str) -> None:
    text = nodectl_info.toml_string(value)
    assert tomllib.loads(f"k = {text}")["k"] == value
    assert all(c == "\n" or c.isprintable() or c == " " for c in text if ord(c) < 0xA0)


def test_version_client_only_asks_nobody(capsys: pytest.CaptureFixture[str]) -> None:
    assert nodectl.main(["--config", "/nonexistent", "version", "--client", "-o", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"clientVersion"}
    assert document["clientVersion"]["gitVersion"] == f"v{__version__}"
    assert nodectl.main(["version", "--client"]) == 0
    assert capsys.readouterr().out == f"Client Version: v{__version__}\n"


def test_version_without_the_master_prints_the_client_then_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none"
    assert nodectl.main(["--config", str(missing), "version"]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"Client Version: v{__version__}\n"
    assert captured.err.startswith(f"nodectl: {missing}: no nodectl config")


def test_version_shows_the_masters_answer_escaped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = write_config(tmp_path / "config")
    answer = {"gitVersion": "v9.9.9\x1b[2J", "major": "9", "extra": "dropped", "minor": 1}
    monkeypatch.setattr(nodectl.Client, "call", lambda self, method, path: answer)
    assert nodectl.main(["--config", str(conf), "version", "-o", "yaml"]) == 0
    document = yaml.safe_load(capsys.readouterr().out)
    assert document["serverVersion"] == {"gitVersion": "v9.9.9\\x1b[2J", "major": "9"}
    monkeypatch.setattr(nodectl.Client, "call", lambda self, method, path: ["not", "a", "map"])
    assert nodectl.main(["--config", str(conf), "version"]) == 1
    assert "not a version object" in capsys.readouterr().err


def test_toml_document_refuses_what_it_does_not_write() -> None:
    with pytest.raises(TypeError):
        nodectl_info.toml_document({"x": True})
    with pytest.raises(CliError):
        nodectl_info._server_version({"gitVersion": 1})
