"""The agent's configuration: the model, its TOML loader and its command-line flags.

One table (``AGENT_KEYS``) drives everything: the TOML keys accepted, their types, the ``--flag``
for each key, its help text, and the reference table in docs/configuration.md
(``config_table_markdown``). Defaults live once, on the ``AgentConfig`` dataclass. Unknown keys,
wrong types and invalid values are errors naming where the value came from (the file or the
flag) and the key; nothing is silently ignored.

Relative paths stay relative to the agent's working directory, like kubelet's flags.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import math
import os
import re
import socket
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from agent.errors import BadRequestError, ConfigError
from agent.jointoken import FORMAT_HELP, parse_token
from agent.names import check_node_name

DEFAULT_CONFIG_PATH = Path("/etc/node-agent/agent.toml")
# What dockerd's json-file driver accepts for max-size (go-units RAMInBytes), checked here so a
# typo fails at start-up instead of on every container create.
_DOCKER_SIZE = re.compile(r"^(-1|\d+(\.\d+)? ?[kKmMgGtTpP]?[iI]?[bB]?)$")
PORT_MAX = 65535
API_SOCKET_NAME = "api.sock"
# sun_path is 108 bytes on Linux, the terminating NUL included.
UNIX_SOCKET_PATH_MAX_BYTES = 107
TOKEN_FILE_MAX_BYTES = 4096  # a token and a newline; more is not a token file

LogFormat = Literal["kv", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]
LOG_FORMATS: tuple[str, ...] = get_args(LogFormat)
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its TOML name, value type, help text and accepted values.

    ``type`` is ``str``, ``int``, ``float``, ``bool``, ``Path`` or ``list`` (of strings);
    ``optional`` keys accept ``""`` (and a missing value) as "unset" (None).
    ``default_doc`` replaces the rendered default in the docs when it is computed at run time.
    """

    name: str
    type: type
    help: str
    optional: bool = False
    choices: tuple[str, ...] = ()
    default_doc: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


AGENT_KEYS: tuple[Key, ...] = (
    Key(
        "node_name",
        str,
        "node name (DNS-1123 subdomain, ≤ 52 characters; default: the lowercased hostname)",
        default_doc="the lowercased hostname",
    ),
    Key("state_dir", Path, "state directory (0700): checkpoint, pki/, api.sock, emptyDir volumes"),
    Key("manifest_dir", Path, "directory of static pod manifests (empty string disables)", True),
    Key("health_addr", str, "HOST:PORT of the local health port (/healthz, /metrics only)"),
    Key("docker_host", str, "Docker Engine URL (default: $DOCKER_HOST or the local socket)", True),
    Key("sandbox_image", str, "image of the pod sandbox; built locally if absent and unpullable"),
    Key("max_parallel_image_pulls", int, "image pulls at once (more wait for a slot)"),
    Key(
        "image_credentials_file",
        Path,
        "Docker config file with registry credentials (unset: the Docker SDK's own lookup)",
        True,
    ),
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
    Key(
        "master",
        list,
        "master URL (https://HOST:6443), or several (a list; the flag: comma-separated): the "
        "node fails over among them; unset: static pods only",
        True,
    ),
    Key("ca_cert_hash", list, "pins of the master's CA (sha256:<hex>); unset: trust on first use"),
    Key("node_labels", list, "labels reported at registration, KEY=VALUE"),
    Key("master_backoff_max_s", float, "cap of the reconnect back-off to the master, seconds"),
    Key("api_addr", str, "HOST:PORT of the node's TLS API (served once registered)"),
    Key(
        "bootstrap_cert", Path, "client certificate from a fleet CA, for the client-cert rule", True
    ),
    Key("bootstrap_key", Path, "private key of bootstrap_cert", True),
    Key(
        "token",
        str,
        "join token (ID.SECRET) for the token trust rule, sent at registration only",
        True,
    ),
    Key("token_file", Path, "file holding the join token (0600; instead of token)", True),
    Key(
        "bind_source",
        str,
        "source IP for connections to the master (multi-homed hosts, tests)",
        True,
    ),
    Key(
        "allowed_host_paths",
        list,
        "path prefixes hostPath volumes may use (unset: any; [] refuses every hostPath)",
        True,
        default_doc="any path",
    ),
    Key("allow_host_network", bool, "whether pods may use hostNetwork"),
    Key("allow_host_ports", bool, "whether pods may use hostPort"),
    Key("image_gc_high_threshold_percent", float, "image fs usage that starts image GC, percent"),
    Key("image_gc_low_threshold_percent", float, "image fs usage image GC frees down to, percent"),
    Key("image_minimum_gc_age_s", float, "an image unused for less is never deleted, seconds"),
    Key(
        "image_maximum_gc_age_s",
        float,
        "an unused image unused for longer is deleted whatever the usage, seconds (unset: never)",
        True,
    ),
    Key("image_gc_period_s", float, "image and dead-container GC period, seconds"),
    Key("pinned_images", list, "image references image GC never deletes (fnmatch patterns)"),
    Key("max_dead_containers_per_container", int, "terminated containers kept per pod container"),
    Key("max_dead_containers", int, "terminated containers kept on the node (oldest go first)"),
    Key("imagefs_available_min_percent", float, "DiskPressure below this free image fs, percent"),
    Key("nodefs_available_min_percent", float, "DiskPressure below this free state fs, percent"),
    Key("disk_pressure_margin_percent", float, "DiskPressure clears this many points above"),
    Key("disk_check_interval_s", float, "how often free disk space is measured, seconds"),
)
_KEYS = {k.name: k for k in AGENT_KEYS}


