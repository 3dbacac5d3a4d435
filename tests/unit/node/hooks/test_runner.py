"""agent.node.hooks.runner: one precondition check or one postStart/preStop handler, on the
FakeRuntime and loopback sockets."""

from __future__ import annotations

import asyncio

from agent.manifest import parse_pod
from agent.node.hooks.runner import KIND_PRESTART, Hooks, HookTarget, helper_spec
from agent.node.runtime.base import ContainerSpec
from agent.node.runtime.fake import FakeRuntime, Script
from agent.types import (
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_NODE,
    LABEL_POD_UID,
    ExecAction,
    HTTPGetAction,
    PreStartHook,
    SleepAction,
    TCPSocketAction,
)

POD = parse_pod(
    {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
        "spec": {
            "containers": [
                {"name": "c", "image": "img:1", "ports": [{"containerPort": 80, "name": "web"}]}
            ]
        },
    },
    source="test",
)
CONTAINER = POD.spec.containers[0]
BASE = ContainerSpec(
    name="c_p_ns_u1_0",
    image="img:1",
    labels={LABEL_NODE: "n1", LABEL_POD_UID: "u1", LABEL_CONTAINER: "c", LABEL_KIND: "app"},
    cmd=("serve",),
    env={"A": "1"},
)


def test_the_helper_is_the_container_with_the_command_as_entrypoint() -> None:
    spec = helper_spec(BASE, "c", 2, ExecAction(("check", "db")))
    assert spec.name == "c.prestart-2_p_ns_u1_0"
    assert spec.labels[LABEL_KIND] == KIND_PRESTART
    assert spec.labels[LABEL_CONTAINER] == "c.prestart-2"
    assert spec.entrypoint == ("check", "db") and spec.cmd is None
    assert spec.env == {"A": "1"}


async def test_a_helper_left_by_a_crashed_agent_is_replaced() -> None:
    runtime = FakeRuntime("n1")
    runtime.add_image("img:1")
    action = ExecAction(("check",))
    runtime.script_command(["check"], Script(exit_code=0))
    leftover = await runtime.create_container(helper_spec(BASE, "c", 0, action))
    hooks = Hooks(runtime)
    target = HookTarget(POD, CONTAINER, "10.0.0.9", spec=BASE)
    result = await hooks.check(target, 0, PreStartHook(action, timeout_s=5))
    assert result.ok
    assert await runtime.list_containers("u1") == []  # the leftover and the helper: gone
    assert leftover not in {r.id for r in await runtime.list_containers()}


async def test_an_exec_precondition_whose_image_is_missing_fails_with_the_reason() -> None:
    runtime = FakeRuntime("n1")  # no image: IfNotPresent pulls, the fake registry has none
    hooks = Hooks(runtime)
    target = HookTarget(POD, CONTAINER, "10.0.0.9", spec=BASE)
    result = await hooks.check(target, 0, PreStartHook(ExecAction(("check",))))
    assert not result.ok and "could not run" in result.message


async def test_network_checks_default_to_the_pod_ip_and_resolve_named_ports() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hooks = Hooks(FakeRuntime("n1"))
    target = HookTarget(POD, CONTAINER, "127.0.0.1")
    assert (await hooks.check(target, 0, PreStartHook(TCPSocketAction(port)))).ok
    server.close()
    await server.wait_closed()
    unnamed = await hooks.check(target, 0, PreStartHook(TCPSocketAction("db")))
    assert unnamed.message == "no port named 'db' in the container"
    no_ip = HookTarget(POD, CONTAINER, "")
    assert (await hooks.check(no_ip, 0, PreStartHook(HTTPGetAction(80)))).message == (
        "the pod has no IP address yet"
    )


async def test_a_sleep_hook_is_cut_short_by_its_bound() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    hooks = Hooks(FakeRuntime("n1"), sleep=sleep)
    target = HookTarget(POD, CONTAINER, "10.0.0.9", container_id="x")
    assert (await hooks.run(target, SleepAction(3), None)).ok
    cut = await hooks.run(target, SleepAction(30), 8)
    assert not cut.ok and cut.message == "sleep 30s cut short after 8s"
    assert slept == [3, 8]


async def test_an_exec_hook_runs_in_the_container() -> None:
    runtime = FakeRuntime("n1")
    runtime.add_image("img:1")
    container_id = await runtime.create_container(BASE)
    await runtime.start_container(container_id)
    runtime.script_command(["drain"], Script(exit_code=0))
    hooks = Hooks(runtime)
    target = HookTarget(POD, CONTAINER, "10.0.0.9", container_id=container_id)
    assert (await hooks.run(target, ExecAction(("drain",)), 30)).ok
    assert len(runtime.sessions_of(container_id)) == 1
