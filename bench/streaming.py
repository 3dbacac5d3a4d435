"""Streaming: nodectl port-forward (direct, through the master's relay, and with the master's
ticket: nodectl's default, the bytes straight to the node) against ``ssh -L`` and a socat
relay, and ``nodectl exec POD -- true`` against ``docker exec`` and ``ssh host true``.

Run: ``.venv/bin/python bench/streaming.py [--mib 256] [--rounds 3] [--pings 2000] [--execs 10]``
(needs openssh-server for the ssh baselines: ``apt-get install openssh-server``).
``--parts hops``: where a 1-byte round trip's microseconds go, hop by hop (``agent/aio/hops.py``:
every process of the path stamps the ping at each socket read and write; median and p99 of
each segment, direct and through the master).

Every path ends at the same echo server: a host-side process that splices each connection's bytes
back (socket -> pipe -> socket in the kernel, no copies through Python), several times faster than
any path under test (docs/architecture.md §6: busybox ``nc`` in a container capped every path near
250 MB/s). The pod is a hostNetwork pod, so ``nodectl port-forward`` reaches the echo on 127.0.0.1
inside the pod's network namespace (setns, as for any pod) and the baselines reach the same port
directly. Bulk: ``--mib`` MiB written and the same read back concurrently on one connection
(throughput = bytes one way / time), paths alternating A B C D … for ``--rounds`` rounds, medians
reported. Latency: 1-byte ping-pong, ``--pings`` round trips per path in ten blocks taken in turn
by the paths, median and p99. Exec: wall time of the whole command, ``--execs`` runs each,
alternating. ``--parts hops --syscalls``: also ``strace -c`` of each process of the path during
more pings (system calls per round trip). Only loopback and the test's own pod are used."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import multiprocessing
import os
import queue
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import docker

from agent.aio import hops
from agent.aio.hops import Point, Side

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import (
    NO_SESSION_LINE,
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    clean_up_on_sigterm,
    ensure_test_image,
    node_containers,
    node_ready,
    pod_manifest,
    remove_node_containers,
    running_phase,
    wait_for,
)

ECHO_CHUNK_BYTES = 1 << 20
# Every scratch directory the bench makes (agent and master state with their keys, the nodectl
# copy, tmux's socket, the hop stamps) is removed when it exits, Ctrl-C and SIGTERM included.
_SCRATCH: list[str] = []


def scratch_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=prefix)
    _SCRATCH.append(path)
    return path


@atexit.register
def _remove_scratch() -> None:
    for path in _SCRATCH:
        shutil.rmtree(path, ignore_errors=True)


# The bench's own runtime directory: its nodectl session must not meet a developer's.
ENV = dict(
    os.environ,
    PYTHONPATH=str(REPO_ROOT),
    XDG_RUNTIME_DIR=scratch_dir("bench-xdg-"),
)


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


def listening(port: int) -> int:
    wait_port(port)
    return port


def echo_server(port: int) -> None:
    """Serve until killed: every connection's bytes back to it, spliced through a pipe."""
    listener = socket.create_server(("127.0.0.1", port), backlog=64)

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            read_end, write_end = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, ECHO_CHUNK_BYTES)
            try:
                while n := os.splice(conn.fileno(), write_end, ECHO_CHUNK_BYTES):
                    while n:
                        n -= os.splice(read_end, conn.fileno(), n)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client went away
            finally:
                os.close(read_end)
                os.close(write_end)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


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
        # Into one buffer: a fresh 1 MiB bytes per recv costs the harness CPU (malloc, resize)
        # that every path's processes then compete with on this 2-core machine.
        buffer = memoryview(bytearray(1 << 20))
        got = 0
        while got < size:
            n = sock.recv_into(buffer)
            if not n:
                raise RuntimeError(f"echo closed after {got} bytes")
            got += n
        sender.join()
        return time.monotonic() - start