def _default_node_name() -> str:
    return socket.gethostname().lower()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The validated agent configuration; build it with :func:`load_agent_config`."""

    node_name: str = field(default_factory=_default_node_name)
    state_dir: Path = Path("/var/lib/node-agent")
    manifest_dir: Path | None = Path("/etc/node-agent/manifests")
    health_addr: str = "127.0.0.1:10248"
    docker_host: str | None = None
    sandbox_image: str = "node-agent/pause:0.1"
    max_parallel_image_pulls: int = 2
    image_credentials_file: Path | None = None
    node_ip: str | None = None
    log_format: LogFormat = "kv"
    log_level: LogLevel = "info"
    backoff_initial_s: float = 10.0
    backoff_max_s: float = 300.0
    backoff_reset_s: float = 600.0
    relist_interval_s: float = 10.0
    manifest_poll_interval_s: float = 1.0
    runtime_threads: int = 8
    runtime_timeout_s: float = 60.0
    container_log_max_size: str = "10m"
    container_log_max_files: int = 5
    max_pods: int = 110
    watchdog_interval_s: float = 10.0
    master: tuple[str, ...] | None = None  # the masters' URLs, in the order given
    ca_cert_hash: tuple[str, ...] = ()
    node_labels: tuple[str, ...] = ()
    master_backoff_max_s: float = 30.0
    api_addr: str = "0.0.0.0:10250"
    bootstrap_cert: Path | None = None
    bootstrap_key: Path | None = None
    token: str | None = field(default=None, repr=False)  # a secret: kept out of reprs and logs
    token_file: Path | None = None
    bind_source: str | None = None
    allowed_host_paths: tuple[str, ...] | None = None
    allow_host_network: bool = True
    allow_host_ports: bool = True
    image_gc_high_threshold_percent: float = 85.0
    image_gc_low_threshold_percent: float = 80.0
    image_minimum_gc_age_s: float = 120.0
    image_maximum_gc_age_s: float | None = None
    image_gc_period_s: float = 300.0
    pinned_images: tuple[str, ...] = ()
    max_dead_containers_per_container: int = 1
    max_dead_containers: int = 100
    imagefs_available_min_percent: float = 15.0
    nodefs_available_min_percent: float = 10.0
    disk_pressure_margin_percent: float = 5.0
    disk_check_interval_s: float = 10.0

    @property
    def api_socket(self) -> Path:
        """The local read-only API (pods, events): a Unix socket only root reaches."""
        return self.state_dir / API_SOCKET_NAME

    @property
    def health_host(self) -> str:
        return split_host_port(self.health_addr, "health_addr")[0]

    @property
    def health_port(self) -> int:
        return split_host_port(self.health_addr, "health_addr")[1]


def split_host_port(value: str, key: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); an IPv6 host must be bracketed (``[::1]:10248``)."""
    bad = ConfigError(f'{key}: "{value}" is not HOST:PORT (IPv6 as [::1]:10248)')
    host, sep, port = value.rpartition(":")
    # isascii: str.isdigit() also accepts other scripts' digits, which int() then parses.
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise bad
    if not 0 < int(port) <= PORT_MAX:
        raise bad
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
    elif ":" in host or "[" in host or "]" in host or any(ch.isspace() for ch in host):
        # An unbracketed IPv6 address is ambiguous: "::1:80" could be ::1 port 80 or ::1:80.
        raise bad
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
    # TOML has nan and inf; every comparison with nan is False, so it would slip past the range
    # checks and reach asyncio.sleep().
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key {key.name!r} must be a finite number, got {value!r}")
    if key.choices and value not in key.choices:
        raise ConfigError(
            f"{where}: key {key.name!r} must be one of {', '.join(key.choices)}, got {value!r}"
        )
    return value


