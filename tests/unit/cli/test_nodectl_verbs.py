"""nodectl's kubectl verbs (issue 17 item 5): run's pod, delete's targets, grace period and
its going on past a missing name, apply -f DIR's files, logs --since/--since-time, exec
without ``--`` (its deprecation hint)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import nodectl
from agent.cli import nodectl_stream as ns
from agent.cli import nodectl_verbs as verbs
from agent.errors import CliError, ServerError
from agent.manifest import parse_pod


class FakeClient(nodectl.Client):
    """The master's API as a dict of pods; every call recorded."""

    def __init__(self, pods: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(nodectl.ClientConfig("https://127.0.0.1:6443", "ca", "cert", "key"))
        self.pods = pods or {}
        self.calls: list[tuple[str, str]] = []
        self.posted: list[Any] = []
        self.vanish_after_lists = 0  # delete: the pods go after this many listings

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        self.calls.append((method, path))
        if path.startswith("/v1/pods"):
            if method == "POST":
                self.posted.append(body)
                return body
            if self.vanish_after_lists <= 0:
                self.pods = {k: v for k, v in self.pods.items() if not v.get("deleting")}
            self.vanish_after_lists -= 1
            return {"items": list(self.pods.values())}
        name = path.split("?", maxsplit=1)[0].rsplit("/", 1)[-1]
        if name not in self.pods:
            raise ServerError(404, "NotFound", f"pod default/{name} not found")
        if method == "DELETE":
            self.pods[name]["deleting"] = True
            return {"deleted": name}
        return self.pods[name]


def _pod(name: str, grace: int = 30) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"terminationGracePeriodSeconds": grace},
        "status": {"phase": "Running"},
    }


# -- argument types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("300ms", 0.3), ("0", 0.0), ("2s", 2)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert verbs.go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("5", "missing unit"),
        ("5x", 'unknown unit "x"'),
        ("", "invalid duration"),
        ("m", "invalid duration"),
        ("1..5s", "invalid duration"),
        ("9" * 30 + "h", "invalid duration"),
    ],
)
def test_bad_go_durations_in_gos_words(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        verbs.go_duration(text)


def test_since_rounds_to_whole_seconds_of_at_least_one() -> None:
    assert verbs.since_seconds("90s") == 90
    assert verbs.since_seconds("400ms") == 1
    with pytest.raises(argparse.ArgumentTypeError, match="greater than 0"):
        verbs.since_seconds("-5m")


def test_since_time_is_sent_in_utc() -> None:
    assert verbs.since_time("2026-12-03T15:04:05+01:00") == "2026-12-03T14:04:05.000000Z"
    assert verbs.since_time("2026-12-03t15:04:05.25z") == "2026-12-03T15:04:05.250000Z"
    for bad in ("yesterday", "2026-12-03", "2026-12-03T15:04:05", "x" * 100):
        with pytest.raises(argparse.ArgumentTypeError, match="RFC 3339"):
            verbs.since_time(bad)


def test_logs_since_reaches_the_query_and_both_at_once_is_kubectls_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    query = ns.logs_query(nodectl.parse_args(["logs", "web", "--since=5m"]))
    assert query["sinceSeconds"] == "300"
    query = ns.logs_query(nodectl.parse_args(["logs", "web", "--since-time=2026-12-03T00:00:00Z"]))
    assert query["sinceTime"] == "2026-12-03T00:00:00.000000Z"
    with pytest.raises(SystemExit) as caught:
        nodectl.parse_args(["logs", "web", "--since=1m", "--since-time=2026-12-03T00:00:00Z"])
    assert caught.value.code == 2
    assert "at most one of `sinceTime` or `sinceSeconds`" in capsys.readouterr().err


# -- exec without -- ---------------------------------------------------------------------------


def test_exec_without_dashes_runs_the_command_with_kubectls_hint() -> None:
    args = nodectl.parse_args(["exec", "web", "ls", "/"])
    assert args.cmd == ["ls", "/"]
    assert args.exec_hint is True
    dashed = nodectl.parse_args(["exec", "web", "--", "ls", "-l"])
    assert dashed.cmd == ["ls", "-l"]
    assert not getattr(dashed, "exec_hint", False)
    with pytest.raises(SystemExit):
        nodectl.parse_args(["exec", "web", "ls", "--", "-l"])


def test_the_hint_goes_to_stderr_before_the_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async def session(*args: Any, **kwargs: Any) -> int:
        return 0

    monkeypatch.setattr(ns, "exec_session", session)
    err = tmp_path / "err"
    with err.open("wb") as handle:
        stdio = ns.Stdio(0, 1, handle.fileno())
        args = nodectl.parse_args(["exec", "web", "true"])
        assert asyncio.run(ns.exec_or_logs(None, args, stdio)) == 0  # type: ignore[arg-type]
    assert err.read_bytes() == ns.EXEC_DEPRECATED
    assert b"nodectl exec [POD] -- [COMMAND] instead" in ns.EXEC_DEPRECATED


# -- apply -f DIR ------------------------------------------------------------------------------


def test_a_directory_is_its_manifest_files_in_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.json", "c.yml", "notes.txt", "sub/d.yaml", "sub/deeper/e.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    top = verbs.manifest_files(str(tmp_path), recursive=False)
    assert top == [str(tmp_path / n) for n in ("a.json", "b.yaml", "c.yml")]
    every = verbs.manifest_files(str(tmp_path), recursive=True)
    assert every == [
        str(tmp_path / n) for n in ("a.json", "b.yaml", "c.yml", "sub/d.yaml", "sub/deeper/e.json")
    ]
    assert verbs.manifest_files(str(tmp_path / "a.json"), recursive=True) is None
    assert verbs.manifest_files("-", recursive=True) is None


def _manifest(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }
    )


