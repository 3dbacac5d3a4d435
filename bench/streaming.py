"""Streaming: nodectl port-forward (direct and through the master) against ``ssh -L`` and a socat
relay, and ``nodectl exec POD -- true`` against ``docker exec`` and ``ssh host true``.

Run: ``.venv/bin/python bench/streaming.py [--mib 256] [--rounds 3] [--pings 2000] [--execs 10]``
(needs openssh-server for the ssh baselines: ``apt-get install openssh-server``).

Every path ends at the same echo server in a pod (busybox ``nc -ll -e cat`` on port 7000):
``nodectl port-forward`` reaches it on the pod's 127.0.0.1 inside its network namespace, the
baselines on the pod's IP. Bulk: ``--mib`` MiB written and the same read back concurrently on
one connection (throughput = bytes one way / time), paths alternating A B C D … for
``--rounds`` rounds, medians reported.
Latency: 1-byte ping-pong, ``--pings`` round trips per path, median. Exec: wall time of the whole
command, ``--execs`` runs each, alternating. Only loopback and the test's own pod are used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    ensure_test_image,
    node_containers,
    node_ready,
    pod_manifest,
    remove_node_containers,
    running_phase,
    wait_for,
)

ECHO_PORT = 7000
ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def bulk(port: int, size: int) -> float:
    """Seconds to push ``size`` bytes through the echo and get them all back."""
    block = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.monotonic()

        def send() -> None:
            left = size
            while left:
                n = min(left, len(block))
                sock.sendall(block[:n])
                left -= n

        sender = threading.Thread(target=send)
        sender.start()
        got = 0
        while got < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise RuntimeError(f"echo closed after {got} bytes")
            got += len(chunk)
        sender.join()
        return time.monotonic() - start


def ping_pong(port: int, count: int) -> float:
    """Median round trip of one byte, seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo lost a byte")
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


