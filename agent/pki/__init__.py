"""Cryptography for the cluster (docs/architecture.md §2): private keys, CSRs, the cluster CA,
issuing node and admin certificates, SPKI pins (``--ca-cert-hash``) and when to rotate (``core``).
Pure ``cryptography`` code with no I/O beyond writing key files; used by the master and the
agent."""

from __future__ import annotations
