"""Pods on this node: the pod manager, one worker per pod, container specs, status,
the checkpoint and the static manifest directory."""

from __future__ import annotations
