"""The ``Store`` protocol: get / put / compare-and-swap / delete / list-prefix / watch, with a
global revision that increases on every change (the etcd model, so an etcd backend can follow
without changing callers).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class EventType(StrEnum):
    PUT = "PUT"
    DELETE = "DELETE"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    key: str
    value: bytes  # the new value for PUT, the last value for DELETE
    revision: int


class Store(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value``; return the new revision."""
        ...

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        """Store only if the key's mod revision is ``expected_mod_revision`` (0: the key must
        not exist). Return the new revision, or None when the expectation failed."""
        ...

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        """Delete; return the revision of the deletion, or None if absent / mismatched."""
        ...

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision the listing is consistent with."""
        ...

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` with revision > ``after_revision``, in order, forever.
        Raises CompactedError when that history is no longer kept."""
        ...

    async def close(self) -> None: ...
