"""The master's state store: a narrow revisioned key-value interface and its SQLite backend."""

from __future__ import annotations
