"""certs/fleet-ca.sh, run as an operator runs it (``sh``, real openssl): what it makes (modes,
the CA and node certificate the master's client-cert rule checks) and what it refuses (a name
the agent would refuse, a CA directory already in use, a certificate already issued), each with
a clear message and its exit status. tests/integration/test_fleet_ca.py takes its output
through a real master."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.master.policy import _cert_names
from agent.pki.core import verify_issued_by

SCRIPT = Path(__file__).resolve().parents[2] / "certs" / "fleet-ca.sh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "fleet"
    done = run("init", str(directory))
    assert done.returncode == 0, done.stderr
    return directory


def test_init_makes_a_p256_ca_with_a_private_key_and_says_where_it_goes(ca_dir: Path) -> None:
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "ca.key") == 0o600
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_issue_makes_the_certificate_the_client_cert_rule_admits(ca_dir: Path) -> None:
    done = run("issue", str(ca_dir), "edge-7.rack-2", "--days", "30")
    assert done.returncode == 0, done.stderr
    for key_name in ("bootstrap_cert", "bootstrap_key", 'node_name = "edge-7.rack-2"'):
        assert key_name in done.stdout
    key_path = ca_dir / "nodes" / "edge-7.rack-2.key"
    assert mode(key_path) == 0o600 and mode(ca_dir / "nodes") == 0o700
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((ca_dir / "nodes" / "edge-7.rack-2.crt").read_bytes())
    assert verify_issued_by(cert, [ca]) == ca  # what the master checks, chain first
    assert _cert_names(cert) == {"edge-7.rack-2"}  # CN and the DNS SAN
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-7.rack-2"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days == 30


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("Edge-1", "not a valid DNS-1123 subdomain"),
        ("edge_1", "not a valid DNS-1123 subdomain"),
        ("-edge", "not a valid DNS-1123 subdomain"),
        ("edge..1", "not a valid DNS-1123 subdomain"),
        ("edge 1", "not a valid DNS-1123 subdomain"),
        ("edge\n1", "not a valid DNS-1123 subdomain"),
        ("edge/../../x", "not a valid DNS-1123 subdomain"),  # never a path out of nodes/
        ("a" * 53, "longer than 52 characters"),
        ("", "node name is empty"),
    ],
)
def test_issue_refuses_a_name_the_agent_would_refuse(ca_dir: Path, name: str, says: str) -> None:
    done = run("issue", str(ca_dir), name)
    assert done.returncode == 2, done
    assert says in done.stderr
    assert list((ca_dir / "nodes").iterdir()) == []


def test_the_longest_node_name_is_accepted(ca_dir: Path) -> None:
    done = run("issue", str(ca_dir), "a" * 52)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("days", ["0", "x", "-1", "3651", "99999999999999999999"])
def test_issue_refuses_a_lifetime_out_of_range(ca_dir: Path, days: str) -> None:
    done = run("issue", str(ca_dir), "edge-1", "--days", days)
    assert done.returncode == 2, done
    assert "--days" in done.stderr


def test_init_refuses_a_directory_in_use_and_leaves_it_alone(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    done = run("init", str(ca_dir))
    assert done.returncode == 1
    assert "refusing to overwrite" in done.stderr
    assert (ca_dir / "ca.key").read_bytes() == before


def test_issue_refuses_to_overwrite_a_node_certificate(ca_dir: Path) -> None:
    assert run("issue", str(ca_dir), "edge-1").returncode == 0
    before = (ca_dir / "nodes" / "edge-1.key").read_bytes()
    done = run("issue", str(ca_dir), "edge-1")
    assert done.returncode == 1
    assert "refusing to overwrite" in done.stderr
    assert (ca_dir / "nodes" / "edge-1.key").read_bytes() == before


def test_issue_without_a_ca_and_bad_usage_say_what_is_wrong(tmp_path: Path) -> None:
    done = run("issue", str(tmp_path / "none"), "edge-1")
    assert done.returncode == 1 and "holds no fleet CA" in done.stderr
    for args in ((), ("rotate",), ("init",), ("issue", str(tmp_path))):
        done = run(*args)
        assert done.returncode == 2, (args, done)
        assert done.stderr
