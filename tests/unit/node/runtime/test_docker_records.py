"""What the Docker adapter makes of Docker's answers (no engine: the pure parsers, and the
adapter on a stub SDK client answering malformed data)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import docker.errors
import pytest
import requests

from agent.aio.bridge import ThreadBridge
from agent.errors import (
    ContainerConflictError,
    ImageConflictError,
    NotFoundError,
    NotRunningError,
    RuntimeOperationError,
    RuntimeUnavailableError,
)
from agent.node.runtime.base import PullProgress
from agent.node.runtime.docker import (
    DockerRuntime,
    _pull_progress,
    _translate,
    image_from_inspect,
    image_from_summary,
)


def test_image_from_summary_drops_placeholder_references() -> None:
    image = image_from_summary(
        {
            "Id": "sha256:aa",
            "RepoTags": ["<none>:<none>"],
            "RepoDigests": ["web@sha256:bb", "<none>@<none>"],
            "Size": 1234,
            "Created": 1_800_000_000,
        }
    )
    assert image.repo_tags == ()
    assert image.repo_digests == ("web@sha256:bb",)
    assert image.size_bytes == 1234
    assert image.created_at == datetime.fromtimestamp(1_800_000_000, UTC)


def test_image_from_inspect_parses_nanosecond_creation_time() -> None:
    image = image_from_inspect(
        {"Id": "sha256:aa", "RepoTags": None, "Created": "2026-12-02T17:28:35.860628742Z"}
    )
    assert (image.repo_tags, image.repo_digests, image.size_bytes) == ((), (), 0)
    assert image.created_at == datetime(2026, 12, 2, 17, 28, 35, 860628, UTC)


def test_pull_progress_takes_byte_counts_where_docker_gives_them() -> None:
    assert _pull_progress(
        {"status": "Downloading", "id": "abc", "progressDetail": {"current": 5, "total": 9}}
    ) == PullProgress("abc", "Downloading", 5, 9)
    assert _pull_progress({"status": "Pulling fs layer", "id": "abc", "progressDetail": {}}) == (
        PullProgress("abc", "Pulling fs layer")
    )
    assert _pull_progress({"status": "Digest: sha256:1"}) == PullProgress("", "Digest: sha256:1")


def _api_error(status: int, message: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError(message, response=response, explanation=message)


@pytest.mark.parametrize(
    ("conflict", "expected"),
    [
        (ContainerConflictError, ContainerConflictError),
        (NotRunningError, NotRunningError),
        (ImageConflictError, ImageConflictError),
    ],
)
def test_a_409_means_what_the_call_says(conflict: type, expected: type) -> None:
    translated = _translate(_api_error(409, "conflict"), "op", conflict)
    assert type(translated) is expected
    assert "conflict" in str(translated)


def test_other_docker_failures() -> None:
    not_found = docker.errors.NotFound("gone", response=requests.Response())
    assert isinstance(_translate(not_found, "op"), NotFoundError)
    refused = _translate(_api_error(500, "boom"), "op")
    assert type(refused) is RuntimeOperationError
    assert "500" in str(refused)
    down = _translate(requests.exceptions.ConnectionError("refused"), "op")
    assert isinstance(down, RuntimeUnavailableError)
    assert isinstance(_translate(docker.errors.DockerException("x"), "op"), RuntimeUnavailableError)
    assert type(_translate(ValueError("odd"), "op")) is RuntimeOperationError


# -- malformed answers, through the adapter ----------------------------------------------------

GOOD_INSPECT: dict[str, Any] = {
    "Id": "c1",
    "Name": "/k8s_main_web",
    "State": {"Status": "running", "Pid": 42, "StartedAt": "2026-12-02T17:28:35.860628742Z"},
    "Config": {"Labels": {}},
}


class _Api:
    """The SDK's low-level client, answering every call with ``answer``."""

    def __init__(self, answer: Any) -> None:
        self._answer = answer

    def _answers(self, *args: Any, **kwargs: Any) -> Any:
        return self._answer

    version = containers = inspect_container = images = inspect_image = exec_inspect = _answers


@dataclass
class _Client:
    api: _Api


@asynccontextmanager
async def _docker_answering(answer: Any) -> AsyncIterator[DockerRuntime]:
    """A DockerRuntime whose client answers every call with ``answer``."""
    bridge = ThreadBridge(1, name="test-docker")
    runtime = DockerRuntime(bridge, "n1", lean_exec=False)  # exec too through the SDK
    runtime._client = _Client(_Api(answer))  # type: ignore[assignment]
    try:
        yield runtime
    finally:
        bridge.close()


def _calls(runtime: DockerRuntime) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """Every call whose answer the adapter parses, with the name its errors carry."""
    return [
        ("ping", runtime.ping),
        ("list containers", runtime.list_containers),
        ("list containers", lambda: runtime.list_container_summaries("u1")),
        ("relist", runtime.list_pod_uids),
        ("inspect container c1", lambda: runtime.inspect_container("c1")),
        ("list images", runtime.list_images),
        ("inspect image busybox:1", lambda: runtime.inspect_image("busybox:1")),
        ("inspect exec e1", lambda: runtime._exec_exit_code("e1")),
        ("inspect c1", lambda: runtime.container_pid("c1")),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        None,  # not even a mapping
        [{"State": "running"}],  # a list entry without its Id
        {"Id": "c1", "Created": "yesterday", "State": {"Pid": "x"}, "Running": {}},
        [{"Id": "c1", "Created": "not a time"}],
    ],
    ids=["none", "no-id", "bad-fields", "bad-time"],
)
async def test_a_malformed_answer_is_an_operation_error_naming_the_call(answer: Any) -> None:
    async with _docker_answering(answer) as runtime:
        failed = 0
        for what, call in _calls(runtime):
            try:
                await call()
            except RuntimeOperationError as exc:
                assert str(exc).startswith(f"{what}: "), str(exc)
                failed += 1
        # The mapping answers fail the calls that expect a list, the list ones those that
        # expect a mapping: nothing but RuntimeOperationError escapes, and the failures count.
        assert failed > 0 and runtime.call_errors == failed


async def test_a_well_formed_answer_still_parses_in_the_translated_call() -> None:
    async with _docker_answering(GOOD_INSPECT) as runtime:
        record = await runtime.inspect_container("c1")
        assert (record.id, record.name, record.running) == ("c1", "k8s_main_web", True)
        assert record.started_at == datetime(2026, 12, 2, 17, 28, 35, 860628, UTC)
        assert await runtime.container_pid("c1") == 42
    async with _docker_answering([{"Id": "c1", "State": "exited", "Labels": {}}]) as runtime:
        assert await runtime.list_pod_uids() == {"": {"c1:exited"}}
        assert runtime.call_errors == 0