def ping_stamps(port: int, count: int) -> list[tuple[int, int]]:
    """1-byte ping-pong; each round trip's send and receive time (CLOCK_MONOTONIC, ns: the
    clock the processes of the path stamp their hops with)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stamps = []
        for _ in range(count):
            start = time.monotonic_ns()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise RuntimeError("echo lost a byte")
            stamps.append((start, time.monotonic_ns()))
    return stamps


Hop = tuple[str, Point, Side]
DIRECT_HOPS: list[Hop] = [
    ("nodectl", Point.LOCAL_READ, Side.NONE),
    ("nodectl", Point.TLS_WRITE, Side.CLIENT),
    ("agent", Point.TLS_READ, Side.SERVER),
    ("agent", Point.POD_WRITE, Side.NONE),
    ("agent", Point.POD_READ, Side.NONE),
    ("agent", Point.TLS_WRITE, Side.SERVER),
    ("nodectl", Point.TLS_READ, Side.CLIENT),
    ("nodectl", Point.LOCAL_WRITE, Side.NONE),
]
MASTER_HOPS: list[Hop] = [
    *DIRECT_HOPS[:2],
    ("master", Point.TLS_READ, Side.SERVER),
    ("master", Point.TLS_WRITE, Side.CLIENT),
    *DIRECT_HOPS[2:6],
    ("master", Point.TLS_READ, Side.CLIENT),
    ("master", Point.TLS_WRITE, Side.SERVER),
    *DIRECT_HOPS[6:],
]


def hop_breakdown(
    stamps: list[tuple[int, int]],
    records: dict[str, list[tuple[int, Point, Side, int]]],
    chain: list[Hop],
) -> tuple[list[tuple[str, float, float]], int]:
    """Per segment of ``chain`` (client send → first hop → … → client receive): median and
    p99 in µs over the pings whose every hop was found; and how many pings that was. A hop's
    stamp is the first of its kind in that process after the previous hop's, within the ping."""
    import bisect

    times: dict[Hop, list[int]] = {}
    for proc, recs in records.items():
        for t, point, side, _ in recs:
            times.setdefault((proc, point, side), []).append(t)
    for series in times.values():
        series.sort()
    names = ["client send", *(f"{p} {pt.name.lower()}" for p, pt, _ in chain), "client receive"]
    segments: list[list[float]] = [[] for _ in range(len(chain) + 1)]
    complete = 0
    missing = [0] * len(chain)
    for start, end in stamps:
        at = [start]
        for k, hop in enumerate(chain):
            series = times.get(hop, [])
            i = bisect.bisect_left(series, at[-1])
            if i == len(series) or series[i] > end:
                missing[k] += 1
                break
            at.append(series[i])
        else:
            at.append(end)
            complete += 1
            for k in range(len(segments)):
                segments[k].append((at[k + 1] - at[k]) / 1000)
    rows = []
    for k, values in enumerate(segments):
        if values:
            values.sort()
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            rows.append((f"{names[k]} -> {names[k + 1]}", statistics.median(values), p99))
    if any(missing):
        print("  pings without a stamp, by hop:", dict(zip(names[1:], missing, strict=False)))
    return rows, complete


