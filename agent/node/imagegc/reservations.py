"""Image reservations: the one lock that admission's image pinning and image GC's deletions
serialize on, and the set of image ids pods have pinned.

The race this closes (kubelet #123631): GC judges an image unused, a pod is admitted on that
very image, GC deletes it, the pod's container cannot be created. Here a pod's images are
resolved *and* reserved under the lock (``pinning``), and GC deletes each image under the
same lock after checking the reservations again (``deleting``): whichever comes first, the
other sees its effect. A reservation lasts as long as its holder (a pod uid) holds it —
released when the pod is torn down — so a pinned image also survives while the pod's
containers are being replaced.

Reservations live in memory: after a restart the pods pin their images again from the
checkpoint (through ``pinning`` as well) before they start containers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class Pin:
    """What a holder adds under ``ImageReservations.pinning``."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: set[str] = set()

    def add(self, image_id: str) -> None:
        if image_id:
            self._ids.add(image_id)

    @property
    def image_ids(self) -> frozenset[str]:
        return frozenset(self._ids)


class ImageReservations:
    """Image ids reserved per holder, and the lock admission and GC serialize on."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._held: dict[str, frozenset[str]] = {}

    @contextlib.asynccontextmanager
    async def pinning(self, holder: str) -> AsyncIterator[Pin]:
        """Resolve a holder's images inside this block and ``add`` their ids: GC deletes
        nothing between the resolution and the reservation. On a normal exit the ids added
        are reserved for ``holder`` in addition to what it held (an exception reserves
        nothing new)."""
        async with self._lock:
            pin = Pin()
            yield pin
            if pin.image_ids:
                self._held[holder] = self._held.get(holder, frozenset()) | pin.image_ids

    async def reserve(self, holder: str, image_ids: Iterable[str]) -> None:
        """Reserve ids already known (from a checkpoint), under the lock."""
        async with self.pinning(holder) as pin:
            for image_id in image_ids:
                pin.add(image_id)

    def release(self, holder: str) -> None:
        """Drop everything ``holder`` reserved (its pod is gone). Releasing is always safe,
        so it takes no lock; an unknown holder is not an error."""
        self._held.pop(holder, None)

    def reserved(self) -> frozenset[str]:
        """Every reserved image id (a snapshot)."""
        out: set[str] = set()
        for ids in self._held.values():
            out |= ids
        return frozenset(out)

    def holders_of(self, image_id: str) -> tuple[str, ...]:
        return tuple(sorted(h for h, ids in self._held.items() if image_id in ids))

    @contextlib.asynccontextmanager
    async def deleting(self) -> AsyncIterator[frozenset[str]]:
        """GC's deletion step: holds the lock and yields the reservations as they are now;
        delete only images not in it before leaving the block."""
        async with self._lock:
            yield self.reserved()
