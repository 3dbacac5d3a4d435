"""The master's configuration (``master.toml``): sections ``[master]``, ``[registration]`` and
``[store]`` (which backend holds the cluster's state: SQLite in the data dir, or etcd).

Same rules as the agent's: every key typed and documented in one table, unknown keys and bad
values are errors naming file, section and key. ``load_master_config`` is also what a SIGHUP
reload uses: a bad file raises and the running policy stays.
"""

from __future__ import annotations

import ipaddress
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import Key, coerce_value, read_toml, split_host_port, unknown_key
from agent.errors import ConfigError

TRUST_RULES = ("open", "ip-allowlist", "client-cert", "token", "approval")
DEFAULT_NODE_CERT_LIFETIME_S = 30 * 24 * 3600
DEFAULT_MAX_PENDING_REGISTRATIONS = 1000
# 1000 requests of a typical size (a CSR and a few labels: ~2 KiB) fit many times over; the
# largest request the field limits allow (~40 KiB) fits 400 times.
DEFAULT_MAX_PENDING_BYTES = 16 * 1024 * 1024
DEFAULT_PENDING_REGISTRATION_TTL_S = 24 * 3600.0
DEFAULT_REGISTRATION_RATE_PER_S = 5.0
DEFAULT_REGISTRATION_BURST = 50

DIRECT_TICKETS = ("auto", "never")  # [master] direct_tickets (docs/streaming.md)

MASTER_KEYS: tuple[Key, ...] = (
    Key("listen", str, "HOST:PORT of the HTTPS API"),
    Key("data_dir", Path, "state: pki/, store.db"),
    Key("node_cert_lifetime_s", float, "lifetime of issued node certificates, seconds"),
    Key("lease_renew_s", float, "how often nodes renew their lease, seconds"),
    Key("lease_grace_s", float, "a node whose lease is older than this is NotReady, seconds"),
    Key(
        "pod_eviction_timeout_s",
        float,
        "scheduler-placed pods of a node NotReady this long move to another node; 0 = never",
    ),
    Key(
        "disruption_threshold",
        float,
        "share of nodes NotReady at which the master blames its own network and evicts nothing",
    ),
    Key(
        "store_history_revisions",
        int,
        "store changes kept for resuming watches; an older watch gets 410 and relists",
    ),
    Key("log_format", str, "log line format", choices=("kv", "json")),
    Key("log_level", str, "log level", choices=("debug", "info", "warning", "error")),
    Key(
        "direct_tickets",
        str,
        "auto: nodectl port-forward gets a ticket and goes straight to the node (the relay if "
        "the node is unreachable); never: every stream through the master's relay",
        choices=DIRECT_TICKETS,
    ),
)
REGISTRATION_KEYS: tuple[Key, ...] = (
    Key("trust", list, "ordered trust rules; the first that admits wins", choices=TRUST_RULES),
    Key("allowed_cidrs", list, "source CIDRs admitted by the ip-allowlist rule"),
    Key("trusted_proxies", list, "peers whose X-Forwarded-For is believed"),
    Key("client_ca_file", Path, "CA bundle for the client-cert rule", optional=True),
    Key("client_cert_name_must_match", bool, "client-cert: CN or a SAN must equal the node name"),
    Key(
        "max_pending_registrations",
        int,
        "requests waiting for an administrator (new nodes and replacement keys); more get 429",
    ),
    Key("max_pending_bytes", int, "total size of the waiting requests, bytes; more get 429"),
    Key(
        "pending_registration_ttl_s",
        float,
        "a request still waiting after this long is dropped, seconds (the node asks again)",
    ),
    Key(
        "registration_rate_per_s",
        float,
        "registration requests per second per source address (IPv6: per /64); more get 429",
    ),
    Key("registration_burst", int, "registration requests a source address may send at once"),
)
STORE_BACKENDS = ("sqlite", "etcd")
DEFAULT_STORE_PREFIX = "/node-master/"
DEFAULT_LEADER_LEASE_TTL_S = 10.0
LEADER_LEASE_TTL_RANGE_S = (2, 300)  # etcd grants 2 s at least with its default heartbeat
MAX_STORE_PREFIX_CHARS = 200
_PREFIX_RE = re.compile(r"/(?:[A-Za-z0-9._-]+/)*")
STORE_KEYS: tuple[Key, ...] = (
    Key("backend", str, "where the cluster's state is kept", choices=STORE_BACKENDS),
    Key("endpoints", list, "etcd: client URLs (https://HOST:PORT or http://HOST:PORT)"),
    Key("ca_file", Path, "etcd: CA bundle etcd's certificate is checked against", optional=True),
    Key("cert_file", Path, "etcd: client certificate (PEM) presented to etcd", optional=True),
    Key("key_file", Path, "etcd: its private key (PEM)", optional=True),
    Key("prefix", str, "etcd: key prefix of this cluster (several clusters may share an etcd)"),
    Key(
        "leader_lease_ttl_s",
        float,
        "etcd: TTL of the leader election's lease, whole seconds; a dead leader is replaced "
        "within it",
    ),
)
SECTIONS = {"master": MASTER_KEYS, "registration": REGISTRATION_KEYS, "store": STORE_KEYS}


