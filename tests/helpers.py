"""Shared test helpers: waiting on conditions, running a real agent process, test images."""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import docker

T = TypeVar("T")

TEST_IMAGE = "node-agent-test/busybox:latest"
LABEL_NODE = "io.node-agent.node"
REPO_ROOT = Path(__file__).resolve().parent.parent
# nodectl starts a background session for exec and logs by default; tests that do not test
# sessions turn that off in the configs they use, so no holder outlives its test.
NO_SESSION_LINE = "session_idle_timeout_s = 0\n"


CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name`` (``ip netns`` name):
    sockets created inside stay there, so a test can talk to an agent's loopback-only health
    port inside its namespace. ``None`` is the test's own namespace."""
    if name is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {name}: {os.strerror(err)}")
    finally:
        os.close(own)
        os.close(target)


def netns_prefix(name: str | None) -> list[str]:
    return ["ip", "netns", "exec", name] if name else []


class AgentDied(AssertionError):
    """The agent process exited while a test waited on it: no point waiting longer."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail with ``what`` on time-out."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except AgentDied:
            raise
        except Exception as exc:  # the condition may race with the system under test
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last error: {last_exc!r})"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_test_image(client: docker.DockerClient) -> str:
    """Build the busybox test image from the host's static busybox if it is absent."""
    try:
        client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    busybox = shutil.which("busybox") or "/bin/busybox"
    applets = subprocess.run(
        [busybox, "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "var", "var/www", "root"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    client.api.import_image_from_data(
        buf.getvalue(),
        repository=TEST_IMAGE.split(":", maxsplit=1)[0],
        tag="latest",
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    return TEST_IMAGE


def pod_manifest(
    name: str,
    containers: list[dict[str, Any]],
    *,
    namespace: str = "default",
    restart_policy: str = "Always",
    grace_s: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    for c in containers:
        c.setdefault("image", TEST_IMAGE)
        c.setdefault("imagePullPolicy", "Never")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": restart_policy,
            "terminationGracePeriodSeconds": grace_s,
            "containers": containers,
            **spec,
        },
    }


def sleeper(name: str = "main", seconds: int = 3600) -> dict[str, Any]:
    return {"name": name, "command": ["sh", "-c", f"trap 'exit 0' TERM; sleep {seconds} & wait"]}


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout_s: float) -> None:
        super().__init__("local", timeout=timeout_s)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unix_get(path: Path, target: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """``curl --unix-socket PATH http://local/TARGET``: status and body."""
    conn = _UnixConnection(path, timeout_s)
    try:
        conn.request("GET", target, headers={"Host": "local"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class AgentProcess:
    """A real ``node-agent run`` process with its own node name, state and manifest dirs."""

    def __init__(
        self, root: Path, node_name: str, *, netns: str | None = None, **config: Any
    ) -> None:
        self.root = root
        self.node_name = node_name
        self.netns = netns
        self.state_dir = root / "state"
        self.manifest_dir = root / "manifests"
        self.manifest_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = root / "agent.log"
        self.config_path = root / "agent.toml"
        values: dict[str, Any] = {
            "node_name": node_name,
            "state_dir": str(self.state_dir),
            "manifest_dir": str(self.manifest_dir),
            "health_addr": f"127.0.0.1:{self.port}",
            "api_addr": f"127.0.0.1:{free_port()}",
            "log_format": "json",
            "log_level": "debug",
            "backoff_initial_s": 1.0,
            "backoff_max_s": 8.0,
            "backoff_reset_s": 60.0,
            "relist_interval_s": 2.0,
            "manifest_poll_interval_s": 0.5,
            # The machine's engine is shared by every test and by whoever else uses it: image GC
            # (which could delete the shared test image on a full disk) and DiskPressure (which
            # would stop scheduling) follow this machine's disk only where a test asks for them.
            "image_gc_high_threshold_percent": 100.0,
            "image_gc_low_threshold_percent": 99.0,
            "imagefs_available_min_percent": 0.0,
            "nodefs_available_min_percent": 0.0,
        }
        values.update(config)
        self.state_dir = Path(values["state_dir"])  # a test may put it elsewhere (a tmpfs)
        lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        self.config_path.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The health port: ``/healthz`` and ``/metrics`` only."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path:
        """The local read-only API (pods, events): root's Unix socket in the state dir."""
        return self.state_dir / "api.sock"

    def start(
        self,
        *,
        wait_ready: bool = True,
        blockbuster: bool = True,
        env: dict[str, str] | None = None,
    ) -> AgentProcess:
        """Start the agent; tests run it under blockbuster so a blocking call on the loop
        fails the agent (and so the test); benchmarks turn that off."""
        base = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        base["NODE_AGENT_BLOCKBUSTER"] = "1" if blockbuster else "0"
        base.pop("NOTIFY_SOCKET", None)
        env = {**base, **(env or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *netns_prefix(self.netns),
                sys.executable,
                "-m",
                "agent.cli.node_agent",
                "run",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        log.close()
        if wait_ready:
            self.wait_healthy()
        return self

    def api_get(self, path: str) -> tuple[int, str]:
        """GET on the local read-only API's socket (a path, so in no network namespace)."""
        return unix_get(self.socket_path, path)

    def get(self, path: str) -> tuple[int, str]:
        """GET on the health port."""
        with in_netns(self.netns):
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        def healthy() -> bool:
            self.assert_alive()
            return self.get("/healthz") == (200, "ok")

        wait_for(healthy, timeout_s=timeout_s, what=f"agent {self.node_name} healthy")

    def assert_alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise AgentDied(f"agent exited with {code}; log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def pods(self) -> dict[str, dict[str, Any]]:
        status, body = self.api_get("/v1/pods")
        assert status == 200, body
        return {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
            for p in json.loads(body)["items"]
        }

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        return self.pods().get(f"{namespace}/{name}")

    def events(self) -> list[dict[str, Any]]:
        status, body = self.api_get("/v1/events")
        assert status == 200, body
        items: list[dict[str, Any]] = json.loads(body)["items"]
        return items

    def write_manifest(self, filename: str, *manifests: dict[str, Any]) -> Path:
        path = self.manifest_dir / filename
        tmp = path.with_name("." + filename + ".tmp")
        tmp.write_text("\n---\n".join(json.dumps(m) for m in manifests))
        tmp.rename(path)
        return path

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def running_phase(
    agent: AgentProcess, name: str, namespace: str = "default"
) -> dict[str, Any] | None:
    pod = agent.pod(name, namespace)
    if (
        pod
        and pod["status"].get("phase") == "Running"
        and all(c["ready"] for c in pod["status"].get("containerStatuses", []))
        and pod["status"].get("containerStatuses")
    ):
        return pod
    return None


def node_containers(client: docker.DockerClient, node_name: str) -> list[Any]:
    # ignore_removed: the agent may remove a container between the listing and its inspect.
    return list(
        client.containers.list(
            all=True, filters={"label": f"{LABEL_NODE}={node_name}"}, ignore_removed=True
        )
    )


def remove_node_containers(client: docker.DockerClient, node_name: str) -> None:
    for container in node_containers(client, node_name):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


class MasterProcess:
    """A real ``node-master`` (init + run) on a free loopback port, driven through nodectl."""

    def __init__(
        self, root: Path, *, host: str = "127.0.0.1", netns: str | None = None, **master: Any
    ) -> None:
        self.root = root
        self.host = host
        self.netns = netns
        self.port = free_port()
        self.log_path = root / "master.log"
        root.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent.cli.node_master",
                "init",
                "--data-dir",
                str(root),
                "--server-name",
                host,
                "--listen",
                f"{host}:{self.port}",
            ],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        ).stdout
        self.pin = next(line.split()[-1] for line in out.splitlines() if "CA pin:" in line)
        self.url = f"https://{host}:{self.port}"
        self.admin_conf = root / "admin.conf"
        without_sessions(self.admin_conf)
        self.config_path = root / "master.toml"
        self.master_settings: dict[str, Any] = {
            "lease_renew_s": 1.0,
            "lease_grace_s": 4.0,
            **master,
        }
        self.configure(trust=["open"])
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, **registration: Any) -> None:
        # No data_dir: the file's own directory (root), so a copy of root is a replica's.
        lines = ["[master]", f'listen = "{self.host}:{self.port}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in self.master_settings.items()]
        lines += ['log_format = "json"', "", "[registration]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in registration.items()]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self, *, blockbuster: bool = True) -> MasterProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                *netns_prefix(self.netns),
                sys.executable,
                "-m",
                "agent.cli.node_master",
                "run",
                "--config",
                str(self.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=dict(
                os.environ,
                PYTHONPATH=str(REPO_ROOT),
                NODE_AGENT_BLOCKBUSTER="1" if blockbuster else "0",
            ),
        )
        log.close()
        wait_for(
            lambda: self._alive() and self.nodectl("get", "nodes").returncode == 0,
            what="master serving",
        )
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AgentDied(
                f"master exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}"
            )
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)

    def sighup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def nodectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: PLW1510 - callers check the exit status themselves
            [sys.executable, "-m", "agent.cli.nodectl", "--config", str(self.admin_conf), *args],
            capture_output=True,
            text=True,
            input=stdin,
            cwd=REPO_ROOT,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        )

    def nodes(self) -> dict[str, dict[str, Any]]:
        done = self.nodectl("get", "nodes", "-o", "json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["kind"] == "List", data  # as kubectl: a list get is a List, even of one
        return {n["metadata"]["name"]: n for n in data["items"]}

    def node(self, name: str) -> dict[str, Any] | None:
        return self.nodes().get(name)

    def pods(self) -> dict[str, dict[str, Any]]:
        done = self.nodectl("get", "pods", "-A", "-o", "json")
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert data["kind"] == "List", data
        return {p["metadata"]["name"]: p for p in data["items"]}


def node_ready(master: MasterProcess, name: str) -> dict[str, Any] | None:
    node = master.node(name)
    if node is None:
        return None
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    return node if ready["status"] == "True" else None


def server_cert_files(directory: Path, *, sans: tuple[str, ...] = ("127.0.0.1",)) -> bytes:
    """A throw-away CA and a serving certificate for ``sans`` in ``directory`` (s.crt,
    s.key); returns the CA's PEM for the clients."""
    from agent.pki.core import cert_to_pem, create_ca, generate_key, issue, key_to_pem

    ca_key, ca_cert = create_ca()
    key = generate_key()
    cert = issue(
        ca_key,
        ca_cert,
        key.public_key(),
        common_name="test-server",
        groups=[],
        sans=list(sans),
        lifetime_s=3600,
        client=False,
        server=True,
    )
    (directory / "s.crt").write_bytes(cert_to_pem(cert))
    (directory / "s.key").write_bytes(key_to_pem(key))
    return cert_to_pem(ca_cert)


def without_sessions(conf: Path) -> None:
    """Turn off the automatic ``nodectl session`` in a nodectl config (see NO_SESSION_LINE)."""
    with conf.open("a") as out:
        out.write(NO_SESSION_LINE)


def clean_up_on_sigterm() -> None:
    """A bench stopped by ``timeout`` or ``kill`` (SIGTERM) runs its ``finally`` blocks —
    stopping its agent, removing its containers — as it does on Ctrl-C, instead of leaving
    containers behind on the machine."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