def syscalls_per_ping(port: int, count: int, pids: dict[str, int], out_dir: Path) -> None:
    """``strace -c -f`` attached to each process of the path during ``count`` more pings: the
    system calls each makes per round trip (strace slows every call: counts, not times)."""
    tracers = {
        name: subprocess.Popen(
            ["strace", "-c", "-f", "-q", "-o", str(out_dir / f"{name}.strace"), "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    }
    time.sleep(1.0)  # strace attaches asynchronously; nothing to wait on but its start
    ping_stamps(port, count)
    for tracer in tracers.values():
        tracer.send_signal(subprocess.signal.SIGINT)
        tracer.wait(timeout=30)
    for name in tracers:
        counts = {}
        for line in (out_dir / f"{name}.strace").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
        busy = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
        shown = ", ".join(f"{call} {n / count:.2f}" for call, n in busy)
        print(f"  syscalls per ping, {name}: {shown}")


def bench_hops(
    master: MasterProcess,
    agent: AgentProcess,
    pod: str,
    echo_port: int,
    sshd: Sshd,
    hop_dir: Path,
    args: argparse.Namespace,
) -> list[str]:
    """The 1-byte round trip hop by hop, direct and through the master; ssh -L for scale."""
    ssh_port = free_port()
    assert master.proc is not None and agent.proc is not None
    procs = {"master": master.proc.pid, "agent": agent.proc.pid}
    lines: list[str] = []
    ssh_cmd = [
        *sshd.args(),
        "-N",
        "-L",
        f"127.0.0.1:{ssh_port}:127.0.0.1:{echo_port}",
        "root@127.0.0.1",
    ]
    with background(ssh_cmd, lambda _: listening(ssh_port)) as ssh_l:
        ping_stamps(ssh_l, 200)
        ssh = [(b - a) / 1000 for a, b in ping_stamps(ssh_l, args.pings)]
        ssh.sort()
        ssh_med, ssh_p99 = statistics.median(ssh), ssh[int(len(ssh) * 0.99)]
        print(f"ssh -L: RTT median {ssh_med:.0f} us, p99 {ssh_p99:.0f} us ({args.pings} pings)")
        for label, direct, chain in (
            ("nodectl port-forward --direct", True, DIRECT_HOPS),
            ("nodectl port-forward (via master)", False, MASTER_HOPS),
        ):
            cmd = nodectl_forward(master, pod, direct, echo_port, relay=not direct)
            with subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
                cwd=REPO_ROOT,
            ) as proc:
                try:
                    port = forwarded_port(proc)
                    ping_stamps(port, 200)  # warm-up
                    stamps = ping_stamps(port, args.pings)
                    if args.syscalls:
                        traced = {"nodectl": proc.pid, **procs}
                        syscalls_per_ping(port, args.pings, traced, hop_dir)
                finally:
                    proc.terminate()
                    proc.wait(timeout=10)
            records = {
                name: hops.read_records(str(hop_dir / f"{pid}.hops"))
                for name, pid in {**procs, "nodectl": proc.pid}.items()
            }
            rtts = sorted((b - a) / 1000 for a, b in stamps)
            rtt_med, rtt_p99 = statistics.median(rtts), rtts[int(len(rtts) * 0.99)]
            rows, complete = hop_breakdown(stamps, records, chain)
            print(
                f"{label}: RTT median {rtt_med:.0f} us (x{rtt_med / ssh_med:.2f} of ssh -L), "
                f"p99 {rtt_p99:.0f} us (x{rtt_p99 / ssh_p99:.2f}); {complete} of "
                f"{len(stamps)} pings stamped at every hop"
            )
            for name, med, p99 in rows:
                print(f"  {name:52s} {med:7.1f} us  p99 {p99:7.1f} us")
            print(f"  {'sum of the medians':52s} {sum(r[1] for r in rows):7.1f} us")
            lines.append(
                f"{label} 1-byte RTT: x{rtt_med / ssh_med:.2f} of ssh -L, p99 "
                f"x{rtt_p99 / ssh_p99:.2f}"
            )
    return lines


def interleaved_pings(
    paths: dict[str, int], count: int, blocks: int = 10
) -> dict[str, tuple[float, float]]:
    """Median and p99 of the 1-byte round trip, seconds, per path: ``count`` pings per path
    in ``blocks`` blocks taken in turn (A B C D A B C D …), so that every path sees the same
    machine; one connection per path."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    socks = {
        name: socket.create_connection(("127.0.0.1", port), timeout=30)
        for name, port in paths.items()
    }
    try:
        for sock in socks.values():
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(blocks):
            for name, sock in socks.items():
                for _ in range(max(1, count // blocks)):
                    start = time.perf_counter()
                    sock.sendall(b"x")
                    if sock.recv(1) != b"x":
                        raise RuntimeError("echo lost a byte")
                    samples[name].append(time.perf_counter() - start)
    finally:
        for sock in socks.values():
            sock.close()
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (
            statistics.median(values),
            values[min(len(values) - 1, int(len(values) * 0.99))],
        )
    return out


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


def nodectl_forward(
    master: MasterProcess, pod: str, direct: bool, echo_port: int, *, relay: bool = False
) -> list[str]:
    """Without ``direct`` or ``relay``: nodectl's default, a master's ticket per connection and
    the bytes straight to the node (docs/streaming.md)."""
    return [
        sys.executable,
        "-m",
        "agent.cli.nodectl",
        "--config",
        str(master.admin_conf),
        "port-forward",
        *(["--direct"] if direct else []),
        *(["--relay"] if relay else []),
        pod,
        f"0:{echo_port}",
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


def installed_python(root: Path) -> str:
    """A bare venv that sees node-agent and its dependencies through a plain .pth file, as a
    packaged install does: the development venv's start-up hooks (the editable install's
    finder, coverage's .pth: ~15 ms per start here) are not what an operator's nodectl pays."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    (next(root.glob("lib/python3*/site-packages")) / "node_agent.pth").write_text(
        "\n".join([str(REPO_ROOT), *site_dirs]) + "\n"
    )
    python = str(root / "bin" / "python")
    precompile(python)
    return python


def precompile(python: str) -> None:
    """Bytecode for the whole package, as pip compiles an installed wheel's: a development tree
    may have none or stale (``PYTHONDONTWRITEBYTECODE``, set in this machine's sessions, or
    files just edited), and then every cold ``nodectl`` compiles its sources first (~40-60 ms
    of CPU here) — a cost no installed nodectl pays. Checked, not assumed: each module the exec
    path imports must then load from a current ``.pyc``."""
    subprocess.run([python, "-m", "compileall", "-q", str(REPO_ROOT / "agent")], check=True)
    done = subprocess.run(
        [python, "-c", CHECK_BYTECODE, str(REPO_ROOT / "agent")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"nodectl's modules without current bytecode: {done.stdout}{done.stderr}"
        )


# Exits non-zero naming every module of the exec path under the package whose .pyc is missing
# or records another source mtime or size than the file's (what the import system recompiles).
CHECK_BYTECODE = """
import os, sys
import agent.cli.nodectl_control, agent.cli.nodectl, agent.cli.nodectl_stream
from importlib.util import cache_from_source
stale = []
for module in list(sys.modules.values()):
    source = getattr(module, "__file__", None) or ""
    if not source.startswith(sys.argv[1]) or not source.endswith(".py"):
        continue
    try:
        with open(cache_from_source(source), "rb") as f:
            header = f.read(16)
    except OSError:
        header = b""
    st = os.stat(source)
    recorded = header[8:12], header[12:16]
    actual = ((int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
              (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"))
    if len(header) < 16 or recorded != actual:
        stale.append(module.__name__)
print(" ".join(sorted(stale)))
sys.exit(1 if stale else 0)
"""


def installed_nodectl(python: str) -> str:
    """The ``nodectl`` console script pip writes for the package's entry point."""
    script = Path(python).parent / "nodectl"
    script.write_text(
        f"#!{python}\nimport sys\nfrom agent.cli.nodectl_control import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return str(script)


def timed(cmd: list[str]) -> float:
    start = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, env=ENV, cwd=REPO_ROOT, check=False)
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]}…: exit {done.returncode}: {done.stderr[-300:]!r}")
    return elapsed


