"""Exec, port-forward and logs over HTTP/2, and the node's authenticated API server."""

from __future__ import annotations