def _check_ip(value: str | None, name: str, where: Callable[..., str]) -> None:
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{where(name)}: {name} {value!r} is not an IP address") from None


def _validate(cfg: AgentConfig, where: Callable[..., str], node_name_given: bool) -> None:
    def bad_name(field: str, problem: str) -> ConfigError:
        if not node_name_given:
            return ConfigError(
                f"{field} defaults to the hostname, and {problem}; set {field} in the config "
                "file or --node-name"
            )
        return ConfigError(f"{where(field)}: {field} {problem}")

    check_node_name(cfg.node_name, "node_name", bad_name)
    for name in ("health_addr", "api_addr"):
        try:
            split_host_port(getattr(cfg, name), name)
        except ConfigError as exc:
            raise ConfigError(f"{where(name)}: {exc}") from None
    _check_ip(cfg.node_ip, "node_ip", where)
    _check_ip(cfg.bind_source, "bind_source", where)
    for name in (
        "backoff_initial_s",
        "backoff_reset_s",
        "relist_interval_s",
        "manifest_poll_interval_s",
        "runtime_timeout_s",
        "watchdog_interval_s",
        "master_backoff_max_s",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where(name)}: {name} must be > 0")
    if cfg.backoff_initial_s > cfg.backoff_max_s:
        raise ConfigError(
            f"{where('backoff_initial_s', 'backoff_max_s')}: need backoff_initial_s <= "
            f"backoff_max_s, got {cfg.backoff_initial_s} > {cfg.backoff_max_s}"
        )
    for name in (
        "runtime_threads",
        "container_log_max_files",
        "max_pods",
        "max_parallel_image_pulls",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where(name)}: {name} must be >= 1")
    if not _DOCKER_SIZE.match(cfg.container_log_max_size):
        raise ConfigError(
            f"{where('container_log_max_size')}: container_log_max_size "
            f"{cfg.container_log_max_size!r} is not a size like 10m, 512k or 1g"
        )
    if not cfg.sandbox_image.strip():
        raise ConfigError(f"{where('sandbox_image')}: sandbox_image must not be empty")
    if (cfg.bootstrap_cert is None) != (cfg.bootstrap_key is None):
        raise ConfigError(
            f"{where('bootstrap_cert', 'bootstrap_key')}: bootstrap_cert and bootstrap_key go "
            "together"
        )
    _check_token(cfg, where)
    _check_masters(cfg.master, where)
    if len(os.fsencode(cfg.api_socket)) > UNIX_SOCKET_PATH_MAX_BYTES:
        raise ConfigError(
            f"{where('state_dir')}: state_dir is too long for its socket {API_SOCKET_NAME} "
            f"(a Unix socket path has at most {UNIX_SOCKET_PATH_MAX_BYTES} bytes)"
        )
    for prefix in cfg.allowed_host_paths or ():
        if not prefix.startswith("/") or "\0" in prefix:
            raise ConfigError(
                f"{where('allowed_host_paths')}: allowed_host_paths entry {prefix!r} is not an "
                "absolute path"
            )
    _check_disk_keys(cfg, where)
    for label in cfg.node_labels:
        if "=" not in label:
            raise ConfigError(
                f"{where('node_labels')}: node_labels entry {label!r} is not KEY=VALUE"
            )


