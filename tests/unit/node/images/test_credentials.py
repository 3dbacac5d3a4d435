"""Registry credentials from a Docker config file: parsed with our errors, bounded, re-read
when the file changes, authoritative once configured, never shown."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.aio.bridge import ThreadBridge
from agent.errors import RegistryCredentialsError
from agent.node.images.credentials import (
    CREDENTIALS_FILE_MAX_BYTES,
    DockerConfigCredentials,
    EngineDefaultCredentials,
    parse_docker_config,
)
from agent.node.runtime.base import ANONYMOUS, RegistryAuth


def _auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def bridge() -> AsyncIterator[ThreadBridge]:
    bridge = ThreadBridge(1, name="test-credentials")
    yield bridge
    bridge.close()


def write(path: Path, data: object) -> None:
    path.write_text(json.dumps(data))
    path.chmod(0o600)


async def test_the_registry_of_an_image_picks_its_entry(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    path = tmp_path / "config.json"
    write(
        path,
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _auth("hub", "pw1")},
                "registry.example.com:5000": {"auth": _auth("corp", "pw:with:colons")},
                "ghcr.io": {"identitytoken": "tok"},
            }
        },
    )
    creds = DockerConfigCredentials(path, bridge)
    hub = await creds.auth_for("busybox:1")
    assert hub is not None
    assert (hub.username, hub.password, hub.server_address) == (
        "hub",
        "pw1",
        "https://index.docker.io/v1/",
    )
    corp = await creds.auth_for("registry.example.com:5000/team/app:1")
    assert corp is not None and (corp.username, corp.password) == ("corp", "pw:with:colons")
    ghcr = await creds.auth_for("ghcr.io/org/app")
    assert ghcr is not None and ghcr.identity_token == "tok"
    # Configured: the file is authoritative, another registry is pulled anonymously.
    assert await creds.auth_for("127.0.0.1:1/nope:1") == ANONYMOUS
    assert "pw1" not in repr(hub)


async def test_a_changed_file_is_read_again(tmp_path: Path, bridge: ThreadBridge) -> None:
    path = tmp_path / "config.json"
    write(path, {"auths": {"r.example": {"auth": _auth("a", "1")}}})
    creds = DockerConfigCredentials(path, bridge)
    first = await creds.auth_for("r.example/app")
    assert first is not None and first.username == "a"
    write(path, {"auths": {"r.example": {"auth": _auth("bee", "2")}}})
    os.utime(path, ns=(1, 10**18))  # a new mtime whatever the filesystem's resolution
    second = await creds.auth_for("r.example/app")
    assert second is not None and second.username == "bee"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON (line 1)"),
        (b"\xff\xfe", "not UTF-8 text"),
        (b"[]", "expected a JSON object"),
        (b'{"auths": []}', "'auths' must be an object"),
        (b'{"auths": {"r": 1}}', 'auths["r"] must be an object'),
        (b'{"auths": {"r": {"auth": "!!!"}}}', 'auths["r"].auth is not base64 text'),
        (b'{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}', "not base64 of USER:PASSWORD"),
        (b'{"auths": {"r": {"username": 5}}}', 'auths["r"].username must be a string'),
    ],
)
def test_malformed_files_name_the_problem(content: bytes, problem: str) -> None:
    with pytest.raises(RegistryCredentialsError) as caught:
        parse_docker_config(content, "image_credentials_file /x.json")
    assert problem in str(caught.value)
    assert str(caught.value).startswith("image_credentials_file /x.json: ")


def test_a_malformed_json_error_does_not_quote_the_file() -> None:
    with pytest.raises(RegistryCredentialsError) as caught:
        parse_docker_config(b'{"auths": {"r": {"password": "hunter2"', "f")
    assert "hunter2" not in str(caught.value)


def test_helper_managed_entries_send_nothing() -> None:
    assert parse_docker_config(b'{"auths": {"r.example": {}}, "credsStore": "pass"}', "f") == {}


async def test_a_missing_or_huge_file_is_our_error(tmp_path: Path, bridge: ThreadBridge) -> None:
    with pytest.raises(RegistryCredentialsError, match="cannot read: No such file"):
        await DockerConfigCredentials(tmp_path / "absent.json", bridge).auth_for("busybox")
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (CREDENTIALS_FILE_MAX_BYTES + 1))
    huge.chmod(0o600)
    with pytest.raises(RegistryCredentialsError, match="larger than"):
        await DockerConfigCredentials(huge, bridge).auth_for("busybox")


async def test_unset_leaves_the_lookup_to_the_engine_client() -> None:
    assert await EngineDefaultCredentials().auth_for("busybox") is None
    assert RegistryAuth() == ANONYMOUS


async def test_a_file_others_may_read_or_a_fifo_is_refused_naming_the_fix(
    tmp_path: Path, bridge: ThreadBridge
) -> None:
    """Before, a 0644 file was used as it was (the token_file rule refuses one), and a FIFO at
    the path held a bridge thread until something wrote to it, one more per pull."""
    loose = tmp_path / "config.json"
    write(loose, {"auths": {"r.example": {"auth": _auth("u", "secret-pw")}}})
    loose.chmod(0o644)
    with pytest.raises(RegistryCredentialsError) as caught:
        await DockerConfigCredentials(loose, bridge).auth_for("r.example/app:1")
    assert f"mode 0644 lets others read the credentials; chmod 600 {loose}" in str(caught.value)
    assert "secret-pw" not in str(caught.value)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(RegistryCredentialsError, match="not a regular file"):
        await asyncio.wait_for(DockerConfigCredentials(fifo, bridge).auth_for("busybox"), 10)
