"""The master's state store: a narrow revisioned key-value interface, its SQLite and memory
backends."""

from __future__ import annotations
