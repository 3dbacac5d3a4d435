"""Agent configuration: TOML file, flags, unknown keys, types, validation, docs."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path

import pytest

from agent import config as config_module
from agent.config import (
    AGENT_KEYS,
    AgentConfig,
    Key,
    add_config_flags,
    config_table_markdown,
    load_agent_config,
    overrides_from_args,
    split_host_port,
)
from agent.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the host's /etc/node-agent/agent.toml."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent" / "agent.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="node-agent")
    add_config_flags(p)
    return p


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "Worker-7.Example.COM")
    cfg = load_agent_config(None, {}, path_required=False)
    assert cfg == AgentConfig(node_name="worker-7.example.com")
    assert cfg.state_dir == Path("/var/lib/node-agent")
    assert cfg.manifest_dir == Path("/etc/node-agent/manifests")
    assert cfg.docker_host is None and cfg.node_ip is None
    assert (cfg.log_format, cfg.log_level) == ("kv", "info")
    assert (cfg.backoff_initial_s, cfg.backoff_max_s, cfg.backoff_reset_s) == (10.0, 300.0, 600.0)
    assert cfg.runtime_threads == 8 and cfg.max_pods == 110
    assert cfg.container_log_max_size == "10m" and cfg.container_log_max_files == 5
    assert cfg.health_host == "127.0.0.1" and cfg.health_port == 10248
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_pods = 1  # type: ignore[misc]


def test_hostname_that_is_not_a_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "build_box")
    with pytest.raises(
        ConfigError, match=r'defaults to the hostname, and "build_box" is not.*--node-name'
    ):
        load_agent_config(None, {}, path_required=False)
    cfg = load_agent_config(None, {"node_name": "build-box"}, path_required=False)
    assert cfg.node_name == "build-box"


def test_default_file_is_read_when_it_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, 'node_name = "from-default-file"\n')
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_agent_config(None, {}, path_required=False).node_name == "from-default-file"


def test_file_values(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(
            tmp_path,
            'node_name = "n1"\nruntime_threads = 4\nbackoff_max_s = 60\nstate_dir = "rel/state"\n'
            'log_format = "json"\nnode_labels = ["zone=a"]\n',
        ),
        {},
        path_required=True,
    )
    assert cfg.node_name == "n1"
    assert cfg.runtime_threads == 4
    assert cfg.backoff_max_s == 60.0 and isinstance(cfg.backoff_max_s, float)
    # Relative paths stay relative to the working directory, like kubelet's flags.
    assert cfg.state_dir == Path("rel/state")
    assert cfg.log_format == "json"
    assert cfg.node_labels == ("zone=a",)


def test_overrides_win_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_name = "n1"\nstate_dir = "/a"\nmax_pods = 5\n')
    cfg = load_agent_config(
        path, {"state_dir": "/b", "node_name": None, "max_pods": 7}, path_required=True
    )
    assert cfg.state_dir == Path("/b")
    assert cfg.node_name == "n1"
    assert cfg.max_pods == 7


def test_empty_manifest_dir_disables_static_pods(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(tmp_path, 'node_name = "n"\nmanifest_dir = ""\n'), {}, path_required=True
    )
    assert cfg.manifest_dir is None
    cfg = load_agent_config(None, {"node_name": "n", "manifest_dir": ""}, path_required=False)
    assert cfg.manifest_dir is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nod_name = "x"\n', 'unknown key "nod_name" (did you mean "node_name"?)'),
        ("runtime_thread = 3\n", 'unknown key "runtime_thread" (did you mean "runtime_threads"?)'),
        ("zzz = 1\n", 'unknown key "zzz"'),
        ('runtime_threads = "8"\n', "key 'runtime_threads' must be int, got '8'"),
        ("runtime_threads = true\n", "key 'runtime_threads' must be int, got True"),
        ("runtime_threads = 8.0\n", "key 'runtime_threads' must be int, got 8.0"),
        ("state_dir = 5\n", "key 'state_dir' must be Path, got 5"),
        ("node_labels = [1]\n", "key 'node_labels' must be a list of strings, got [1]"),
        ("backoff_max_s = nan\n", "key 'backoff_max_s' must be a finite number, got nan"),
        ("relist_interval_s = inf\n", "key 'relist_interval_s' must be a finite number"),
        ('log_format = "xml"\n', "must be one of kv, json, got 'xml'"),
        ('node_name = "Bad_Name"\n', 'node_name "Bad_Name" is not a valid DNS-1123 subdomain'),
        (f'node_name = "{"a" * 64}.b"\n', "is not a valid DNS-1123 subdomain"),
        ('node_name = ""\n', "is not a valid DNS-1123 subdomain"),
        ('health_addr = "localhost"\n', "not HOST:PORT"),
        ('node_ip = "300.1.1.1"\n', "node_ip '300.1.1.1' is not an IP address"),
        ("backoff_initial_s = 100\nbackoff_max_s = 10\n", "backoff_initial_s <= backoff_max_s"),
        ("backoff_reset_s = -1\n", "backoff_reset_s must be > 0"),
        ("runtime_threads = 0\n", "runtime_threads must be >= 1"),
        ('container_log_max_size = "ten megs"\n', "is not a size like 10m"),
        ('sandbox_image = " "\n', "sandbox_image must not be empty"),
        (
            'allowed_host_paths = ["/srv", "srv/data"]\n',
            "allowed_host_paths entry 'srv/data' is not an absolute path",
        ),
        ("allow_host_network = 0\n", "key 'allow_host_network' must be bool, got 0"),
        (
            f'state_dir = "/{"s" * 100}"\n',
            "state_dir is too long for its socket api.sock (a Unix socket path has at most 107",
        ),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, 'node_name = "n"\n' * ("node_name" not in text) + text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {}, path_required=True)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_name = "n"\nmax_pods = \n')
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {}, path_required=True)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message


def test_explicit_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
        load_agent_config(missing, {}, path_required=True)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_agent_config(tmp_path, {}, path_required=True)


def test_validation_error_names_the_flag_that_set_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_name = "n"\nbackoff_max_s = 60\n')
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {"health_addr": "nowhere"}, path_required=True)
    assert str(info.value).startswith("flag --health-addr: ")
    with pytest.raises(ConfigError) as info:
        load_agent_config(path, {"backoff_initial_s": 90.0}, path_required=True)
    assert str(info.value).startswith(f"flag --backoff-initial-s, {path}: ")
    with pytest.raises(ConfigError, match="flag --runtime-threads: key 'runtime_threads'"):
        load_agent_config(path, {"runtime_threads": "x"}, path_required=True)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(ConfigError, match="unknown override 'nope'"):
        load_agent_config(None, {"node_name": "n", "nope": 1}, path_required=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:10248", ("127.0.0.1", 10248)),
        ("localhost:1", ("localhost", 1)),
        ("[::1]:10248", ("::1", 10248)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_host_port_accepted(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value, "health_addr") == expected


@pytest.mark.parametrize(
    "value",
    [
        "localhost",
        ":10248",
        "host:",
        "host:0",
        "host:65536",
        "host:-1",
        "host:\uff11\uff12\uff13",  # fullwidth digits: isdigit() is True, int() parses them
        "::1:10248",
        "[::1]",
        "[not-ipv6]:80",
        "[]:80",
        "a b:80",
    ],
)
def test_host_port_rejected(value: str) -> None:
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        split_host_port(value, "health_addr")


def test_ipv6_health_addr(tmp_path: Path) -> None:
    cfg = load_agent_config(
        write(tmp_path, 'node_name = "n"\nhealth_addr = "[::1]:10248"\n'), {}, path_required=True
    )
    assert (cfg.health_host, cfg.health_port) == ("::1", 10248)


def test_flags_generated_for_every_key() -> None:
    ns = parser().parse_args(
        [
            "--runtime-threads",
            "4",
            "--manifest-dir",
            "/m",
            "--log-format",
            "json",
            "--backoff-max-s",
            "30",
            "--node-labels",
            "a=1,b=2",
        ]
    )
    overrides = overrides_from_args(ns)
    assert overrides["runtime_threads"] == 4
    assert overrides["backoff_max_s"] == 30.0
    assert overrides["manifest_dir"] == "/m"
    assert overrides["node_name"] is None
    assert set(overrides) == {k.name for k in AGENT_KEYS}
    cfg = load_agent_config(None, {**overrides, "node_name": "n"}, path_required=False)
    assert cfg.runtime_threads == 4
    assert cfg.manifest_dir == Path("/m")
    assert cfg.node_labels == ("a=1", "b=2")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--runtime-threads", "abc"], "--runtime-threads"),
        (["--runtime-threads", "1.5"], "--runtime-threads"),
        (["--backoff-max-s", "soon"], "--backoff-max-s"),
        (["--backoff-max-s", "nan"], "--backoff-max-s"),
        (["--log-format", "xml"], "--log-format"),
    ],
)
def test_bad_flag_value_is_an_argparse_error(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid" in err
    assert "Traceback" not in err


def test_admission_policy_keys(tmp_path: Path) -> None:
    defaults = load_agent_config(None, {"node_name": "n"}, path_required=False)
    assert defaults.allowed_host_paths is None  # any path, as before the policy existed
    assert (defaults.allow_host_network, defaults.allow_host_ports) == (True, True)
    text = 'node_name = "n"\nallowed_host_paths = []\nallow_host_network = false\n'
    cfg = load_agent_config(write(tmp_path, text), {}, path_required=True)
    assert cfg.allowed_host_paths == () and cfg.allow_host_network is False
    args = parser().parse_args(["--allowed-host-paths", "/srv,/var/log", "--no-allow-host-ports"])
    cfg = load_agent_config(
        None, {**overrides_from_args(args), "node_name": "n"}, path_required=False
    )
    assert cfg.allowed_host_paths == ("/srv", "/var/log") and cfg.allow_host_ports is False
    assert cfg.api_socket == Path("/var/lib/node-agent/api.sock")


def test_bool_keys_get_a_no_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bool key of its own: the generator must do the right thing for any one.
    monkeypatch.setattr(config_module, "AGENT_KEYS", (Key("use_thing", bool, "use the thing"),))
    p = parser()
    assert p.parse_args([]).use_thing is None
    assert p.parse_args(["--use-thing"]).use_thing is True
    assert p.parse_args(["--no-use-thing"]).use_thing is False


def test_table_matches_dataclass_and_docs() -> None:
    assert [k.name for k in AGENT_KEYS] == [f.name for f in dataclasses.fields(AgentConfig)]
    docs = DOCS.read_text()
    assert config_table_markdown() in docs, (
        "docs/configuration.md is out of date; paste agent.config.config_table_markdown()"
    )


# -- join token ------------------------------------------------------------------------------

TOKEN = "abc123.0123456789abcdef"


def test_a_join_token_from_the_file_a_flag_or_a_token_file(tmp_path: Path) -> None:
    assert (
        load_agent_config(write(tmp_path, f'token = "{TOKEN}"\n'), {}, path_required=True).token
        == TOKEN
    )
    assert load_agent_config(None, {"token": TOKEN}, path_required=False).token == TOKEN
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(0o600)
    cfg = load_agent_config(None, {"token_file": str(secret)}, path_required=False)
    assert cfg.token_file == secret and cfg.token is None
    assert config_module.read_token_file(secret) == TOKEN
    assert TOKEN not in repr(load_agent_config(None, {"token": TOKEN}, path_required=False))


@pytest.mark.parametrize(
    ("mode", "content", "message"),
    [
        (0o644, TOKEN, "mode 0644 lets others read the token; chmod 600"),
        (0o640, TOKEN, "mode 0640 lets others read the token"),
        (0o600, "abc123.SECRETSECRETSECRE", "does not hold a join token"),
        (0o600, "", "does not hold a join token"),
        (0o600, "\xff\xfe", "does not hold a join token"),
    ],
)
def test_a_token_file_must_be_private_and_hold_a_token(
    tmp_path: Path, mode: int, content: str, message: str
) -> None:
    secret = tmp_path / "token"
    secret.write_text(content)
    secret.chmod(mode)
    # Read where it is used (registration): start-up does not need it.
    assert load_agent_config(None, {"token_file": str(secret)}, path_required=False)
    with pytest.raises(ConfigError, match=f"token_file {secret}: {message}") as caught:
        config_module.read_token_file(secret)
    assert "SECRET" not in str(caught.value)


def test_a_token_file_that_is_missing_or_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file or directory"):
        config_module.read_token_file(tmp_path / "absent")
    with pytest.raises(ConfigError, match="not a regular file"):
        config_module.read_token_file(tmp_path)
    link = tmp_path / "link"
    target = tmp_path / "target"
    target.write_text(TOKEN)
    target.chmod(0o600)
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="token_file"):  # O_NOFOLLOW: a link is not the file
        config_module.read_token_file(link)


def test_a_malformed_token_or_both_ways_are_refused_without_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'token = "abc123.SECRETSECRETSECRE"\n')
    with pytest.raises(ConfigError, match=f"{path}: token is not a join token") as caught:
        load_agent_config(path, {}, path_required=True)
    assert "SECRET" not in str(caught.value)
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    secret.chmod(0o600)
    with pytest.raises(ConfigError, match="set token or token_file, not both"):
        load_agent_config(None, {"token": TOKEN, "token_file": str(secret)}, path_required=False)
