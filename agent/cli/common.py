"""Helpers shared by the daemons' entry points."""

from __future__ import annotations

import os


def maybe_enable_blockbuster() -> None:
    """Test hook: with ``NODE_AGENT_BLOCKBUSTER=1`` any blocking call made on the event loop
    raises, so integration tests catch what would stall a production daemon."""
    if os.environ.get("NODE_AGENT_BLOCKBUSTER") == "1":
        from blockbuster import blockbuster_ctx

        blockbuster_ctx().__enter__()