def bench_bulk(
    master: MasterProcess, pod: str, echo_port: int, sshd: Sshd, args: argparse.Namespace
) -> list[str]:
    """Port-forward throughput and 1-byte latency against ssh -L and socat; the ratio lines."""
    size = args.mib << 20
    socat_port, ssh_port = free_port(), free_port()
    with (
        background(nodectl_forward(master, pod, True, echo_port), forwarded_port) as direct,
        background(
            nodectl_forward(master, pod, False, echo_port, relay=True), forwarded_port
        ) as via_master,
        background(nodectl_forward(master, pod, False, echo_port), forwarded_port) as ticket,
        background(
            [
                "socat",
                f"TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr",
                f"TCP:127.0.0.1:{echo_port}",
            ],
            lambda _: (wait_port(socat_port), socat_port)[1],
        ) as socat,
        background(
            [
                *sshd.args(),
                "-N",
                "-L",
                f"127.0.0.1:{ssh_port}:127.0.0.1:{echo_port}",
                "root@127.0.0.1",
            ],
            lambda _: (wait_port(ssh_port), ssh_port)[1],
        ) as ssh_l,
    ):
        paths = {
            "nodectl port-forward --direct": direct,
            "nodectl port-forward (via master)": via_master,
            "nodectl port-forward (ticket)": ticket,
            "ssh -L": ssh_l,
            "socat relay": socat,
        }
        for port in paths.values():
            bulk(port, 1 << 20)  # warm up every path (connections, caches)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.rounds):
            for name, port in paths.items():
                times[name].append(bulk(port, size))
        rtts = interleaved_pings(paths, args.pings)
    mbps = {name: size / statistics.median(t) / 1e6 for name, t in times.items()}
    print(f"bulk: {args.mib} MiB each way through the pod's echo, median of {args.rounds}")
    print(f"1-byte RTT: {args.pings} pings per path, in blocks alternating between the paths")
    ssh_mbps = mbps["ssh -L"]
    ssh_rtt, ssh_p99 = rtts["ssh -L"]
    for name in paths:
        ratio = mbps[name] / ssh_mbps
        rtt, p99 = rtts[name]
        print(
            f"  {name:36s} {mbps[name]:8.0f} MB/s  x{ratio:.2f} of ssh -L  RTT {rtt * 1e6:6.0f} us"
            f" (x{rtt / ssh_rtt:.2f})  p99 {p99 * 1e6:6.0f} us (x{p99 / ssh_p99:.2f})"
        )
    direct_ratio = mbps["nodectl port-forward --direct"] / ssh_mbps
    master_ratio = mbps["nodectl port-forward (via master)"] / ssh_mbps
    direct_rtt, direct_p99 = rtts["nodectl port-forward --direct"]
    master_rtt, _ = rtts["nodectl port-forward (via master)"]
    ticket_ratio = mbps["nodectl port-forward (ticket)"] / ssh_mbps
    ticket_rtt, _ = rtts["nodectl port-forward (ticket)"]
    return [
        f"port-forward direct bulk >= 1.1x ssh -L: {direct_ratio:.2f}",
        f"port-forward via master (relay) bulk >= 0.8x ssh -L: {master_ratio:.2f}",
        f"port-forward direct 1-byte RTT <= 1.0x ssh -L: {direct_rtt / ssh_rtt:.2f}, p99 <= 1.5x:"
        f" {direct_p99 / ssh_p99:.2f}",
        f"port-forward via master (relay) RTT <= 2.0x ssh -L: {master_rtt / ssh_rtt:.2f}",
        f"port-forward via master (ticket) bulk >= 1.0x ssh -L: {ticket_ratio:.2f}",
        f"port-forward via master (ticket) RTT <= 1.2x ssh -L: {ticket_rtt / ssh_rtt:.2f}",
    ]


