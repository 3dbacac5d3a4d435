"""The node daemon: composition root and one manager per concern."""

from __future__ import annotations
