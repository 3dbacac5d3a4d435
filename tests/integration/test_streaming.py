"""exec, port-forward and logs through nodectl over HTTP/2, against a real master, agent and
dockerd: through the master's streaming proxy (the default) and straight to the node
(``--direct``)."""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.helpers import (
    NO_SESSION_LINE,
    REPO_ROOT,
    AgentProcess,
    MasterProcess,
    node_containers,
    node_ready,
    pod_manifest,
    running_phase,
    wait_for,
    without_sessions,
)

pytestmark = pytest.mark.docker

HTTPD = {
    "name": "web",
    "command": [
        "sh",
        "-c",
        "mkdir -p /www /local && echo public > /www/index.html && echo private > "
        "/local/index.html && httpd -p 127.0.0.1:9090 -h /local && "
        "exec httpd -f -p 8080 -h /www",
    ],
}
ECHO = {"name": "echo", "command": ["nc", "-ll", "-p", "7000", "-e", "cat"]}
TALKER = {
    "name": "talker",
    "command": ["sh", "-c", "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done"],
}


@pytest.fixture(autouse=True)
def runtime_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test's own $XDG_RUNTIME_DIR, so that nodectl sessions are the test's alone (short:
    a Unix socket path holds 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="xdg-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def mirror_of(agent: AgentProcess, name: str = "box") -> str:
    """The master's name of the agent's static pod ``name``: its mirror pod ``<name>-<node>``,
    which nodectl addresses (through the master or directly) like any pod."""
    return f"{name}-{agent.node_name}"


@pytest.fixture
def cluster(
    make_master: Callable[..., MasterProcess], make_agent: Callable[..., AgentProcess]
) -> tuple[MasterProcess, AgentProcess]:
    master = make_master().start()
    agent = make_agent(
        f"stream-{uuid.uuid4().hex[:8]}",
        master=master.url,
        ca_cert_hash=[master.pin],
        master_backoff_max_s=1.0,
    )
    agent.write_manifest("pods.json", pod_manifest("box", [HTTPD, ECHO, TALKER], grace_s=0))
    agent.start()
    wait_for(lambda: running_phase(agent, "box"), what="box Running")
    wait_for(lambda: node_ready(master, agent.node_name), what="node Ready")

    def endpoint_known() -> bool:
        node = master.node(agent.node_name) or {}
        return bool(node.get("status", {}).get("daemonEndpoints", {}).get("nodeApi"))

    wait_for(endpoint_known, what="node API endpoint reported")
    wait_for(lambda: mirror_of(agent) in master.pods(), what="mirror pod of box on the master")
    return master, agent


def nodectl(
    master: MasterProcess,
    *args: str,
    stdin: str | None = None,
    timeout_s: float = 60,
    config: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """The installed entry point's module, with the admin's config unless ``config``."""
    conf = str(config or master.admin_conf)
    return subprocess.run(  # noqa: PLW1510 - callers check the exit status
        [sys.executable, "-m", "agent.cli.nodectl_control", "--config", conf, *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO_ROOT,
        timeout=timeout_s,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )


@contextlib.contextmanager
def nodectl_session(master: MasterProcess) -> Iterator[Callable[[], int]]:
    """A running ``nodectl session``; yields how many commands it has served so far."""
    started = nodectl(master, "session", "start")
    assert started.returncode == 0 and "session started" in started.stdout, started.stderr

    def served() -> int:
        status = nodectl(master, "session", "status")
        assert status.returncode == 0, status.stderr
        found = re.search(r"commands served: (\d+), running: (\d+)", status.stdout)
        assert found, status.stdout
        return int(found[1])

    try:
        yield served
    finally:
        stopped = nodectl(master, "session", "stop")
        assert stopped.returncode == 0, stopped.stderr


@pytest.mark.parametrize("route", ["via-master", "direct", "session"])
def test_exec_passes_stdin_separates_streams_and_returns_the_exit_code(
    cluster: tuple[MasterProcess, AgentProcess], route: str
) -> None:
    master, agent = cluster
    if route == "session":
        with nodectl_session(master) as served:
            _exec_checks(master, agent, [])
            assert served() == 3  # all of them ran in the session, none fell back
    else:
        _exec_checks(master, agent, ["--direct"] if route == "direct" else [])


def _exec_checks(master: MasterProcess, agent: AgentProcess, route: list[str]) -> None:
    box = mirror_of(agent)
    done = nodectl(master, "exec", *route, "-i", box, "-c", "web", "--", "cat", stdin="hello\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "hello\n", "")
    done = nodectl(
        master,
        "exec",
        *route,
        box,
        "-c",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    # stdin EOF reaches the process while its output keeps flowing afterwards.
    done = nodectl(
        master,
        "exec",
        *route,
        "-i",
        box,
        "-c",
        "web",
        "--",
        "sh",
        "-c",
        "wc -c; echo after-eof",
        stdin="x" * 100_000,
    )
    assert done.returncode == 0 and done.stdout.split() == ["100000", "after-eof"]
    audit = [json.loads(line) for line in agent.log_path.read_text().splitlines() if line]
    sessions = [e for e in audit if e.get("msg") == "exec session"]
    assert any(e["exit_code"] == 3 for e in sessions)
    # Through the proxy the node authorizes and audits the user, not the master.
    who = "admin (via system:node-proxy)" if not route else "admin"
    assert {e["who"] for e in sessions} == {who}


# Runs nodectl's entry point and reports on stderr's last line which heavy modules it loaded.
LEAN_PROBE = (
    "import sys\n"
    "from agent.cli.nodectl_control import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = ('asyncio', 'argparse', 'agent.cli.nodectl', 'agent.cli.nodectl_stream')\n"
    "sys.stderr.write('\\nLOADED ' + ','.join(m for m in heavy if m in sys.modules) + '\\n')\n"
    "sys.exit(code)\n"
)


def test_a_plain_exec_with_sessions_off_runs_without_asyncio(
    cluster: tuple[MasterProcess, AgentProcess],
) -> None:
    """agent/cli/nodectl_lean.py: ``exec POD -- CMD`` with sessions off (the admin config's)
    runs on the sans-IO multiplexer over a blocking socket — the same output, exit status and
    node audit — and never loads asyncio, argparse or the full CLI. What the master refuses
    (an unknown pod) is handed to the full client, which prints its usual error."""
    master, agent = cluster
    box = mirror_of(agent)

    def probe(*args: str) -> tuple[int, str, str, str]:
        done = subprocess.run(  # noqa: PLW1510 - the exit status is the point
            [sys.executable, "-c", LEAN_PROBE, "--config", str(master.admin_conf), *args],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            input="",
        )
        stderr, _, loaded = done.stderr.rstrip("\n").rpartition("\nLOADED ")
        return done.returncode, done.stdout, stderr, loaded

    script = "echo out; head -c 3000000 /dev/zero | tr '\\0' x; echo; echo err >&2; exit 3"
    code, out, err, loaded = probe("exec", box, "-c", "web", "--", "sh", "-c", script)
    assert (code, err, loaded) == (3, "err\n", "")
    assert out == "out\n" + "x" * 3_000_000 + "\n"  # past half the 4 MiB window: WINDOW_UPDATEs
    code, out, err, loaded = probe(
        "--no-session", "exec", "-n", "default", box, "-c", "web", "--", "true"
    )
    assert (code, out, err, loaded) == (0, "", "", "")
    audit = [json.loads(line) for line in agent.log_path.read_text().splitlines() if line]
    assert [e["exit_code"] for e in audit if e.get("msg") == "exec session"][-2:] == [3, 0]
    code, out, err, loaded = probe("exec", "ghost", "--", "true")
    assert code == 1 and "ghost" in err and "agent.cli.nodectl" in loaded.split(",")
    # Not the plain form: the full client from the start (stdin passed).
    code, out, err, loaded = probe("exec", "-i", box, "-c", "web", "--", "cat")
    assert (code, loaded.split(",")[0]) == (0, "asyncio")


def test_exec_errors_are_clear(cluster: tuple[MasterProcess, AgentProcess]) -> None:
    master, agent = cluster
    box = mirror_of(agent)
    done = nodectl(master, "exec", box, "-c", "nope", "--", "true")
    assert done.returncode == 1 and "container 'nope' not found" in done.stderr
    done = nodectl(master, "exec", box, "--", "true")
    assert done.returncode == 1 and "several containers" in done.stderr
    done = nodectl(master, "exec", "ghost", "--", "true")
    assert done.returncode == 1 and "ghost" in done.stderr


@pytest.mark.parametrize("route", ["standalone", "session"])
def test_exec_tty_session_in_tmux_sees_resize_and_exits(
    cluster: tuple[MasterProcess, AgentProcess], tmp_path: Path, runtime_dir: Path, route: str
) -> None:
    master, agent = cluster
    with contextlib.ExitStack() as stack:
        if route == "session":
            served = stack.enter_context(nodectl_session(master))
        _tty_in_tmux(master, mirror_of(agent), tmp_path, runtime_dir)
        if route == "session":
            assert served() == 1  # raw mode, resizes and the exit code all through the session


def _tty_in_tmux(master: MasterProcess, box: str, tmp_path: Path, runtime_dir: Path) -> None:
    tmux = shutil.which("tmux")
    assert tmux, "tmux is installed by scripts/bootstrap.sh"
    session = f"nodectl-{uuid.uuid4().hex[:6]}"
    marker = tmp_path / "exit-code"
    command = (
        f"cd {REPO_ROOT} && XDG_RUNTIME_DIR={runtime_dir} PYTHONPATH={REPO_ROOT} "
        f"{sys.executable} -m agent.cli.nodectl_control --config {master.admin_conf} "
        f"exec -i -t {box} -c web -- sh; echo $? > {marker}"
    )
    subprocess.run(
        [tmux, "new-session", "-d", "-s", session, "-x", "80", "-y", "24", command], check=True
    )

    def pane() -> str:
        return subprocess.run(
            [tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
        ).stdout

    try:
        wait_for(lambda: "#" in pane(), what="remote shell prompt")
        subprocess.run([tmux, "send-keys", "-t", session, "stty size", "Enter"], check=True)
        wait_for(lambda: re.search(r"^24 80\s*$", pane(), re.M), what="stty size 24 80")
        subprocess.run([tmux, "resize-window", "-t", session, "-x", "100", "-y", "30"], check=True)

        def resized() -> bool:
            # Asked again until it shows: the keys typed next can reach the shell before the
            # resize (a signal, then a frame, then Docker's resize call) has reached the pty.
            subprocess.run([tmux, "send-keys", "-t", session, "stty size", "Enter"], check=True)
            return bool(re.search(r"^30 100\s*$", pane(), re.M))

        wait_for(resized, interval_s=1.0, what="stty size after resize")
        subprocess.run([tmux, "send-keys", "-t", session, "exit 7", "Enter"], check=True)
        wait_for(lambda: marker.exists() and marker.read_text().strip(), what="nodectl exited")
        assert marker.read_text().strip() == "7"
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], check=False, capture_output=True)


def test_session_hands_back_what_it_cannot_run_and_outlives_its_clients(
    cluster: tuple[MasterProcess, AgentProcess],
) -> None:
    master, agent = cluster
    box = mirror_of(agent)
    with nodectl_session(master) as served:
        again = nodectl(master, "session", "start")
        assert again.returncode == 1 and "already running" in again.stderr
        # Usage errors and --direct run in the invocation itself, as without a session.
        usage = nodectl(master, "exec", box)
        assert usage.returncode == 2 and "exec needs a command" in usage.stderr
        direct = nodectl(master, "exec", "--direct", box, "-c", "web", "--", "echo", "d")
        assert (direct.returncode, direct.stdout) == (0, "d\n")
        assert served() == 0
        # The node's errors reach the invocation's stderr with the same exit status.
        ghost = nodectl(master, "exec", "ghost", "--", "true")
        assert ghost.returncode == 1 and "ghost" in ghost.stderr
        assert served() == 1
        # An invocation interrupted mid-command takes its command with it, not the session.
        interrupted = subprocess.Popen(
            [
                *(sys.executable, "-m", "agent.cli.nodectl_control"),
                *("--config", str(master.admin_conf), "exec", box, "-c", "web"),
                *("--", "sleep", "300"),
            ],
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(
                lambda: "running: 1" in nodectl(master, "session", "status").stdout,
                what="the sleep running in the session",
            )
            interrupted.send_signal(2)
            assert interrupted.wait(timeout=30) == 130
        finally:
            interrupted.kill()
        wait_for(
            lambda: "running: 0" in nodectl(master, "session", "status").stdout,
            what="the interrupted command cancelled",
        )
        logs = nodectl(master, "logs", "--tail", "2", box, "-c", "talker")
        assert logs.returncode == 0 and len(logs.stdout.split()) == 2
        assert served() == 2


def test_session_ends_when_idle_or_when_its_config_changes(
    cluster: tuple[MasterProcess, AgentProcess], tmp_path: Path
) -> None:
    master, agent = cluster
    box = mirror_of(agent)
    unreachable = tmp_path / "unreachable.conf"
    unreachable.write_text(
        re.sub(r'server = "[^"]*"', 'server = "https://127.0.0.1:1"', master.admin_conf.read_text())
    )
    refused = nodectl(master, "session", "start", config=unreachable)
    assert refused.returncode == 1
    assert "cannot start the session: cannot reach the master" in refused.stderr

    def running() -> bool:
        return nodectl(master, "session", "status").returncode == 0

    started = nodectl(master, "session", "start", "--idle-timeout", "1")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: not running(), what="the idle session to end")
    stopped = nodectl(master, "session", "stop")
    assert stopped.returncode == 1 and "no session is running" in stopped.stderr

    assert nodectl(master, "session", "start").returncode == 0
    gate = f"/tmp/gate-{uuid.uuid4().hex[:8]}"
    long_running = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.cli.nodectl_control"),
            *("--config", str(master.admin_conf), "exec", box, "-c", "web", "--"),
            *("sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo survived"),
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: "running: 1" in nodectl(master, "session", "status").stdout,
            what="a command running in the session",
        )
        config = master.admin_conf
        os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1))
        # A session must not serve credentials that were replaced on disk: it hands new
        # commands back (they run standalone with the new file), lets the running one finish,
        # and ends.
        done = nodectl(master, "exec", box, "-c", "web", "--", "echo", "fresh")
        assert (done.returncode, done.stdout) == (0, "fresh\n")
        assert running()  # still finishing the long-running command
        assert nodectl(master, "exec", box, "-c", "web", "--", "touch", gate).returncode == 0
        out, _ = long_running.communicate(timeout=30)
        assert (long_running.returncode, out) == (0, "survived\n")
    finally:
        long_running.kill()
    wait_for(lambda: not running(), what="the stale session to end")
    # Nor does an idle one keep replaced credentials until its idle timeout.
    assert nodectl(master, "session", "start").returncode == 0
    config = master.admin_conf
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 1))
    wait_for(lambda: not running(), what="the idle session to see its config change")


