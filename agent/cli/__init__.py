"""Command-line entry points: node-agent, node-master, nodectl."""

from __future__ import annotations
