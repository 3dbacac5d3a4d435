"""Image references: the grammar checked before any pull, and the registry each one names."""

from __future__ import annotations

import pytest

from agent.node.images.reference import (
    NAME_MAX_CHARS,
    reference_problem,
    registry_key,
    registry_of,
)

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "docker.io/library/busybox",
        "registry.example.com:5000/team/app:v1.2_3-rc",
        "localhost/app",
        "127.0.0.1:1/nope:1",
        f"busybox@{DIGEST}",
        f"registry.example.com/app:1@{DIGEST}",
        "a__b/c-d.e/f---g",
        "node-agent-test/busybox:latest",
    ],
)
def test_valid_references(image: str) -> None:
    assert reference_problem(image) == ""


@pytest.mark.parametrize(
    ("image", "problem"),
    [
        ("", "the image reference is empty"),
        ("Busybox", "invalid reference format"),  # upper case in the path
        ("busybox:", "invalid reference format"),
        ("busybox::1", "invalid reference format"),
        ("-busybox", "invalid reference format"),
        ("busybox:-1", "invalid reference format"),
        ("busybox:" + "t" * 129, "invalid reference format"),
        ("busybox@sha256:abc", "invalid reference format"),
        ("bad//path", "invalid reference format"),
        ("app/", "invalid reference format"),
        ("a" * (NAME_MAX_CHARS + 1), f"must not be longer than {NAME_MAX_CHARS}"),
        ("busy\x00box", "invalid reference format"),
        ("http://registry/app", "invalid reference format"),
    ],
)
def test_invalid_references_say_why(image: str, problem: str) -> None:
    assert problem in reference_problem(image)


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", "docker.io"),
        ("library/busybox", "docker.io"),
        ("docker.io/library/busybox", "docker.io"),
        ("index.docker.io/library/busybox", "docker.io"),
        ("registry.example.com/app", "registry.example.com"),
        ("registry.example.com:5000/app:1", "registry.example.com:5000"),
        ("localhost/app", "localhost"),
        ("127.0.0.1:1/nope:1", "127.0.0.1:1"),
        ("team/app", "docker.io"),
    ],
)
def test_registry_of(image: str, registry: str) -> None:
    assert registry_of(image) == registry


@pytest.mark.parametrize(
    ("server", "key"),
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("registry.example.com:5000", "registry.example.com:5000"),
        ("http://registry.example.com/v2/", "registry.example.com"),
        (" ghcr.io ", "ghcr.io"),
    ],
)
def test_registry_key_of_a_config_entry(server: str, key: str) -> None:
    assert registry_key(server) == key