MASTERS_MAX = 16  # URLs in ``master``: a control plane, not a fleet


def _check_masters(masters: tuple[str, ...] | None, where: Callable[..., str]) -> None:
    """``master``: one or more distinct https:// URLs (each HOST:PORT at most once)."""
    if masters is None:
        return
    if not masters:
        raise ConfigError(f"{where('master')}: master is an empty list; leave it unset instead")
    if len(masters) > MASTERS_MAX:
        raise ConfigError(f"{where('master')}: master lists more than {MASTERS_MAX} URLs")
    seen: set[str] = set()
    for url in masters:
        if not url.startswith("https://"):
            raise ConfigError(f"{where('master')}: master {url!r} must be an https:// URL")
        key = url.rstrip("/").lower()
        if key in seen:
            raise ConfigError(f"{where('master')}: master {url!r} is listed twice")
        seen.add(key)


def _check_disk_keys(cfg: AgentConfig, where: Callable[..., str]) -> None:
    """Image GC, dead containers and disk pressure (docs/images.md)."""
    for name in (
        "image_gc_high_threshold_percent",
        "image_gc_low_threshold_percent",
        "imagefs_available_min_percent",
        "nodefs_available_min_percent",
        "disk_pressure_margin_percent",
    ):
        if not 0 <= getattr(cfg, name) <= 100:
            raise ConfigError(f"{where(name)}: {name} must be between 0 and 100")
    if cfg.image_gc_low_threshold_percent >= cfg.image_gc_high_threshold_percent:
        raise ConfigError(
            f"{where('image_gc_low_threshold_percent', 'image_gc_high_threshold_percent')}: need "
            f"image_gc_low_threshold_percent < image_gc_high_threshold_percent, got "
            f"{cfg.image_gc_low_threshold_percent:g} >= {cfg.image_gc_high_threshold_percent:g}"
        )
    for name in ("image_gc_period_s", "disk_check_interval_s"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where(name)}: {name} must be > 0")
    if cfg.image_minimum_gc_age_s < 0:
        raise ConfigError(f"{where('image_minimum_gc_age_s')}: image_minimum_gc_age_s must be >= 0")
    top = cfg.image_maximum_gc_age_s
    if top is not None and top <= cfg.image_minimum_gc_age_s:
        raise ConfigError(
            f"{where('image_maximum_gc_age_s', 'image_minimum_gc_age_s')}: need "
            f"image_maximum_gc_age_s > image_minimum_gc_age_s, got {top:g} <= "
            f"{cfg.image_minimum_gc_age_s:g}"
        )
    for name in ("max_dead_containers_per_container", "max_dead_containers"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{where(name)}: {name} must be >= 0")


def _check_token(cfg: AgentConfig, where: Callable[..., str]) -> None:
    if cfg.token is not None and cfg.token_file is not None:
        raise ConfigError(f"{where('token', 'token_file')}: set token or token_file, not both")
    if cfg.token is not None:
        try:
            parse_token(cfg.token, "token")
        except BadRequestError as exc:  # names the format, never the value
            raise ConfigError(f"{where('token')}: {exc}") from None
    # token_file is read where it is used, at registration (a node that holds its certificate
    # starts without it: the file may be gone), by read_token_file; doctor checks it too.


def read_token_file(path: Path) -> str:
    """The join token in ``path`` (blocking): the file must be a regular file the owner only
    may read (0600, like every secret the agent keeps) and hold one token; ConfigError naming
    the file and the problem, never the content."""
    try:
        # Not a link (the file itself must be private), and no wait on a FIFO.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"token_file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"token_file {path}: not a regular file")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise ConfigError(
                f"token_file {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read the "
                f"token; chmod 600 {path}"
            )
        data = os.read(fd, TOKEN_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return str(parse_token(data.decode("ascii"), f"token_file {path}"))
    except (UnicodeDecodeError, BadRequestError):
        raise ConfigError(
            f"token_file {path}: does not hold a join token ({FORMAT_HELP})"
        ) from None


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
    """Defaults, then the file (``path``, else the default file if it exists), then overrides.

    ``overrides`` are typed flag values by key name; None means "flag not given". The result is
    validated as a whole; any problem raises :class:`ConfigError` naming the file or flag.
    """
    values: dict[str, object] = {}
    # Where each value came from, so a validation error points at the file or at the flag.
    sources: dict[str, str] = {}
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        raw = read_toml(path, required=path_required)
        for name, value in raw.items():
            key = _KEYS.get(name)
            if key is None:
                raise unknown_key(path, name, _KEYS)
            values[name] = coerce_value(key, value, str(path))
            sources[name] = str(path)
    for name, value in overrides.items():
        if value is None:
            continue
        key = _KEYS.get(name)
        if key is None:
            raise ConfigError(f"unknown override {name!r}")
        values[name] = coerce_value(key, value, f"flag {key.flag}")
        sources[name] = f"flag {key.flag}"

    def where(*names: str) -> str:
        given = dict.fromkeys(sources[n] for n in names if n in sources)
        return ", ".join(given) or (str(path) if path is not None else "defaults")

    cfg = AgentConfig(**values)  # type: ignore[arg-type]
    _validate(cfg, where, node_name_given="node_name" in values)
    return cfg


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r} (must be finite)")
    return value


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--key-name`` for every key; default None so an absent flag is detectable."""
    for key in AGENT_KEYS:
        kwargs: dict[str, Any] = {"default": None, "help": key.help, "dest": key.name}
        if key.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif key.type is float:
            kwargs["type"] = _finite_float
            kwargs["metavar"] = "SECONDS" if key.name.endswith("_s") else "NUMBER"
        elif key.type is int:
            kwargs["type"] = int
            kwargs["metavar"] = "N"
        elif key.type is list:
            kwargs["metavar"] = "A,B,..."
        elif key.choices:
            kwargs["choices"] = key.choices
        parser.add_argument(key.flag, **kwargs)


def overrides_from_args(ns: argparse.Namespace) -> dict[str, object]:
    """The config keys of parsed flags, None for the flags not given."""
    return {key.name: getattr(ns, key.name, None) for key in AGENT_KEYS}


def _type_doc(key: Key) -> str:
    names = {str: "str", int: "int", float: "float", bool: "bool", Path: "path"}
    if key.type is list:
        return "list of strings"
    text = names.get(key.type, key.type.__name__)
    if key.choices:
        text += " (" + " \\| ".join(key.choices) + ")"
    return text


def _default_doc(key: Key) -> str:
    if key.default_doc:
        return key.default_doc
    spec = AgentConfig.__dataclass_fields__[key.name]
    default = spec.default if spec.default is not MISSING else None
    if default is None or default == ():
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"  # as TOML spells it
    return f"`{default}`"


def config_table_markdown() -> str:
    """The reference table of docs/configuration.md, rendered from ``AGENT_KEYS``."""
    lines = ["| key | flag | type | default | meaning |", "|---|---|---|---|---|"]
    lines += [
        f"| `{k.name}` | `{k.flag}` | {_type_doc(k)} | {_default_doc(k)} | {k.help} |"
        for k in AGENT_KEYS
    ]
    return "\n".join(lines) + "\n"
