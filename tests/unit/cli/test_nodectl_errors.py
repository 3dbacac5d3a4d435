"""nodectl's errors as kubectl's (issue 17 item 8): the master's refusals in one shape
(``Error from server (NotFound): pods "x" not found``), a closed pipe ends quietly, ``-t``
without a terminal says so and goes on without one, a busy local port is named, an unknown
resource type lists the known ones — never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

from agent.cli import nodectl
from agent.cli import nodectl_stream as ns
from agent.cli.nodectl_servers import Servers
from agent.errors import CliError, ServerError
from tests.helpers import REPO_ROOT


class _Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = io.BytesIO(body)

    def read(self) -> bytes:
        return self._body.read()


class _Connection:
    """What ``http.client.HTTPSConnection`` gives ``Client.call``: one canned answer."""

    def __init__(self, status: int, body: bytes) -> None:
        self.answer = _Answer(status, body)

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        pass

    def getresponse(self) -> _Answer:
        return self.answer


def _client(status: int, message: str) -> nodectl.Client:
    client = nodectl.Client(nodectl.ClientConfig("https://127.0.0.1:6443", "ca", "cert", "key"))
    body = f'{{"error": {{"code": {status}, "message": "{message}"}}}}'.encode()
    client._conn = _Connection(status, body)
    return client


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (400, "BadRequest"),
        (403, "Forbidden"),
        (404, "NotFound"),
        (409, "Conflict"),
        (413, "RequestEntityTooLarge"),
        (422, "Invalid"),
        (429, "TooManyRequests"),
        (503, "ServiceUnavailable"),
        (418, "HTTP 418"),
    ],
)
def test_a_refusal_is_in_kubectls_shape(status: int, reason: str) -> None:
    with pytest.raises(ServerError) as caught:
        _client(status, "what went wrong").call("GET", "/v1/pods")
    assert str(caught.value) == f"Error from server ({reason}): what went wrong"
    assert caught.value.status == status


def _args(**values: Any) -> argparse.Namespace:
    return argparse.Namespace(namespace="default", **values)


@pytest.mark.parametrize(
    ("command", "kind", "expected"),
    [
        (nodectl.cmd_describe, "pod", 'Error from server (NotFound): pods "x" not found'),
        (nodectl.cmd_describe, "no", 'Error from server (NotFound): nodes "x" not found'),
        (nodectl.cmd_delete, "pods", 'Error from server (NotFound): pods "x" not found'),
        (nodectl.cmd_delete, "node", 'Error from server (NotFound): nodes "x" not found'),
    ],
)
def test_a_missing_object_is_named_as_kubectl_names_it(
    command: Any, kind: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = _client(404, "pod default/x not found")
    if command is nodectl.cmd_delete:
        # delete goes on past a missing name, printing kubectl's words, and exits 1 at the end.
        assert command(client, _delete_args(kind=kind, names=["x"])) == nodectl.EXIT_ERROR
        assert capsys.readouterr().err == expected + "\n"
        return
    with pytest.raises(ServerError) as caught:
        command(client, _args(kind=kind, name="x"))
    assert str(caught.value) == expected


def _delete_args(**values: Any) -> argparse.Namespace:
    args = nodectl.parse_args(["delete"])
    for key, value in values.items():
        setattr(args, key, value)
    return args


def test_a_missing_node_for_a_node_verb(capsys: pytest.CaptureFixture[str]) -> None:
    client = _client(404, "node 'x' not found")
    with pytest.raises(ServerError, match=r'^Error from server \(NotFound\): nodes "x" not found'):
        nodectl.cmd_node_action(client, _args(name="x", command="cordon"))


def test_main_prints_a_server_error_as_is(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(client: object, args: object) -> None:
        raise ServerError(404, "NotFound", 'pods "x" not found')

    monkeypatch.setattr(
        nodectl, "load_config", lambda _: nodectl.ClientConfig("https://h", "", "", "")
    )
    monkeypatch.setitem(nodectl.COMMANDS, "get", refuse)
    assert nodectl.main(["get", "pods", "x"]) == 1
    assert capsys.readouterr().err == 'Error from server (NotFound): pods "x" not found\n'


@pytest.mark.parametrize("spec", ["pods,nodes", "csr", "deployments"])
def test_describe_and_delete_take_one_known_kind(spec: str) -> None:
    with pytest.raises(CliError) as caught:
        nodectl.cmd_describe(_client(200, ""), _args(kind=spec, name="x"))
    assert caught.value.code == nodectl.EXIT_USAGE
    with pytest.raises(CliError) as caught:
        nodectl.cmd_delete(_client(200, ""), _delete_args(kind=spec, names=["x"]))
    assert caught.value.code == nodectl.EXIT_USAGE


def test_an_unknown_resource_type_lists_the_known_ones() -> None:
    with pytest.raises(CliError) as caught:
        nodectl._kinds("deployments")
    message = str(caught.value)
    assert '"deployments"' in message
    for known in ("nodes", "pods", "csr"):
        assert known in message
    assert caught.value.code == nodectl.EXIT_USAGE


CLOSED_PIPE = textwrap.dedent(
    """
    import sys
    from agent.cli import nodectl

    nodectl.load_config = lambda _: nodectl.ClientConfig("https://127.0.0.1:1", "", "", "")
    def many(client, args):
        for i in range(100_000):
            print(f"node-{i}   Ready   Registered   open   0.1.0")
    nodectl.COMMANDS["get"] = many
    sys.exit(nodectl.main(["get", "nodes"]))
    """
)


def test_a_closed_pipe_ends_quietly() -> None:
    """``nodectl get nodes | head -1``: no BrokenPipeError, no "Exception ignored", the exit
    status a coreutils tool ended by SIGPIPE has."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLOSED_PIPE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"node-0 ")
    proc.stdout.close()  # as head does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == nodectl.EXIT_SIGPIPE
    assert err == b""


