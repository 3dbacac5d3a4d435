"""Registry credentials from a Docker config file (``image_credentials_file``).

The file is the one ``docker login`` writes: ``{"auths": {"<registry>": {"auth":
"<base64 user:password>"}}}`` (``username``/``password`` or ``identitytoken`` in an entry are
taken too). Credential helpers (``credsStore``, ``credHelpers``) would run programs: not
supported, their registries are pulled anonymously. ``imagePullSecrets`` in a pod stays
unsupported until the master stores secrets.

When the key is unset the agent passes no credentials and the Docker SDK looks them up itself,
as ``docker pull`` as the agent's user would (``$DOCKER_CONFIG`` or ``~/.docker/config.json``).
When it is set, the file is authoritative: a registry it does not name is pulled anonymously.

The file must be a regular file only its owner may read (0600, as ``docker login`` writes
it, like every secret the agent keeps): another mode or a FIFO fails the pull naming the file
and the fix. It is read through the thread bridge on the pull path (a rotated file is picked up
without a restart; an unchanged one, by size and mtime, is not parsed again), bounded
(``CREDENTIALS_FILE_MAX_BYTES``), and every problem is a RegistryCredentialsError naming the
file and the problem, never a value from it: the pull then fails with that message.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.aio.bridge import ThreadBridge
from agent.errors import RegistryCredentialsError
from agent.node.images.reference import registry_key, registry_of
from agent.node.runtime.base import ANONYMOUS, RegistryAuth

CREDENTIALS_FILE_MAX_BYTES = 1 << 20  # a config.json with hundreds of registries is ~100 KiB
CREDENTIALS_MAX_ENTRIES = 1000
CREDENTIAL_FIELD_MAX_CHARS = 16 << 10  # an identity token (a JWT) fits many times over


class Credentials(Protocol):
    async def auth_for(self, image: str) -> RegistryAuth | None:
        """The credentials to pull ``image`` with; None: leave it to the engine client."""
        ...


class EngineDefaultCredentials:
    """``image_credentials_file`` unset: the engine client's own lookup applies."""

    async def auth_for(self, image: str) -> RegistryAuth | None:
        return None


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stamp: tuple[int, int, int]  # (inode, size, mtime_ns)
    auths: Mapping[str, RegistryAuth]


def parse_docker_config(raw: bytes, where: str) -> dict[str, RegistryAuth]:
    """Registry host (as ``registry_of`` names it) → credentials, from a Docker config file's
    bytes; RegistryCredentialsError naming ``where`` and the entry for anything malformed."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RegistryCredentialsError(f"{where}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise RegistryCredentialsError(f"{where}: nested too deeply") from None
    except ValueError as exc:
        # The position only: the message of a JSON error may quote the document.
        line = getattr(exc, "lineno", "?")
        raise RegistryCredentialsError(f"{where}: not valid JSON (line {line})") from None
    if not isinstance(data, dict):
        raise RegistryCredentialsError(f"{where}: expected a JSON object")
    auths = data.get("auths", {})
    if not isinstance(auths, dict):
        raise RegistryCredentialsError(f"{where}: 'auths' must be an object")
    if len(auths) > CREDENTIALS_MAX_ENTRIES:
        raise RegistryCredentialsError(
            f"{where}: more than {CREDENTIALS_MAX_ENTRIES} registries in 'auths'"
        )
    out: dict[str, RegistryAuth] = {}
    for server, entry in auths.items():
        # The registry's name is not a secret, but it is the file's text: shown bounded.
        shown = json.dumps(server[:100])
        if not isinstance(entry, dict):
            raise RegistryCredentialsError(f"{where}: auths[{shown}] must be an object")
        auth = _entry_auth(entry, server, f"{where}: auths[{shown}]")
        if auth is not None:
            out[registry_key(server)] = auth
    return out


def _field(entry: Mapping[str, object], name: str, where: str) -> str:
    value = entry.get(name, "")
    if not isinstance(value, str):
        raise RegistryCredentialsError(f"{where}.{name} must be a string")
    if len(value) > CREDENTIAL_FIELD_MAX_CHARS:
        raise RegistryCredentialsError(
            f"{where}.{name} is longer than {CREDENTIAL_FIELD_MAX_CHARS} characters"
        )
    return value


def _entry_auth(entry: Mapping[str, object], server: str, where: str) -> RegistryAuth | None:
    username = _field(entry, "username", where)
    password = _field(entry, "password", where)
    token = _field(entry, "identitytoken", where)
    encoded = _field(entry, "auth", where)
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, ValueError):  # ValueError: not ASCII; UnicodeDecodeError is one
            raise RegistryCredentialsError(f"{where}.auth is not base64 text") from None
        username, colon, password = decoded.partition(":")
        if not colon or not username:
            raise RegistryCredentialsError(f"{where}.auth is not base64 of USER:PASSWORD")
    if not (username or token):
        return None  # an entry a credential helper manages: nothing to send
    return RegistryAuth(
        server_address=server, username=username, password=password, identity_token=token
    )


class DockerConfigCredentials:
    """Credentials from one Docker config file, authoritative for every registry."""

    def __init__(self, path: Path, bridge: ThreadBridge) -> None:
        self.path = path
        self._bridge = bridge
        self._snapshot: _Snapshot | None = None

    async def auth_for(self, image: str) -> RegistryAuth | None:
        snapshot = await self._bridge.run(self._load, self._snapshot)
        self._snapshot = snapshot
        return snapshot.auths.get(registry_of(image), ANONYMOUS)

    def _load(self, known: _Snapshot | None) -> _Snapshot:
        """Blocking: the file parsed, or ``known`` when it has not changed."""
        where = f"image_credentials_file {self.path}"
        try:
            # O_NONBLOCK: a FIFO at the path must not hold a bridge thread (every pull would
            # take another); it is refused below, as anything but a regular file is.
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with open(fd, "rb") as handle:
                info = os.fstat(handle.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise RegistryCredentialsError(f"{where}: not a regular file")
                mode = stat.S_IMODE(info.st_mode)
                if mode & 0o077:
                    raise RegistryCredentialsError(
                        f"{where}: mode {mode:04o} lets others read the credentials; "
                        f"chmod 600 {self.path}"
                    )
                stamp = (info.st_ino, info.st_size, info.st_mtime_ns)
                if known is not None and known.stamp == stamp:
                    return known
                raw = handle.read(CREDENTIALS_FILE_MAX_BYTES + 1)
        except OSError as exc:
            raise RegistryCredentialsError(
                f"{where}: cannot read: {exc.strerror or type(exc).__name__}"
            ) from None
        if len(raw) > CREDENTIALS_FILE_MAX_BYTES:
            raise RegistryCredentialsError(
                f"{where}: larger than {CREDENTIALS_FILE_MAX_BYTES} bytes"
            )
        return _Snapshot(stamp, parse_docker_config(raw, where))
