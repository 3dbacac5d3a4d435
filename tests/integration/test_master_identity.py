"""The fake-master attack of issue 14 (item 1), end to end: real master, agent and nodectl
processes, real TLS on loopback.

A registered node asking for names it does not own (the master's address, a wildcard, a host
name) gets a certificate naming only what the master verified, and its request waits in
``nodectl get csr`` for an administrator. A server presenting a node certificate — the one the
master issued, or one the test signs with the cluster CA naming 127.0.0.1 — is refused by the
agent and by nodectl inside the TLS handshake, with a clear error and nothing sent to it; the
real master, back on its address, is accepted."""

from __future__ import annotations

import http.client
import http.server
import ipaddress
import json
import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from agent.pki.core import (
    PrivateKey,
    build_csr,
    cert_to_pem,
    certs_from_pem,
    generate_key,
    has_master_mark,
    issue,
    key_from_pem,
    key_to_pem,
)
from agent.pki.names import MASTER_URI, NODE_CN_PREFIX, NODES_GROUP
from tests.helpers import AgentProcess, MasterProcess, free_port, node_ready, wait_for

pytestmark = pytest.mark.docker

MakeAgent = Callable[..., AgentProcess]
MakeMaster = Callable[..., MasterProcess]

ATTACKER = "127.0.0.3"  # the hostile node's source address (a loopback address on Linux)
HONEST = "127.0.0.2"
NOT_THE_MASTER = f"without the master mark ({MASTER_URI})"


# -- a node that speaks the wire protocol itself -----------------------------------------------


def greedy_csr(key: PrivateKey, name: str) -> str:
    """A CSR built by hand: build_csr would drop the wildcard and the URI."""
    subject = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, NODES_GROUP),
            x509.NameAttribute(x509.NameOID.COMMON_NAME, NODE_CN_PREFIX + name),
        ]
    )
    names = x509.SubjectAlternativeName(
        [
            x509.DNSName(name),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.DNSName("*.example.com"),
            x509.DNSName("master.example"),
            x509.UniformResourceIdentifier(MASTER_URI),
        ]
    )
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(names, critical=False)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )


