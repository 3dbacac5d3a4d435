"""nodectl with several masters (agent.cli.nodectl_servers, issue 19 item 3): the config's
``server`` as a list or a comma-separated string, ``--server``, when a request moves to the
next master and when it must not (a POST that may have been carried out, a 4xx), ``-v``'s one
line per switch; and over real TLS sockets on loopback: a master that accepts TCP but never
answers, and one that refuses, both passed over for the next within the connect time-out."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.aio.tls import server_context
from agent.cli import nodectl
from agent.cli.nodectl_servers import (
    CONNECT_TIMEOUT_S,
    MAX_SERVERS,
    MasterUnreachableError,
    Servers,
    parse_servers,
)
from agent.errors import CliError, ServerError, StreamRefusedError
from tests.unit.pki.test_master_mark import Pki, pki, tls_server  # noqa: F401  (fixture)

A, B, C = "https://10.0.0.1:6443", "https://10.0.0.2:6443", "https://m3.example:7443"


# -- the config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "urls"),
    [
        (A, (A,)),
        (f"{A},{B}", (A, B)),
        (f" {A} , {B}/ ", (A, B)),
        ([A, B, C], (A, B, C)),
        ([A, A, B], (A, B)),  # the same master twice is one master
    ],
)
def test_server_is_one_url_or_several(value: object, urls: tuple[str, ...]) -> None:
    assert parse_servers(value, "cfg") == urls


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["https://a", 7], "cfg: server must be a URL or a list of URLs"),
        (7, "cfg: server must be a URL or a list of URLs"),
        ([], "cfg: server lists no URL"),
        (f"{A},http://b", "cfg: server 'http://b' must be an https:// URL"),
        ("https://a:99999", "cfg: server 'https://a:99999': Port out of range 0-65535"),
        (",", "cfg: server '' must be an https:// URL"),
        ([f"https://m{i}" for i in range(MAX_SERVERS + 1)], f"(at most {MAX_SERVERS})"),
    ],
)
def test_a_bad_server_is_a_usage_error_naming_it(value: object, message: str) -> None:
    with pytest.raises(CliError) as caught:
        parse_servers(value, "cfg")
    assert message in str(caught.value) and caught.value.code == 2


def _config_file(path: Path, server: str) -> Path:
    path.write_text(f'server = {server}\nca = "x"\nclient_cert = "y"\nclient_key = "z"\n')
    return path


def test_the_config_takes_a_list_and_config_view_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config_file(tmp_path / "conf", f'["{A}", "{B}"]')
    config = nodectl.load_config(str(path))
    assert (config.server, config.servers) == (A, (A, B))
    assert nodectl.main(["--config", str(path), "config", "view", "-o", "json"]) == 0
    assert f'"server": [\n    "{A}",\n    "{B}"\n  ]' in capsys.readouterr().out
    one = nodectl.load_config(str(_config_file(tmp_path / "one", f'"{A}"')))
    assert (one.server, one.servers) == (A, (A,))
    (tmp_path / "none").write_text('ca = "x"\nclient_cert = "y"\nclient_key = "z"\n')
    with pytest.raises(CliError, match="missing server"):
        nodectl.load_config(str(tmp_path / "none"))


def test_dash_dash_server_replaces_the_configs(tmp_path: Path) -> None:
    path = _config_file(tmp_path / "conf", f'"{A}"')
    args = nodectl.parse_args(["--server", f"{B},{C}", "-v", "get", "nodes"])
    config = nodectl._with_server(nodectl.load_config(str(path)), args)
    assert (config.server, config.servers) == (B, (B, C))
    client = nodectl.Client(config, verbose=args.verbose)
    assert client.servers.urls == (B, C) and client.servers.verbose
    with pytest.raises(CliError, match="--server: server 'ftp://x' must be an https:// URL"):
        nodectl._with_server(
            nodectl.load_config(str(path)), nodectl.parse_args(["--server", "ftp://x", "get", "x"])
        )


# -- when a request moves on ----------------------------------------------------------------


class Script:
    """Each attempt's outcome in turn (an exception or an answer), and which master it met."""

    def __init__(self, servers: Servers, *outcomes: object) -> None:
        self.servers = servers
        self.outcomes = list(outcomes)
        self.met: list[str] = []
        self.resets = 0

    def attempt(self) -> object:
        self.met.append(self.servers.current)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def reset(self) -> None:
        self.resets += 1

    def run(self, method: str) -> object:
        return self.servers.request(method, self.attempt, self.reset)


def refused() -> MasterUnreachableError:
    return MasterUnreachableError("cannot reach the master: refused", sent=False)


def broken() -> MasterUnreachableError:
    return MasterUnreachableError("cannot reach the master: reset", sent=True)


