"""``nodectl``'s entry point, and the client half of connection sharing (``nodectl session``).

Like OpenSSH's ControlMaster: a session holder (:mod:`agent.cli.nodectl_session`) keeps the TLS
and HTTP/2 connection to the master open and runs ``exec`` and ``logs`` for later invocations,
which hand it their arguments and their stdin, stdout and stderr descriptors over a Unix socket
and wait for the exit code. What a short ``nodectl exec`` otherwise spends is the interpreter
and its imports (asyncio, ssl, h2: ~130 ms) and a TLS handshake; this module imports only
built-in modules (``_socket``, not ``socket``: its enum wrappers cost ~10 ms) so that the
shared path costs little more than the interpreter.

Whatever a session does not serve — other commands, ``--direct``, usage errors, no session
running, a session of another config — runs in this process through :mod:`agent.cli.nodectl`.

Wire format, one SOCK_SEQPACKET message each (boundaries kept, descriptors attached):
client → holder ``R`` + NUL-joined (code identity, config path, argv…) with fds 0, 1, 2; ``W``
the terminal was resized; ``S`` stop; ``I`` status. Holder → client ``F`` run it yourself;
``X`` + exit code; ``I`` + status text. The code identity (:func:`code_identity`) differs once
nodectl was upgraded or reinstalled: a holder still running the old code hands the command
back and ends, so that old and new code never speak this format to each other.
"""

from __future__ import annotations

import _socket
import os
import stat
import sys

from agent.errors import SessionUnavailableError

# No ``collections.abc`` (1.7 ms of import) even for annotations: argv is a list here.

SESSION_COMMANDS = frozenset({"exec", "logs"})
DEFAULT_CONFIG = "~/.config/nodectl/config"
MESSAGE_MAX_BYTES = 1 << 16
SESSION_IDLE_S = 600.0
_INT_BYTES = 4


def code_identity() -> str:
    """This installation of nodectl: its version and this file's identity on disk."""
    from agent import __version__  # the package this module is in: already loaded

    st = os.stat(__file__)
    return f"{__version__}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"


def config_path(explicit: str | None) -> str:
    """The config file a command uses, resolved as :func:`agent.cli.nodectl.load_config` does."""
    raw = explicit or os.environ.get("NODECTL_CONFIG") or DEFAULT_CONFIG
    return os.path.realpath(os.path.expanduser(raw))


def runtime_dir() -> str:
    """A directory only this user can enter: ``$XDG_RUNTIME_DIR/nodectl`` or
    ``/tmp/nodectl-UID``. Refused (:class:`SessionUnavailableError`) if someone else owns it or
    may write to it, since whoever controls it could pose as the session."""
    uid = os.getuid()
    path = runtime_dir_path()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SessionUnavailableError(f"{path} does not exist") from None
    if not (
        stat.S_ISDIR(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) & 0o077 == 0
    ):
        raise SessionUnavailableError(f"{path}: not a 0700 directory owned by uid {uid}")
    return path


def runtime_dir_path() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base):
        return os.path.join(base, "nodectl")
    return f"/tmp/nodectl-{os.getuid()}"


def socket_path(directory: str, config: str) -> str:
    # A short name (sun_path holds 108 bytes); the holder checks the full path on every request.
    import zlib

    return os.path.join(directory, f"session-{zlib.crc32(config.encode()):08x}.sock")


def peer_uid(sock: _socket.socket) -> int:
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 3 * _INT_BYTES)
    return int.from_bytes(creds[_INT_BYTES : 2 * _INT_BYTES], sys.byteorder)


def connect(config: str) -> _socket.socket:
    """A connection to the session holder of ``config``, checked to run as this user."""
    if sys.platform != "linux":  # SOCK_SEQPACKET with SO_PEERCRED: Linux's
        raise SessionUnavailableError("nodectl sessions need Linux")
    path = socket_path(runtime_dir(), config)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise SessionUnavailableError(f"{path}: {exc.strerror}") from None
    if peer_uid(sock) != os.getuid():
        sock.close()
        raise SessionUnavailableError(f"{path}: held by another user")
    return sock


