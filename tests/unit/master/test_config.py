"""The master's configuration (``agent.master.config``): every key of ``[master]`` and
``[registration]`` read from ``master.toml``, flag overrides, the file ``node-master init``
renders, and every refusal (unknown sections and keys, bad types, bad values), each naming the
file, the section and the key (docs/master.md, "master.toml")."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.master.config import (
    DEFAULT_NODE_CERT_LIFETIME_S,
    MASTER_KEYS,
    REGISTRATION_KEYS,
    MasterConfig,
    RegistrationPolicy,
    StoreConfig,
    load_master_config,
    render_master_toml,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "master.toml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str, **overrides: object) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_master_config(path, overrides or None)
    message = str(caught.value)
    assert message.startswith(f"{path}") or message.startswith("flag "), message
    return message


def test_an_empty_file_is_every_default_with_the_data_dir_beside_it(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    config = load_master_config(path)
    assert config == MasterConfig(data_dir=tmp_path, path=path)
    assert (config.listen, config.host, config.port) == ("0.0.0.0:6443", "0.0.0.0", 6443)
    assert config.node_cert_lifetime_s == DEFAULT_NODE_CERT_LIFETIME_S
    assert config.registration == RegistrationPolicy()
    assert config.registration.trust == ("open",)
    assert config.pki_dir == tmp_path / "pki"


def test_every_key_is_read(tmp_path: Path) -> None:
    fleet_ca = tmp_path / "fleet.pem"
    fleet_ca.write_text("not parsed here")
    path = write(
        tmp_path,
        f"""
[master]
listen = "[::1]:7443"
data_dir = "{tmp_path / "state"}"
node_cert_lifetime_s = 3600
lease_renew_s = 2.5
lease_grace_s = 12
pod_eviction_timeout_s = 0
disruption_threshold = 1.0
store_history_revisions = 50
log_format = "json"
log_level = "debug"
direct_tickets = "never"

