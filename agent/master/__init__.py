"""The master (``node-master``, docs/architecture.md §2): registration and the trust policies, the
cluster CA on disk, the node registry with leases, pod assignment (scheduler), the API used by
agents and ``nodectl``, its store (SQLite; etcd later) and, later, the streaming proxy. Never
imports ``agent.node``: what both share lives below them (types, pki)."""

from __future__ import annotations
