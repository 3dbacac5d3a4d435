"""Helpers shared by the daemons' entry points."""

from __future__ import annotations

import atexit
import os


def maybe_enable_blockbuster() -> None:
    """Test hook: with ``NODE_AGENT_BLOCKBUSTER=1`` any blocking call made on the event loop
    raises, so integration tests catch what would stall a production daemon."""
    if os.environ.get("NODE_AGENT_BLOCKBUSTER") == "1":
        from blockbuster import blockbuster_ctx

        guard = blockbuster_ctx()
        guard.__enter__()
        # blockbuster patches C types (io.BufferedWriter.write) through forbiddenfruit; left in
        # place during interpreter finalization they crashed Debian's Python 3.11.2 at exit
        # (SIGSEGV instead of exit 0). Undo the patches before finalization starts.
        atexit.register(guard.__exit__, None, None, None)
