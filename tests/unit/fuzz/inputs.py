"""Fuzz inputs without a fuzzing library: a seeded ``random.Random`` mutating valid inputs
(bytes, text and decoded JSON-like structures) and making random ones, and the one property
every parser of outside input is held to — only our own errors (``AgentError``) or a clean
result come out, and each input is handled in bounded time.

The seed is fixed, so a failure names an input that fails again; ``FUZZ_SEED`` in the
environment picks another stream of inputs for a longer local run.
"""

from __future__ import annotations

import json
import os
import random
import reprlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

from agent.errors import AgentError

T = TypeVar("T")

SEED = int(os.environ.get("FUZZ_SEED", "20240613"))
# A hang detector, not a performance bound: every parser here answers in well under a
# millisecond; one that takes seconds on a few kilobytes is quadratic or worse somewhere.
INPUT_BUDGET_S = 10.0  # far from any load-induced pause: a hang, not a slow machine
HUGE_CHARS = 1 << 20  # "huge inputs": a mebibyte

_INTERESTING_BYTES = [
    b"\x00",
    b"\x7f",
    b"\xff",
    b"\xc3\x28",  # invalid UTF-8
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate
    b"\n",
    b"\r\n",
    b"%",
    b"%00",
    b"%zz",
    b"%ff",
    b"%2F",
    b"/",
    b"?",
    b"&",
    b"=",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b":",
    b"-",
    b"---",
    b"*",
    b"&a",
    b"!!",
    b"1e999",
    b"-0",
    b"NaN",
    b"9" * 40,
]
_INTERESTING_STRINGS = [
    "",
    " ",
    "a" * 300,
    "\x00",
    "\u2028",
    "\ud800",
    "é",
    "../..",
    "-",
    "0",
    "true",
    "null",
    "1e400",
    "🙂",
]
_INTERESTING_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31,
    2**63,
    10**100,
    -(10**100),
    0.5,
    -0.0,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
]


_SHOW = reprlib.Repr()
_SHOW.maxlevel = 4
_SHOW.maxstring = _SHOW.maxother = _SHOW.maxlong = 300


def show(item: object) -> str:
    """An input for a failure message: bounded in length and depth (inputs nest deeply)."""
    return _SHOW.repr(item)


def rng(salt: str) -> random.Random:
    """A generator per test, so adding a test does not change another's inputs."""
    return random.Random(f"{SEED}:{salt}")


def random_bytes(r: random.Random, max_len: int = 256) -> bytes:
    return r.randbytes(r.randint(0, max_len))


def mutate_bytes(r: random.Random, data: bytes, rounds: int = 3) -> bytes:
    """``data`` with a few random edits: flips, inserts (random or interesting), deletions,
    duplications, truncation."""
    out = bytearray(data)
    for _ in range(r.randint(1, rounds)):
        pos = r.randint(0, len(out))
        op = r.randrange(7)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << r.randrange(8)
        elif op == 1:
            out[pos:pos] = r.randbytes(r.randint(1, 8))
        elif op == 2:
            out[pos:pos] = r.choice(_INTERESTING_BYTES)
        elif op == 3:
            del out[pos : pos + r.randint(1, 16)]
        elif op == 4 and out:
            start = r.randrange(len(out))
            out[pos:pos] = out[start : start + r.randint(1, 32)]
        elif op == 5:
            del out[pos:]
        else:
            out[pos:pos] = r.choice(_INTERESTING_BYTES) * r.randint(2, 64)
    return bytes(out)


def mutate_text(r: random.Random, text: str) -> str:
    return mutate_bytes(r, text.encode()).decode("utf-8", errors=r.choice(["replace", "ignore"]))


def random_scalar(r: random.Random) -> Any:
    kind = r.randrange(5)
    if kind == 0:
        return r.choice(_INTERESTING_NUMBERS)
    if kind == 1:
        return r.choice(_INTERESTING_STRINGS)
    if kind == 2:
        return None
    if kind == 3:
        return r.randint(-(10**6), 10**6)
    return "".join(chr(r.randint(0, 0x2FFF)) for _ in range(r.randint(0, 12)))


def random_structure(r: random.Random, depth: int = 4) -> Any:
    """A random JSON-like value (dicts with string or odd keys, lists, scalars)."""
    if depth <= 0 or r.random() < 0.3:
        return random_scalar(r)
    if r.random() < 0.5:
        return [random_structure(r, depth - 1) for _ in range(r.randint(0, 4))]
    keys: list[Any] = [r.choice(_INTERESTING_STRINGS), random_scalar(r), f"k{r.randint(0, 9)}"]
    return {r.choice(keys): random_structure(r, depth - 1) for _ in range(r.randint(0, 4))}


def deep(depth: int) -> Any:
    """A value nested ``depth`` lists deep (recursion limits)."""
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def mutate_structure(r: random.Random, value: Any) -> Any:
    """A copy of ``value`` with one node replaced, removed, retyped or nested deeply."""
    if isinstance(value, dict) and value and r.random() < 0.8:
        key = r.choice(list(value))
        copy = dict(value)
        op = r.randrange(4)
        if op == 0:
            del copy[key]
        elif op == 1:
            copy[key] = random_structure(r, 2)
        elif op == 2:
            copy[r.choice(_INTERESTING_STRINGS)] = random_structure(r, 2)
        else:
            copy[key] = mutate_structure(r, value[key])
        return copy
    if isinstance(value, list) and value and r.random() < 0.8:
        copy_list = list(value)
        i = r.randrange(len(copy_list))
        if r.random() < 0.3:
            del copy_list[i]
        else:
            copy_list[i] = mutate_structure(r, copy_list[i])
        return copy_list
    choice = r.randrange(4)
    if choice == 0:
        return deep(r.choice([10, 100, 5000]))
    if choice == 1:
        return [value]
    return random_structure(r, 3)


def dumps(value: Any) -> bytes:
    """``value`` as JSON; one nested too deeply for the encoder becomes a deep JSON text."""
    try:
        return json.dumps(value).encode()
    except (RecursionError, ValueError):
        return b"[" * 5000 + b"]" * 5000


def sample(r: random.Random, makers: list[Callable[[random.Random], T]], count: int) -> Iterator[T]:
    """``count`` inputs, each from a maker picked at random."""
    for _ in range(count):
        yield r.choice(makers)(r)


def _judge(item: object, exc: Exception | None, spent_s: float) -> bool:
    """Whether ``item`` was refused (with our error); fails on a foreign error or a hang."""
    if exc is not None and not isinstance(exc, AgentError):
        raise AssertionError(f"{type(exc).__name__}: {exc!s:.200} for {show(item)}") from exc
    assert spent_s < INPUT_BUDGET_S, f"{spent_s:.1f}s for {show(item)}"
    return exc is not None


def holds(parse: Callable[[T], object], inputs: Iterable[T]) -> int:
    """Feed every input to ``parse``: anything but an AgentError escaping, or an input taking
    longer than ``INPUT_BUDGET_S``, fails naming the input. Returns how many were refused."""
    refused = 0
    for item in inputs:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            parse(item)
        except Exception as exc:
            error = exc
        refused += _judge(item, error, time.perf_counter() - started)
    return refused


async def holds_async(parse: Callable[[T], Awaitable[object]], inputs: Iterable[T]) -> int:
    """``holds`` for a coroutine function."""
    refused = 0
    for item in inputs:
        started = time.perf_counter()
        error: Exception | None = None
        try:
            await parse(item)
        except Exception as exc:
            error = exc
        refused += _judge(item, error, time.perf_counter() - started)
    return refused
