"""node-agent: a node agent daemon that runs Kubernetes-style pods on the Docker Engine."""

from __future__ import annotations

__version__ = "0.1.0"