def call(
    master: MasterProcess,
    source: str,
    method: str,
    path: str,
    body: Any = None,
    cert: tuple[Path, Path] | None = None,
) -> tuple[int, Any]:
    """One request to the master from ``source`` (the master's CA and mark are not checked
    here: this is the attacker's client)."""
    ctx = ssl.create_default_context(cafile=str(master.root / "pki" / "ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection(
        master.host, master.port, context=ctx, timeout=30, source_address=(source, 0)
    )
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def names_on(pem: str) -> set[str]:
    cert = certs_from_pem(pem.encode())[0]
    assert not has_master_mark(cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == []
    return {str(v) for v in sans.get_values_for_type(x509.IPAddress)} | set(
        sans.get_values_for_type(x509.DNSName)
    )


def save_pair(directory: Path, cert_pem: str, key: PrivateKey) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "node.crt").write_text(cert_pem)
    (directory / "node.key").write_bytes(key_to_pem(key))
    return directory / "node.crt", directory / "node.key"


def csr_rows(master: MasterProcess) -> dict[str, list[str]]:
    done = master.nodectl("get", "csr")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["NAME", "REQUESTED", "NAMES", "SOURCE", "AGE", "CONDITION"]
    return {line.split()[0]: line.split() for line in lines[1:]}


# -- a fake master -----------------------------------------------------------------------------


class FakeMaster:
    """A TLS server on ``host:port`` presenting ``cert``/``key``: it serves the cluster CA at
    ``/v1/ca`` (public, as the real master does) and answers everything else as if it were
    the master; it records every request that reached it."""

    def __init__(self, host: str, port: int, pair: tuple[Path, Path], ca_pem: bytes) -> None:
        requests: list[tuple[str, str]] = []
        self.requests = requests

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                body = ca_pem if self.path == "/v1/ca" else b'{"status": "Approved"}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*pair)
        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"https://{host}:{port}"

    def __enter__(self) -> FakeMaster:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def passes_for_the_master_without_the_mark(fake: FakeMaster, ca_file: Path) -> bool:
    """Whether a client checking only the cluster CA and the host name (what agents and
    nodectl did before the mark) would talk to ``fake``: the premise of the attack."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with urllib.request.urlopen(fake.url + "/v1/nodes", context=ctx, timeout=10) as resp:
        return bool(resp.status == 200 and fake.requests[-1] == ("GET", "/v1/nodes"))


def nodectl_at(master: MasterProcess, url: str, tmp_path: Path, *args: str) -> Any:
    """nodectl with the administrator's config, its server pointed at ``url``."""
    conf = tmp_path / f"admin-{url.rsplit(':', 1)[-1]}.conf"
    lines = master.admin_conf.read_text().splitlines()
    conf.write_text(
        "\n".join(f'server = "{url}"' if line.startswith("server") else line for line in lines)
        + "\n"
    )
    done = master.nodectl("--config", str(conf), *args)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def health_says(agent: AgentProcess, text: str) -> bool:
    agent.assert_alive()
    status, body = agent.get("/healthz")
    return status == 503 and text in body


@pytest.fixture
def fakes() -> Iterator[list[FakeMaster]]:
    started: list[FakeMaster] = []
    yield started
    for fake in started:
        fake.__exit__()


# -- the attack --------------------------------------------------------------------------------


def test_a_node_gets_no_certificate_for_names_it_does_not_own(
    make_master: MakeMaster, tmp_path: Path, fakes: list[FakeMaster]
) -> None:
    master = make_master().start()
    key = generate_key()
    registered = {
        "nodeName": "greedy",
        "csr": greedy_csr(key, "greedy"),
        "addresses": ["127.0.0.1", "10.0.0.1"],
        "hostname": "master.example",
    }
    status, answer = call(master, ATTACKER, "POST", "/v1/registrations", registered)
    assert status == 200 and answer["status"] == "Approved", answer
    # The node name and the address the master saw: nothing the node chose.
    assert names_on(answer["certificate"]) == {"greedy", ATTACKER}
    pair = save_pair(tmp_path / "greedy", answer["certificate"], key)

    row = csr_rows(master)["greedy"]
    assert row[1:3] == ["127.0.0.1,master.example,10.0.0.1", ATTACKER], row
    assert row[-1] == "Pending"
    listed = json.loads(master.nodectl("get", "csr", "greedy", "-o", "json").stdout)
    assert listed["spec"]["names"] == ["127.0.0.1", "master.example", "10.0.0.1"]
    assert "*.example.com" not in json.dumps(listed)  # never a name a certificate may hold

    # Renewal adds nothing either: the lease reports the master's address, the rotation asks
    # for it again; the certificate still names what the master verified.
    lease = {"status": {"addresses": ["127.0.0.1"]}}
    assert call(master, ATTACKER, "PUT", "/v1/nodes/greedy/lease", lease, pair)[0] == 200
    rotation = {"csr": greedy_csr(key, "greedy")}
    status, rotated = call(master, ATTACKER, "POST", "/v1/nodes/greedy/certificate", rotation, pair)
    assert status == 200, rotated
    assert names_on(rotated["certificate"]) == {"greedy", ATTACKER}

    # An administrator denies what is listed (the rotation's CSR is the node's ask now):
    # never issued, not asked again.
    assert csr_rows(master)["greedy"][1] == "127.0.0.1,master.example"
    denied = master.nodectl("certificate", "deny", "greedy")
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout == "certificaterequest/greedy denied: 127.0.0.1, master.example\n"
    assert csr_rows(master)["greedy"][-1] == "Denied"
    status, rotated = call(master, ATTACKER, "POST", "/v1/nodes/greedy/certificate", rotation, pair)
    assert names_on(rotated["certificate"]) == {"greedy", ATTACKER}
    pair = save_pair(tmp_path / "greedy", rotated["certificate"], key)

    # An honest node's extra address, approved, is on its next certificate.
    honest_key = generate_key()
    honest_csr = build_csr(
        honest_key, NODE_CN_PREFIX + "honest", [NODES_GROUP], ["honest", "10.0.0.2"]
    ).decode()
    honest = {"nodeName": "honest", "csr": honest_csr, "addresses": ["10.0.0.2"], "hostname": ""}
    status, answer = call(master, HONEST, "POST", "/v1/registrations", honest)
    assert names_on(answer["certificate"]) == {"honest", HONEST}
    approved = master.nodectl("certificate", "approve", "honest")
    assert approved.stdout == "certificaterequest/honest approved: 10.0.0.2\n", approved.stderr
    honest_pair = save_pair(tmp_path / "honest", answer["certificate"], honest_key)
    status, rotated = call(
        master, HONEST, "POST", "/v1/nodes/honest/certificate", {"csr": honest_csr}, honest_pair
    )
    assert names_on(rotated["certificate"]) == {"honest", HONEST, "10.0.0.2"}

    # The certificate the greedy node did get, serving as the master on its own address:
    # nodectl refuses it in the handshake and sends nothing.
    port = free_port()
    ca_pem = (master.root / "pki" / "ca.crt").read_bytes()
    fake = FakeMaster(ATTACKER, port, pair, ca_pem).__enter__()
    fakes.append(fake)
    refused = nodectl_at(master, fake.url, tmp_path, "get", "nodes")
    assert refused.returncode == 1
    assert NOT_THE_MASTER in refused.stderr and "nothing was sent" in refused.stderr
    assert fake.requests == []
    assert passes_for_the_master_without_the_mark(fake, master.root / "pki" / "ca.crt")


def test_a_server_with_a_node_certificate_is_refused_and_the_real_master_accepted(
    make_master: MakeMaster, make_agent: MakeAgent, tmp_path: Path, fakes: list[FakeMaster]
) -> None:
    master = make_master().start()
    settings = {"master": master.url, "ca_cert_hash": [master.pin], "master_backoff_max_s": 1.0}
    agent = make_agent(bind_source=HONEST, **settings).start()
    wait_for(lambda: node_ready(master, agent.node_name), what="the agent Ready")
    issued = (agent.state_dir / "pki" / "node.crt").read_text()
    names = names_on(issued)
    assert HONEST in names and agent.node_name in names and "127.0.0.1" not in names

    # The worst case: a node certificate naming the master's address, signed by the cluster
    # CA (the test reads the CA key from the master's data dir), valid for server use.
    pki = master.root / "pki"
    ca_key = key_from_pem((pki / "ca.key").read_bytes())
    ca_cert = certs_from_pem((pki / "ca.crt").read_bytes())[0]
    forged_key = generate_key()
    forged = issue(
        ca_key,
        ca_cert,
        forged_key.public_key(),
        common_name=NODE_CN_PREFIX + "evil",
        groups=[NODES_GROUP],
        sans=["127.0.0.1", "localhost"],
        lifetime_s=3600,
        client=True,
        server=True,
    )
    pair = save_pair(tmp_path / "forged", cert_to_pem(forged).decode(), forged_key)

    # The master goes away and the fake takes its address and port.
    master.stop()
    fake = FakeMaster(master.host, master.port, pair, cert_to_pem(ca_cert)).__enter__()
    fakes.append(fake)
    wait_for(lambda: health_says(agent, NOT_THE_MASTER), what="the agent refusing the fake")
    refused = master.nodectl("get", "nodes")  # the administrator's own config
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"nodectl: the server at {master.url} presents"), refused
    assert NOT_THE_MASTER in refused.stderr
    # A new agent pinned to the cluster CA: only the public CA fetch reaches the fake (its
    # pin is what trusts a master), never a registration.
    newcomer = make_agent(**settings).start(wait_ready=False)
    wait_for(lambda: health_says(newcomer, NOT_THE_MASTER), what="a new agent refusing it")
    assert set(fake.requests) <= {("GET", "/v1/ca")}, fake.requests
    assert not (newcomer.state_dir / "pki" / "node.crt").exists()
    assert passes_for_the_master_without_the_mark(fake, pki / "ca.crt")

    # The real master back on its address: accepted by both.
    fakes.remove(fake)
    fake.__exit__()
    master.start()
    wait_for(lambda: agent.get("/healthz") == (200, "ok"), what="the agent back with the master")
    wait_for(lambda: node_ready(master, newcomer.node_name), what="the new agent joined")
    assert master.nodectl("get", "nodes").returncode == 0
