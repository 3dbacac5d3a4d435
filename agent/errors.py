"""The one exception tree of node-agent.

Every error we raise derives from :class:`AgentError`. Foreign exceptions (docker SDK, OS,
YAML, TOML) are translated at the adapter edge with ``raise ... from exc`` so callers only ever
catch ours. Errors that can reach an HTTP client carry the status they map to.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every node-agent error."""

    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(AgentError):
    """A configuration file, key or flag is invalid; the message names which and why."""

    http_status = 400


class ManifestError(AgentError):
    """A pod manifest is outside the supported subset or holds an invalid value.

    ``field`` is the JSON path of the offending field (``spec.containers[1].livenessProbe``),
    ``source`` where the manifest came from (a file path, ``<api>``).
    """

    http_status = 422

    def __init__(self, field: str, problem: str, source: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}{field}: {problem}" if field else f"{prefix}{problem}")


class NotFoundError(AgentError):
    """The named object (pod, container, image) does not exist."""

    http_status = 404


class RuntimeUnavailableError(AgentError):
    """The container runtime does not answer (dockerd down, socket missing, timeout)."""

    http_status = 503


class RuntimeOperationError(AgentError):
    """The container runtime answered but refused or failed an operation."""

    http_status = 500


class ContainerConflictError(RuntimeOperationError):
    """A container with that name already exists: creation is idempotent by name."""

    http_status = 409


class ImageUnavailableError(RuntimeOperationError):
    """An image is absent locally and could not be pulled."""

    http_status = 502


class CheckpointError(AgentError):
    """The on-disk checkpoint could not be written or read."""

    http_status = 500


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file exists but cannot be parsed; it is moved aside."""


class StreamingError(AgentError):
    """Root of the HTTP/2 streaming errors (exec, port-forward, logs)."""

    http_status = 400


class ProtocolViolation(StreamingError):
    """The peer broke HTTP/2 or our framing (or an abuse limit): the connection is ended."""

    http_status = 400


class StreamResetError(StreamingError):
    """The stream was reset (by the peer, or by us on a limit) before it completed."""

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        side = "peer" if remote else "us"
        super().__init__(f"stream {stream_id} reset by {side} (error code {error_code})")
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote = remote


class ConnectionClosedError(StreamingError):
    """The HTTP/2 connection is gone (GOAWAY, transport closed, keepalive unanswered)."""

    http_status = 503


class ForbiddenError(AgentError):
    """Authenticated, but not allowed to do this."""

    http_status = 403
