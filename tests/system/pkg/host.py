"""A test host that boots systemd: a container of the bookworm image of tests/system/image/,
driven with the docker CLI as an operator would drive a machine over ssh.

Owns the container's whole life: run with the flags systemd needs on this kind of host
(`--cgroupns=host`, the host's cgroup tree bind-mounted rw, tmpfs /run and /run/lock,
`--stop-signal SIGRTMIN+3`; `--privileged` does not work here), wait for boot to finish, exec,
copy files in, read unit properties and the journal, remove. Every container carries the label
``io.node-agent.test=pkg`` and the pid of the pytest process that booted it, so that leftovers
of an aborted run are found and removed, and those of a run still going on are not.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import LABEL_NODE, wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
IMAGE_SCRIPT = REPO_ROOT / "tests" / "system" / "image" / "build.sh"
TEST_LABEL = "io.node-agent.test=pkg"
OWNER_LABEL = "io.node-agent.test.pid"  # the pytest process that booted the host
HOSTNAME_LABEL = "io.node-agent.test.host"
# Boot of this image takes about a second; a loaded CI machine gets much longer.
BOOT_TIMEOUT_S = 120.0
EXEC_TIMEOUT_S = 300.0
DOCKER_SOCKET = "/var/run/docker.sock"


class HostCommandFailed(AssertionError):
    """A command in the test host exited non-zero (its output is in the message)."""


def build_image() -> str:
    """The systemd image's reference, built (or imported from the cached rootfs) if absent."""
    out = subprocess.run(
        ["bash", str(IMAGE_SCRIPT)], check=False, capture_output=True, text=True, timeout=1200
    )
    if out.returncode != 0:
        raise AssertionError(f"{IMAGE_SCRIPT} failed:\n{out.stderr[-4000:]}")
    return out.stdout.strip().splitlines()[-1]


def _docker_ids(*filters: str) -> list[str]:
    argv = ["docker", "ps", "-aq", "--no-trunc"]
    for f in filters:
        argv += ["--filter", f]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.split()


def _remove(ids: list[str]) -> None:
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], check=False, capture_output=True)


def remove_pods_of(node_name: str) -> None:
    """Remove the containers an agent in a test host started on the host's engine (the
    agent labels each with its node name, the test host's hostname)."""
    _remove(_docker_ids(f"label={LABEL_NODE}={node_name}"))


def _listing(label: str, value_label: str) -> list[tuple[str, str]]:
    """(id, value of ``value_label``) of the containers that carry ``label``."""
    out = subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "--filter", f"label={label}", "--format",
         f'{{{{.ID}}}} {{{{.Label "{value_label}"}}}}'],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return [(cid, value) for cid, _, value in (line.partition(" ") for line in out.splitlines())]


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def remove_leftovers() -> None:
    """Remove test hosts left by an aborted run — ours by their label, left over because the
    pytest process that booted them is gone (another run may be going on beside this one) —
    and the pod containers of agents whose host is gone (node names ``pkg-...``)."""
    _remove([cid for cid, pid in _listing(TEST_LABEL, OWNER_LABEL) if not _alive(pid)])
    hosts = {name for _, name in _listing(TEST_LABEL, HOSTNAME_LABEL)}
    _remove(
        [
            cid
            for cid, node in _listing(LABEL_NODE, LABEL_NODE)
            if node.startswith("pkg-") and node not in hosts
        ]
    )


@dataclass
class SystemdHost:
    """One booted container. ``name`` is both the container's name and its hostname."""

    name: str
    image: str
    docker_socket: bool = False
    volumes: Sequence[str] = ()
    started: bool = field(default=False, init=False)

    def boot(self) -> None:
        argv = [
            "docker", "run", "-d", "--name", self.name, "--hostname", self.name,
            "--label", TEST_LABEL, "--label", f"{OWNER_LABEL}={os.getpid()}",
            "--label", f"{HOSTNAME_LABEL}={self.name}",
            "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--stop-signal", "SIGRTMIN+3",
        ]  # fmt: skip
        if self.docker_socket:
            argv += ["-v", f"{DOCKER_SOCKET}:{DOCKER_SOCKET}"]
        for volume in self.volumes:
            argv += ["-v", volume]
        subprocess.run([*argv, self.image], check=True, capture_output=True, text=True)
        self.started = True
        self.wait_booted()

    def wait_booted(self) -> None:
        """Wait for the boot to finish. `running` is required: this image boots with no failed
        unit, so `degraded` means something broke and the failing units are named."""

        def state() -> str | None:
            out = self.run("systemctl", "is-system-running", check=False, timeout_s=10)
            value = out.stdout.strip()
            return None if value in ("", "initializing", "starting") else value

        value = wait_for(state, timeout_s=BOOT_TIMEOUT_S, interval_s=0.2, what=f"{self.name} boot")
        if value != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise AssertionError(f"{self.name}: system is {value!r}; failed units:\n{failed}")

    def run(
        self,
        *argv: str,
        check: bool = True,
        input_text: str | None = None,
        timeout_s: float = EXEC_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in the host (as root); fail with its output when ``check`` and it
        exits non-zero."""
        out = subprocess.run(
            ["docker", "exec", *(["-i"] if input_text is not None else []), self.name, *argv],
            check=False,
            capture_output=True,
            text=True,
            input=input_text,
            timeout=timeout_s,
        )
        if check and out.returncode != 0:
            raise HostCommandFailed(
                f"{self.name}: {shlex.join(argv)} exited {out.returncode}\n"
                f"stdout:\n{out.stdout[-4000:]}\nstderr:\n{out.stderr[-4000:]}"
            )
        return out

    def sh(self, script: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("bash", "-euo", "pipefail", "-c", script, check=check)

    def put(self, source: Path, dest: str) -> None:
        """Copy a host file into the container at ``dest``."""
        subprocess.run(["docker", "cp", str(source), f"{self.name}:{dest}"], check=True)

    def write(self, dest: str, text: str, mode: str = "0644") -> None:
        self.run("install", "-D", "-m", mode, "/dev/stdin", dest, input_text=text)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout

    def ip(self) -> str:
        """The container's address on Docker's default bridge (reachable from the host and from
        the other test hosts, never from outside the machine)."""
        out = subprocess.run(
            ["docker", "inspect", self.name], check=True, capture_output=True, text=True
        ).stdout
        address = json.loads(out)[0]["NetworkSettings"]["IPAddress"]
        assert address, f"{self.name} has no bridge address"
        return str(address)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show`` properties of ``unit``."""
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def journal(self, unit: str | None = None, lines: int = 400) -> str:
        argv = ["journalctl", "--no-pager", "-o", "short-precise", "-n", str(lines)]
        if unit is not None:
            argv += ["-u", unit]
        return self.run(*argv, check=False).stdout

    def close(self) -> None:
        if self.started:
            subprocess.run(["docker", "rm", "-f", self.name], check=False, capture_output=True)
            self.started = False