def bench_exec(
    master: MasterProcess, pod: str, container_id: str, sshd: Sshd, args: argparse.Namespace
) -> list[str]:
    """Wall time of one short exec against docker exec and ssh; the ratio lines."""
    installed = installed_python(Path(scratch_dir("bench-nodectl-")))
    conf = str(master.admin_conf)
    nodectl = [installed_nodectl(installed), "--config", conf]
    exec_paths = {
        "nodectl exec (via master)": [*nodectl, "exec", pod, "--", "true"],
        "nodectl exec --direct": [*nodectl, "exec", "--direct", pod, "--", "true"],
        "nodectl exec (dev venv)": [
            sys.executable,
            "-m",
            "agent.cli.nodectl_control",
            "--config",
            conf,
            "exec",
            pod,
            "--",
            "true",
        ],
        "docker exec C true": ["docker", "exec", container_id, "true"],
        "ssh host true": [*sshd.args(), "root@127.0.0.1", "true"],
    }
    # The defaults: the first exec runs on its own and starts a session (like ssh's
    # ControlPersist) that serves the next ones. The runs above use the master's admin.conf,
    # whose sessions the test helpers turn off: they time a standalone invocation.
    default_conf = Path(installed).parent.parent / "default.conf"
    default_conf.write_text(master.admin_conf.read_text().replace(NO_SESSION_LINE, ""))
    default_conf.chmod(0o600)
    by_default = [installed_nodectl(installed), "--config", str(default_conf)]
    default_name = "nodectl exec (default, in session)"
    walls: dict[str, list[float]] = {name: [] for name in [*exec_paths, default_name]}
    for cmd in exec_paths.values():
        timed(cmd)  # warm-up
    for _ in range(args.execs):
        for name, cmd in exec_paths.items():
            walls[name].append(timed(cmd))
    default_exec = [*by_default, "exec", pod, "--", "true"]
    try:
        first_s = timed(default_exec)
        wait_for(lambda: session_status(by_default) is not None, what="the session started")
        # Interleaved with docker exec again, so that both see the same machine.
        for _ in range(args.execs):
            walls[default_name].append(timed(default_exec))
            walls["docker exec C true"].append(timed(exec_paths["docker exec C true"]))
        served = session_status(by_default) or ""
        if f"commands served: {args.execs}," not in served:
            raise RuntimeError(f"the session did not serve every exec: {served}")
    finally:
        subprocess.run([*by_default, "session", "stop"], capture_output=True, env=ENV, check=False)
    med = {name: statistics.median(w) for name, w in walls.items()}
    docker_s = med["docker exec C true"]
    ours_s = med["nodectl exec (via master)"]
    session_s = med[default_name]
    print(f"exec wall time, median of {args.execs} (docker exec: of {2 * args.execs})")
    for name in walls:
        print(f"  {name:36s} {med[name] * 1000:6.0f} ms  x{med[name] / docker_s:.2f} of docker")
    print(f"  {'nodectl exec (default, first call)':36s} {first_s * 1000:6.0f} ms  (one call)")
    ssh_ms = med["ssh host true"] * 1000
    return [
        f"nodectl exec <= 1.3x docker exec by default (in the session): {session_s / docker_s:.2f}"
        f" (first call {first_s * 1000:.0f} ms)",
        f"nodectl exec <= 2.5x docker exec with sessions off: {ours_s / docker_s:.2f}",
        f"nodectl exec faster than ssh: {session_s * 1000:.0f} ms (sessions off "
        f"{ours_s * 1000:.0f} ms) vs {ssh_ms:.0f} ms",
    ]


