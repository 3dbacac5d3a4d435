"""The node-agent command line: version, config errors exit 2 naming the problem."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from agent import __version__
from agent.cli import node_agent, node_master, nodectl, nodectl_control
from agent.errors import SessionUnavailableError


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"node-agent {__version__}"


def test_bad_config_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('node_name = "n"\nsandbox_imge = "x"\n')
    assert node_agent.main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f'{config}: unknown key "sandbox_imge" (did you mean "sandbox_image"?)' in err


def test_missing_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        node_agent.main(["run", "--runtime-threads", "many"])
    assert info.value.code == 2
    assert "--runtime-threads" in capsys.readouterr().err


def test_bad_flag_node_name_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert node_agent.main(["run", "--node-name", "Not_Valid", "--config", "/dev/null"]) == 2
    assert "not a valid DNS-1123 subdomain" in capsys.readouterr().err


def test_master_and_nodectl_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_master.main(["version"]) == 0
    assert node_master.main(["run", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    bad = tmp_path / "master.toml"
    bad.write_text('[registration]\ntrust = ["opne"]\n')
    assert node_master.main(["run", "--config", str(bad)]) == 2
    assert (
        "'opne' is not one of open, ip-allowlist, client-cert, token, approval"
        in capsys.readouterr().err
    )
    assert nodectl.main(["--config", str(tmp_path / "none"), "get", "pods"]) == 2
    assert "no nodectl config" in capsys.readouterr().err


def test_master_init_refuses_to_replace_the_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        node_master.main(["init", "--data-dir", str(tmp_path), "--server-name", "127.0.0.1"]) == 0
    )
    out = capsys.readouterr().out
    assert "CA pin:   sha256:" in out and "node-agent run --master https://127.0.0.1:6443" in out
    assert (tmp_path / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    before = (tmp_path / "pki" / "ca.crt").read_bytes()
    assert node_master.main(["init", "--data-dir", str(tmp_path)]) == 2
    assert "refusing to replace the cluster CA" in capsys.readouterr().err
    assert (tmp_path / "pki" / "ca.crt").read_bytes() == before


@pytest.mark.parametrize("memfd", [True, False], ids=["memfd", "tempdir"])
def test_nodectl_loads_the_admin_credentials_without_leaving_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, memfd: bool
) -> None:
    assert node_master.main(["init", "--data-dir", str(tmp_path / "m")]) == 0
    config = nodectl.load_config(str(tmp_path / "m" / "admin.conf"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    if not memfd:
        monkeypatch.delattr("os.memfd_create")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # pick up $TMPDIR
    ctx = nodectl.client_context(config)
    # The certificate chain really was loaded (a broken path or PEM raises in load_cert_chain).
    assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
    assert not nodectl.client_context(config, check_hostname=False).check_hostname
    assert list(scratch.iterdir()) == []
    broken = nodectl.ClientConfig(config.server, config.ca, config.client_cert, "not a key")
    with pytest.raises(ssl.SSLError):
        nodectl.client_context(broken)
    assert list(scratch.iterdir()) == []


def test_the_verified_peer_name_comes_from_ssl_s_own_parse() -> None:
    # nodectl --direct compares this with system:node:<name> instead of importing cryptography.
    from agent.aio.h2conn import _common_name

    peer = {
        "subject": ((("organizationName", "system:nodes"),), (("commonName", "system:node:a"),)),
        "issuer": ((("commonName", "node-agent cluster CA"),),),
    }
    assert _common_name(peer) == "system:node:a"
    assert _common_name({"subject": ((("organizationName", "system:nodes"),),)}) == ""
    assert _common_name({}) == ""  # not verified: ssl parses nothing


def test_issue_user_refuses_bad_names_groups_and_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert node_master.main(["init", "--data-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    base = ["issue-user", "--data-dir", str(tmp_path)]
    for name, message in (
        ("system:admin", "not system*"),
        ("bob,admins", "letters, digits"),
        ("", "letters, digits"),
    ):
        assert node_master.main([*base, name]) == 2
        assert message in capsys.readouterr().err
    assert node_master.main([*base, "bob", "--group", "system:nodes"]) == 2
    assert "group system:nodes: expected one of system:masters, system:viewers" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "users").exists()  # nothing written by a refused request
    assert node_master.main([*base, "bob"]) == 0
    conf = tmp_path / "users" / "bob.conf"
    assert "grants read access" in conf.read_text()
    config = nodectl.load_config(str(conf))
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(config.client_cert.encode())
    assert cert.subject.rfc4514_string() == "O=system:viewers,CN=bob"
    assert node_master.main([*base, "bob"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert node_master.main(["init", "--data-dir", str(tmp_path / "none")]) == 0
    (tmp_path / "none" / "admin.conf").unlink()
    assert node_master.main(["issue-user", "--data-dir", str(tmp_path / "none"), "carol"]) == 2
    assert "cannot read the master's URL" in capsys.readouterr().err


# -- nodectl sessions (connection sharing) ---------------------------------------------------


def test_session_client_finds_the_command_and_the_config_without_argparse() -> None:
    split = nodectl_control.split_command
    assert split(["exec", "pod", "--", "true"]) == (None, "exec")
    assert split(["--config", "/c", "logs", "pod"]) == ("/c", "logs")
    assert split(["--config=/c", "exec", "-it", "pod", "--", "sh"]) == ("/c", "exec")
    # Anything else among the global options: the full parser handles (and explains) it.
    assert split(["--conf", "/c", "exec", "pod"]) == (None, None)
    assert split(["--config"]) == (None, None)
    assert split([]) == (None, None)
    assert nodectl_control.wants_tty(["exec", "-it", "pod", "--", "sh"])
    assert nodectl_control.wants_tty(["exec", "--tty", "pod", "--", "sh"])
    assert not nodectl_control.wants_tty(["exec", "pod", "--", "ls", "-t"])  # the remote's -t
    assert not nodectl_control.wants_tty(["logs", "--tail", "3", "pod"])
    # argv cannot hold NUL (C strings), so NUL separates; undecodable bytes survive.
    fields = ["/c", "exec", "pod", "--", "echo", "caf\u00e9", "\udcff"]
    assert nodectl_control.decode_fields(nodectl_control.encode_fields(fields)) == fields


def test_session_runtime_dir_must_be_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(SessionUnavailableError, match="does not exist"):
        nodectl_control.runtime_dir()
    (tmp_path / "nodectl").mkdir(mode=0o755)
    with pytest.raises(SessionUnavailableError, match="not a 0700 directory"):
        nodectl_control.runtime_dir()
    (tmp_path / "nodectl").chmod(0o700)
    assert nodectl_control.runtime_dir() == str(tmp_path / "nodectl")
    (tmp_path / "nodectl").rmdir()
    (tmp_path / "nodectl").symlink_to(tmp_path)
    with pytest.raises(SessionUnavailableError, match="not a 0700 directory"):
        nodectl_control.runtime_dir()


@pytest.fixture(scope="module")
def admin_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("master")
    assert node_master.main(["init", "--data-dir", str(root)]) == 0
    return root / "admin.conf"


@pytest.mark.parametrize(
    ("argv", "extra_config", "platform", "expected"),
    [
        (["exec", "pod", "--", "true"], "", "linux", ["run", "start"]),
        (["logs", "pod"], "", "linux", ["run", "start"]),
        # May run long: started first, for commands in other terminals.
        (["exec", "-i", "pod", "--", "cat"], "", "linux", ["start", "run"]),
        (["exec", "-t", "pod", "--", "sh"], "", "linux", ["start", "run"]),
        (["logs", "-f", "pod"], "", "linux", ["start", "run"]),
        # Never a session: straight to the node, asked not to, turned off, not Linux.
        (["exec", "--direct", "pod", "--", "true"], "", "linux", ["run"]),
        (["--no-session", "exec", "pod", "--", "true"], "", "linux", ["run"]),
        (["exec", "pod", "--", "true"], "session_idle_timeout_s = 0\n", "linux", ["run"]),
        (["exec", "pod", "--", "true"], "", "darwin", ["run"]),
    ],
)
def test_exec_and_logs_start_a_session_when_they_should(
    admin_conf: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    extra_config: str,
    platform: str,
    expected: list[str],
) -> None:
    from agent.cli import nodectl_stream

    conf = tmp_path / "admin.conf"
    conf.write_text(admin_conf.read_text() + extra_config)
    steps: list[str] = []

    def start(config: str, idle_timeout_s: float, *, wait: bool = True) -> int:
        assert (config, idle_timeout_s, wait) == (str(conf), 600.0, False)
        steps.append("start")
        return 0

    def run(*_args: object, **_kwargs: object) -> int:
        steps.append("run")
        return 0

    monkeypatch.setattr(nodectl, "_start_session", start)
    monkeypatch.setattr(nodectl_stream, "run", run)
    monkeypatch.setattr(nodectl_stream, "resolve_node", lambda *_: "node")
    monkeypatch.setattr("sys.platform", platform)
    assert nodectl.main(["--config", str(conf), *argv]) == 0
    assert steps == expected


def test_a_session_hands_commands_back_at_once_after_the_master_failed_it(
    admin_conf: Path, tmp_path: Path
) -> None:
    import asyncio
    import re

    from agent.cli import nodectl_session as session
    from agent.errors import ConnectionClosedError

    conf = tmp_path / "refused.conf"
    conf.write_text(
        re.sub(r'server = "[^"]*"', 'server = "https://127.0.0.1:1"', admin_conf.read_text())
    )
    holder = session.SessionHolder(str(conf), nodectl.load_config(str(conf)))

    async def twice() -> None:
        with pytest.raises((OSError, ConnectionClosedError)) as first:
            await holder.master()
        assert "a moment ago" not in str(first.value)  # this one really tried
        with pytest.raises(ConnectionClosedError, match="unreachable a moment ago"):
            await holder.master()

    asyncio.run(twice())


def test_a_session_is_started_unasked_only_where_it_can_run_and_none_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    from agent.cli import nodectl_session as session

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    config = str(tmp_path / "admin.conf")
    assert session.start_wanted(config)
    runtime = tmp_path / "nodectl"
    assert runtime.stat().st_mode & 0o777 == 0o700  # made private for the holder
    files = session.SessionFiles.of(config)
    # That start is under way (or failed): the next commands do not start another...
    assert Path(files.attempt).exists()
    assert not session.start_wanted(config)
    # ...until START_RETRY_S later; the holder removes the record once it serves.
    stale = time.time() - session.START_RETRY_S - 1
    os.utime(files.attempt, (stale, stale))
    lock = session.lock_session(files)
    assert lock is not None
    try:
        assert not session.start_wanted(config)  # a holder runs (or is starting)
        assert session.lock_session(files) is None  # and a second one could not
    finally:
        os.close(lock)
    assert session.start_wanted(config)
    other = str(tmp_path / "other.conf")
    runtime.chmod(0o755)  # a holder would refuse to listen here
    assert not session.start_wanted(other)


def test_session_hands_back_what_it_cannot_run_as_the_invocation_would() -> None:
    from agent.cli import nodectl_session

    args = nodectl_session.session_args(["exec", "-i", "pod", "-c", "web", "--", "cat", "-"])
    assert args is not None and (args.stdin, args.container, args.cmd) == (
        True,
        "web",
        ["cat", "-"],
    )
    assert nodectl_session.session_args(["logs", "-f", "pod"]) is not None
    for argv in (
        ["exec", "pod"],  # no command: the invocation prints the usage error
        ["exec", "--direct", "pod", "--", "true"],  # straight to the node: not the session's
        ["port-forward", "pod", "8080"],
        ["get", "pods"],
        ["exec", "--bogus", "pod", "--", "true"],
        ["exec", "--help"],
    ):
        assert nodectl_session.session_args(argv) is None, argv


def test_session_start_refuses_a_bad_idle_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("0", "-5", "soon", "inf"):
        with pytest.raises(SystemExit) as info:
            nodectl.main(["session", "start", "--idle-timeout", bad])
        assert info.value.code == 2
        assert "--idle-timeout" in capsys.readouterr().err


def test_nodectl_config_names_unknown_keys_and_bad_session_timeouts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = 'server = "https://m:6443"\nca = "x"\nclient_cert = "y"\nclient_key = "z"\n'
    conf = tmp_path / "c.conf"
    for extra, complaint in (
        ("sesion_idle_timeout_s = 5\n", "unknown key 'sesion_idle_timeout_s'"),
        ("session_idle_timeout_s = -1\n", "session_idle_timeout_s must be a number"),
        ('session_idle_timeout_s = "10m"\n', "session_idle_timeout_s must be a number"),
        ("session_idle_timeout_s = true\n", "session_idle_timeout_s must be a number"),
    ):
        conf.write_text(base + extra)
        assert nodectl.main(["--config", str(conf), "get", "nodes"]) == 2
        assert complaint in capsys.readouterr().err
    conf.write_text(base + "session_idle_timeout_s = 90\n")
    assert nodectl.load_config(str(conf)).session_idle_timeout_s == 90.0
    conf.write_text(base + "session_idle_timeout_s = 0\n")
    assert nodectl.load_config(str(conf)).session_idle_timeout_s == 0.0
    conf.write_text(base)  # sessions are on unless turned off
    assert nodectl.load_config(str(conf)).session_idle_timeout_s == 600.0
