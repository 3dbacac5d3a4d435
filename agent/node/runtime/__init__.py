"""Container runtime: the Runtime protocol and its Docker Engine implementation."""

from __future__ import annotations
