"""Sans-IO protocol code: HTTP/2 stream multiplexer, exec channel codec, flow-control
buffers (bytes in, events out; no asyncio, sockets or docker here). Later issues."""

from __future__ import annotations