[registration]
trust = ["client-cert", "ip-allowlist", "approval", "open"]
allowed_cidrs = ["10.0.0.0/8", "fd00::/8"]
trusted_proxies = ["192.0.2.10/32"]
client_ca_file = "{fleet_ca}"
client_cert_name_must_match = false
max_pending_registrations = 50
max_pending_bytes = 65536
pending_registration_ttl_s = 30
registration_rate_per_s = 0.5
registration_burst = 3
""",
    )
    config = load_master_config(path)
    assert config == MasterConfig(
        data_dir=tmp_path / "state",
        listen="[::1]:7443",
        node_cert_lifetime_s=3600.0,
        lease_renew_s=2.5,
        lease_grace_s=12.0,
        pod_eviction_timeout_s=0.0,
        disruption_threshold=1.0,
        store_history_revisions=50,
        log_format="json",
        log_level="debug",
        direct_tickets="never",
        registration=RegistrationPolicy(
            trust=("client-cert", "ip-allowlist", "approval", "open"),
            allowed_cidrs=("10.0.0.0/8", "fd00::/8"),
            trusted_proxies=("192.0.2.10/32",),
            client_ca_file=fleet_ca,
            client_cert_name_must_match=False,
            max_pending_registrations=50,
            max_pending_bytes=65536,
            pending_registration_ttl_s=30.0,
            registration_rate_per_s=0.5,
            registration_burst=3,
        ),
        path=path,
    )
    assert (config.host, config.port) == ("::1", 7443)
    assert isinstance(config.lease_grace_s, float)  # a TOML integer for a float key
    assert config.registration.networks() == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
    # The test above sets every key there is.
    set_keys = {"listen", "data_dir", "node_cert_lifetime_s", "lease_renew_s", "lease_grace_s"}
    set_keys |= {"pod_eviction_timeout_s", "disruption_threshold", "store_history_revisions"}
    set_keys |= {"log_format", "log_level", "direct_tickets"}
    assert {k.name for k in MASTER_KEYS} == set_keys
    assert {k.name for k in REGISTRATION_KEYS} == {
        "trust",
        "allowed_cidrs",
        "trusted_proxies",
        "client_ca_file",
        "client_cert_name_must_match",
        "max_pending_registrations",
        "max_pending_bytes",
        "pending_registration_ttl_s",
        "registration_rate_per_s",
        "registration_burst",
    }


def test_registration_limits_default_to_the_documented_values(tmp_path: Path) -> None:
    policy = load_master_config(write(tmp_path, "[registration]\n")).registration
    assert policy.max_pending_registrations == 1000
    assert policy.max_pending_bytes == 16 * 1024 * 1024
    assert policy.pending_registration_ttl_s == 24 * 3600
    assert (policy.registration_rate_per_s, policy.registration_burst) == (5.0, 50)


def test_a_string_for_a_list_is_read_as_its_comma_separated_items(tmp_path: Path) -> None:
    # As from a flag (agent.config.coerce_value): "open, approval" is two rules.
    config = load_master_config(write(tmp_path, '[registration]\ntrust = "approval, open"\n'))
    assert config.registration.trust == ("approval", "open")


def test_an_empty_client_ca_file_is_unset(tmp_path: Path) -> None:
    config = load_master_config(write(tmp_path, '[registration]\nclient_ca_file = ""\n'))
    assert config.registration.client_ca_file is None


def test_the_file_node_master_init_renders_loads_as_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, render_master_toml(tmp_path, "127.0.0.1:6443"))
    config = load_master_config(path)
    assert config == MasterConfig(data_dir=tmp_path, listen="127.0.0.1:6443", path=path)
    # The data dir is the file's own directory, not a path written in it: a copy of the
    # directory (a replica's, docs/operations.md) is a data dir of its own.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "master.toml").write_text(path.read_text())
    assert load_master_config(copy / "master.toml").data_dir == copy


def test_flags_override_the_file_and_unset_flags_do_not(tmp_path: Path) -> None:
    path = write(tmp_path, '[master]\nlisten = "127.0.0.1:1"\nlog_level = "error"\n')
    config = load_master_config(path, {"listen": "127.0.0.1:2", "log_level": None})
    assert (config.listen, config.log_level) == ("127.0.0.1:2", "error")
    message = refusal(tmp_path, "", lease_grace_s="soon")
    assert message == "flag --lease-grace-s: key 'lease_grace_s' must be float, got 'soon'"


def test_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_master_config(tmp_path / "absent.toml")
    assert "invalid TOML" in refusal(tmp_path, "[master\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mastr]\n", 'unknown key "mastr" (did you mean "master"?)'),
        ("[master]\nlisten_addr = 'x'\n", '[master]: unknown key "listen_addr" (did you mean'),
        ("[registration]\ntrusted = []\n", '[registration]: unknown key "trusted"'),
        ("master = 1\n", "[master] must be a table"),
        ("registration = 'open'\n", "[registration] must be a table"),
    ],
)
def test_unknown_sections_and_keys(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text)


@pytest.mark.parametrize(
    ("section", "line", "expected"),
    [
        ("master", "listen = 6443", "key 'listen' must be str, got 6443"),
        ("master", "data_dir = 1", "key 'data_dir' must be Path"),
        ("master", "node_cert_lifetime_s = 'long'", "key 'node_cert_lifetime_s' must be float"),
        ("master", "lease_renew_s = true", "key 'lease_renew_s' must be float, got True"),
        ("master", "lease_grace_s = nan", "key 'lease_grace_s' must be a finite number"),
        ("master", "pod_eviction_timeout_s = inf", "key 'pod_eviction_timeout_s' must be a fin"),
        ("master", "disruption_threshold = '1'", "key 'disruption_threshold' must be float"),
        ("master", "store_history_revisions = 1.5", "key 'store_history_revisions' must be int"),
        ("master", "store_history_revisions = true", "key 'store_history_revisions' must be int"),
        ("master", "log_format = 'xml'", "key 'log_format' must be one of kv, json, got 'xml'"),
        ("master", "log_level = 'trace'", "key 'log_level' must be one of debug, info"),
        ("registration", "trust = ['open', 'magic']", "key 'trust': 'magic' is not one of open"),
        ("registration", "allowed_cidrs = [10]", "key 'allowed_cidrs' must be a list of strings"),
        ("registration", "trusted_proxies = {a = 1}", "key 'trusted_proxies' must be a list"),
        ("registration", "client_ca_file = 5", "key 'client_ca_file' must be Path"),
        (
            "registration",
            "client_cert_name_must_match = 'yes'",
            "key 'client_cert_name_must_match' must be bool",
        ),
    ],
)
def test_values_of_the_wrong_type(tmp_path: Path, section: str, line: str, expected: str) -> None:
    message = refusal(tmp_path, f"[{section}]\n{line}\n")
    assert f"[{section}]: {expected}" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[master]\nlisten = '6443'", 'listen: "6443" is not HOST:PORT'),
        ("[master]\nlisten = 'host:99999'", 'listen: "host:99999" is not HOST:PORT'),
        ("[master]\nlisten = '::1:80'", 'listen: "::1:80" is not HOST:PORT'),
        ("[registration]\ntrust = []", "[registration]: trust must list at least one rule"),
        (
            "[registration]\ntrust = ['ip-allowlist']",
            "[registration]: ip-allowlist needs allowed_cidrs",
        ),
        (
            "[registration]\nallowed_cidrs = ['10.0.0.0/33']",
            "[registration]: allowed_cidrs: '10.0.0.0/33' is not a CIDR",
        ),
        (
            "[registration]\ntrusted_proxies = ['proxy.example']",
            "[registration]: trusted_proxies: 'proxy.example' is not a CIDR",
        ),
        (
            "[registration]\ntrust = ['client-cert']",
            "[registration]: client-cert needs client_ca_file",
        ),
        ("[master]\nlease_renew_s = 0", "[master]: need 0 < lease_renew_s < lease_grace_s"),
        (
            "[master]\nlease_renew_s = 10\nlease_grace_s = 10",
            "[master]: need 0 < lease_renew_s < lease_grace_s",
        ),
        (
            "[master]\npod_eviction_timeout_s = -1",
            "[master]: pod_eviction_timeout_s must be >= 0 (0 = never)",
        ),
        (
            "[master]\nstore_history_revisions = 0",
            "[master]: store_history_revisions must be >= 1",
        ),
        ("[master]\ndisruption_threshold = 0", "[master]: disruption_threshold must be in (0, 1]"),
        ("[master]\ndisruption_threshold = 1.5", "disruption_threshold must be in (0, 1]"),
        ("[master]\nnode_cert_lifetime_s = 1", "[master]: node_cert_lifetime_s must be at least 2"),
        (
            "[registration]\nmax_pending_registrations = 0",
            "[registration]: max_pending_registrations must be >= 1",
        ),
        ("[registration]\nmax_pending_bytes = -5", "max_pending_bytes must be >= 1"),
        ("[registration]\nregistration_burst = 0", "registration_burst must be >= 1"),
        (
            "[registration]\npending_registration_ttl_s = 0",
            "[registration]: pending_registration_ttl_s must be a number > 0",
        ),
        ("[registration]\nregistration_rate_per_s = -1", "registration_rate_per_s must be"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in refusal(tmp_path, text + "\n")


def test_a_client_ca_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "fleet.pem"
    text = f"[registration]\ntrust = ['client-cert']\nclient_ca_file = '{missing}'\n"
    message = refusal(tmp_path, text)
    assert message.endswith(f"[registration]: client_ca_file {missing} does not exist")
    missing.write_text("")
    config = load_master_config(tmp_path / "master.toml")
    assert config.registration.client_ca_file == missing


# -- [store] ----------------------------------------------------------------------------------


def test_the_store_is_sqlite_unless_etcd_is_asked(tmp_path: Path) -> None:
    assert load_master_config(write(tmp_path, "")).store == StoreConfig()
    assert StoreConfig().backend == "sqlite"
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("not parsed here")
    path = write(
        tmp_path,
        f"""
