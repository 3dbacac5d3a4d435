"""Kubernetes quantities for cpu (millicores) and memory (bytes)."""

from __future__ import annotations

import pytest

from agent.errors import ManifestError
from agent.quantity import parse_cpu_millis, parse_memory_bytes


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("1", 1000),
        ("0.5", 500),
        (2, 2000),
        (0.25, 250),
        ("1.5", 1500),
        ("100m", 100),
        ("1e0", 1000),
        ("0", 0),
        ("1k", 1_000_000),
    ],
)
def test_cpu(value: object, millis: int) -> None:
    assert parse_cpu_millis(value, "f") == millis


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1G", 10**9),
        ("1k", 1000),
        ("1Ki", 1024),
        ("1e3", 1000),
        ("128974848", 128974848),
        (1024, 1024),
        ("0.5", 1),  # rounded up to whole bytes, as Kubernetes does
        ("1500m", 2),
        ("1.5Ki", 1536),
        ("2Ei", 2 * 2**60),
    ],
)
def test_memory(value: object, size: int) -> None:
    assert parse_memory_bytes(value, "f") == size


@pytest.mark.parametrize(
    "value", ["", "abc", "1.2.3", "10 Mi", "1Mb", "-1", "--1", True, None, [1], "1e", "Mi"]
)
def test_bad_quantities(value: object) -> None:
    with pytest.raises(ManifestError) as info:
        parse_memory_bytes(value, "spec.x")
    assert info.value.field == "spec.x"


def test_cpu_finer_than_a_millicore() -> None:
    with pytest.raises(ManifestError, match="finer than 1m"):
        parse_cpu_millis("0.0005", "f")
