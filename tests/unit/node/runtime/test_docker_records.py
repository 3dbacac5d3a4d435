"""What the Docker adapter makes of Docker's answers (pure: no engine)."""

from __future__ import annotations

from datetime import UTC, datetime

import docker.errors
import pytest
import requests

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