def test_tty_without_a_terminal_says_so_and_runs_without_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    async def exec_session(*args: Any, **kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(ns, "exec_session", exec_session)
    stdin_r, stdin_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        stdio = ns.Stdio(stdin_r, 1, err_w)
        args = argparse.Namespace(
            command="exec",
            namespace="default",
            pod="p",
            container=None,
            cmd=["cat"],
            stdin=True,
            tty=True,
        )
        assert asyncio.run(ns.exec_or_logs(None, args, stdio)) == 0  # type: ignore[arg-type]
        os.close(err_w)
        err_w = -1
        with os.fdopen(err_r, "rb") as err:
            err_r = -1
            message = err.read()
    finally:
        for fd in (stdin_r, stdin_w, err_r, err_w):
            if fd >= 0:
                os.close(fd)
    assert message == (b"Unable to use a TTY - input is not a terminal or the right kind of file\n")
    assert seen["tty"] is False and seen["stdin"] is True


def test_a_busy_local_port_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        pairs = [ns.PortPair(port, 80)]
        session = ns.port_forward_session(None, "default", "p", pairs, "127.0.0.1")  # type: ignore[arg-type]
        with pytest.raises(CliError) as caught:
            asyncio.run(session)
    message = str(caught.value)
    assert message.startswith(f"Unable to listen on port {port}: ")
    assert "address already in use" in message


def test_a_session_ends_a_command_whose_output_closed_as_a_local_run_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``nodectl logs POD | head -1`` run by a session holder: the exit status of a local run
    (141), nothing on stderr."""
    from agent.cli import nodectl_session as session

    async def closed(*args: Any, **kwargs: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(ns, "exec_or_logs", closed)
    err_r, err_w = os.pipe()
    try:
        stdio = ns.Stdio(0, 1, err_w)
        args = argparse.Namespace(command="logs", tty=False)
        # The holder's masters (one: the command runs once) and TLS context (not used here).
        holder = SimpleNamespace(servers=Servers(("https://127.0.0.1:6443",)), context=None)
        command = session.SessionHolder._command(holder, None, args, stdio, asyncio.Event())  # type: ignore[arg-type]
        assert asyncio.run(command) == nodectl.EXIT_SIGPIPE
        os.close(err_w)
        err_w = -1
        assert os.read(err_r, 100) == b""
    finally:
        for fd in (err_r, err_w):
            if fd >= 0:
                os.close(fd)
