"""Host probes both doctors use: who holds a port, a directory's writability and free space
(without creating anything), a certificate's remaining lifetime, a Unix socket's server, the
systemd unit's state.

The probes that touch files or sockets are blocking and small; the checks run them through the
thread bridge. None of them changes anything: a port is tried with a bind that is closed at
once (never listened on), a directory is judged by ``access`` and ``statvfs``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import os
import socket
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from cryptography import x509

from agent.aio.bridge import ThreadBridge
from agent.doctor.core import CheckResult, failed, passed

MIB = 1024 * 1024
GIB = 1024 * MIB
DAY_S = 24 * 3600
SYSTEMD_RUN_DIR = Path("/run/systemd/system")  # exists only when systemd is PID 1 (sd_booted)
SYSTEMCTL_TIMEOUT_S = 1.0
SYSTEMCTL_OUTPUT_MAX_BYTES = 16 * 1024
UNIX_CONNECT_TIMEOUT_S = 0.5
FILE_MAX_BYTES = 1024 * 1024  # a PEM bundle or a state file; more is not one of ours
SYSTEMD_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "WatchdogUSec",
    "NRestarts",
)


def human_bytes(count: int) -> str:
    if count >= GIB:
        return f"{count / GIB:.1f} GiB"
    return f"{count / MIB:.1f} MiB"


# -- ports ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PortState:
    """A TCP address: free (``free``), held by a process (``pid``, ``command``; pid None when
    the listener's owner cannot be seen, as another user without root), or unusable
    (``problem``: not an address of this host, a privileged port)."""

    address: str
    free: bool
    pid: int | None = None
    command: str = ""
    problem: str = ""

    def held_by(self, markers: Sequence[str]) -> bool:
        """Whether the holder's command line names one of ``markers`` (our daemon)."""
        return any(marker in self.command for marker in markers)

    @property
    def holder(self) -> str:
        if self.pid is None:
            return "another process (run doctor as root to see which)"
        return f"pid {self.pid} ({self.command or '?'})"


def probe_port(host: str, port: int) -> PortState:
    """Blocking. Try a bind (SO_REUSEADDR, as the daemons bind; closed at once, never
    listening): it succeeds on a free port; EADDRINUSE names the listener's process."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return PortState(address, False, problem=f"cannot resolve {host}: {exc.strerror}")
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            pid, command = _listener(port, str(sockaddr[0]))
            return PortState(address, False, pid, command)
        if exc.errno == errno.EADDRNOTAVAIL:
            return PortState(address, False, problem=f"{host} is not an address of this host")
        return PortState(address, False, problem=exc.strerror or str(exc))
    finally:
        sock.close()
    return PortState(address, True)


def _listener(port: int, ip: str) -> tuple[int | None, str]:
    wildcard = {"0.0.0.0", "::", ""}
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None, ""
    for conn in connections:
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        if conn.laddr.ip != ip and conn.laddr.ip not in wildcard and ip not in wildcard:
            continue
        if conn.pid is None:
            return None, ""
        try:
            command = " ".join(psutil.Process(conn.pid).cmdline())
        except (psutil.Error, OSError):
            command = ""
        return conn.pid, command
    return None, ""


# -- directories ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirState:
    """``path`` itself, or (``exists`` False) its nearest existing ancestor ``where``, judged
    for the daemon's needs: a directory, writable, its free bytes and inodes, its mode."""

    path: Path
    where: Path
    exists: bool
    is_dir: bool
    writable: bool
    read_only_fs: bool
    free_bytes: int
    free_inodes: int | None  # None: the file system does not count inodes (btrfs)
    mode: int


def read_file(path: Path, max_bytes: int = FILE_MAX_BYTES) -> bytes:
    """A small regular file's bytes (blocking): opened without waiting (a FIFO or a device in
    its place would hold a bridge thread, and the process at exit, for ever) and read no
    further than ``max_bytes``. FileNotFoundError when absent; another OSError naming the
    file when it is not a regular file or is larger."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data


def not_regular(path: Path) -> str | None:
    """Why ``path``, when it exists, is no file to read (a FIFO, a device, a directory)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None  # absent or unreadable: the reader says so itself
    return None if stat.S_ISREG(mode) else f"{path}: not a regular file"


def probe_dir(path: Path) -> DirState:
    """Blocking; creates nothing."""
    where = path
    while not where.exists() and where != where.parent:
        where = where.parent
    exists = where == path
    st = where.stat()
    vfs = os.statvfs(where)
    return DirState(
        path=path,
        where=where,
        exists=exists,
        is_dir=stat.S_ISDIR(st.st_mode),
        writable=os.access(where, os.W_OK | os.X_OK),
        read_only_fs=bool(vfs.f_flag & os.ST_RDONLY),
        free_bytes=vfs.f_bavail * vfs.f_frsize,
        free_inodes=vfs.f_favail if vfs.f_files else None,
        mode=stat.S_IMODE(st.st_mode),
    )


def file_mode(path: Path) -> int | None:
    """Blocking: the permission bits of ``path`` (not following a link), None if absent."""
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None


# -- certificates --------------------------------------------------------------------------------


def days_left(cert: x509.Certificate, now: dt.datetime | None = None) -> float:
    moment = now or dt.datetime.now(dt.UTC)
    return (cert.not_valid_after_utc - moment).total_seconds() / DAY_S


def lifetime_days(cert: x509.Certificate) -> float:
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / DAY_S


def expiry_text(cert: x509.Certificate, now: dt.datetime | None = None) -> str:
    left = days_left(cert, now)
    until = f"{cert.not_valid_after_utc:%Y-%m-%d}"
    if left < 0:
        return f"expired on {until} ({-left:.0f} days ago)"
    return f"valid until {until} ({left:.0f} days left)"


# -- Unix sockets --------------------------------------------------------------------------------


def probe_unix_socket(path: Path) -> str:
    """Blocking: ``absent``, ``not-a-socket``, ``served`` (something accepts connections) or
    ``stale`` (a socket file nobody serves: the daemon replaces it at start)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(st.st_mode):
        return "not-a-socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(UNIX_CONNECT_TIMEOUT_S)
    try:
        sock.connect(str(path))
    except OSError:
        return "stale"
    finally:
        sock.close()
    return "served"


# -- systemd -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnitState:
    """What ``systemctl show UNIT`` says (the properties of ``SYSTEMD_PROPERTIES``)."""

    properties: dict[str, str]

    def get(self, name: str) -> str:
        return self.properties.get(name, "")


def systemd_booted() -> bool:
    """Blocking (a stat): whether systemd is this host's init, as ``sd_booted()`` judges."""
    return SYSTEMD_RUN_DIR.is_dir()


async def unit_state(unit: str, systemctl: Sequence[str] = ("systemctl",)) -> UnitState | None:
    """The unit's state as ``systemctl show`` gives it; None when there is no systemctl."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *systemctl,
            "show",
            unit,
            "--property=" + ",".join(SYSTEMD_PROPERTIES),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:  # no systemctl
        return None
    try:
        async with asyncio.timeout(SYSTEMCTL_TIMEOUT_S):
            assert proc.stdout is not None
            out = await proc.stdout.read(SYSTEMCTL_OUTPUT_MAX_BYTES)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    properties = {}
    for line in out.decode("utf-8", "replace").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            properties[name.strip()] = value.strip()
    return UnitState(properties)


async def systemd_check(
    unit: str, bridge: ThreadBridge, systemctl: tuple[str, ...], environ: Mapping[str, str]
) -> CheckResult:
    """Both doctors' ``systemd`` line: skipped where systemd is not PID 1 (a given
    ``systemctl`` other than the default, in tests, counts as booted)."""
    name = "systemd"
    booted = systemctl != ("systemctl",) or await bridge.run(systemd_booted)
    state = await unit_state(unit, systemctl) if booted else None
    if state is None:
        return passed(name, "skipped: this host does not run systemd")
    return judge_unit(name, unit, state, under_systemd="INVOCATION_ID" in environ)


def judge_unit(name: str, unit: str, state: UnitState, *, under_systemd: bool) -> CheckResult:
    """The unit's state as a check: loaded, active (running) and watched by its watchdog."""
    load, active, sub = state.get("LoadState"), state.get("ActiveState"), state.get("SubState")
    if load in ("not-found", ""):
        return passed(name, f"no {unit} unit on this host (the daemon runs without systemd)")
    restarts = state.get("NRestarts") or "0"
    enabled = state.get("UnitFileState") or "?"
    summary = f"{unit}: {active} ({sub}), {enabled}, restarted {restarts} times"
    if under_systemd:
        summary += "; doctor itself runs under systemd"
    if active == "failed":
        return failed(name, summary, f"journalctl -u {unit} -e, then systemctl restart {unit}")
    if active != "active":
        return failed(name, summary, f"systemctl enable --now {unit}")
    watchdog = state.get("WatchdogUSec")
    if watchdog in ("0", "infinity", ""):
        return failed(
            name,
            summary + "; no watchdog",
            f"set WatchdogSec= in the unit (the packaged {unit}.service sets it)",
        )
    return passed(name, f"{summary}, watchdog {watchdog}")