def test_apply_dir_reports_every_bad_file_with_its_path_and_applies_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml").write_text(_manifest("a"))
    (tmp_path / "b.yaml").write_text("kind: [")
    (tmp_path / "c.json").write_text(_manifest("c"))
    (tmp_path / "d.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: d}\n")
    client = FakeClient()
    args = nodectl.parse_args(["apply", "-f", str(tmp_path)])
    assert verbs.cmd_apply_paths(client, args) == nodectl.EXIT_ERROR
    assert [p["metadata"]["name"] for p in client.posted] == ["a", "c", "d"]
    err = capsys.readouterr().err
    assert str(tmp_path / "b.yaml") in err
    assert "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CliError, match="no objects passed to apply"):
        verbs.cmd_apply_paths(client, nodectl.parse_args(["apply", "-f", str(empty)]))


# -- delete ------------------------------------------------------------------------------------


def _delete(*argv: str) -> argparse.Namespace:
    return nodectl.parse_args(["delete", *argv])


def test_delete_names_every_form() -> None:
    def names(*argv: str) -> list[tuple[str, str]]:
        return [(t.kind, t.name) for t in verbs.delete_targets(_delete(*argv))]

    assert names("pod", "a", "b") == [("pods", "a"), ("pods", "b")]
    assert names("pod/a", "po/b", "node/n1") == [("pods", "a"), ("pods", "b"), ("nodes", "n1")]
    for bad in (("pods",), (), ("csr", "x"), ("pod", "a", "-f", "x.yaml")):
        with pytest.raises(CliError) as caught:
            verbs.delete_targets(_delete(*bad))
        assert caught.value.code == nodectl.EXIT_USAGE


def test_delete_f_takes_the_pods_of_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(_manifest("a") + "\n")
    (tmp_path / "b.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: other}\n---\n" + _manifest("c")
    )
    targets = verbs.delete_targets(_delete("-f", str(tmp_path)))
    assert [(t.namespace, t.name) for t in targets] == [
        ("default", "a"),
        ("other", "b"),
        ("default", "c"),
    ]
    (tmp_path / "x.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n")
    with pytest.raises(CliError, match="not a Pod or Node"):
        verbs.delete_targets(_delete("-f", str(tmp_path / "x.yaml")))


@pytest.mark.parametrize(
    ("argv", "grace"),
    [((), None), (("--now",), 1), (("--grace-period=0",), 1), (("--grace-period=7",), 7)],
)
def test_grace_periods_as_kubectl_sends_them(argv: tuple[str, ...], grace: int | None) -> None:
    assert verbs.grace_period(_delete("pod", "a", *argv)) == grace


