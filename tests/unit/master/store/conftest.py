"""Fixtures of the store tests: the thread bridge SQLite runs in."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent.aio.bridge import ThreadBridge


@pytest.fixture
async def bridge() -> AsyncIterator[ThreadBridge]:
    bridge = ThreadBridge(4, name="store")
    yield bridge
    bridge.close()
