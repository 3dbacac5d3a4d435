"""Fuzz of the registry credentials parser (``image_credentials_file``): Docker config files
mutated from a valid one, random JSON values and random bytes. Only RegistryCredentialsError or
parsed credentials come out, and no error message ever carries a secret from the file."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from agent.errors import RegistryCredentialsError
from agent.node.images.credentials import parse_docker_config
from tests.unit.fuzz.inputs import (
    dumps,
    holds,
    mutate_bytes,
    mutate_structure,
    random_bytes,
    random_structure,
    rng,
    sample,
)

COUNT = 3000
SECRET = "s3cr3t-PASSWORD"
VALID = {
    "auths": {
        "https://index.docker.io/v1/": {
            "auth": base64.b64encode(b"me:" + SECRET.encode()).decode()
        },
        "registry.example.com:5000": {"username": "bot", "password": SECRET},
        "ghcr.io": {"identitytoken": SECRET},
        "helper.example": {},
    },
    "credsStore": "desktop",
}


def test_only_our_error_or_credentials_come_out_and_never_a_secret() -> None:
    raw = json.dumps(VALID).encode()

    def mutated_bytes(r: random.Random) -> bytes:
        return mutate_bytes(r, raw)

    def mutated(r: random.Random) -> bytes:
        return dumps(mutate_structure(r, VALID))

    def random_value(r: random.Random) -> bytes:
        return dumps(random_structure(r))

    def noise(r: random.Random) -> bytes:
        return random_bytes(r)

    parsed = 0

    def parse(data: bytes) -> None:
        nonlocal parsed
        try:
            parse_docker_config(data, "image_credentials_file /etc/x.json")
        except RegistryCredentialsError as exc:
            assert SECRET not in str(exc)
            assert base64.b64encode(b"me:" + SECRET.encode()).decode() not in str(exc)
            raise
        parsed += 1

    makers = [mutated_bytes, mutated, mutated, random_value, noise]
    inputs = list(sample(rng("registry-credentials"), makers, COUNT))
    refused = holds(parse, inputs)
    assert refused > 0 and parsed > 0
    assert parsed + refused == COUNT


def test_the_valid_file_parses() -> None:
    auths: dict[str, Any] = dict(parse_docker_config(json.dumps(VALID).encode(), "f"))
    assert sorted(auths) == ["docker.io", "ghcr.io", "registry.example.com:5000"]
    assert (auths["docker.io"].username, auths["docker.io"].password) == ("me", SECRET)
    assert SECRET not in repr(auths)
