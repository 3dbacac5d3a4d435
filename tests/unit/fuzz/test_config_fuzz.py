"""Fuzz of configuration loading (``agent.config``, ``agent.master.config``): TOML files
mutated from real ones, random bytes, and random values under every known key. Only
``ConfigError`` or a loaded configuration come out."""

from __future__ import annotations

import random
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import load_agent_config
from agent.master.config import (
    MASTER_KEYS,
    REGISTRATION_KEYS,
    load_master_config,
    render_master_toml,
)
from tests.unit.fuzz.inputs import holds, mutate_bytes, random_bytes, random_scalar, rng, sample

COUNT = 1500
ROOT = Path(__file__).resolve().parents[3]
AGENT_TOML = (ROOT / "examples" / "agent-demo.toml").read_bytes()
MASTER_TOML = render_master_toml(Path("/var/lib/node-master"), "127.0.0.1:6443").encode()


def toml_value(value: Any) -> str:
    """A TOML literal for a scalar (what random_scalar makes), or a list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(str(value), repr(value))
    if value is None:
        return '""'
    return (
        '"'
        + "".join(
            c if c.isprintable() and c not in '"\\' else f"\\u{ord(c) & 0xFFFF:04x}"
            for c in str(value)
        )
        + '"'
    )


def makers(seed: bytes, keys: list[str], section: str) -> list[Callable[[random.Random], bytes]]:
    def mutated(r: random.Random) -> bytes:
        return mutate_bytes(r, seed)

    def values(r: random.Random) -> bytes:
        lines = [f"[{section}]"] if section else []
        for key in r.sample(keys, r.randint(1, min(4, len(keys)))):
            value = random_scalar(r) if r.random() < 0.8 else [random_scalar(r) for _ in range(3)]
            rendered = (
                "[" + ", ".join(map(toml_value, value)) + "]"
                if isinstance(value, list)
                else toml_value(value)
            )
            lines.append(f"{key} = {rendered}")
        return "\n".join(lines).encode()

    return [mutated, mutated, values, values, random_bytes]


def run(
    tmp_path: Path,
    salt: str,
    load: Callable[[Path], object],
    seed: bytes,
    keys: list[str],
    section: str,
) -> None:
    r = rng(salt)
    path = tmp_path / "config.toml"

    def parse(data: bytes) -> None:
        path.write_bytes(data)
        load(path)

    loaded = COUNT - holds(parse, sample(r, makers(seed, keys, section), COUNT))
    assert loaded > 0  # some mutations stay valid: the loader was reached, not only the TOML


def test_agent_config_files(tmp_path: Path) -> None:
    keys = [*tomllib.loads(AGENT_TOML.decode()), "node_name", "api_addr", "health_addr", "x"]
    run(
        tmp_path,
        "agent-config",
        lambda p: load_agent_config(p, {}, path_required=True),
        AGENT_TOML,
        keys,
        "",
    )


def test_master_config_files(tmp_path: Path) -> None:
    keys = [k.name for k in MASTER_KEYS]
    run(tmp_path, "master-config", load_master_config, MASTER_TOML, keys, "master")
    keys = [k.name for k in REGISTRATION_KEYS]
    run(tmp_path, "master-registration", load_master_config, MASTER_TOML, keys, "registration")
