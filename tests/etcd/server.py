"""A throwaway etcd for tests and benches: Debian's ``etcd`` binary (package etcd-server) with
its own data directory, loopback ports chosen free, TLS with client-certificate authentication
from certificates made here (never committed), killed at the end."""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from agent.pki.core import cert_to_pem, create_ca, generate_key, issue, key_to_pem
from tests.helpers import free_port, wait_for

ETCD_BINARY = "etcd"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class EtcdTls:
    """The files of a client of the test etcd (and of a stranger's CA to prove refusals)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    foreign_cert_file: Path  # a client certificate of another CA
    foreign_key_file: Path


def make_tls(directory: Path) -> tuple[EtcdTls, Path, Path]:
    """A CA, etcd's serving certificate (127.0.0.1), a client certificate of that CA and one
    of another CA, keys 0600 in a 0700 directory. Returns the client files and etcd's pair."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return path

    ca_key, ca_cert = create_ca("etcd test CA")
    other_key, other_ca = create_ca("a stranger's CA")
    pairs: dict[str, tuple[Path, Path]] = {}
    for name, signer, signer_cert, client, server in (
        # etcd's gateway dials etcd's own gRPC port with the serving certificate: with client
        # certificate authentication it must be a client certificate too.
        ("server", ca_key, ca_cert, True, True),
        ("client", ca_key, ca_cert, True, False),
        ("foreign", other_key, other_ca, True, False),
    ):
        key = generate_key()
        cert = issue(
            signer,
            signer_cert,
            key.public_key(),
            common_name=f"etcd-test-{name}",
            groups=[],
            sans=["127.0.0.1"],
            lifetime_s=24 * 3600,
            client=client,
            server=server,
        )
        pairs[name] = (
            write(f"{name}.crt", cert_to_pem(cert)),
            write(f"{name}.key", key_to_pem(key)),
        )
    ca_file = write("ca.crt", cert_to_pem(ca_cert))
    tls = EtcdTls(ca_file, *pairs["client"], *pairs["foreign"])
    return tls, *pairs["server"]


class EtcdServer:
    """One etcd member on loopback. ``start()`` waits until it answers; ``stop()`` kills it
    (SIGKILL, as a crash: the data directory stays, ``start()`` again resumes it)."""

    def __init__(self, directory: Path, *, tls: bool = True) -> None:
        self.directory = directory
        self.data_dir = directory / "data"
        self.client_port = free_port()
        self.peer_port = free_port()
        scheme = "https" if tls else "http"
        self.endpoint = f"{scheme}://127.0.0.1:{self.client_port}"
        self.tls: EtcdTls | None = None
        self._server_pair: tuple[Path, Path] | None = None
        if tls:
            self.tls, *pair = make_tls(directory / "pki")
            self._server_pair = (pair[0], pair[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "etcd.log"

    @staticmethod
    def available() -> bool:
        return shutil.which(ETCD_BINARY) is not None

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        cmd = [
            ETCD_BINARY,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--log-level=warn",
            "--logger=zap",
        ]
        if self.tls is not None and self._server_pair is not None:
            cmd += [
                "--client-cert-auth",
                f"--trusted-ca-file={self.tls.ca_file}",
                f"--cert-file={self._server_pair[0]}",
                f"--key-file={self._server_pair[1]}",
            ]
        return cmd

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca_file))
        ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        return ctx

    def healthy(self) -> bool:
        with urllib.request.urlopen(
            self.endpoint + "/health", timeout=2, context=self.ssl_context()
        ) as resp:
            return b'"true"' in resp.read()

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log_path.read_text()[-2000:]}")
            return self.healthy()

        wait_for(answers, timeout_s=START_TIMEOUT_S, what=f"etcd at {self.endpoint}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None