def status(code: int) -> ServerError:
    return ServerError(code, "X", "no")


@pytest.mark.parametrize(
    ("method", "failure"),
    [
        ("GET", refused()),
        ("GET", broken()),
        ("GET", status(503)),
        ("GET", status(502)),
        ("GET", status(504)),
        ("PUT", broken()),
        ("DELETE", status(504)),
        ("POST", refused()),  # never sent: safe anywhere
        ("POST", status(503)),  # refused by the master: not carried out
    ],
)
def test_a_failure_moves_to_the_next_master(method: str, failure: CliError) -> None:
    err = io.StringIO()
    servers = Servers((A, B, C), verbose=True, err=err)
    script = Script(servers, failure, {"ok": 1})
    assert script.run(method) == {"ok": 1}
    assert script.met == [A, B] and script.resets == 1
    assert servers.current == B  # the command stays on the master that answered
    (line,) = err.getvalue().splitlines()  # one line per switch
    assert line.startswith(f"nodectl: {A}: ") and line.endswith(f"; switching to {B}")


@pytest.mark.parametrize(
    ("method", "failure"),
    [
        ("POST", broken()),  # may have been carried out: not sent twice
        ("POST", status(502)),
        ("POST", status(504)),
        ("GET", status(500)),  # understood and failed: another master would fail alike
        ("GET", status(404)),
        ("GET", status(403)),
        ("DELETE", status(409)),
    ],
)
def test_what_must_not_be_sent_again_is_not(method: str, failure: CliError) -> None:
    err = io.StringIO()
    servers = Servers((A, B), verbose=True, err=err)
    script = Script(servers, failure, {"ok": 1})
    with pytest.raises(type(failure)) as caught:
        script.run(method)
    assert caught.value is failure and script.met == [A] and err.getvalue() == ""


def test_every_master_failing_is_the_last_error_naming_how_many() -> None:
    servers = Servers((A, B, C))
    script = Script(servers, refused(), broken(), refused(), {"never": 1})
    with pytest.raises(CliError) as caught:
        script.run("GET")
    assert str(caught.value) == "cannot reach the master: refused (tried 3 of 3 masters)"
    assert script.met == [A, B, C]  # each once, no second round
    last = Script(servers, status(503), status(503), status(503))
    with pytest.raises(ServerError):
        last.run("GET")


def test_one_master_is_tried_once_and_says_nothing() -> None:
    err = io.StringIO()
    servers = Servers((A,), verbose=True, err=err)
    with pytest.raises(MasterUnreachableError, match=r"^cannot reach the master: refused$"):
        Script(servers, refused(), {"ok": 1}).run("GET")
    assert servers.connect_timeout_s(30.0) == 30.0  # nowhere else to go: the full wait
    assert Servers((A, B)).connect_timeout_s(30.0) == CONNECT_TIMEOUT_S
    assert err.getvalue() == ""


def test_without_verbose_a_switch_is_silent() -> None:
    err = io.StringIO()
    servers = Servers((A, B), err=err)
    assert Script(servers, refused(), {"ok": 1}).run("GET") == {"ok": 1}
    assert err.getvalue() == ""


# -- over real sockets --------------------------------------------------------------------