@dataclass(frozen=True, slots=True)
class RegistrationPolicy:
    trust: tuple[str, ...] = ("open",)
    allowed_cidrs: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    client_ca_file: Path | None = None
    client_cert_name_must_match: bool = True
    max_pending_registrations: int = DEFAULT_MAX_PENDING_REGISTRATIONS
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    pending_registration_ttl_s: float = DEFAULT_PENDING_REGISTRATION_TTL_S
    registration_rate_per_s: float = DEFAULT_REGISTRATION_RATE_PER_S
    registration_burst: int = DEFAULT_REGISTRATION_BURST

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(c, strict=False) for c in self.allowed_cidrs]


@dataclass(frozen=True, slots=True)
class StoreConfig:
    backend: str = "sqlite"
    endpoints: tuple[str, ...] = ()
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    prefix: str = DEFAULT_STORE_PREFIX
    leader_lease_ttl_s: float = DEFAULT_LEADER_LEASE_TTL_S


@dataclass(frozen=True, slots=True)
class MasterConfig:
    data_dir: Path
    listen: str = "0.0.0.0:6443"
    node_cert_lifetime_s: float = DEFAULT_NODE_CERT_LIFETIME_S
    lease_renew_s: float = 10.0
    lease_grace_s: float = 40.0
    pod_eviction_timeout_s: float = 300.0
    disruption_threshold: float = 0.55
    store_history_revisions: int = 10_000
    log_format: str = "kv"
    log_level: str = "info"
    direct_tickets: str = "auto"
    registration: RegistrationPolicy = field(default_factory=RegistrationPolicy)
    store: StoreConfig = field(default_factory=StoreConfig)
    path: Path | None = None

    @property
    def host(self) -> str:
        return split_host_port(self.listen, "listen")[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen, "listen")[1]

    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"


def _section(
    raw: Mapping[str, Any], name: str, keys: tuple[Key, ...], where: str
) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    known = {k.name: k for k in keys}
    values: dict[str, Any] = {}
    for key_name, value in table.items():
        key = known.get(key_name)
        if key is None:
            raise unknown_key(f"{where} [{name}]", key_name, known)
        values[key_name] = coerce_value(key, value, f"{where} [{name}]")
    return values


def load_master_config(path: Path, overrides: Mapping[str, object] | None = None) -> MasterConfig:
    raw = read_toml(path, required=True)
    where = str(path)
    for section in raw:
        if section not in SECTIONS:
            raise unknown_key(where, section, SECTIONS)
    master = _section(raw, "master", MASTER_KEYS, where)
    for name, value in (overrides or {}).items():
        if value is not None:
            key = {k.name: k for k in MASTER_KEYS}[name]
            master[name] = coerce_value(key, value, f"flag {key.flag}")
    registration = RegistrationPolicy(**_section(raw, "registration", REGISTRATION_KEYS, where))
    store = StoreConfig(**_section(raw, "store", STORE_KEYS, where))
    if "data_dir" not in master:
        master["data_dir"] = path.parent
    config = MasterConfig(registration=registration, store=store, path=path, **master)
    validate(config, where)
    return config