def test_a_session_of_older_nodectl_code_hands_back_and_ends(
    cluster: tuple[MasterProcess, AgentProcess],
) -> None:
    from agent.cli import nodectl_control

    master, agent = cluster
    box = mirror_of(agent)
    assert nodectl(master, "session", "start").returncode == 0
    try:
        config = nodectl_control.config_path(str(master.admin_conf))
        # What a nodectl upgraded since the session started sends: another code identity.
        upgraded = nodectl_control.encode_fields(["9.9.9:0:0:0", config, "exec", box, "--", "true"])
        with socket.socket(fileno=nodectl_control.connect(config).detach()) as sock:
            sock.sendmsg(
                [b"R" + upgraded],
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(array.array("i", [0, 1, 2])))],
            )
            assert sock.recv(nodectl_control.MESSAGE_MAX_BYTES) == b"F"  # run it yourself
        wait_for(
            lambda: nodectl(master, "session", "status").returncode == 1,
            what="the session of the older code to end",
        )
    finally:
        nodectl(master, "session", "stop")


def test_exec_starts_a_session_for_the_next_commands_by_default(
    cluster: tuple[MasterProcess, AgentProcess], tmp_path: Path
) -> None:
    master, agent = cluster
    box = mirror_of(agent)
    conf = tmp_path / "persist.conf"
    default = master.admin_conf.read_text().replace(NO_SESSION_LINE, "")
    assert "\nsession_idle_timeout_s" not in default  # only the commented example
    conf.write_text(default)
    conf.chmod(0o600)

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return nodectl(master, *argv, config=conf)

    try:
        # run() captures output until EOF: had the session kept the caller's stdout or
        # stderr, this would hang until the session ended.
        first = run("exec", box, "-c", "web", "--", "echo", "one")
        assert (first.returncode, first.stdout) == (0, "one\n"), first.stderr
        wait_for(lambda: run("session", "status").returncode == 0, what="the session started")
        second = run("exec", box, "-c", "web", "--", "echo", "two")
        assert (second.returncode, second.stdout) == (0, "two\n"), second.stderr
        status = run("session", "status").stdout
        assert "commands served: 1," in status and "idle timeout: 600s" in status, status
        pid = re.search(r"^pid: (\d+)$", status, re.MULTILINE)
        assert pid is not None, status
        assert os.readlink(f"/proc/{pid[1]}/cwd") == "/"  # keeps no directory of the caller's busy
    finally:
        run("session", "stop")