def encode_fields(fields: list[str]) -> bytes:
    return b"\0".join(f.encode("utf-8", "surrogateescape") for f in fields)


def decode_fields(data: bytes) -> list[str]:
    return [f.decode("utf-8", "surrogateescape") for f in data.split(b"\0")]


def split_command(argv: list[str]) -> tuple[str | None, str | None]:
    """``(--config value, command)`` from nodectl's global options; ``(None, None)`` when
    they hold anything else, which the full parser then explains."""
    explicit = None
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" and i + 1 < len(argv):
            explicit = argv[i + 1]
            i += 2
        elif token.startswith("--config="):
            explicit = token.partition("=")[2]
            i += 1
        elif token.startswith("-"):
            return None, None
        else:
            return explicit, token
    return None, None


def run_in_session(argv: list[str]) -> int:
    """Run ``argv`` in this config's session holder; :class:`SessionUnavailableError` if it will
    not (then nothing has happened yet)."""
    explicit, command = split_command(argv)
    if command not in SESSION_COMMANDS:
        raise SessionUnavailableError(f"{command} runs locally")
    config = config_path(explicit)
    request = b"R" + encode_fields([code_identity(), config, *argv])
    if len(request) > MESSAGE_MAX_BYTES:
        raise SessionUnavailableError("arguments too long for a session request")
    sock = connect(config)
    tty = wants_tty(argv)
    try:
        fds = b"".join(fd.to_bytes(_INT_BYTES, sys.byteorder) for fd in (0, 1, 2))
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        if tty:
            import signal  # only interactive sessions pay for its import

            signal.signal(signal.SIGWINCH, lambda *_: _send_quietly(sock, b"W"))
        reply = sock.recv(MESSAGE_MAX_BYTES)
    except (ConnectionResetError, BrokenPipeError):
        # A reset: the holder closed this connection with a message of ours unread. Without
        # a terminal the request is our only message, so it was never read (the holder was
        # ending with this connection still queued) and the command runs here instead. With
        # one, an unread resize could mean it ran: it must not run twice.
        if not tty:
            raise SessionUnavailableError("the session ended") from None
        reply = b""
    finally:
        sock.close()
    if reply[:1] == b"X":
        return int(reply[1:])
    if reply[:1] == b"F":
        raise SessionUnavailableError("the session declined")
    # The holder went away mid-command: the command may have run, so it must not run again.
    os.write(2, b"nodectl: the session ended before the command finished\n")
    return 1


def wants_tty(argv: list[str]) -> bool:
    """``-t`` among nodectl's own options (not the remote command's, after ``--``)."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    return any(
        a == "--tty" or (a.startswith("-") and not a.startswith("--") and "t" in a[1:]) for a in own
    )


def _send_quietly(sock: _socket.socket, message: bytes) -> None:
    # Not contextlib.suppress: importing contextlib is most of what this module saves.
    try:  # noqa: SIM105
        sock.send(message)
    except OSError:
        pass  # the session is over; the reply is on its way or the holder is gone


def control(config: str, message: bytes) -> bytes:
    """One request/reply with the holder (``S`` stop, ``I`` status)."""
    sock = connect(config)
    try:
        sock.send(message)
        return sock.recv(MESSAGE_MAX_BYTES)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return run_in_session(args)
    except SessionUnavailableError:
        pass
    except KeyboardInterrupt:
        return 130
    # A plain exec with sessions off runs without asyncio and the full CLI (about a third
    # less start-up); anything it does not take, or that did not start there, runs below.
    from agent.cli.nodectl_lean import run_exec

    code = run_exec(args)
    if code is not None:
        return code
    from agent.cli.nodectl import main as run_locally

    return run_locally(args)


if __name__ == "__main__":
    sys.exit(main())
