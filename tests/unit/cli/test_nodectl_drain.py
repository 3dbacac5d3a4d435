"""``nodectl drain``'s client side (agent.cli.nodectl_drain) against a master answering from
memory: the order of its requests (cordon, the pod list, a dry run of every eviction, then the
evictions), the refusal that evicts nothing and lists the pods, static pods left with a warning,
the wait, the time-out, and --timeout's grammar."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from agent.cli import nodectl, nodectl_drain
from agent.errors import CliError, ServerError

MIRROR = {"node-agent.io/mirror": "true"}


def pod(name: str, node: str = "n1", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", **meta}, "spec": {"nodeName": node}}


class Master:
    """Answers drain's requests; ``pinned`` pods are refused (409) unless forced."""

    def __init__(self, pods: list[dict[str, Any]], pinned: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.pinned = pinned
        self.calls: list[tuple[str, str]] = []
        self.stay: set[str] = set()  # evicted pods that never leave (the time-out test)

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        self.calls.append((method, path))
        if path == "/v1/nodes/n1":
            return {"metadata": {"name": "n1"}, "spec": {"unschedulable": False}}
        if path == "/v1/nodes/n1/cordon":
            return {}
        if path == "/v1/pods":
            return {"items": list(self.pods.values())}
        name = path.split("/")[5]
        if "/eviction" in path:
            assert isinstance(body, dict)
            if name in self.pinned and not body.get("force"):
                message = f"pod default/{name} is pinned to node n1 by its spec.nodeName"
                raise ServerError(409, "Conflict", message)
            action = "deleted" if name in self.pinned else "moved"
            if "dryRun" not in path and name not in self.stay:
                self.pods.pop(name)
            return {"action": action}
        if name in self.pods:
            return self.pods[name]
        raise ServerError(404, "NotFound", "gone")


def args(*argv: str) -> argparse.Namespace:
    return nodectl.parse_args(["drain", "n1", *argv])


def test_a_pinned_pod_refuses_the_drain_and_nothing_is_evicted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    master = Master([pod("placed"), pod("pinned"), pod("other", node="n2")], pinned={"pinned"})
    assert nodectl_drain.cmd_drain(master, args()) == 1  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out == "node/n1 cordoned\n"
    assert (
        'error: unable to drain node "n1" due to error: cannot evict Pods that cannot move '
        "(use --force to override): default/pinned" in err
    )
    assert "pinned to node n1 by its spec.nodeName" in err and "stays cordoned" in err
    evictions = [path for _, path in master.calls if "/eviction" in path]
    assert evictions and all(path.endswith("?dryRun=All") for path in evictions)
    assert not any("other" in path for _, path in master.calls)  # another node's pod


def test_static_pods_need_the_flag_then_stay_with_a_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pods = [pod("placed"), pod("static-n1", annotations=MIRROR)]
    assert nodectl_drain.cmd_drain(Master(pods), args()) == 1  # type: ignore[arg-type]
    assert "cannot delete static Pods" in capsys.readouterr().err
    master = Master(pods)
    assert nodectl_drain.cmd_drain(master, args("--ignore-daemonsets")) == 0  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "node/n1 cordoned",
        "evicting pod default/placed (placed again by the scheduler)",
        "pod/placed evicted",
        "node/n1 drained",
    ]
    assert "Warning: ignoring static Pods" in err and "default/static-n1" in err
    assert "static-n1" in master.pods  # never evicted


def test_force_deletes_the_pinned_pod_and_the_grace_period_goes_along(
    capsys: pytest.CaptureFixture[str],
) -> None:
    master = Master([pod("pinned")], pinned={"pinned"})
    sent: list[object] = []
    call = master.call

    def spy(method: str, path: str, body: object | None = None) -> Any:
        if "/eviction" in path:
            sent.append(body)
        return call(method, path, body)

    master.call = spy  # type: ignore[method-assign]
    assert nodectl_drain.cmd_drain(master, args("--force", "--grace-period", "0")) == 0  # type: ignore[arg-type]
    assert "evicting pod default/pinned (deleted)" in capsys.readouterr().out
    assert sent == [{"force": True, "gracePeriodSeconds": 1}] * 2  # dry run, then for real


def test_dry_run_changes_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    master = Master([pod("placed")])
    assert nodectl_drain.cmd_drain(master, args("--dry-run")) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "node/n1 cordoned (dry run)",
        "evicting pod default/placed (placed again by the scheduler) (dry run)",
        "node/n1 drained (dry run)",
    ]
    assert ("POST", "/v1/nodes/n1/cordon") not in master.calls and "placed" in master.pods


def test_a_pod_that_stays_times_the_drain_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(nodectl_drain, "POLL_S", 0.0)
    master = Master([pod("placed")])
    master.stay = {"placed"}
    with pytest.raises(CliError, match=r"timed out after 0\.05s waiting for default/placed"):
        nodectl_drain.cmd_drain(master, args("--timeout", "0.05"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"), [("0", 0.0), ("90", 90.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0)]
)
def test_timeouts_as_kubectl_writes_them(text: str, seconds: float) -> None:
    assert nodectl_drain.parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "1h30", "-1"])
def test_a_bad_timeout_is_a_usage_error_before_anything(text: str) -> None:
    master = Master([pod("placed")])
    with pytest.raises(CliError) as caught:
        nodectl_drain.cmd_drain(master, args("--timeout", text))  # type: ignore[arg-type]
    assert caught.value.code == 2 and "--timeout" in str(caught.value)
    assert master.calls == []
