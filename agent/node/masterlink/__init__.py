"""The node's link to the master: identity, registration, lease, pod watch, mirrors, status."""

from __future__ import annotations
