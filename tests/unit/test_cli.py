"""The node-agent command line: version, config errors exit 2 naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import __version__
from agent.cli import node_agent, node_master, nodectl


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"node-agent {__version__}"


def test_bad_config_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('node_name = "n"\nsandbox_imge = "x"\n')
    assert node_agent.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f'{config}: unknown key "sandbox_imge" (did you mean "sandbox_image"?)' in err


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        node_agent.main(["run", "--runtime-threads", "many"])
    assert info.value.code == 2
    assert "--runtime-threads" in capsys.readouterr().err


def test_bad_flag_node_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["run", "--node-name", "Not_Valid", "--config", "/dev/null"]) == 2
    assert "not a DNS-1123 subdomain" in capsys.readouterr().err


def test_placeholders_say_not_implemented(capsys: pytest.CaptureFixture[str]) -> None:
    assert node_master.main(["run"]) == 2
    assert nodectl.main(["get", "pods"]) == 2
    assert "not implemented yet" in capsys.readouterr().err
