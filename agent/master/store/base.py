"""The ``Store`` protocol: get / put / compare-and-swap / delete / list-prefix / watch, with a
global revision that increases on every change (the etcd model, so an etcd backend can follow
without changing callers).

The contract every backend keeps (``tests/contracts/store.py`` holds each one to it):

* **Revisions.** One counter for the whole store, 0 for an empty store. Every successful change
  (``put``, a ``compare_and_swap`` that matched, a ``delete`` that removed a key) takes the next
  revision, exactly one more than the last; a change that did not happen takes none. A key's
  ``create_revision`` is the revision that created it (a key deleted and written again is a new
  key with a new one), its ``mod_revision`` the revision of its last change.
* **Keys and values.** Keys are strings compared by code point; values are bytes, stored and
  returned unchanged. Prefixes are plain string prefixes (``/pods/a/`` does not match
  ``/pods/ab/1``).
* **History.** The changes of the last ``history`` revisions at least are kept for watches
  (backends drop older ones in batches, so a little more may be kept); a watch that needs older
  ones gets ``CompactedError`` and the caller relists.
* **Concurrency.** Each call is atomic; between calls anything may happen, so read-modify-write
  goes through ``compare_and_swap`` with the revision read. Of several swaps racing on one
  expectation exactly one wins.
* **Close.** ``close()`` is idempotent. After it, every call raises ``StoreError``, and so does
  every watch at its next step, including one waiting for a change (watchers are woken).
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
    async def get(self, key: str) -> KeyValue | None:
        """The key's current value and revisions, or None if it does not exist."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Store ``value`` (creating the key or replacing its value, even with an equal one);
        return the new revision."""
        ...

    async def compare_and_swap(
        self, key: str, value: bytes, expected_mod_revision: int
    ) -> int | None:
        """Store only if the key's mod revision is ``expected_mod_revision`` (0: the key must
        not exist). Return the new revision, or None when the expectation failed (nothing
        changed then)."""
        ...

    async def delete(self, key: str, expected_mod_revision: int | None = None) -> int | None:
        """Delete the key (only if its mod revision is ``expected_mod_revision``, when given);
        return the revision of the deletion, or None when the key is absent or its revision
        differs (nothing changed then)."""
        ...

    async def list_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix``, sorted by key, and the store revision the
        listing is consistent with: watching from that revision misses nothing and repeats
        nothing."""
        ...

    def watch(self, prefix: str, after_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes to keys starting with ``prefix`` with revision > ``after_revision`` (>= 0),
        one event per change, in revision order, without end: first the kept history, then
        each change as it happens. Raises CompactedError, at the start or later if the watcher
        falls that far behind, when a change it would yield is no longer kept, and also when
        ``after_revision`` is newer than the store (a revision from before a store was
        replaced: the caller relists). Raises StoreError once the store is closed."""
        ...

    async def close(self) -> None:
        """Release the store; idempotent. Watches end with StoreError."""
        ...
