"""Agent configuration: TOML file, flags, unknown keys, types, validation, docs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.config import (
    AGENT_KEYS,
    AgentConfig,
    add_config_flags,
    load_agent_config,
    overrides_from_args,
)
from agent.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_and_file_values(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(tmp_path, 'node_name = "n1"\nruntime_threads = 4\nbackoff_max_s = 60\n'),
        {},
        path_required=True,
    )
    assert cfg.node_name == "n1"
    assert cfg.runtime_threads == 4
    assert cfg.backoff_max_s == 60.0
    assert cfg.state_dir == Path("/var/lib/node-agent")
    assert cfg.health_host == "127.0.0.1" and cfg.health_port == 10248


def test_flags_override_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_name = "n1"\nstate_dir = "/a"\n')
    cfg = load_agent_config(path, {"state_dir": "/b", "node_name": None}, path_required=True)
    assert cfg.state_dir == Path("/b")
    assert cfg.node_name == "n1"


def test_empty_manifest_dir_disables_static_pods(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(tmp_path, 'node_name = "n"\nmanifest_dir = ""\n'), {}, path_required=True
    )
    assert cfg.manifest_dir is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nod_name = "x"\n', 'unknown key "nod_name" (did you mean "node_name"?)'),
        ("zzz = 1\n", 'unknown key "zzz"'),
        ('runtime_threads = "8"\n', "key 'runtime_threads' must be int"),
        ("runtime_threads = true\n", "key 'runtime_threads' must be int"),
        ('log_format = "xml"\n', "must be one of kv, json"),
        ('node_name = "Bad_Name"\n', "not a DNS-1123 subdomain"),
        ('health_addr = "localhost"\n', "not HOST:PORT"),
        ('node_ip = "300.1.1.1"\n', "not an IP address"),
        ("backoff_initial_s = 100\nbackoff_max_s = 10\n", "backoff_initial_s <= backoff_max_s"),
        ("runtime_threads = 0\n", "runtime_threads must be >= 1"),
        ("node_name = \n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {}, path_required=True)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_agent_config(tmp_path / "nope.toml", {}, path_required=True)


def test_ipv6_health_addr(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(tmp_path, 'node_name = "n"\nhealth_addr = "[::1]:10248"\n'), {}, path_required=True
    )
    assert cfg.health_host == "::1"


def test_flags_generated_for_every_key() -> None:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    ns = parser.parse_args(
        ["--runtime-threads", "4", "--manifest-dir", "/m", "--log-format", "json"]
    )
    overrides = overrides_from_args(ns)
    assert overrides["runtime_threads"] == 4
    assert overrides["manifest_dir"] == "/m"
    assert overrides["node_name"] is None
    assert set(overrides) == {k.name for k in AGENT_KEYS}
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--runtime-threads", "abc"])
    assert info.value.code == 2


def test_table_matches_dataclass_and_docs() -> None:
    assert [k.name for k in AGENT_KEYS] == list(AgentConfig.__dataclass_fields__)
    docs = DOCS.read_text()
    for key in AGENT_KEYS:
        assert f"`{key.name}`" in docs, key.name
        assert f"`{key.flag}`" in docs, key.flag