def validate(config: MasterConfig, where: str) -> None:
    try:
        split_host_port(config.listen, "listen")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    policy = config.registration
    if not policy.trust:
        raise ConfigError(f"{where} [registration]: trust must list at least one rule")
    for key, cidrs in (
        ("allowed_cidrs", policy.allowed_cidrs),
        ("trusted_proxies", policy.trusted_proxies),
    ):
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{where} [registration]: {key}: {cidr!r} is not a CIDR"
                ) from None
    if "ip-allowlist" in policy.trust and not policy.allowed_cidrs:
        raise ConfigError(f"{where} [registration]: ip-allowlist needs allowed_cidrs")
    if "client-cert" in policy.trust:
        if policy.client_ca_file is None:
            raise ConfigError(f"{where} [registration]: client-cert needs client_ca_file")
        if not policy.client_ca_file.is_file():
            raise ConfigError(
                f"{where} [registration]: client_ca_file {policy.client_ca_file} does not exist"
            )
    for key, value in (
        ("max_pending_registrations", policy.max_pending_registrations),
        ("max_pending_bytes", policy.max_pending_bytes),
        ("registration_burst", policy.registration_burst),
    ):
        if value < 1:
            raise ConfigError(f"{where} [registration]: {key} must be >= 1")
    for key, seconds in (
        ("pending_registration_ttl_s", policy.pending_registration_ttl_s),
        ("registration_rate_per_s", policy.registration_rate_per_s),
    ):
        if not 0 < seconds < math.inf:
            raise ConfigError(f"{where} [registration]: {key} must be a number > 0")
    if config.lease_renew_s <= 0 or config.lease_grace_s <= config.lease_renew_s:
        raise ConfigError(f"{where} [master]: need 0 < lease_renew_s < lease_grace_s")
    if config.pod_eviction_timeout_s < 0:
        raise ConfigError(f"{where} [master]: pod_eviction_timeout_s must be >= 0 (0 = never)")
    if config.store_history_revisions < 1:
        raise ConfigError(f"{where} [master]: store_history_revisions must be >= 1")
    if not 0 < config.disruption_threshold <= 1:
        raise ConfigError(f"{where} [master]: disruption_threshold must be in (0, 1]")
    if config.node_cert_lifetime_s < 2:
        raise ConfigError(f"{where} [master]: node_cert_lifetime_s must be at least 2")
    validate_store(config.store, f"{where} [store]")


def validate_store(store: StoreConfig, where: str) -> None:
    """The ``[store]`` table; ConfigError naming the key."""
    etcd_keys = {
        "endpoints": bool(store.endpoints),
        "ca_file": store.ca_file is not None,
        "cert_file": store.cert_file is not None,
        "key_file": store.key_file is not None,
        "prefix": store.prefix != DEFAULT_STORE_PREFIX,
        "leader_lease_ttl_s": store.leader_lease_ttl_s != DEFAULT_LEADER_LEASE_TTL_S,
    }
    if store.backend != "etcd":
        for key, given in etcd_keys.items():
            if given:
                raise ConfigError(
                    f'{where}: {key} is for backend = "etcd" (backend is {store.backend!r})'
                )
        return
    if not store.endpoints:
        raise ConfigError(f'{where}: endpoints: backend = "etcd" needs at least one etcd URL')
    schemes = {_endpoint_scheme(url, where) for url in store.endpoints}
    if len(schemes) > 1:
        raise ConfigError(f"{where}: endpoints: all https:// or all http://, not both")
    if (store.cert_file is None) != (store.key_file is None):
        missing = "key_file" if store.key_file is None else "cert_file"
        raise ConfigError(f"{where}: {missing}: cert_file and key_file go together")
    if schemes == {"http"}:
        for key in ("ca_file", "cert_file", "key_file"):
            if etcd_keys[key]:
                raise ConfigError(f"{where}: {key} needs https:// endpoints (TLS)")
    for key, file in (
        ("ca_file", store.ca_file),
        ("cert_file", store.cert_file),
        ("key_file", store.key_file),
    ):
        if file is not None and not file.is_file():
            raise ConfigError(f"{where}: {key} {file} does not exist")
    if len(store.prefix) > MAX_STORE_PREFIX_CHARS or not _PREFIX_RE.fullmatch(store.prefix):
        raise ConfigError(
            f"{where}: prefix {store.prefix[:80]!r} must start and end with '/' and hold only "
            f"letters, digits, '.', '_', '-' and '/' (at most {MAX_STORE_PREFIX_CHARS} characters)"
        )
    low, high = LEADER_LEASE_TTL_RANGE_S
    ttl = store.leader_lease_ttl_s
    if not (low <= ttl <= high and ttl == int(ttl)):
        raise ConfigError(
            f"{where}: leader_lease_ttl_s {ttl:g} must be whole seconds from {low} to {high}"
        )


