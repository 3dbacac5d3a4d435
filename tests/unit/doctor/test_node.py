"""agent.doctor.node against real loopback servers: a TLS server shaped like the master's
anonymous part (``/v1/ca``, ``/healthz``, a ``Date`` header), an HTTP server on a Unix socket
shaped like Docker's ``/version`` and ``/info``, and real files in a state dir. Nothing the
doctor looks at is created or changed by it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import functools
import io
import json
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.aio.bridge import ThreadBridge
from agent.aio.tls import server_context
from agent.config import AgentConfig
from agent.doctor.core import CheckResult, render_text
from agent.doctor.node import NodeDoctor, load_result
from agent.master.pki_files import issue_serving_cert
from agent.node.masterlink.registration import DENIED, PENDING, REGISTERED, write_state
from agent.pki.core import (
    PrivateKey,
    cert_to_pem,
    certs_from_pem,
    create_ca,
    generate_key,
    issue,
    key_to_pem,
    spki_pin,
    write_private,
)
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

pytestmark = pytest.mark.usefixtures("blockbuster")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    ca_key: PrivateKey
    ca_pem: bytes
    pin: str
    tls: ssl.SSLContext

    def node_pair(self, *, expired: bool = False) -> tuple[bytes, bytes]:
        key = generate_key()
        ca = certs_from_pem(self.ca_pem)[0]
        cert = issue(
            self.ca_key,
            ca,
            key.public_key(),
            common_name=NODE_CN_PREFIX + "n1",
            groups=[NODES_GROUP],
            lifetime_s=30 * 86400,
        )
        if expired:  # the same certificate, as it was issued 31 days ago
            now = dt.datetime.now(dt.UTC)
            builder = x509.CertificateBuilder(
                issuer_name=cert.issuer,
                subject_name=cert.subject,
                public_key=cert.public_key(),
                serial_number=cert.serial_number,
                not_valid_before=now - dt.timedelta(days=31),
                not_valid_after=now - dt.timedelta(days=1),
                extensions=list(cert.extensions),
            )
            cert = builder.sign(self.ca_key, hashes.SHA256())
        return key_to_pem(key), cert_to_pem(cert)


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    ca_key, ca = create_ca()
    key = generate_key()
    cert_file, key_file = tmp_path / "master.crt", tmp_path / "master.key"
    cert_file.write_bytes(issue_serving_cert(ca_key, ca, key, ["127.0.0.1"]))
    key_file.write_bytes(key_to_pem(key))
    tls = server_context(cert_file, key_file, alpn=("http/1.1",))
    return Cluster(ca_key, cert_to_pem(ca), spki_pin(ca), tls)


@dataclass
class StubMaster:
    url: str
    date_offset_s: float = 0.0


@pytest.fixture
async def master(cluster: Cluster) -> AsyncIterator[StubMaster]:
    stub = StubMaster("")

    async def ca(_: web.Request) -> web.Response:
        return web.Response(body=cluster.ca_pem, headers=date_header(stub.date_offset_s))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/v1/ca", ca)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=cluster.tls)
    await site.start()
    stub.url = f"https://127.0.0.1:{port}"
    try:
        yield stub
    finally:
        await runner.cleanup()


def date_header(offset_s: float) -> dict[str, str]:
    return {"Date": email.utils.formatdate(time.time() + offset_s, usegmt=True)}


@pytest.fixture
def base(tmp_path: Path) -> Iterator[AgentConfig]:
    yield AgentConfig(
        node_name="n1",
        state_dir=tmp_path / "state",
        manifest_dir=None,
        health_addr=f"127.0.0.1:{free_port()}",
        api_addr=f"127.0.0.1:{free_port()}",
        docker_host=f"unix://{tmp_path}/no-docker.sock",
    )


async def doctor(
    config: AgentConfig, tmp_path: Path, timeout_s: float = 1.5
) -> dict[str, CheckResult]:
    bridge = ThreadBridge(4, name="test-doctor")
    try:
        checker = NodeDoctor(
            config,
            bridge,
            environ={},
            systemctl=(str(tmp_path / "no-systemctl"),),
            timeout_s=timeout_s,
        )
        return {r.name: r for r in await checker.run()}
    finally:
        bridge.close()


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mode) for p in root.rglob("*"))


async def test_no_docker_no_master_and_nothing_created(base: AgentConfig, tmp_path: Path) -> None:
    config = replace(base, master=(f"https://127.0.0.1:{free_port()}",), ca_cert_hash=("nope",))
    before = await asyncio.to_thread(tree, tmp_path)
    results = await doctor(config, tmp_path)
    assert await asyncio.to_thread(tree, tmp_path) == before
    assert not await asyncio.to_thread(config.state_dir.exists)
    docker = results["docker"]
    assert not docker.ok
    assert docker.detail == (
        f"Docker is not reachable at unix://{tmp_path}/no-docker.sock: is dockerd running? "
        "(systemctl start docker)"
    )
    assert "systemctl start docker" in docker.fix
    assert "not checked" in results["image fs"].detail
    pin = results["ca pin"]
    assert not pin.ok and "'nope' is not sha256:<64 hex digits>" in pin.detail
    assert "node-master init" in pin.fix
    reached = results["master"]
    assert not reached.ok and "Connection refused" in reached.detail
    assert "systemctl start node-master" in reached.fix
    for name in ("master CA", "clock"):
        assert not results[name].ok and "not reachable" in results[name].detail
    assert not results["node certificate"].ok and not results["registration"].ok
    assert results["state dir"].ok and "creates" in results["state dir"].detail
    assert results["health port"].ok and results["api port"].ok
    assert results["systemd"].ok and "skipped" in results["systemd"].detail


async def test_a_master_that_never_answers(base: AgentConfig, tmp_path: Path) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog), never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        # The request's own bound (80 %) ends first, with 0.4 s to spare on a loaded machine.
        results = await doctor(replace(base, master=(url,)), tmp_path, timeout_s=2.0)
    reached = results["master"]
    assert not reached.ok and reached.detail == f"{url} is not reachable: no answer within 1.6 s"
    assert "not reachable" in results["clock"].detail


async def test_static_only_node_skips_the_master(base: AgentConfig, tmp_path: Path) -> None:
    results = await doctor(base, tmp_path)
    for name in ("ca pin", "master", "master CA", "clock", "node certificate", "registration"):
        assert results[name].ok and "skipped" in results[name].detail


def registered(
    config: AgentConfig, cluster: Cluster, master: StubMaster, *, expired: bool = False
) -> None:
    pki = config.state_dir / "pki"
    key_pem, cert_pem = cluster.node_pair(expired=expired)
    write_private(pki / "node.key", key_pem)
    write_private(pki / "node.crt", cert_pem)
    write_private(pki / "ca.crt", cluster.ca_pem)
    write_state(config.state_dir / "registration.json", REGISTERED, master.url, admittedBy="open")


async def test_a_registered_node_and_its_master(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    config = replace(base, master=(master.url,), ca_cert_hash=(cluster.pin,))
    await asyncio.to_thread(registered, config, cluster, master)
    results = await doctor(config, tmp_path)
    for name in ("ca pin", "master", "master CA", "clock", "node certificate", "registration"):
        assert results[name].ok, results[name]
    assert cluster.pin in results["master CA"].detail
    assert "days left" in results["node certificate"].detail
    assert results["registration"].detail.startswith(f"registered with {master.url}")


async def test_a_wrong_pin_names_the_one_presented(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    config = replace(base, master=(master.url,), ca_cert_hash=("sha256:" + "0" * 64,))
    result = (await doctor(config, tmp_path))["master CA"]
    assert not result.ok and "does not match ca_cert_hash" in result.detail
    assert cluster.pin in result.detail and "ca_cert_hash" in result.fix


async def test_a_ca_other_than_the_one_pinned_on_disk(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    config = replace(base, master=(master.url,))
    _, other = create_ca()
    await asyncio.to_thread(write_private, config.state_dir / "pki" / "ca.crt", cert_to_pem(other))
    result = (await doctor(config, tmp_path))["master CA"]
    assert not result.ok and "pinned another CA" in result.detail


async def test_clock_skew_against_the_masters_date(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    master.date_offset_s = -600.0
    config = replace(base, master=(master.url,), ca_cert_hash=(cluster.pin,))
    result = (await doctor(config, tmp_path))["clock"]
    assert not result.ok and "ahead of the master's" in result.detail
    assert "timedatectl" in result.fix


async def test_an_expired_certificate(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    config = replace(base, master=(master.url,), ca_cert_hash=(cluster.pin,))
    await asyncio.to_thread(functools.partial(registered, expired=True), config, cluster, master)
    result = (await doctor(config, tmp_path))["node certificate"]
    assert not result.ok and "expired on" in result.detail
    assert "registers again" in result.fix


async def test_a_certificate_without_its_key(
    base: AgentConfig, cluster: Cluster, master: StubMaster, tmp_path: Path
) -> None:
    config = replace(base, master=(master.url,), ca_cert_hash=(cluster.pin,))
    await asyncio.to_thread(registered, config, cluster, master)
    other_key, _ = cluster.node_pair()
    await asyncio.to_thread(write_private, config.state_dir / "pki" / "node.key", other_key)
    result = (await doctor(config, tmp_path))["node certificate"]
    assert not result.ok and "not the key of" in result.detail


@pytest.mark.parametrize(
    ("phase", "details", "words", "fix"),
    [
        (PENDING, {"requestId": "r-1"}, "pending approval", "nodectl approve n1"),
        (
            DENIED,
            {"reason": "join token abc123 has expired", "status": 403},
            "denied by",
            "join token",
        ),
    ],
)
async def test_registration_pending_or_denied_with_the_reason(
    base: AgentConfig,
    tmp_path: Path,
    phase: str,
    details: dict[str, Any],
    words: str,
    fix: str,
) -> None:
    config = replace(base, master=(f"https://127.0.0.1:{free_port()}",))
    await asyncio.to_thread(
        write_state,
        config.state_dir / "registration.json",
        phase,
        (config.master or ("",))[0],
        **details,
    )
    result = (await doctor(config, tmp_path))["registration"]
    assert not result.ok and words in result.detail and fix in result.fix
    if phase == DENIED:
        assert "join token abc123 has expired (HTTP 403)" in result.detail


def release(*fifos: Path) -> None:
    """Let a reader still waiting in open() of a FIFO go (without the fix it would hold its
    thread, and pytest at exit, for ever)."""
    for fifo in fifos:
        with contextlib.suppress(OSError):  # ENXIO: no reader waits, nothing to release
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


async def test_fifos_in_place_of_the_state_and_the_certificate(
    base: AgentConfig, tmp_path: Path
) -> None:
    """A FIFO where the registration state or the certificate should be: one line naming it,
    never a check waiting for a writer (nor a thread left blocked in open)."""
    config = replace(base, master=(f"https://127.0.0.1:{free_port()}",))
    fifos = (config.state_dir / "registration.json", config.state_dir / "pki" / "node.crt")
    await asyncio.to_thread((config.state_dir / "pki").mkdir, parents=True)
    for fifo in fifos:
        await asyncio.to_thread(os.mkfifo, fifo, 0o600)
    try:
        results = await doctor(config, tmp_path)
    finally:
        await asyncio.to_thread(release, *fifos)
    state, cert = results["registration"], results["node certificate"]
    assert not state.ok and state.detail == f"{fifos[0]}: not a regular file", state
    assert not cert.ok and cert.detail == f"{fifos[1]}: not a regular file", cert


async def test_a_config_that_is_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "agent.toml"
    await asyncio.to_thread(os.mkfifo, fifo, 0o600)
    try:
        config, result = await asyncio.wait_for(asyncio.to_thread(load_result, fifo, {}), 10)
    finally:
        await asyncio.to_thread(release, fifo)
    assert config is None and not result.ok and result.detail == f"{fifo}: not a regular file"


async def test_a_port_held_by_another_program(base: AgentConfig, tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        config = replace(base, health_addr=f"127.0.0.1:{port}")
        result = (await doctor(config, tmp_path))["health port"]
    assert not result.ok and f"127.0.0.1:{port} is in use by pid" in result.detail
    assert "health_addr" in result.fix


async def test_a_state_dir_that_is_a_file(base: AgentConfig, tmp_path: Path) -> None:
    await asyncio.to_thread(base.state_dir.write_text, "")
    result = (await doctor(base, tmp_path))["state dir"]
    assert not result.ok and "is not a directory" in result.detail


async def test_a_docker_engine_on_a_unix_socket(base: AgentConfig, tmp_path: Path) -> None:
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"Version": "27.3.1", "ApiVersion": "1.47"})

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {"CgroupDriver": "systemd", "CgroupVersion": "2", "DockerRootDir": str(tmp_path)}
        )

    app = web.Application()
    app.router.add_get("/version", version)
    app.router.add_get("/info", info)
    runner = web.AppRunner(app)
    await runner.setup()
    path = tmp_path / "docker.sock"
    await web.UnixSite(runner, str(path)).start()
    try:
        results = await doctor(replace(base, docker_host=f"unix://{path}"), tmp_path)
    finally:
        await runner.cleanup()
    assert results["docker"].detail == f"Docker 27.3.1 (API 1.47) at unix://{path}"
    assert results["cgroup driver"].detail == "systemd (cgroup v2)"
    assert results["image fs"].ok and results["image fs"].detail.startswith(f"{tmp_path}: ")


async def test_an_engine_not_on_a_unix_socket_is_not_checked(
    base: AgentConfig, tmp_path: Path
) -> None:
    results = await doctor(replace(base, docker_host="tcp://192.0.2.1:2375"), tmp_path)
    for name in ("docker", "cgroup driver", "image fs"):
        assert results[name].ok and "skipped: tcp://192.0.2.1:2375" in results[name].detail


def test_a_config_that_does_not_parse(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('state_dri = "/x"\n')
    config, result = load_result(path, {})
    assert config is None and not result.ok
    assert 'unknown key "state_dri"' in result.detail


def test_escape_sequences_from_the_config_never_reach_the_terminal(tmp_path: Path) -> None:
    """A key (or a path) holding ESC [2J: the loader's error quotes it, the report prints
    it as a space, never as a sequence the terminal obeys."""
    path = tmp_path / "agent\x1b[31m.toml"
    path.write_text('"\\u001b[2Jkey" = 1\n')
    config, result = load_result(path, {})
    assert config is None and "\x1b" in result.detail  # the loader's own words
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    text = render_text([result], stream)
    assert "\x1b" not in text and "[2Jkey" in text, text


def test_dates_are_parsed_as_the_master_sends_them() -> None:
    header = date_header(0)["Date"]
    when = email.utils.parsedate_to_datetime(header)
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 5
    assert json.dumps(header)
