"""The master: registration and trust policy, cluster CA, node registry, pod assignment,
streaming proxy (later issues)."""

from __future__ import annotations