def _endpoint_scheme(url: str, where: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = urllib.parse.urlsplit("")
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ConfigError(f"{where}: endpoints: {url[:200]!r} is not a URL like https://HOST:2379")
    return parts.scheme


def render_master_toml(data_dir: Path, listen: str) -> str:
    return f"""# node-master configuration. Every key is documented in docs/master.md.
[master]
listen = "{listen}"
# data_dir = "{data_dir}"   # default: this file's directory, so a copy of it is a replica's
# node_cert_lifetime_s = {DEFAULT_NODE_CERT_LIFETIME_S}   # 30 days; nodes renew at 70-90 %
# lease_renew_s = 10.0
# lease_grace_s = 40.0
# pod_eviction_timeout_s = 300.0  # scheduler-placed pods leave a node NotReady this long; 0 = never
# disruption_threshold = 0.55     # this share of nodes NotReady at once: evict nothing
# store_history_revisions = 10000 # changes kept for watches to resume from
# log_format = "kv"          # or "json"
# log_level = "info"
# direct_tickets = "auto"    # "never": port-forward always through this master's relay

[registration]
# Ordered trust rules; the first that admits a node wins, "approval" queues it for an admin,
# no rule admitting means 403. Rules: open, ip-allowlist, client-cert, token (a join token
# from `node-master token create`), approval.
# Nodes already holding a certificate from this cluster stay trusted whatever this says.
trust = ["open"]
# allowed_cidrs = ["10.0.0.0/8", "fd00::/8"]      # for ip-allowlist
# trusted_proxies = []                            # peers whose X-Forwarded-For is believed
# client_ca_file = "/etc/node-master/fleet-ca.pem" # for client-cert
# client_cert_name_must_match = true
# Requests waiting for an administrator (approval rule, replacement keys) are bounded; a source
# address sends at most registration_burst at once and registration_rate_per_s after that.
# max_pending_registrations = {DEFAULT_MAX_PENDING_REGISTRATIONS}
# max_pending_bytes = {DEFAULT_MAX_PENDING_BYTES}          # 16 MiB
# pending_registration_ttl_s = {DEFAULT_PENDING_REGISTRATION_TTL_S:g}         # 24 hours
# registration_rate_per_s = {DEFAULT_REGISTRATION_RATE_PER_S:g}
# registration_burst = {DEFAULT_REGISTRATION_BURST}

[store]
# Where the cluster's state is kept: "sqlite" (store.db in data_dir) or "etcd".
# backend = "sqlite"
# endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]   # etcd
# ca_file = "/etc/node-master/etcd-ca.pem"
# cert_file = "/etc/node-master/etcd-client.pem"
# key_file = "/etc/node-master/etcd-client.key"
# prefix = "{DEFAULT_STORE_PREFIX}"   # several clusters may share one etcd
# leader_lease_ttl_s = {DEFAULT_LEADER_LEASE_TTL_S:g}   # a dead leader master is replaced within it
"""