@contextmanager
def background(cmd: list[str], ready: Callable[[subprocess.Popen[str]], int]) -> Iterator[int]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO_ROOT
    )
    try:
        yield ready(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def nodectl_forward(master: MasterProcess, direct: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "agent.cli.nodectl",
        "--config",
        str(master.admin_conf),
        "port-forward",
        *(["--direct"] if direct else []),
        "bench",
        f"0:{ECHO_PORT}",
    ]


def forwarded_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"127\.0\.0\.1:(\d+) ->", line)
    if not found:
        raise RuntimeError(f"port-forward: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return int(found[1])


class Sshd:
    """sshd on a loopback port with key auth for root, in a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.key = root / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        host_key = root / "host_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
        (root / "authorized_keys").write_text((root / "id_ed25519.pub").read_text())
        config = root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nStrictModes no\nUsePAM no\nPidFile none\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-E", str(root / "sshd.log"), "-f", str(config)]
        )
        wait_port(self.port)

    def args(self) -> list[str]:
        return [
            "ssh",
            "-q",
            "-i",
            str(self.key),
            "-p",
            str(self.port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, env=ENV, cwd=REPO_ROOT, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}…: exit {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--execs", type=int, default=10)
    args = parser.parse_args()
    if not shutil.which("/usr/sbin/sshd"):
        print("bench/streaming.py needs openssh-server (apt-get install openssh-server)")
        return 2
    client = docker.from_env()
    ensure_test_image(client)
    root = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    master = MasterProcess(root / "master").start(blockbuster=False)
    node = f"bench-stream-{uuid.uuid4().hex[:6]}"
    agent = AgentProcess(
        root / "agent", node, master=master.url, ca_cert_hash=[master.pin], log_level="info"
    )
    echo = {"name": "echo", "command": ["nc", "-ll", "-p", str(ECHO_PORT), "-e", "cat"]}
    agent.write_manifest("bench.json", pod_manifest("bench", [echo], grace_s=0))
    sshd = Sshd(root)
    size = args.mib << 20
    try:
        agent.start(blockbuster=False)
        wait_for(lambda: running_phase(agent, "bench"), what="bench pod")
        wait_for(lambda: node_ready(master, node), what="node Ready")
        wait_for(
            lambda: (
                (master.node(node) or {})
                .get("status", {})
                .get("daemonEndpoints", {})
                .get("nodeApi")
            ),
            what="node API endpoint",
        )
        wait_for(lambda: "bench" in master.pods(), what="mirror pod")
        pod_ip = json.loads(agent.get("/v1/pods")[1])["items"][0]["status"]["podIP"]
        app = next(
            c for c in node_containers(client, node) if c.labels.get("io.node-agent.kind") == "app"
        )
        socat_port, ssh_port = free_port(), free_port()
        with (
            background(nodectl_forward(master, True), forwarded_port) as direct,
            background(nodectl_forward(master, False), forwarded_port) as via_master,
            background(
                [
                    "socat",
                    f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr",
                    f"TCP:{pod_ip}:{ECHO_PORT}",
                ],
                lambda _: (wait_port(socat_port), socat_port)[1],
            ) as socat,
            background(
                [
                    *sshd.args(),
                    "-N",
                    "-L",
                    f"127.0.0.1:{ssh_port}:{pod_ip}:{ECHO_PORT}",
                    "root@127.0.0.1",
                ],
                lambda _: (wait_port(ssh_port), ssh_port)[1],
            ) as ssh_l,
        ):
            paths = {
                "nodectl port-forward --direct": direct,
                "nodectl port-forward (via master)": via_master,
                "ssh -L": ssh_l,
                "socat relay": socat,
            }
            for port in paths.values():
                bulk(port, 1 << 20)  # warm up every path (connections, caches)
            times: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.rounds):
                for name, port in paths.items():
                    times[name].append(bulk(port, size))
            rtts = {name: ping_pong(port, args.pings) for name, port in paths.items()}
        mbps = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}
        print(f"bulk: {args.mib} MiB each way through the pod's echo, median of {args.rounds}")
        ssh_mbps = mbps["ssh -L"]
        for name in paths:
            ratio = mbps[name] / ssh_mbps
            rtt_us = rtts[name] * 1e6
            print(
                f"  {name:36s} {mbps[name]:8.0f} MB/s  x{ratio:.2f} of ssh -L  RTT {rtt_us:6.0f} us"
            )

        exec_paths = {
            "nodectl exec (via master)": [
                sys.executable,
                "-m",
                "agent.cli.nodectl",
                "--config",
                str(master.admin_conf),
                "exec",
                "bench",
                "--",
                "true",
            ],
            "nodectl exec --direct": [
                sys.executable,
                "-m",
                "agent.cli.nodectl",
                "--config",
                str(master.admin_conf),
                "exec",
                "--direct",
                "bench",
                "--",
                "true",
            ],
            "docker exec C true": ["docker", "exec", app.id, "true"],
            "ssh host true": [*sshd.args(), "root@127.0.0.1", "true"],
        }
        walls: dict[str, list[float]] = {name: [] for name in exec_paths}
        for cmd in exec_paths.values():
            timed(cmd)  # warm-up
        for _ in range(args.execs):
            for name, cmd in exec_paths.items():
                walls[name].append(timed(cmd))
        med = {name: statistics.median(w) for name, w in walls.items()}
        docker_s = med["docker exec C true"]
        ours_s = med["nodectl exec (via master)"]
        print(f"exec wall time, median of {args.execs}")
        for name in exec_paths:
            print(f"  {name:36s} {med[name] * 1000:6.0f} ms  x{med[name] / docker_s:.2f} of docker")
        direct_ratio = mbps["nodectl port-forward --direct"] / ssh_mbps
        master_ratio = mbps["nodectl port-forward (via master)"] / ssh_mbps
        print("targets:")
        print(f"  port-forward direct >= 1.0x ssh -L: {direct_ratio:.2f}")
        print(f"  port-forward via master >= 0.6x ssh -L: {master_ratio:.2f}")
        print(f"  nodectl exec <= 1.5x docker exec: {ours_s / docker_s:.2f}")
        ssh_ms = med["ssh host true"] * 1000
        print(f"  nodectl exec faster than ssh: {ours_s * 1000:.0f} ms vs {ssh_ms:.0f} ms")
        return 0
    finally:
        sshd.close()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill9()
        master.stop()
        remove_node_containers(client, node)


if __name__ == "__main__":
    sys.exit(main())
