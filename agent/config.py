"""The agent's configuration: the model, its TOML loader and its command-line flags.

One table (``AGENT_KEYS``) drives everything: the TOML keys accepted, their types and defaults,
the ``--flag`` for each key, and docs/configuration.md. Unknown keys and wrong types are errors
naming the file and the key; nothing is silently ignored.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/node-agent/agent.toml")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
LOG_FORMATS = ("kv", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    type: type
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


AGENT_KEYS: tuple[Key, ...] = (
    Key("node_name", str, "node name (DNS-1123 subdomain; default: the lowercased hostname)"),
    Key("state_dir", Path, "state directory: checkpoint, emptyDir volumes"),
    Key("manifest_dir", Path, "directory of static pod manifests (empty string disables)", True),
    Key("health_addr", str, "HOST:PORT of the local read-only API (/healthz, /v1/pods, /metrics)"),
    Key("docker_host", str, "Docker Engine URL (default: $DOCKER_HOST or the local socket)", True),
    Key("sandbox_image", str, "image of the pod sandbox; built locally if absent and unpullable"),
    Key("node_ip", str, "IP address reported as hostIP (default: first global IPv4)", True),
    Key("log_format", str, "log line format", choices=LOG_FORMATS),
    Key("log_level", str, "log level", choices=LOG_LEVELS),
    Key("backoff_initial_s", float, "first container restart back-off, seconds"),
    Key("backoff_max_s", float, "maximum container restart back-off, seconds"),
    Key("backoff_reset_s", float, "a run this long resets the back-off, seconds"),
    Key("relist_interval_s", float, "full runtime relist interval (safety net beside events)"),
    Key("manifest_poll_interval_s", float, "manifest directory poll interval, seconds"),
    Key("runtime_threads", int, "threads of the bridge running blocking docker calls"),
    Key("runtime_timeout_s", float, "timeout of one docker API call, seconds"),
    Key("container_log_max_size", str, "json-file log driver max-size per container"),
    Key("container_log_max_files", int, "json-file log driver max-file per container"),
    Key("max_pods", int, "most pods this node accepts"),
    Key("watchdog_interval_s", float, "WATCHDOG=1 interval when systemd sets none, seconds"),
    Key("master", str, "master URL (https://HOST:6443); unset: static pods only", True),
    Key("ca_cert_hash", list, "pins of the master's CA (sha256:<hex>); unset: trust on first use"),
    Key("node_labels", list, "labels reported at registration, KEY=VALUE"),
    Key("master_backoff_max_s", float, "cap of the reconnect back-off to the master, seconds"),
    Key("api_addr", str, "HOST:PORT of the node's TLS API (served once registered)"),
    Key(
        "bootstrap_cert", Path, "client certificate from a fleet CA, for the client-cert rule", True
    ),
    Key("bootstrap_key", Path, "private key of bootstrap_cert", True),
    Key(
        "bind_source",
        str,
        "source IP for connections to the master (multi-homed hosts, tests)",
        True,
    ),
)
_KEYS = {k.name: k for k in AGENT_KEYS}


def _default_node_name() -> str:
    return socket.gethostname().lower()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str = ""
    state_dir: Path = Path("/var/lib/node-agent")
    manifest_dir: Path | None = Path("/etc/node-agent/manifests")
    health_addr: str = "127.0.0.1:10248"
    docker_host: str | None = None
    sandbox_image: str = "node-agent/pause:0.1"
    node_ip: str | None = None
    log_format: str = "kv"
    log_level: str = "info"
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 300.0
    backoff_reset_s: float = 600.0
    relist_interval_s: float = 10.0
    manifest_poll_interval_s: float = 1.0
    runtime_threads: int = 8
    runtime_timeout_s: float = 60.0
    container_log_max_size: str = "10m"
    container_log_max_files: int = 3
    max_pods: int = 110
    watchdog_interval_s: float = 10.0
    master: str | None = None
    ca_cert_hash: tuple[str, ...] = ()
    node_labels: tuple[str, ...] = ()
    master_backoff_max_s: float = 30.0
    api_addr: str = "0.0.0.0:10250"
    bootstrap_cert: Path | None = None
    bootstrap_key: Path | None = None
    bind_source: str | None = None

    @property
    def health_host(self) -> str:
        return split_host_port(self.health_addr, "health_addr")[0]

    @property
    def health_port(self) -> int:
        return split_host_port(self.health_addr, "health_addr")[1]


def split_host_port(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{key}: "{value}" is not HOST:PORT (IPv6 as [::1]:10248)')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def coerce_value(key: Key, value: object, where: str) -> object:
    """Check (and lightly convert) one value against its key; ConfigError naming both."""
    if value is None or (key.optional and value == ""):
        if key.optional:
            return None
        raise ConfigError(f"{where}: key {key.name!r} must be set")
    expected = key.type
    if expected is list:
        if isinstance(value, str):  # from a flag: comma-separated
            value = [item.strip() for item in value.split(",") if item.strip()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: key {key.name!r} must be a list of strings, got {value!r}")
        if key.choices:
            for item in value:
                if item not in key.choices:
                    allowed = ", ".join(key.choices)
                    raise ConfigError(
                        f"{where}: key {key.name!r}: {item!r} is not one of {allowed}"
                    )
        return tuple(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is Path and isinstance(value, str):
        value = Path(value)
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"{where}: key {key.name!r} must be {expected.__name__}, got {value!r}")
    if key.choices and value not in key.choices:
        raise ConfigError(
            f"{where}: key {key.name!r} must be one of {', '.join(key.choices)}, got {value!r}"
        )
    return value


def _validate(cfg: AgentConfig, where: str) -> None:
    if not cfg.node_name or len(cfg.node_name) > 253 or not _DNS1123_SUBDOMAIN.match(cfg.node_name):
        raise ConfigError(f"{where}: node_name {cfg.node_name!r} is not a DNS-1123 subdomain")
    try:
        split_host_port(cfg.health_addr, "health_addr")
        split_host_port(cfg.api_addr, "api_addr")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if cfg.node_ip is not None:
        try:
            ipaddress.ip_address(cfg.node_ip)
        except ValueError as exc:
            raise ConfigError(f"{where}: node_ip {cfg.node_ip!r} is not an IP address") from exc
    if cfg.backoff_initial_s <= 0 or cfg.backoff_initial_s > cfg.backoff_max_s:
        raise ConfigError(f"{where}: need 0 < backoff_initial_s <= backoff_max_s")
    for name in (
        "relist_interval_s",
        "manifest_poll_interval_s",
        "runtime_timeout_s",
        "watchdog_interval_s",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}: {name} must be > 0")
    if (cfg.bootstrap_cert is None) != (cfg.bootstrap_key is None):
        raise ConfigError(f"{where}: bootstrap_cert and bootstrap_key go together")
    if cfg.bind_source is not None:
        try:
            ipaddress.ip_address(cfg.bind_source)
        except ValueError as exc:
            raise ConfigError(
                f"{where}: bind_source {cfg.bind_source!r} is not an IP address"
            ) from exc
    if cfg.master is not None and not cfg.master.startswith("https://"):
        raise ConfigError(f"{where}: master {cfg.master!r} must be an https:// URL")
    for label in cfg.node_labels:
        if "=" not in label:
            raise ConfigError(f"{where}: node_labels entry {label!r} is not KEY=VALUE")
    for name in ("runtime_threads", "container_log_max_files", "max_pods"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}: {name} must be >= 1")


def unknown_key(path: Path | str, name: str, known: Mapping[str, object]) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return ConfigError(f'{path}: unknown key "{name}"{hint}')


def read_toml(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        if required:
            raise ConfigError(f"{path}: config file not found") from exc
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


def load_agent_config(
    path: Path | None, overrides: Mapping[str, object], *, path_required: bool
) -> AgentConfig:
    """File values (if any), then flag overrides, validated as a whole."""
    values: dict[str, object] = {}
    where = "flags"
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        where = str(path)
        raw = read_toml(path, required=path_required)
        for name, value in raw.items():
            key = _KEYS.get(name)
            if key is None:
                raise unknown_key(path, name, _KEYS)
            values[name] = coerce_value(key, value, where)
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _KEYS:
            raise ConfigError(f"unknown override {name!r}")
        values[name] = coerce_value(_KEYS[name], value, f"flag {_KEYS[name].flag}")
    values.setdefault("node_name", _default_node_name())
    cfg = AgentConfig(**values)  # type: ignore[arg-type]
    _validate(cfg, where)
    return cfg


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for key in AGENT_KEYS:
        kwargs: dict[str, Any] = {"default": None, "help": key.help, "dest": key.name}
        if key.choices:
            kwargs["choices"] = key.choices
        kwargs["type"] = str if key.type in (Path, list) else key.type
        if key.type is list:
            kwargs.pop("choices", None)
        parser.add_argument(key.flag, **kwargs)


def overrides_from_args(ns: argparse.Namespace) -> dict[str, object]:
    return {key.name: getattr(ns, key.name, None) for key in AGENT_KEYS}


def config_field_names() -> list[str]:
    return [f.name for f in fields(AgentConfig)]
