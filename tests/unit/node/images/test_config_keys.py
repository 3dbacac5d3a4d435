"""The configuration keys of pulls: their defaults, what is refused, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.config as config_module
from agent.config import load_agent_config
from agent.errors import ConfigError


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "agent.toml")


def load(tmp_path: Path, text: str) -> config_module.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text('node_name = "n1"\n' + text)
    return load_agent_config(path, {}, path_required=True)


def test_defaults(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert (cfg.max_parallel_image_pulls, cfg.image_credentials_file) == (2, None)


def test_values_and_unset(tmp_path: Path) -> None:
    cfg = load(tmp_path, 'max_parallel_image_pulls = 5\nimage_credentials_file = "/etc/x.json"\n')
    assert (cfg.max_parallel_image_pulls, cfg.image_credentials_file) == (5, Path("/etc/x.json"))
    assert load(tmp_path, 'image_credentials_file = ""\n').image_credentials_file is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("max_parallel_image_pulls = 0\n", "max_parallel_image_pulls must be >= 1"),
        ('max_parallel_image_pulls = "2"\n', "key 'max_parallel_image_pulls' must be int"),
        ("image_credentials_file = 3\n", "key 'image_credentials_file' must be Path"),
    ],
)
def test_refused_naming_the_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(tmp_path, text)