@pytest.fixture
def silent() -> Iterator[str]:
    """A master that accepts TCP (the kernel completes the handshake into the backlog) and
    never answers: a stopped process, a hung one."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{probe.getsockname()[1]}"


def test_nodectl_passes_over_a_silent_and_a_refusing_master(
    pki: Pki,  # noqa: F811
    silent: str,
    closed_port: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with tls_server(*pki.master) as server:
        urls = (silent, closed_port, server.url)
        config = nodectl.ClientConfig(urls[0], pki.ca_pem.decode(), *pki.admin, servers=urls)
        client = nodectl.Client(config, verbose=True)
        started = time.monotonic()
        assert client.call("GET", "/v1/nodes") == {}
        waited = time.monotonic() - started
        assert client.servers.current == server.url  # the command stays on it
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"nodectl: {silent}: ") and "timed out" in err[0]
    assert err[1].startswith(f"nodectl: {closed_port}: ") and "refused" in err[1]
    assert err[1].endswith(f"switching to {server.url}")
    # The silent one held the command for the connect time-out, not the 30 s of one master
    # (an upper bound that holds on any machine: the time-out fires, or the test hangs).
    assert waited >= CONNECT_TIMEOUT_S
    assert len(server.received) == 1


def test_a_post_that_reached_a_master_that_then_broke_is_not_sent_again(
    pki: Pki,  # noqa: F811
) -> None:
    """Two masters that read the request and close without answering: the POST went to the
    first only."""
    received: list[list[bytes]] = [[], []]
    with _mute_server(pki, received[0]) as first, _mute_server(pki, received[1]) as second:
        urls = (first, second)
        config = nodectl.ClientConfig(urls[0], pki.ca_pem.decode(), *pki.admin, servers=urls)
        with pytest.raises(CliError, match="cannot reach the master") as caught:
            nodectl.Client(config).call("POST", "/v1/pods", {"kind": "Pod"})
    assert "tried" not in str(caught.value)  # not sent again, so not "tried 2 of 2"
    assert len(received[0]) == 1 and received[0][0].startswith(b"POST /v1/pods ")
    assert received[1] == []


@contextlib.contextmanager
def _mute_server(pki: Pki, received: list[bytes]) -> Iterator[str]:  # noqa: F811
    """A master (its certificate) that reads one request, then closes without an answer."""
    ctx = server_context(*pki.master, alpn=("http/1.1",))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10.0)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            conn.settimeout(10.0)
            with ctx.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.recv(65536))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(10.0)


# -- streams refused by a master ----------------------------------------------------------


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.shut = False

    async def shutdown(self, reason: str, grace_s: float) -> None:
        self.shut = True


def refusing(*statuses: int) -> tuple[list[str], Any]:
    """A session refused with each status in turn (then answered), and where it ran."""
    ran: list[str] = []
    left = list(statuses)

    async def session(conn: Any) -> str:
        ran.append(conn.name)
        if left:
            status = left.pop(0)
            raise StreamRefusedError(status, f"Error from node ({status}): no")
        return f"ran on {conn.name}"

    return ran, session


def opening(servers: Servers) -> list[FakeConn]:
    """``servers.open_master`` made to hand out a fake connection to the current master."""
    opened: list[FakeConn] = []

    async def open_master(ctx: object) -> FakeConn:
        opened.append(FakeConn(servers.current))
        return opened[-1]

    servers.open_master = open_master  # type: ignore[method-assign,assignment]
    return opened


async def test_a_stream_refused_with_a_503_runs_on_the_next_master() -> None:
    err = io.StringIO()
    servers = Servers((A, B, C), verbose=True, err=err)
    opened = opening(servers)
    ran, session = refusing(503, 502)
    first = FakeConn(A)
    answer = await servers.stream(first, None, session, again=True)  # type: ignore[arg-type]
    assert answer == f"ran on {C}" and ran == [A, B, C]
    assert [c.name for c in opened] == [B, C] and all(c.shut for c in opened)
    assert not first.shut  # the caller's: the caller closes it
    assert err.getvalue().splitlines() == [
        f"nodectl: {A}: answered 503; switching to {B}",
        f"nodectl: {B}: answered 502; switching to {C}",
    ]


@pytest.mark.parametrize(
    ("statuses", "again"),
    [
        ((503,), False),  # an exec with stdin: its input may have been read
        ((404,), True),  # the pod is not there: nor on another master
        ((500,), True),
        ((503, 503, 503), True),  # every master refused: the last refusal
    ],
)
async def test_a_stream_is_not_run_again_when_it_must_not_be(
    statuses: tuple[int, ...], again: bool
) -> None:
    servers = Servers((A, B, C))
    opened = opening(servers)
    ran, session = refusing(*statuses)
    with pytest.raises(StreamRefusedError) as caught:
        await servers.stream(FakeConn(A), None, session, again=again)  # type: ignore[arg-type]
    assert caught.value.status == statuses[-1]
    assert len(ran) == len(statuses) if again and statuses[0] == 503 else ran == [A]
    assert all(c.shut for c in opened)


async def test_a_session_holder_runs_a_refused_logs_on_the_next_master(
    pki: Pki,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``nodectl session`` holder runs exec and logs for later invocations: a refused
    stream moves on there as in the invocation."""
    from agent.cli import nodectl_session
    from agent.cli import nodectl_stream as ns

    config = nodectl.ClientConfig(A, pki.ca_pem.decode(), *pki.admin, servers=(A, B))
    holder = nodectl_session.SessionHolder(str(tmp_path / "conf"), config)
    opened = opening(holder.servers)
    ran: list[str] = []

    async def logs(conn: Any, *_: object) -> int:
        ran.append(conn.name)
        if conn.name == A:
            raise StreamRefusedError(503, "Error from node (503): store away")
        return 0

    monkeypatch.setattr(ns, "exec_or_logs", logs)
    args = nodectl.parse_args(["logs", "web"])
    code = await holder._command(FakeConn(A), args, ns.Stdio(), asyncio.Event())  # type: ignore[arg-type]
    assert code == 0 and ran == [A, B]
    assert [c.name for c in opened] == [B] and opened[0].shut
