"""The node's health: the local read-only API (healthz, pods, events, metrics) and metrics."""

from __future__ import annotations
