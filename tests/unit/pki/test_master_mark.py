"""The master's mark (``urn:node-agent:master``): only the master's serving certificate carries
it, and every client of the master (the agent's aiohttp client, nodectl's http.client and its
HTTP/2 client, on asyncio and uvloop) refuses a server without it in the TLS handshake, before
sending a byte: a node certificate of the same CA naming the master's address (as a node could
get one before this change) does not pass for the master. A master started on a data dir from
before the mark re-issues its own serving certificate with it.

The servers here are plain TLS sockets in a thread on loopback (blocking, outside any event
loop), recording what they receive; they answer any HTTP/1.1 request with ``200 {}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography import x509

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import client_context, server_context, with_peer_check
from agent.cli import nodectl
from agent.cli import nodectl_stream as ns
from agent.errors import (
    CliError,
    ConfigError,
    ConnectionClosedError,
    NotTheMasterError,
    PkiError,
)
from agent.master.pki_files import ClusterPki, ensure_master_mark, init_cluster
from agent.node.masterlink.client import MasterClient
from agent.node.masterlink.identity import tls_context
from agent.pki.core import (
    build_csr,
    cert_names,
    cert_to_pem,
    certs_from_pem,
    create_ca,
    csr_sans,
    generate_key,
    has_master_mark,
    issue,
    key_to_pem,
    load_csr,
)
from agent.pki.names import MASTER_URI, NODE_CN_PREFIX, NODES_GROUP
from tests.unit.master.wire import user_credentials

HOST = "127.0.0.1"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
JOIN_TIMEOUT_S = 10.0
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


# -- issuing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [MASTER_URI, "*.example.com", "*", "", "a b", "https://master", "n1.example.com.", "a_b"],
)
def test_issue_refuses_every_name_but_ip_addresses_and_dns_names(name: str) -> None:
    ca_key, ca = create_ca()
    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        issue(ca_key, ca, generate_key().public_key(), common_name="x", groups=[], sans=[name],
              lifetime_s=60, server=True)  # fmt: skip


def test_only_the_master_flag_puts_the_mark_on_a_certificate() -> None:
    ca_key, ca = create_ca()
    key = generate_key().public_key()
    node = issue(ca_key, ca, key, common_name=NODE_CN_PREFIX + "n1", groups=[NODES_GROUP],
                 sans=["n1", "10.0.0.5"], lifetime_s=60, server=True)  # fmt: skip
    master = issue(ca_key, ca, key, common_name="node-master", groups=[], sans=["127.0.0.1"],
                   lifetime_s=60, client=False, server=True, master=True)  # fmt: skip
    assert not has_master_mark(node) and has_master_mark(master)
    assert cert_names(node) == ["10.0.0.5", "n1"] and cert_names(master) == ["127.0.0.1"]
    san = master.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [MASTER_URI]


def test_a_csr_asks_only_for_names_a_certificate_can_hold() -> None:
    csr = build_csr(generate_key(), "system:node:n1", [NODES_GROUP],
                    ["n1", "*.example.com", "10.0.0.5", "a_b", MASTER_URI])  # fmt: skip
    assert sorted(csr_sans(load_csr(csr))) == ["10.0.0.5", "n1"]


# -- a TLS server on loopback -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    ca_pem: bytes
    master: tuple[Path, Path]  # cert, key
    impostor: tuple[Path, Path]  # a node's certificate naming 127.0.0.1, good for serving
    admin: tuple[str, str]  # an admin's certificate and key (PEM), for nodectl


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    init_cluster(
        tmp_path, server_names=[HOST], listen=f"{HOST}:6443", force=False, render_config=""
    )
    cluster = ClusterPki.load(tmp_path / "pki")
    key = generate_key()
    node_cert = issue(cluster.ca_key, cluster.ca_cert, key.public_key(),
                      common_name=NODE_CN_PREFIX + "evil", groups=[NODES_GROUP],
                      sans=[HOST, "evil"], lifetime_s=600, server=True)  # fmt: skip
    (tmp_path / "node.crt").write_bytes(cert_to_pem(node_cert))
    (tmp_path / "node.key").write_bytes(key_to_pem(key))
    admin = user_credentials(cluster, tmp_path / "users", "admin")
    assert admin.cert is not None and admin.key is not None
    return Pki(
        cert_to_pem(cluster.ca_cert),
        (cluster.serving_cert_path, cluster.serving_key_path),
        (tmp_path / "node.crt", tmp_path / "node.key"),
        (admin.cert.read_text(), admin.key.read_text()),
    )


@dataclass
class Server:
    port: int
    received: list[bytes]
    handshakes: list[str]

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"


def _serve_one(conn: socket.socket, ctx: ssl.SSLContext, server: Server) -> None:
    with contextlib.closing(conn):
        try:
            tls = ctx.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            server.handshakes.append(f"failed: {exc}")
            return
        server.handshakes.append("done")
        with contextlib.closing(tls):
            try:
                data = tls.recv(65536)
            except (OSError, ssl.SSLError):
                return
            if data:
                server.received.append(data)
            if data.startswith((b"GET ", b"POST ")):
                tls.sendall(ANSWER)


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[Server]:
    ctx = server_context(cert, key, alpn=("h2", "http/1.1"))
    listener = socket.create_server((HOST, 0))
    server = Server(listener.getsockname()[1], [], [])
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(JOIN_TIMEOUT_S)
            _serve_one(conn, ctx, server)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(JOIN_TIMEOUT_S)
        listener.close()


def _http_requests(server: Server) -> list[bytes]:
    """What the server received that is a request (an h2 preface or HTTP/1.1)."""
    return [d for d in server.received if d.startswith((b"GET ", b"POST ", b"PRI * HTTP/2.0"))]


# -- the agent's client -------------------------------------------------------------------------


async def _agent_call(pki: Pki, server: Server) -> object:
    client = MasterClient(server.url, ThreadBridge(1, name="test-tls"))
    # The node's mTLS context, as the link builds it (blocking file reads, before any traffic).
    tls = tls_context(pki.ca_pem, cert_file=pki.impostor[0], key_file=pki.impostor[1])
    async with client.session(tls) as session:
        return await session.call("GET", "/v1/nodes/evil/pods")


@pytest.mark.parametrize("loop", LOOPS)
def test_the_agent_refuses_a_node_certificate_posing_as_the_master(pki: Pki, loop: str) -> None:
    with (
        tls_server(*pki.impostor) as server,
        asyncio.Runner(loop_factory=LOOPS[loop]) as run,
        pytest.raises(NotTheMasterError) as caught,
    ):
        run.run(_agent_call(pki, server))
    # (NotTheMasterError comes only from the check that runs once the chain verified.)
    message = caught.value.message
    assert f"the server at {server.url} presents a certificate without the master mark" in message
    assert MASTER_URI in message and message.startswith("GET /v1/nodes/evil/pods: ")
    assert _http_requests(server) == []  # nothing was sent to it


@pytest.mark.parametrize("loop", LOOPS)
def test_the_agent_accepts_the_master(pki: Pki, loop: str) -> None:
    with tls_server(*pki.master) as server, asyncio.Runner(loop_factory=LOOPS[loop]) as run:
        assert run.run(_agent_call(pki, server)) == {}
    assert _http_requests(server)[0].startswith(b"GET /v1/nodes/evil/pods ")


def test_the_ca_fetch_context_is_left_to_its_pin() -> None:
    """The one unverified context (the CA fetch, checked against the pin) gets no mark check:
    there is no verified certificate to look at; a check cannot be put on it by mistake."""
    with pytest.raises(ValueError, match="verifies the peer"):
        with_peer_check(client_context(None), lambda peer: None)


# -- nodectl ----------------------------------------------------------------------------------


def _config(pki: Pki, server: Server) -> nodectl.ClientConfig:
    return nodectl.ClientConfig(server.url, pki.ca_pem.decode(), *pki.admin)


def test_nodectl_refuses_a_node_certificate_posing_as_the_master(pki: Pki) -> None:
    with tls_server(*pki.impostor) as server, pytest.raises(CliError) as caught:
        nodectl.Client(_config(pki, server)).call("GET", "/v1/nodes")
    assert caught.value.message == (
        f"the server at {server.url} presents a certificate without the master mark "
        f"({MASTER_URI}): it is not the master (a node certificate?); nothing was sent to it"
    )
    assert _http_requests(server) == []


def test_nodectl_accepts_the_master(pki: Pki) -> None:
    with tls_server(*pki.master) as server:
        assert nodectl.Client(_config(pki, server)).call("GET", "/v1/nodes") == {}


@pytest.mark.parametrize("loop", LOOPS)
def test_nodectl_streams_refuse_a_node_certificate_posing_as_the_master(
    pki: Pki, loop: str
) -> None:
    """exec, logs and port-forward through the master (HTTP/2), and ``nodectl session``."""
    with tls_server(*pki.impostor) as server, asyncio.Runner(loop_factory=LOOPS[loop]) as run:
        config = _config(pki, server)
        with pytest.raises(ConnectionClosedError, match="without the master mark"):
            run.run(ns.open_master(server.url, nodectl.master_context(config)))
    assert _http_requests(server) == []


@pytest.mark.parametrize("loop", LOOPS)
def test_nodectl_streams_accept_the_master(pki: Pki, loop: str) -> None:
    async def open_and_close(config: nodectl.ClientConfig) -> None:
        conn = await ns.open_master(config.server, nodectl.master_context(config))
        await conn.shutdown("done", grace_s=0.1)

    with tls_server(*pki.master) as server, asyncio.Runner(loop_factory=LOOPS[loop]) as run:
        run.run(open_and_close(_config(pki, server)))
    assert server.handshakes == ["done"]


# -- migration ----------------------------------------------------------------------------------


def test_a_serving_certificate_without_the_mark_is_issued_again_with_it(tmp_path: Path) -> None:
    init_cluster(tmp_path, server_names=[HOST, "master.example"], listen=f"{HOST}:6443",
                 force=False, render_config="")  # fmt: skip
    cluster = ClusterPki.load(tmp_path / "pki")
    assert ensure_master_mark(cluster) is None  # a new cluster has it from the start
    # A data dir from before the mark: the same names, the same key, no mark.
    old = certs_from_pem(cluster.serving_cert_path.read_bytes())[0]
    unmarked = issue(cluster.ca_key, cluster.ca_cert, old.public_key(),  # type: ignore[arg-type]
                     common_name="node-master", groups=[], sans=cert_names(old),
                     lifetime_s=3600, client=False, server=True)  # fmt: skip
    cluster.serving_cert_path.write_bytes(cert_to_pem(unmarked))
    key_before = cluster.serving_key_path.read_bytes()

    assert ensure_master_mark(cluster) == ["127.0.0.1", "master.example"]

    renewed = certs_from_pem(cluster.serving_cert_path.read_bytes())[0]
    assert has_master_mark(renewed)
    assert cert_names(renewed) == cert_names(old)
    assert renewed.public_key() == old.public_key()
    assert cluster.serving_key_path.read_bytes() == key_before
    assert cluster.serving_cert_path.stat().st_mode & 0o777 == 0o600
    assert ensure_master_mark(cluster) is None


def test_a_serving_pair_that_cannot_be_read_is_a_config_error(tmp_path: Path) -> None:
    init_cluster(tmp_path, server_names=[HOST], listen=f"{HOST}:6443", force=False,
                 render_config="")  # fmt: skip
    cluster = ClusterPki.load(tmp_path / "pki")
    cluster.serving_cert_path.write_text("not PEM")
    with pytest.raises(ConfigError, match="cannot read the serving pair"):
        ensure_master_mark(cluster)