[store]
backend = "etcd"
endpoints = ["https://10.0.0.1:2379", "https://[fd00::2]:2379"]
ca_file = "{tmp_path / "ca.pem"}"
cert_file = "{tmp_path / "client.pem"}"
key_file = "{tmp_path / "client.key"}"
prefix = "/clusters/eu-1/"
leader_lease_ttl_s = 15
""",
    )
    assert load_master_config(path).store == StoreConfig(
        backend="etcd",
        endpoints=("https://10.0.0.1:2379", "https://[fd00::2]:2379"),
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "client.pem",
        key_file=tmp_path / "client.key",
        prefix="/clusters/eu-1/",
        leader_lease_ttl_s=15.0,
    )
    plain = write(tmp_path, '[store]\nbackend = "etcd"\nendpoints = ["http://127.0.0.1:2379"]\n')
    assert load_master_config(plain).store.endpoints == ("http://127.0.0.1:2379",)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('backend = "consul"', "key 'backend' must be one of sqlite, etcd, got 'consul'"),
        ('endpoints = ["https://e:2379"]', 'endpoints is for backend = "etcd"'),
        ('prefix = "/x/"', "prefix is for backend = \"etcd\" (backend is 'sqlite')"),
        ("leader_lease_ttl_s = 5", 'leader_lease_ttl_s is for backend = "etcd"'),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\nleader_lease_ttl_s = 1',
            "leader_lease_ttl_s 1 must be whole seconds from 2 to 300",
        ),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\nleader_lease_ttl_s = 2.5',
            "leader_lease_ttl_s 2.5 must be whole seconds from 2 to 300",
        ),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\nleader_lease_ttl_s = nan',
            "key 'leader_lease_ttl_s' must be a finite number, got nan",
        ),
        ('backend = "etcd"', 'endpoints: backend = "etcd" needs at least one etcd URL'),
        ('backend = "etcd"\nendpoints = []', "needs at least one etcd URL"),
        ('backend = "etcd"\nendpoints = "e:2379"', "endpoints: 'e:2379' is not a URL like"),
        ('backend = "etcd"\nendpoints = ["https://e"]', "'https://e' is not a URL like"),
        ('backend = "etcd"\nendpoints = ["https://e:99999"]', "is not a URL like"),
        ('backend = "etcd"\nendpoints = ["ftp://e:2379"]', "is not a URL like"),
        ('backend = "etcd"\nendpoints = ["https://u:p@e:2379"]', "is not a URL like"),
        ('backend = "etcd"\nendpoints = ["https://e:2379/v3"]', "is not a URL like"),
        (
            'backend = "etcd"\nendpoints = ["https://a:2379", "http://b:2379"]',
            "endpoints: all https:// or all http://, not both",
        ),
        ('backend = "etcd"\nendpoints = [2379]', "key 'endpoints' must be a list of strings"),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\ncert_file = "/c.pem"',
            "key_file: cert_file and key_file go together",
        ),
        (
            'backend = "etcd"\nendpoints = ["http://e:2379"]\nca_file = "/ca.pem"',
            "ca_file needs https:// endpoints (TLS)",
        ),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\nca_file = "/no/such/ca.pem"',
            "ca_file /no/such/ca.pem does not exist",
        ),
        ('backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = ""', "prefix '' must"),
        ('backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = "a/"', "prefix 'a/' must"),
        ('backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = "/a"', "prefix '/a' must"),
        ('backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = "/a b/"', "must start"),
        ('backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = "//"', "must start"),
        (
            'backend = "etcd"\nendpoints = ["https://e:2379"]\nprefix = 7',
            "key 'prefix' must be str",
        ),
        ('endpoint = ["https://e:2379"]', '[store]: unknown key "endpoint" (did you mean'),
    ],
)
def test_bad_store_tables_name_the_key(tmp_path: Path, lines: str, expected: str) -> None:
    message = refusal(tmp_path, f"[store]\n{lines}\n")
    assert "[store]" in message and expected in message, message
