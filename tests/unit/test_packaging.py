"""The packaging sources that need no build (docs/packaging.md): the systemd units declare what
issue 18 asks of them, the lock covers pyproject's dependencies, the shipped agent.toml and the
agent.toml that cloud-init writes are configurations the agent accepts, and render.sh refuses bad
inputs. The build-dependent checks (deb, rpm, lintian, systemd-analyze, cloud-init schema) are
packaging/tests, run by ``make test-packaging``."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from agent.config import load_agent_config

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "packaging" / "cloud-init" / "render.sh"
PIN = "sha256:" + "ab" * 32
TOKEN = "abcdef.0123456789abcdef"


def unit_directives(name: str) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given, in order (systemd allows repeats)."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in (ROOT / "systemd" / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key}", []).append(value)
    return directives


@pytest.mark.parametrize("unit", ["node-agent.service", "node-master.service"])
def test_units_are_notify_services_with_a_watchdog_that_always_restart(unit: str) -> None:
    d = unit_directives(unit)
    assert d["Service.Type"] == ["notify"]
    assert d["Service.NotifyAccess"] == ["main"]
    assert int(d["Service.WatchdogSec"][0]) > 0
    assert d["Service.Restart"] == ["always"]
    assert d["Unit.StartLimitIntervalSec"] == ["0"]  # never gives up (docs/packaging.md)
    assert int(d["Service.LimitNOFILE"][0]) >= 65536
    package = unit.removesuffix(".service")
    assert d["Service.EnvironmentFile"] == [f"-/etc/default/{package}"]
    assert d["Service.ExecStart"][0].startswith(f"/usr/bin/{package} run --config ")
    assert d["Service.StateDirectory"] == [package]
    assert d["Service.StateDirectoryMode"] == ["0700"]
    assert d["Install.WantedBy"] == ["multi-user.target"]


def test_the_agent_unit_never_stops_pods_and_waits_for_docker_and_the_network() -> None:
    d = unit_directives("node-agent.service")
    assert d["Service.KillMode"] == ["process"]
    for key in ("Unit.After", "Unit.Wants"):
        assert set(d[key][0].split()) == {"network-online.target", "docker.service"}
    assert d["Service.ExecStart"] == [
        "/usr/bin/node-agent run --config /etc/node-agent/agent.toml $NODE_AGENT_ARGS"
    ]


def test_the_master_unit_is_hardened_and_waits_for_init() -> None:
    d = unit_directives("node-master.service")
    assert d["Unit.ConditionPathExists"] == ["/var/lib/node-master/master.toml"]
    assert d["Service.ExecStart"][0].endswith(
        "--config /var/lib/node-master/master.toml $NODE_MASTER_ARGS"
    )
    assert d["Service.CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices"):
        assert d[f"Service.{key}"] == ["yes"], key
    assert d["Service.ProtectSystem"] == ["strict"]
    assert "KillMode" not in {k.split(".")[1] for k in d}  # the master has no pods to keep


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    lock: dict[str, tuple[str, int]] = {}
    name = ""
    for raw in (ROOT / "packaging" / "requirements.lock").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash=sha256:"):
            assert len(line.split(":", 1)[1].rstrip(" \\")) == 64, line
            version, count = lock[name]
            lock[name] = (version, count + 1)
            continue
        pin = line.rstrip(" \\")
        assert "==" in pin, f"not pinned: {pin}"
        raw_name, version = pin.split("==")
        name = canonicalize_name(raw_name)
        lock[name] = (version, 0)
    assert all(count > 0 for _, count in lock.values()), lock
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    for dependency in map(Requirement, dependencies):
        name = canonicalize_name(dependency.name)
        assert name in lock, f"{name} is a dependency but not in the lock: make lock"
        assert dependency.specifier.contains(lock[name][0]), (name, lock[name][0])


def test_the_packaged_agent_toml_is_a_valid_config_without_a_master() -> None:
    cfg = load_agent_config(ROOT / "packaging" / "files" / "agent.toml", {}, path_required=True)
    assert cfg.master is None


def render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(RENDER), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_the_cloud_init_agent_toml_is_a_valid_config_with_the_four_inputs(tmp_path: Path) -> None:
    done = render(
        "--master",
        "https://10.0.0.1:6443",
        "--ca-pin",
        PIN,
        "--token",
        TOKEN,
        "--label",
        "zone=a",
        "--label",
        "rack=3",
        "--package",
        "/var/tmp/node-agent_1.0_amd64.deb",
    )
    assert done.returncode == 0, done.stderr
    user_data = yaml.safe_load(done.stdout)
    assert done.stdout.startswith("#cloud-config\n")
    assert user_data["packages"] == ["/var/tmp/node-agent_1.0_amd64.deb"]
    files = {f["path"]: f for f in user_data["write_files"]}
    token = files["/etc/node-agent/join-token"]
    assert (token["permissions"], token["content"].strip()) == ("0600", TOKEN)
    assert all(f["defer"] is True for f in files.values())  # after the package's conffile
    # The agent reads what cloud-init writes (the token file where agent.toml says it is).
    token_file = tmp_path / "join-token"
    token_file.write_text(token["content"])
    token_file.chmod(0o600)
    toml = files["/etc/node-agent/agent.toml"]["content"].replace(
        "/etc/node-agent/join-token", str(token_file)
    )
    (tmp_path / "agent.toml").write_text(toml)
    cfg = load_agent_config(tmp_path / "agent.toml", {}, path_required=True)
    assert cfg.master == ("https://10.0.0.1:6443",)
    assert list(cfg.ca_cert_hash or []) == [PIN]
    assert list(cfg.node_labels or []) == ["zone=a", "rack=3"]
    assert cfg.token_file == token_file
    assert user_data["runcmd"][-1] == ["systemctl", "restart", "node-agent.service"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--master", "http://m:6443", "--ca-pin", PIN, "--token", TOKEN], "--master"),
        (["--master", "https://m:6443", "--ca-pin", "sha256:xyz", "--token", TOKEN], "--ca-pin"),
        (["--master", "https://m:6443", "--ca-pin", PIN, "--token", "short.x"], "--token"),
        (
            ["--master", "https://m:6443", "--ca-pin", PIN, "--token", TOKEN, "--label", 'a"b'],
            "--label",
        ),
        (["--master", "https://m:6443|x", "--ca-pin", PIN, "--token", TOKEN], "--master"),
        (["--bogus"], "unknown argument"),
    ],
)
def test_render_refuses_bad_inputs_naming_them(args: list[str], message: str) -> None:
    done = render(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""


def test_the_entry_point_names_the_fix_when_the_venv_is_missing(tmp_path: Path) -> None:
    entry = (ROOT / "packaging" / "files" / "entry").read_text()
    script = tmp_path / "node-agent"
    script.write_text(
        entry.replace("@NAME@", "node-agent").replace("/opt/@PACKAGE@", str(tmp_path / "opt"))
    )
    done = subprocess.run(
        ["sh", str(script), "version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )
    assert done.returncode == 1
    assert f"{tmp_path}/opt/bin/make-venv" in done.stderr
