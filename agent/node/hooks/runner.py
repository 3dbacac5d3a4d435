"""Running lifecycle hooks: one precondition check, or one postStart/preStop handler.

* ``tcpSocket`` and ``httpGet`` go from the agent to the host given, the pod's IP by default
  (the host's for hostNetwork pods), as kubelet's handlers do;
* ``exec`` as a postStart or preStop handler runs in the container itself (the Runtime's exec);
  as a precondition the container does not exist yet, so it runs in a short-lived helper
  container made from the container's own spec — its image, env, volume mounts and resources,
  in the pod's network namespace (``network_of`` the sandbox), never on the host — with the
  command as its entrypoint; the helper is removed after each check, whatever happened;
* ``waitFor`` asks the node's pods (a lookup given by the composition root);
* ``sleep`` sleeps.

Results are :class:`~agent.node.handlers.HandlerResult`; only RuntimeUnavailableError escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.errors import AgentError, ContainerConflictError, RuntimeUnavailableError
from agent.node import handlers
from agent.node.handlers import PASSED, HandlerResult, Sleep, TimedOut, bounded, bounded_text
from agent.node.runtime.base import PULL_IF_NOT_PRESENT, PULL_NEVER, ContainerSpec, Runtime
from agent.types import (
    LABEL_ATTEMPT,
    LABEL_CONTAINER,
    LABEL_KIND,
    LABEL_POD_UID,
    Container,
    ExecAction,
    HTTPGetAction,
    LifecycleAction,
    Pod,
    PreStartHook,
    PullPolicy,
    SleepAction,
    TCPSocketAction,
    WaitForAction,
)

KIND_PRESTART = "prestart"  # the io.node-agent.kind of a precondition's helper container
HELPER_POLL_S = 0.05  # how often a helper container is looked at until it exits
HELPER_LOG_LINES = 5  # of a failed helper's output, for its message
HOOK_NETWORK_TIMEOUT_S = 30.0  # an httpGet/tcpSocket postStart without another bound

# (namespace, pod name, condition) -> the condition's status on this node; None: no such pod
PodConditionLookup = Callable[[str, str, str], bool | None]


@dataclass(frozen=True, slots=True)
class HookTarget:
    """The container a hook is for. ``container_id`` is the running container (postStart,
    preStop); ``spec`` the container's create spec, from which an exec precondition's helper
    is made (the container itself does not exist yet)."""

    pod: Pod
    container: Container
    pod_ip: str
    container_id: str = ""
    spec: ContainerSpec | None = None


class LifecycleHooks(Protocol):
    """What the pod worker needs to run hooks."""

    async def check(self, target: HookTarget, index: int, hook: PreStartHook) -> HandlerResult:
        """One check of the precondition ``hook`` (``lifecycle.preStart[index]``)."""
        ...

    async def run(
        self, target: HookTarget, action: LifecycleAction, timeout_s: float | None
    ) -> HandlerResult:
        """A postStart or preStop handler, bounded by ``timeout_s`` (None: unbounded)."""
        ...


def helper_name(container: str, index: int) -> str:
    """The io.node-agent.container label of a precondition's helper: a dot cannot be in a
    container's name (a DNS label), so it never names an app or init container."""
    return f"{container}.prestart-{index}"


def helper_spec(
    spec: ContainerSpec, container: str, index: int, action: ExecAction
) -> ContainerSpec:
    """The helper container of ``lifecycle.preStart[index]`` made from its container's
    ``spec``: the same image, env, mounts and resources and the pod's network, the command as
    the whole entrypoint (the image's CMD not appended), no published ports. Deterministic
    name, so that one left by a crashed agent is found and removed."""
    name = helper_name(container, index)
    return dataclasses.replace(
        spec,
        name=spec.name.replace(f"{container}_", f"{name}_", 1),
        labels={
            **spec.labels,
            LABEL_KIND: KIND_PRESTART,
            LABEL_CONTAINER: name,
            LABEL_ATTEMPT: "0",
        },
        entrypoint=tuple(action.command),
        cmd=None,
        port_bindings=(),
    )


