"""The master's PKI on disk: the cluster CA, the serving certificate, the admin credentials.

``init_cluster`` runs once (``node-master init``); ``ClusterPki.load`` at every start. Blocking
file I/O: called before the event loop runs or through the thread bridge.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from agent.errors import ConfigError, PkiError
from agent.master.cluster_ca import ROTATION_MARK
from agent.master.cluster_ca import fingerprint as ca_fingerprint
from agent.pki.core import (
    ADMIN_LIFETIME_DAYS,
    SERVING_LIFETIME_DAYS,
    PrivateKey,
    cert_names,
    cert_to_pem,
    certifiable,
    certs_from_pem,
    create_ca,
    generate_key,
    has_master_mark,
    issue,
    key_from_pem,
    key_to_pem,
    spki_pin,
    write_private,
)
from agent.pki.names import MASTERS_GROUP, PROXIES_GROUP, USER_GROUPS

DAY_S = 24 * 3600
MASTER_COMMON_NAME = "node-master"


@dataclass(frozen=True, slots=True)
class ClusterPki:
    ca_key: PrivateKey
    ca_cert: x509.Certificate
    serving_key_path: Path
    serving_cert_path: Path
    ca_cert_path: Path

    @property
    def pin(self) -> str:
        return spki_pin(self.ca_cert)

    @classmethod
    def load(cls, pki_dir: Path) -> ClusterPki:
        try:
            ca_key = key_from_pem((pki_dir / "ca.key").read_bytes())
            ca_cert = certs_from_pem((pki_dir / "ca.crt").read_bytes())[0]
        except FileNotFoundError as exc:
            raise ConfigError(f"{exc.filename}: missing; run `node-master init` first") from exc
        return cls(
            ca_key=ca_key,
            ca_cert=ca_cert,
            serving_key_path=pki_dir / "master.key",
            serving_cert_path=pki_dir / "master.crt",
            ca_cert_path=pki_dir / "ca.crt",
        )


@dataclass(frozen=True, slots=True)
class InitResult:
    pin: str
    server_url: str
    admin_conf: Path
    config_path: Path


def _serving_names(server_names: list[str], listen_host: str) -> list[str]:
    names = list(server_names) or [
        # A host name a certificate cannot hold (an '_' in it) is left out, not refused.
        *[n for n in (socket.gethostname().lower(),) if certifiable(n)],
        "localhost",
        "127.0.0.1",
        "::1",
    ]
    if listen_host not in ("0.0.0.0", "::", ""):
        names.append(listen_host)
    return names


def issue_serving_cert(
    ca_key: PrivateKey, ca_cert: x509.Certificate, key: PrivateKey, names: Sequence[str]
) -> bytes:
    """The master's serving certificate (PEM) for ``names``, with the master's mark
    (``MASTER_URI``), which agents and nodectl require: no other certificate carries it."""
    cert = issue(
        ca_key,
        ca_cert,
        key.public_key(),
        common_name=MASTER_COMMON_NAME,
        groups=[],
        sans=names,
        lifetime_s=SERVING_LIFETIME_DAYS * DAY_S,
        client=False,
        server=True,
        master=True,
    )
    return cert_to_pem(cert)


def ensure_master_mark(pki: ClusterPki) -> list[str] | None:
    """Migration from before the master's mark (docs/security.md): a serving certificate
    without it is issued again, for the same key and the same names (those a certificate may
    still hold), with the mark; returns those names, or None when it had the mark already.
    Blocking: at start, through the thread bridge."""
    try:
        current = certs_from_pem(pki.serving_cert_path.read_bytes())[0]
        key = key_from_pem(pki.serving_key_path.read_bytes())
    except (OSError, IndexError, PkiError) as exc:
        raise ConfigError(f"{pki.serving_cert_path}: cannot read the serving pair: {exc}") from exc
    if has_master_mark(current):
        return None
    names = [n for n in cert_names(current) if certifiable(n)]
    write_private(pki.serving_cert_path, issue_serving_cert(pki.ca_key, pki.ca_cert, key, names))
    return names


def write_nodectl_conf(
    path: Path,
    server: str,
    ca: x509.Certificate,
    key: PrivateKey,
    cert: x509.Certificate,
    *,
    grants: str = "full control of the cluster",
) -> None:
    text = (
        "# nodectl configuration: the master's URL, its CA, and a client certificate.\n"
        f"# Keep it secret: it grants {grants}.\n"
        f'server = "{server}"\n'
        f'ca = """\n{cert_to_pem(ca).decode()}"""\n'
        f'client_cert = """\n{cert_to_pem(cert).decode()}"""\n'
        f'client_key = """\n{key_to_pem(key).decode()}"""\n'
        "# exec and logs keep one connection to the master open in a background `nodectl session`\n"
        "# until it has been idle this long (seconds); 0 runs every command on its own:\n"
        "# session_idle_timeout_s = 600\n"
    )
    write_private(path, text.encode())


def issue_user_cert(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    name: str = "admin",
    groups: Sequence[str] = (MASTERS_GROUP,),
) -> tuple[PrivateKey, x509.Certificate]:
    key = generate_key()
    cert = issue(
        ca_key,
        ca_cert,
        key.public_key(),
        common_name=name,
        groups=list(groups),
        lifetime_s=ADMIN_LIFETIME_DAYS * DAY_S,
        client=True,
    )
    return key, cert


def init_cluster(
    data_dir: Path, *, server_names: list[str], listen: str, force: bool, render_config: str
) -> InitResult:
    pki_dir = data_dir / "pki"
    if (pki_dir / "ca.key").exists() and not force:
        raise ConfigError(
            f"{pki_dir / 'ca.key'} exists: refusing to replace the cluster CA (use --force)"
        )
    rotating = (pki_dir / "ca.key").exists()
    ca_key, ca_cert = create_ca()
    write_private(pki_dir / "ca.key", key_to_pem(ca_key))
    (pki_dir / "ca.crt").write_bytes(cert_to_pem(ca_cert))
    if rotating:
        # The store records the cluster's CA (agent.master.cluster_ca): this CA replaces it at
        # the master's next start, once, instead of being refused as a stranger's.
        write_private(pki_dir / ROTATION_MARK, ca_fingerprint(ca_cert).encode())
    host = listen.rpartition(":")[0].strip("[]")
    names = _serving_names(server_names, host)
    serving_key = generate_key()
    write_private(pki_dir / "master.key", key_to_pem(serving_key))
    write_private(pki_dir / "master.crt", issue_serving_cert(ca_key, ca_cert, serving_key, names))
    port = listen.rpartition(":")[2]
    first = names[0]
    url_host = f"[{first}]" if _is_ipv6(first) else first
    server_url = f"https://{url_host}:{port}"
    admin_key, admin_cert = issue_user_cert(ca_key, ca_cert)
    admin_conf = data_dir / "admin.conf"
    write_nodectl_conf(admin_conf, server_url, ca_cert, admin_key, admin_cert)
    config_path = data_dir / "master.toml"
    if force or not config_path.exists():
        config_path.write_text(render_config)
    return InitResult(spki_pin(ca_cert), server_url, admin_conf, config_path)


def _is_ipv6(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).version == 6
    except ValueError:
        return False


_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")


def issue_user_conf(data_dir: Path, name: str, groups: Sequence[str], out: Path | None) -> Path:
    """A nodectl config for another user, signed by the cluster CA: ``system:viewers`` (read
    nodes, pods, events and logs) or ``system:masters`` (everything). The master's URL comes
    from ``admin.conf``. Refuses reserved or malformed names and unknown groups."""
    if not _USER_NAME.fullmatch(name) or name.startswith("system"):
        raise ConfigError(
            f"user name {name!r}: letters, digits and . _ @ + - (up to 128), not system*"
        )
    unknown = [g for g in groups if g not in USER_GROUPS]
    if unknown or not groups:
        raise ConfigError(
            f"group {', '.join(unknown) or '(none)'}: expected one of {', '.join(USER_GROUPS)}"
        )
    pki = ClusterPki.load(data_dir / "pki")
    admin_conf = data_dir / "admin.conf"
    try:
        server = tomllib.loads(admin_conf.read_text())["server"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"{admin_conf}: cannot read the master's URL: {exc}") from exc
    path = out or data_dir / "users" / f"{name}.conf"
    if path.exists():
        raise ConfigError(f"{path} exists: refusing to overwrite it")
    key, cert = issue_user_cert(pki.ca_key, pki.ca_cert, name, sorted(set(groups)))
    grants = "full control of the cluster" if MASTERS_GROUP in groups else "read access"
    write_nodectl_conf(path, str(server), pki.ca_cert, key, cert, grants=grants)
    return path


PROXY_LIFETIME_S = 30 * DAY_S


def write_proxy_identity(pki: ClusterPki, pki_dir: Path) -> tuple[Path, Path]:
    """A fresh client certificate for the streaming proxy (``O=system:node-proxies``), issued
    at every start from the cluster CA the master holds, so it never needs renewing by hand."""
    key = generate_key()
    cert = issue(
        pki.ca_key,
        pki.ca_cert,
        key.public_key(),
        common_name="system:node-proxy",
        groups=[PROXIES_GROUP],
        lifetime_s=PROXY_LIFETIME_S,
        client=True,
    )
    cert_path, key_path = pki_dir / "proxy.crt", pki_dir / "proxy.key"
    write_private(key_path, key_to_pem(key))
    cert_path.write_bytes(cert_to_pem(cert))
    return cert_path, key_path
