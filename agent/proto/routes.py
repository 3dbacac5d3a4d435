"""The node streaming API's routes, shared by the node that serves them and the master's proxy
that relays them: which (method, action) pairs exist under ``/v1/namespaces/NS/pods/POD/``,
and which of them run code in a pod or reach its ports (administrators only)."""

from __future__ import annotations

STREAM_ROUTES = frozenset({("POST", "exec"), ("POST", "portforward"), ("GET", "logs")})
CODE_EXECUTION_ACTIONS = frozenset({"exec", "portforward"})  # logs: readers too
