"""Keys, CSRs, the cluster CA, issuing, fingerprints and rotation (later issues)."""

from __future__ import annotations
