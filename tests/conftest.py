"""Fixtures for every test: in-process async tests fail on any blocking call in the loop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


@pytest.fixture
def blockbuster() -> Iterator[BlockBuster]:
    """Any blocking call (file I/O, sleep, sockets, subprocess) made from the running event
    loop raises BlockingError. Async tests of our asyncio code use it."""
    with blockbuster_ctx() as guard:
        yield guard
