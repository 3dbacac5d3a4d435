"""Kubernetes quantities for cpu (millicores) and memory (bytes)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ManifestError
from agent.quantity import INT64_MAX, parse_cpu_millis, parse_memory_bytes


@pytest.mark.parametrize(
    ("value", "millis"),
    [
        ("500m", 500),
        ("1", 1000),
        ("0.5", 500),
        (".5", 500),
        ("1.", 1000),
        ("+1", 1000),
        (2, 2000),
        (1, 1000),
        (0.25, 250),
        (0.001, 1),
        ("1.5", 1500),
        ("100m", 100),
        ("1m", 1),
        ("0.001", 1),
        ("1000000n", 1),
        ("1000u", 1),
        ("1e0", 1000),
        ("1e-3", 1),
        ("5E-1", 500),
        ("0", 0),
        ("-0", 0),
        ("1k", 1_000_000),
        (" 250m ", 250),  # Kubernetes trims whitespace when decoding
    ],
)
def test_cpu(value: object, millis: int) -> None:
    assert parse_cpu_millis(value, "f") == millis


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("128Mi", 128 * 2**20),
        ("1Gi", 2**30),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("2Ei", 2 * 2**60),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),  # exa, not an exponent
        ("1E3", 1000),  # exponent
        ("1e3", 1000),
        ("1e+3", 1000),
        ("1Ki", 1024),
        ("1.5Ki", 1536),
        ("128974848", 128974848),
        ("129e6", 129 * 10**6),
        ("123Mi", 123 * 2**20),
        (1024, 1024),
        (1.5e3, 1500),
        ("0", 0),
        # Not whole bytes: rounded up, as Kubernetes does.
        ("0.5", 1),
        ("1500m", 2),
        ("1m", 1),
        ("1.1", 2),
        ("1e-30", 1),
        ("7Ei", 7 * 2**60),  # 8Ei is one more than an int64 holds
    ],
)
def test_memory(value: object, size: int) -> None:
    assert parse_memory_bytes(value, "f") == size


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", '"" is not a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3'),
        ("abc", "is not a Kubernetes quantity"),
        ("1.2.3", "is not a Kubernetes quantity"),
        ("10 Mi", "is not a Kubernetes quantity"),
        ("1Mb", "is not a Kubernetes quantity"),
        ("1mi", "is not a Kubernetes quantity"),
        ("1KI", "is not a Kubernetes quantity"),
        ("1K", "is not a Kubernetes quantity"),  # Kubernetes spells kilo `k`
        ("--1", "is not a Kubernetes quantity"),
        ("1e", "is not a Kubernetes quantity"),
        ("1e3Mi", "is not a Kubernetes quantity"),
        ("Mi", "is not a Kubernetes quantity"),
        ("0x10", "is not a Kubernetes quantity"),
        ("1_000", "is not a Kubernetes quantity"),
        ("١٢", "is not a Kubernetes quantity"),  # non-ASCII digits
        ("inf", "is not a Kubernetes quantity"),
        (float("inf"), "is not a Kubernetes quantity"),
        (float("nan"), "is not a Kubernetes quantity"),
        # No Python repr (`True`, `None`, `[1]`): JSON's names of the types.
        (
            True,
            "must be a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3, got boolean",
        ),
        (None, "got null"),
        ([1], "got list"),
        ({"a": 1}, "got object"),
        ("-1", '"-1" must not be negative'),
        ("-1Mi", "must not be negative"),
        (-5, "-5 must not be negative"),
        ("1e31", "exponent out of range (at most ±30)"),
        ("1e-999999999", "exponent out of range"),
        ("1e999999999", "exponent out of range"),
        ("8Ei", '"8Ei" is too large'),
        ("1e30", "is too large"),
        (2**63, "is too large"),
        # str() would refuse it (so would pytest's id for it)
        pytest.param(10**5000, "(an integer of some 5000 digits) is too large", id="10**5000"),
    ],
)
def test_bad_memory(value: object, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_memory_bytes(value, "spec.x")
    assert info.value.field == "spec.x"
    assert problem in info.value.problem
    assert str(info.value).startswith("spec.x: ")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0.0005", '"0.0005" is finer than 1m (one millicore)'),
        ("1500u", "finer than 1m"),
        ("1n", "finer than 1m"),
        (0.0001, "0.0001 is finer than 1m"),
        ("1e-4", "finer than 1m"),
        ("-500m", "must not be negative"),
        ("1Ei", "is too large"),  # more millicores than an int64 holds
        ("one", "is not a Kubernetes quantity"),
        (
            False,
            "must be a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3, got boolean",
        ),
    ],
)
def test_bad_cpu(value: object, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_cpu_millis(value, "spec.cpu")
    assert info.value.field == "spec.cpu"
    assert problem in info.value.problem


def test_largest_values() -> None:
    assert parse_memory_bytes(str(INT64_MAX), "f") == INT64_MAX
    assert parse_cpu_millis(f"{INT64_MAX}m", "f") == INT64_MAX


@pytest.mark.parametrize("parse", [parse_memory_bytes, parse_cpu_millis])
def test_a_long_quantity_is_refused_before_it_is_converted(parse: Any) -> None:
    """900,000 digits took 47 s in Decimal/Fraction; the cap is on characters, checked first."""
    digits = "1" * 900_000
    with pytest.raises(ManifestError) as info:
        parse(digits, "spec.x")
    assert info.value.problem.endswith(
        "is not a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3 (at most 64 "
        "characters)"
    )
    assert '"' + "1" * 100 + '"… (900000 characters)' in info.value.problem  # quoted, bounded
    assert len(str(info.value)) < 300
    assert parse("0" * 62 + "1k", "f") == parse("1k", "f")  # 64 characters: still a quantity