class Hooks:
    """:class:`LifecycleHooks` on a Runtime and the network."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        pod_condition: PodConditionLookup | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._runtime = runtime
        self._pod_condition = pod_condition
        self._sleep = sleep

    # -- preconditions ---------------------------------------------------------------------

    async def check(self, target: HookTarget, index: int, hook: PreStartHook) -> HandlerResult:
        action = hook.action
        if isinstance(action, WaitForAction):
            return self._wait_for(target, action)
        if isinstance(action, ExecAction):
            return await self._exec_helper(target, index, action, hook.timeout_s)
        return await self._network(target, action, hook.timeout_s)

    def _wait_for(self, target: HookTarget, action: WaitForAction) -> HandlerResult:
        namespace = action.namespace or target.pod.metadata.namespace
        where = f"pod {namespace}/{action.pod}"
        status = (
            self._pod_condition(namespace, action.pod, action.condition.value)
            if self._pod_condition is not None
            else None
        )
        if status is None:
            return HandlerResult.failed(f"no {where} on this node")
        if not status:
            return HandlerResult.failed(f"{where} is not {action.condition.value}")
        return PASSED

    async def _network(
        self, target: HookTarget, action: HTTPGetAction | TCPSocketAction, timeout_s: float
    ) -> HandlerResult:
        port = handlers.resolve_port(action.port, target.container)
        if port is None:
            return HandlerResult.failed(f"no port named {action.port!r} in the container")
        host = action.host or target.pod_ip
        if not host:
            return HandlerResult.failed("the pod has no IP address yet")
        if isinstance(action, TCPSocketAction):
            return await handlers.tcp_socket(host, port, timeout_s, self._sleep)
        return await handlers.http_get(
            host,
            port,
            action.path,
            scheme=action.scheme,
            headers=[(h.name, h.value) for h in action.headers],
            timeout_s=timeout_s,
            sleep=self._sleep,
        )

    async def _exec_helper(
        self, target: HookTarget, index: int, action: ExecAction, timeout_s: float
    ) -> HandlerResult:
        if target.spec is None:
            return HandlerResult.failed("exec precondition without the container's spec")
        spec = helper_spec(target.spec, target.container.name, index, action)
        runtime = self._runtime
        command = bounded_text(" ".join(action.command), 80)
        try:
            pull = (
                PULL_NEVER
                if target.container.image_pull_policy is PullPolicy.NEVER
                else PULL_IF_NOT_PRESENT
            )
            await runtime.ensure_image(spec.image, pull)
            helper_id = await self._create_helper(spec)
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            return HandlerResult.failed(f"command {command!r} could not run: {exc}")
        try:
            await runtime.start_container(helper_id)
            code = await bounded(self._exit_code(helper_id), timeout_s, self._sleep)
            if code == 0:
                return PASSED
            output = await self._tail(helper_id)
            return HandlerResult.failed(
                f"command {command!r} exited with {code}" + (f": {output}" if output else "")
            )
        except TimedOut:
            return HandlerResult.failed(f"command {command!r} timed out after {timeout_s:g}s")
        except RuntimeUnavailableError:
            raise
        except AgentError as exc:
            return HandlerResult.failed(f"command {command!r} could not run: {exc}")
        finally:
            with contextlib.suppress(AgentError):
                await runtime.remove_container(helper_id)

    async def _create_helper(self, spec: ContainerSpec) -> str:
        try:
            return await self._runtime.create_container(spec)
        except ContainerConflictError:
            # Left by an agent that died during a check: removed, and made again.
            uid = spec.labels.get(LABEL_POD_UID)
            for record in await self._runtime.list_containers(uid):
                if record.name == spec.name:
                    await self._runtime.remove_container(record.id)
            return await self._runtime.create_container(spec)

    async def _exit_code(self, helper_id: str) -> int:
        while True:
            record = await self._runtime.inspect_container(helper_id)
            if record.finished_at is not None and not record.running:
                return record.exit_code if record.exit_code is not None else -1
            await self._sleep(HELPER_POLL_S)

    async def _tail(self, helper_id: str) -> str:
        chunks: list[bytes] = []
        with contextlib.suppress(AgentError):
            async for chunk in self._runtime.logs(
                helper_id, follow=False, tail=HELPER_LOG_LINES, timestamps=False, since_s=None
            ):
                chunks.append(chunk)
        return bounded_text(b"".join(chunks).decode("utf-8", "replace"), 120)

    # -- postStart and preStop -------------------------------------------------------------

    async def run(
        self, target: HookTarget, action: LifecycleAction, timeout_s: float | None
    ) -> HandlerResult:
        if isinstance(action, SleepAction):
            return await self._sleep_for(action.seconds, timeout_s)
        if isinstance(action, ExecAction):
            return await handlers.exec_in(
                self._runtime,
                target.container_id,
                action.command,
                timeout_s=timeout_s,
                sleep=self._sleep,
            )
        # httpGet and tcpSocket carry their own bound; a hook's is the only one it has.
        limit = timeout_s if timeout_s is not None else HOOK_NETWORK_TIMEOUT_S
        return await self._network(target, action, limit)

    async def _sleep_for(self, seconds: int, timeout_s: float | None) -> HandlerResult:
        if timeout_s is not None and timeout_s < seconds:
            await self._sleep(timeout_s)
            return HandlerResult.failed(f"sleep {seconds}s cut short after {timeout_s:g}s")
        await self._sleep(seconds)
        return PASSED