def test_now_and_a_grace_period_together_are_refused() -> None:
    with pytest.raises(CliError, match="cannot be specified together"):
        verbs.grace_period(_delete("pod", "a", "--now", "--grace-period=5"))


def test_delete_goes_on_past_a_missing_name_and_waits_for_the_others(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("agent.cli.nodectl_verbs.time.sleep", lambda _: None)
    client = FakeClient({"a": _pod("a"), "c": _pod("c")})
    client.vanish_after_lists = 2
    code = verbs.cmd_delete(client, _delete("pod", "a", "b", "c", "--grace-period=3"))
    assert code == nodectl.EXIT_ERROR
    out, err = capsys.readouterr()
    assert out == 'pod "a" deleted\npod "c" deleted\n'
    assert err == 'Error from server (NotFound): pods "b" not found\n'
    deletes = [path for method, path in client.calls if method == "DELETE"]
    assert deletes == [
        "/v1/namespaces/default/pods/a?gracePeriodSeconds=3",
        "/v1/namespaces/default/pods/c?gracePeriodSeconds=3",
    ]
    assert sum(1 for _, path in client.calls if path == "/v1/pods") == 3  # until both gone
    assert client.pods == {}


def test_ignore_not_found_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient()
    assert verbs.cmd_delete(client, _delete("pod", "x", "--ignore-not-found")) is None
    assert capsys.readouterr() == ("", "")


def test_the_wait_is_bounded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [0.0]
    monkeypatch.setattr("agent.cli.nodectl_verbs.time.monotonic", lambda: now[0])
    monkeypatch.setattr(
        "agent.cli.nodectl_verbs.time.sleep", lambda s: now.__setitem__(0, now[0] + s)
    )
    client = FakeClient({"a": _pod("a")})
    client.vanish_after_lists = 10**6
    with pytest.raises(CliError, match="timed out waiting for the condition on pods/a"):
        verbs.cmd_delete(client, _delete("pod", "a", "--timeout=5s"))
    assert now[0] == pytest.approx(5.0)
    # --wait=false: returns at once.
    client = FakeClient({"b": _pod("b")})
    client.vanish_after_lists = 10**6
    assert verbs.cmd_delete(client, _delete("pod", "b", "--wait=false")) is None
    assert ("GET", "/v1/pods") not in client.calls


# -- run ---------------------------------------------------------------------------------------


def _run(*argv: str) -> argparse.Namespace:
    return nodectl.parse_args(["run", *argv])


def test_run_builds_kubectls_pod_and_it_parses() -> None:
    args = _run(
        "web", "--image=busybox", "--env", "A=1", "--port=8080", "--restart=Never", "--",
        "sleep", "60",
    )  # fmt: skip
    manifest = verbs.run_manifest(args)
    assert manifest["metadata"]["labels"] == {"run": "web"}
    container = manifest["spec"]["containers"][0]
    assert container["name"] == "web"
    assert container["args"] == ["sleep", "60"]
    assert container["env"] == [{"name": "A", "value": "1"}]
    assert container["ports"] == [{"containerPort": 8080}]
    assert manifest["spec"]["restartPolicy"] == "Never"
    parse_pod(manifest, source="test")
    command = verbs.run_manifest(_run("x", "--image=b", "--command", "-l", "a=b,c=d", "--", "ls"))
    assert command["spec"]["containers"][0]["command"] == ["ls"]
    assert command["metadata"]["labels"] == {"a": "b", "c": "d"}
    attached = verbs.run_manifest(_run("x", "--image=b", "-it", "--", "top"))
    assert attached["spec"]["containers"][0]["command"] == verbs.KEEPER


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("x",), '"image" not set'),
        (("x", "--image=b", "--rm"), "--rm should only be used for attached containers"),
        (("x", "--image=b", "-t"), "-i/--stdin is required"),
        (("x", "--image=b", "-i", "--dry-run"), "--dry-run can't be used"),
        (("x", "--image=b", "--env", "NOVALUE"), "invalid env"),
        (("x", "--image=b", "-l", "novalue"), "invalid label spec"),
        (("x", "--image=b", "--port=0"), "--port 0"),
    ],
)
def test_run_refuses_as_kubectl(argv: tuple[str, ...], words: str) -> None:
    with pytest.raises(CliError, match=words) as caught:
        verbs.cmd_run(FakeClient(), _run(*argv))
    assert caught.value.code == nodectl.EXIT_USAGE


