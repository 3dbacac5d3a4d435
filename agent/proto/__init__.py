"""Sans-IO protocol code: the HTTP/2 stream multiplexer for exec, port-forward and logs, the exec
channel codec and flow-control buffers (docs/architecture.md §2, §5). Bytes in, events out: no
asyncio, sockets, docker, psutil, pyroute2 or aiohttp here (an import-linter contract enforces it);
the drivers live in ``agent.aio``. Arrives with the streaming issue."""

from __future__ import annotations
