"""asyncio glue without domain knowledge: the thread bridge, guarded tasks, logging, sd_notify."""

from __future__ import annotations