@pytest.fixture
def port_forward(
    cluster: tuple[MasterProcess, AgentProcess],
) -> Iterator[Callable[..., dict[int, int]]]:
    master, agent = cluster
    box = mirror_of(agent)
    procs: list[subprocess.Popen[str]] = []

    def start(*ports: str, direct: bool = False, relay: bool = False) -> dict[int, int]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli.nodectl_control",
                "--config",
                str(master.admin_conf),
                "port-forward",
                *(["--direct"] if direct else []),
                *(["--relay"] if relay else []),
                box,
                *ports,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONFAULTHANDLER="1"),
        )
        procs.append(proc)
        mapping: dict[int, int] = {}
        assert proc.stdout is not None
        while len(mapping) < len(ports):
            line = proc.stdout.readline()
            assert line, f"port-forward exited: {proc.stderr.read() if proc.stderr else ''}"
            found = re.match(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)", line)
            if found:
                mapping[int(found[2])] = int(found[1])
        return mapping

    yield start
    for proc in procs:
        proc.send_signal(2)  # Ctrl-C: a clean shutdown, exit status 0
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(6)
            proc.wait()
            raise AssertionError(proc.stderr.read() if proc.stderr else "") from None
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


def _curl(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("route", ["ticket", "relay", "direct"])
def test_port_forward_http_pod_localhost_and_refused_port(
    port_forward: Callable[..., dict[int, int]], route: str
) -> None:
    # By default through the master's ticket straight to the node (test_stream_tickets.py),
    # with --relay through the master's relay, with --direct straight to the node.
    local = port_forward(
        "0:8080", "0:9090", "0:7777", direct=route == "direct", relay=route == "relay"
    )
    assert _curl(local[8080]).stdout == "public\n"
    assert _curl(local[9090]).stdout == "private\n"  # bound to the pod's 127.0.0.1 only
    refused = _curl(local[7777])
    assert refused.returncode != 0  # that connection fails ...
    assert _curl(local[8080]).stdout == "public\n"  # ... and the session goes on


def test_port_forward_200_concurrent_connections(
    port_forward: Callable[..., dict[int, int]],
) -> None:
    local = port_forward("0:8080")[8080]
    socks = [socket.create_connection(("127.0.0.1", local), timeout=30) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answers = []
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            answers.append(data)
    finally:
        for sock in socks:
            sock.close()
    assert all(a.startswith(b"HTTP/1.") and a.endswith(b"public\n") for a in answers)


def test_port_forward_half_close_and_bulk_integrity(
    port_forward: Callable[..., dict[int, int]],
) -> None:
    local = port_forward("0:7000")[7000]
    size = int(os.environ.get("PORT_FORWARD_BULK_BYTES", str(1 << 30)))  # 1 GiB each way
    block = os.urandom(1 << 20)
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    received = 0
    with socket.create_connection(("127.0.0.1", local), timeout=60) as sock:

        def send() -> None:
            left = size
            while left:
                piece = block[: min(left, len(block))]
                sock.sendall(piece)
                sent_hash.update(piece)
                left -= len(piece)
            sock.shutdown(socket.SHUT_WR)  # half-close towards the pod: cat sees EOF

        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(1 << 20):  # ends when the pod side closes after its EOF
            got_hash.update(chunk)
            received += len(chunk)
        sender.join()
    assert received == size
    assert got_hash.hexdigest() == sent_hash.hexdigest()


def test_logs_tail_follow_and_previous(
    cluster: tuple[MasterProcess, AgentProcess], docker_client: docker.DockerClient
) -> None:
    master, agent = cluster
    box = mirror_of(agent)
    wait_for(
        lambda: len(nodectl(master, "logs", box, "-c", "talker").stdout.split()) >= 5,
        what="talker wrote lines",
    )
    tail = nodectl(master, "logs", "--tail", "2", box, "-c", "talker")
    assert tail.returncode == 0 and len(tail.stdout.split()) == 2
    stamped = nodectl(master, "logs", "--tail", "1", "--timestamps", box, "-c", "talker")
    assert re.match(r"\d{4}-\d\d-\d\dT\S+ line-\d+$", stamped.stdout.strip())

    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli.nodectl_control",
            "--config",
            str(master.admin_conf),
            "logs",
            "-f",
            "--tail",
            "0",
            box,
            "-c",
            "talker",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()
        second = follow.stdout.readline()
        assert first.startswith("line-") and second.startswith("line-")
        assert int(second.split("-")[1]) == int(first.split("-")[1]) + 1  # new lines, live
    finally:
        follow.kill()
        follow.wait()

    before = nodectl(master, "logs", "--previous", box, "-c", "talker")
    assert before.returncode == 1 and "no previous terminated container" in before.stderr
    current = nodectl(master, "logs", box, "-c", "talker").stdout
    talker = next(
        c
        for c in node_containers(docker_client, agent.node_name)
        if c.labels.get("io.node-agent.container") == "talker" and c.status == "running"
    )
    talker.kill()
    wait_for(
        lambda: (
            (p := agent.pod("box"))
            and any(c["restartCount"] >= 1 for c in p["status"]["containerStatuses"])
        ),
        what="talker restarted",
    )
    previous = nodectl(master, "logs", "--previous", box, "-c", "talker")
    assert previous.returncode == 0 and previous.stdout.startswith(current.splitlines()[0])


def test_node_api_refuses_anonymous_and_other_nodes(
    cluster: tuple[MasterProcess, AgentProcess],
    make_agent: Callable[..., AgentProcess],
    tmp_path: Path,
) -> None:
    import asyncio

    from agent.aio.h2conn import connect
    from agent.errors import ConnectionClosedError

    master, agent = cluster
    other = make_agent(
        f"other-{uuid.uuid4().hex[:6]}", master=master.url, ca_cert_hash=[master.pin]
    ).start()
    wait_for(lambda: (other.state_dir / "pki" / "node.crt").exists(), what="other node's cert")
    node = master.node(agent.node_name)
    assert node is not None
    host, port = node["status"]["daemonEndpoints"]["nodeApi"].rsplit(":", 1)
    ca = str(master.root / "pki" / "ca.crt")

    async def attempt(cert: tuple[Path, Path] | None) -> int:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        if cert is not None:
            ctx.load_cert_chain(*cert)
        conn = await connect(host, int(port), ctx, server_hostname="")
        try:
            stream = await conn.request(
                "POST",
                "/v1/namespaces/default/pods/box/exec?command=true&container=web",
                end_stream=True,
            )
            await stream.response()
            body = json.loads(await stream.read_all(1 << 16))
            assert "may not use node" in body["error"]["message"]
            return stream.status
        finally:
            await conn.shutdown()

    other_cert = (other.state_dir / "pki" / "node.crt", other.state_dir / "pki" / "node.key")
    assert asyncio.run(attempt(other_cert)) == 403
    with pytest.raises(ConnectionClosedError):
        asyncio.run(attempt(None))  # no client certificate: refused in the handshake


@pytest.mark.parametrize("route", [[], ["--direct"]], ids=["via-master", "direct"])
def test_a_viewer_reads_pods_and_logs_but_may_not_exec_or_delete(
    cluster: tuple[MasterProcess, AgentProcess], route: list[str], tmp_path: Path
) -> None:
    from agent.cli import node_master

    master, agent = cluster
    box = mirror_of(agent)
    conf = tmp_path / "alice.conf"
    args = ["issue-user", "alice", "--data-dir", str(master.root), "--out", str(conf)]
    assert node_master.main(args) == 0
    assert conf.stat().st_mode & 0o777 == 0o600
    without_sessions(conf)

    def as_alice(*argv: str) -> subprocess.CompletedProcess[str]:
        return nodectl(master, *argv, config=conf)

    listed = as_alice("get", "pods", "-o", "wide")
    assert listed.returncode == 0 and box in listed.stdout, listed.stderr
    logs = as_alice("logs", *route, "--tail", "3", box, "-c", "talker")
    assert logs.returncode == 0, logs.stderr
    assert re.fullmatch(r"(line-\d+\n){3}", logs.stdout), logs.stdout
    refused = as_alice("exec", *route, box, "-c", "web", "--", "touch", "/tmp/alice-was-here")
    assert refused.returncode == 1
    assert "'alice' may read logs but not exec" in refused.stderr
    still = nodectl(master, "exec", box, "-c", "web", "--", "ls", "/tmp")
    assert still.returncode == 0 and "alice-was-here" not in still.stdout
    deleted = as_alice("delete", "pod", box)
    assert deleted.returncode == 1 and "viewer 'alice' may not DELETE" in deleted.stderr
    assert box in master.pods()