class KeyDriver:
    """Keystrokes into tmux panes and their echo out of them, through one tmux client in
    control mode (``tmux -C``): a keystroke is a ``send-keys`` line written to that client,
    its echo the ``%output`` notification tmux sends once the pane's program wrote it to the
    pane's terminal; the time between the two is the latency. No process starts per keystroke
    and no screen is polled, so what tmux adds is one read and one write on its side, the same
    for every path."""

    def __init__(self, socket_path: str) -> None:
        self.tmux = ["tmux", "-S", socket_path, "-f", "/dev/null"]
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", "keys", "-x", "120", "-y", "40"],
            env=ENV,
            check=True,
        )
        # A pane whose program failed stays, with its last words, for the error message.
        subprocess.run([*self.tmux, "set-option", "-g", "remain-on-exit", "on"], check=True)
        self._control = subprocess.Popen(
            [*self.tmux, "-C", "attach-session", "-t", "keys"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
        )
        self._outputs: queue.Queue[tuple[int, str, bytes]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._control.stdout is not None
        for line in self._control.stdout:
            if line.startswith(b"%output "):
                _, pane, data = line.rstrip(b"\n").split(b" ", 2)
                self._outputs.put((time.perf_counter_ns(), pane.decode(), data))

    def open(self, cmd: list[str]) -> str:
        """A window running ``cmd``; its pane id, once the program put the pane's terminal
        in raw mode (so that from now on no keystroke is echoed locally)."""
        done = subprocess.run(
            [
                *self.tmux,
                "new-window",
                "-d",
                "-t",
                "keys",
                "-P",
                "-F",
                "#{pane_id} #{pane_tty}",
                shlex.join(cmd),
            ],
            env=ENV,
            check=True,
            capture_output=True,
            text=True,
        )
        pane, tty = done.stdout.split()
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            wait_for(
                lambda: (
                    not termios.tcgetattr(fd)[3] & (termios.ECHO | termios.ICANON)
                    or self._dead(pane)
                ),
                what=f"{cmd[-5:]} in raw mode",
            )
        finally:
            os.close(fd)
        if self._dead(pane):
            raise RuntimeError(f"{shlex.join(cmd)}: {self.screen(pane)!r}")
        return pane

    def _dead(self, pane: str) -> bool:
        done = subprocess.run(
            [*self.tmux, "display-message", "-p", "-t", pane, "#{pane_dead}"],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip() == "1"

    def screen(self, pane: str) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", pane],
            capture_output=True,
            text=True,
            check=False,
        ).stdout

    def key(self, pane: str, timeout_s: float = 10.0) -> float:
        """Seconds from sending ``x`` to the pane until ``x`` came out of it."""
        assert self._control.stdin is not None
        while not self._outputs.empty():  # anything late from an earlier keystroke
            self._outputs.get_nowait()
        start = time.perf_counter_ns()
        self._control.stdin.write(f"send-keys -t {pane} -l x\n".encode())
        self._control.stdin.flush()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no echo from {pane}: {self.screen(pane)!r}")
            with contextlib.suppress(queue.Empty):
                at, from_pane, data = self._outputs.get(timeout=left)
                if from_pane == pane and b"x" in data:
                    return (at - start) / 1e9

    def close(self) -> None:
        # SIGHUP to every pane's program: the execs and ssh end as on a closed terminal.
        subprocess.run([*self.tmux, "kill-server"], capture_output=True, check=False)
        self._control.wait(timeout=10)


def bench_keys(
    master: MasterProcess, pod: str, container_id: str, sshd: Sshd, args: argparse.Namespace
) -> list[str]:
    """Keystroke echo: ``nodectl exec -it POD -- cat`` (through the master, and ``--direct``)
    against ``ssh -t host cat``, ``--keys`` single keystrokes each, alternating one keystroke
    per path, after 20 unmeasured ones. The echo is the remote terminal's own (``cat`` reads
    whole lines; the pod's or sshd's pty echoes each key), so each keystroke crosses the
    whole path both ways. ``docker exec -it C cat`` on the pod's container is the floor
    Docker's exec path sets (dockerd and the container's shim relay every byte between its
    socket and the terminal), which every nodectl keystroke pays on top of ours. nodectl runs
    without a session (the admin config's), a process per command as ssh is; every path is
    in raw mode (its program started) before any keystroke is sent."""
    conf = str(master.admin_conf)
    nodectl = [sys.executable, "-m", "agent.cli.nodectl_control", "--config", conf, "exec", "-it"]
    paths = {
        "nodectl exec -it (via master)": [*nodectl, pod, "--", "cat"],
        "nodectl exec -it --direct": [*nodectl, "--direct", pod, "--", "cat"],
        "ssh -t host cat": [*sshd.args(), "-t", "root@127.0.0.1", "cat"],
        # What Docker's own exec path costs (dockerd and the shim between the socket and the
        # pod's terminal), which every nodectl keystroke pays too.
        "docker exec -it C cat": ["docker", "exec", "-it", container_id, "cat"],
    }
    driver = KeyDriver(str(Path(scratch_dir("bench-keys-")) / "tmux.sock"))
    try:
        panes = {name: driver.open(cmd) for name, cmd in paths.items()}
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(20 + args.keys):
            for name, pane in panes.items():
                latency = driver.key(pane)
                if i >= 20:
                    samples[name].append(latency)
    finally:
        driver.close()
    ssh_med = statistics.median(samples["ssh -t host cat"])
    print(f"keystroke echo through tmux, {args.keys} keystrokes per path, alternating")
    lines = []
    for name, values in samples.items():
        values.sort()
        med, p99 = statistics.median(values), values[min(len(values) - 1, len(values) * 99 // 100)]
        print(
            f"  {name:36s} median {med * 1e6:6.0f} us (x{med / ssh_med:.2f})"
            f"  p99 {p99 * 1e6:6.0f} us"
        )
        if name.startswith("nodectl"):
            lines.append(f"{name} keystroke echo <= 1.0x ssh -t: {med / ssh_med:.2f}")
    return lines


def session_status(nodectl: list[str]) -> str | None:
    done = subprocess.run(
        [*nodectl, "session", "status"], capture_output=True, env=ENV, check=False
    )
    return done.stdout.decode() if done.returncode == 0 else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=2000)
    parser.add_argument("--execs", type=int, default=10)
    parser.add_argument("--keys", type=int, default=200, help="keystrokes per path (part keys)")
    parser.add_argument(
        "--syscalls",
        action="store_true",
        help="with --parts hops: strace -c the processes of each path during more pings",
    )
    parser.add_argument(
        "--parts",
        default="bulk,exec",
        help="comma-separated: bulk (port-forward throughput and latency), exec, hops (the "
        "1-byte round trip hop by hop; run it on its own: every process stamps its hops), keys "
        "(exec -it keystroke echo against ssh -t, driven through tmux)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    hop_dir: Path | None = None
    if "hops" in parts:
        # Before any process of the path starts: each reads it once, at start-up.
        hop_dir = Path(scratch_dir("bench-hops-"))
        os.environ[hops.ENV_VAR] = ENV[hops.ENV_VAR] = str(hop_dir)
    clean_up_on_sigterm()
    if not shutil.which("/usr/sbin/sshd"):
        print("bench/streaming.py needs openssh-server (apt-get install openssh-server)")
        return 2
    client = docker.from_env()
    ensure_test_image(client)
    root = Path(scratch_dir("bench-streaming-"))
    master = MasterProcess(root / "master").start(blockbuster=False)
    node = f"bench-stream-{uuid.uuid4().hex[:6]}"
    mirror = f"bench-{node}"  # the static pod "bench" as nodectl sees it: its mirror pod
    agent = AgentProcess(
        root / "agent", node, master=master.url, ca_cert_hash=[master.pin], log_level="info"
    )
    echo_port = free_port()
    echo = multiprocessing.get_context("spawn").Process(
        target=echo_server, args=(echo_port,), daemon=True
    )
    echo.start()
    sleeper = {"name": "app", "command": ["sleep", "86400"]}
    agent.write_manifest(
        "bench.json", pod_manifest("bench", [sleeper], grace_s=0, hostNetwork=True)
    )
    sshd = Sshd(root)
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
        wait_for(lambda: mirror in master.pods(), what="mirror pod")
        wait_port(echo_port)
        app = next(
            c for c in node_containers(client, node) if c.labels.get("io.node-agent.kind") == "app"
        )
        ratios: list[str] = []
        if hop_dir is not None:
            ratios += bench_hops(master, agent, mirror, echo_port, sshd, hop_dir, args)
        if "bulk" in parts:
            ratios += bench_bulk(master, mirror, echo_port, sshd, args)
        if "exec" in parts:
            ratios += bench_exec(master, mirror, app.id, sshd, args)
        if "keys" in parts:
            ratios += bench_keys(master, mirror, app.id, sshd, args)
        print("targets:")
        for line in ratios:
            print(f"  {line}")
        return 0
    finally:
        echo.kill()
        sshd.close()
        if agent.proc is not None and agent.proc.poll() is None:
            agent.kill9()
        master.stop()
        remove_node_containers(client, node)


if __name__ == "__main__":
    sys.exit(main())