def test_run_creates_only(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeClient({"web": _pod("web")})
    with pytest.raises(ServerError, match=r'\(AlreadyExists\): pods "web" already exists'):
        verbs.cmd_run(client, _run("web", "--image=busybox"))
    client = FakeClient()
    assert verbs.cmd_run(client, _run("new", "--image=busybox")) is None
    assert capsys.readouterr().out == "pod/new created\n"
    assert client.posted[0]["metadata"]["namespace"] == "default"


def test_run_dry_run_client_prints_the_pod_and_sends_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    client = FakeClient()
    verbs.cmd_run(client, _run("web", "--image=busybox", "--dry-run=client", "-o", "json"))
    assert json.loads(capsys.readouterr().out)["spec"]["containers"][0]["image"] == "busybox"
    assert client.calls == []


def test_waiting_for_running_names_the_status_when_it_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr("agent.cli.nodectl_verbs.time.monotonic", lambda: now[0])
    monkeypatch.setattr(
        "agent.cli.nodectl_verbs.time.sleep", lambda s: now.__setitem__(0, now[0] + s)
    )
    pod = _pod("web")
    pod["status"] = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "web", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no"}}}
        ],
    }
    with pytest.raises(CliError, match=r"after 3s .* STATUS ImagePullBackOff \(no\)"):
        verbs.wait_running(FakeClient({"web": pod}), "default", "web", 3.0)
    pod["status"] = {"phase": "Failed"}
    with pytest.raises(CliError, match="ended before the session could start: STATUS Failed"):
        verbs.wait_running(FakeClient({"web": pod}), "default", "web", 3.0)
    pod["status"] = {"phase": "Running", "containerStatuses": [{"state": {"running": {}}}]}
    verbs.wait_running(FakeClient({"web": pod}), "default", "web", 3.0)


def test_wait_is_a_flag_as_kubectl_takes_it(capsys: pytest.CaptureFixture[str]) -> None:
    # pflag's booleans: the next word is never the flag's value.
    args = _delete("--wait", "pod", "a")
    assert args.wait is True
    assert [(t.kind, t.name) for t in verbs.delete_targets(args)] == [("pods", "a")]
    assert _delete("pod", "a", "--wait=false").wait is False
    assert _delete("pod", "a", "--wait=TRUE").wait is True
    assert _delete("pod", "a").wait is True
    with pytest.raises(SystemExit) as exited:
        _delete("pod", "a", "--wait=maybe")
    assert exited.value.code == 2
    assert 'invalid boolean flag value: "maybe": true or false' in capsys.readouterr().err


def test_a_directory_walk_follows_no_link_to_a_directory_and_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link back up sent every file 41 times (until ELOOP), a link out of the directory sent
    the files of wherever it pointed: links to directories are not walked (kubectl's walk),
    a link to a file is read as kubectl reads it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("")
    top = tmp_path / "dir"
    (top / "sub").mkdir(parents=True)
    (top / "a.yaml").write_text("")
    (top / "sub" / "up").symlink_to("..")
    (top / "sub" / "out").symlink_to(outside)
    (top / "sub" / "linked.yaml").symlink_to(outside / "secret.yaml")
    deep = top / "d" / "e"
    deep.mkdir(parents=True)
    (deep / "z.json").write_text("")
    found = verbs.manifest_files(str(top), recursive=True)
    assert found == [str(top / "a.yaml"), str(deep / "z.json"), str(top / "sub" / "linked.yaml")]
    monkeypatch.setattr(verbs, "MANIFEST_FILES_MAX", 2)
    (top / "b.yaml").write_text("")
    with pytest.raises(CliError) as caught:
        verbs.manifest_files(str(top), recursive=True)
    assert "more than 2 manifest files" in str(caught.value)
