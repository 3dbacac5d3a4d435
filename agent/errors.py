"""The one exception tree of node-agent.

Every error we raise derives from :class:`AgentError`, and every leaf is defined here, once.
Foreign exceptions (docker SDK, OS, YAML, TOML, aiohttp, h2, sqlite) are translated at the
adapter edge with ``raise ... from exc`` so callers only ever catch ours. Each error carries the
HTTP status it maps to when it reaches a client (``http_status``); the errors of the HTTP/2
layer also carry the HTTP/2 error code a stream reset or GOAWAY sends for them
(``h2_error_code``, RFC 9113 §7). The command-line tools turn any of them into a message and a
non-zero exit code (``exit_code``).
"""

from __future__ import annotations

# HTTP/2 error codes (RFC 9113 §7), as plain numbers: this module is the bottom layer and
# imports nothing.
H2_NO_ERROR = 0x0
H2_PROTOCOL_ERROR = 0x1
H2_INTERNAL_ERROR = 0x2
H2_REFUSED_STREAM = 0x7
H2_CANCEL = 0x8
H2_ENHANCE_YOUR_CALM = 0xB

EXIT_FAILURE = 1


class AgentError(Exception):
    """Root of every node-agent error."""

    http_status: int = 500
    h2_error_code: int = H2_INTERNAL_ERROR
    exit_code: int = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- request errors (4xx) ---------------------------------------------------------------------


class ConfigError(AgentError):
    """A configuration file, key or flag is invalid; the message names which and why."""

    http_status = 400


class ManifestError(AgentError):
    """A pod manifest is outside the supported subset or holds an invalid value.

    ``field`` is the JSON path of the offending field (``spec.containers[1].livenessProbe``),
    ``source`` where the manifest came from (a file path, ``<api>``). The parser reports every
    error of a document at once: ``causes`` holds them all as ``(field, problem)`` pairs, the
    first being ``field`` and ``problem`` (one error: ``causes`` is just that one). The message
    is the first error and how many more there are (bounded for logs and events, whatever the
    document); who shows them all reads ``causes`` (the 422 body, nodectl, ``node-agent check``).
    """

    http_status = 422

    def __init__(
        self,
        field: str,
        problem: str,
        source: str | None = None,
        *,
        causes: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    ) -> None:
        self.field = field
        self.problem = problem
        self.source = source
        self.causes: tuple[tuple[str, str], ...] = tuple(causes) or ((field, problem),)
        prefix = f"{source}: " if source else ""
        more = len(self.causes) - 1
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        super().__init__(prefix + _one_error(field, problem) + suffix)

    def at(self, source: str) -> ManifestError:
        """The same errors, said to come from ``source``."""
        return ManifestError(self.field, self.problem, source, causes=self.causes)


def _one_error(field: str, problem: str) -> str:
    return f"{field}: {problem}" if field else problem


class BadRequestError(AgentError):
    """A request's body, path or query is malformed; the message says which part and why."""

    http_status = 400


class JsonNumberTooLongError(BadRequestError):
    """A JSON body holds an integer longer than Python converts (4,300 digits): a 400 at the
    edge; the manifest loader, which can name its field path, reads such a body itself."""


class PkiError(AgentError):
    """A key, CSR or certificate is invalid, or a chain or pin does not verify."""

    http_status = 400


class UnauthenticatedError(AgentError):
    """No (valid) client identity where one is required."""

    http_status = 401


class ForbiddenError(AgentError):
    """Authenticated, but not allowed to do this."""

    http_status = 403


class TicketError(ForbiddenError):
    """A direct-stream ticket refused: malformed, not signed by the master, expired, used
    before, or for another node, pod, action, parameters or user (``agent.proto.tickets``)."""


class RegistrationRefusedError(ForbiddenError):
    """The master's trust policy refuses this node's registration (master side)."""


class NotFoundError(AgentError):
    """The named object (pod, container, image, node, route) does not exist."""

    http_status = 404


class MethodNotAllowedError(AgentError):
    """The path names a route, but not for this method; ``allow`` lists the methods it takes
    (the ``Allow`` header of the 405)."""

    http_status = 405

    def __init__(self, message: str, allow: tuple[str, ...]) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLargeError(AgentError):
    """A request body is larger than the API accepts."""

    http_status = 413


class UnsupportedMediaTypeError(AgentError):
    """A request body came with a content type the API does not read (its JSON routes read
    ``application/json`` only, never a form or text guessed to be JSON): 415."""

    http_status = 415


class TooManyRequestsError(AgentError):
    """A client sent more than a limit allows (a source address over its registration rate,
    the queue of requests waiting for an administrator full): 429, with ``Retry-After``
    (``retry_after_s``, whole seconds) saying when to try again."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NeedsHttp2Error(AgentError):
    """A streaming route (exec, port-forward, logs) was asked for over HTTP/1.1: it needs an
    HTTP/2 connection (ALPN ``h2``). 426 Upgrade Required, RFC 9110 §15.5.22."""

    http_status = 426


class ConflictError(AgentError):
    """The request conflicts with the current state of the object."""

    http_status = 409


class NameConflictError(ConflictError):
    """A node name is already held by another key (master side)."""


class MirrorConflictError(ConflictError):
    """A mirror pod would replace a pod the master owns, or another node's mirror."""


class KeyMismatchError(ConflictError):
    """An administrator named a key (its fingerprint) that is not the one waiting: the request
    they saw was replaced, or they mistyped it; nothing was approved (master side)."""


class UpdateConflictError(ConflictError):
    """An object kept changing under our compare-and-swap retries (another writer): nothing
    was written; the client retries (master side)."""


# -- container runtime ------------------------------------------------------------------------


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


class ImagePullError(ImageUnavailableError):
    """A container's image cannot be made present now. ``reason`` is the waiting reason
    Kubernetes shows (ErrImagePull, ImagePullBackOff, ErrImageNeverPull, InvalidImageName);
    ``retry_in_s`` is when asking again may help (None: not before the pod's spec changes)."""

    def __init__(self, message: str, *, reason: str, retry_in_s: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_in_s = retry_in_s


class RegistryCredentialsError(ImageUnavailableError):
    """The registry credentials file (``image_credentials_file``) cannot be used: unreadable,
    too large or malformed. The message names the file and the problem, never its content."""


class ImageConflictError(RuntimeOperationError):
    """An image cannot be removed as asked: a container (in any state) uses it, or it was named
    by id while several references still name it."""

    http_status = 409


# -- node state -------------------------------------------------------------------------------


class CheckpointError(AgentError):
    """The on-disk checkpoint could not be written or read."""

    http_status = 500


class CheckpointCorruptError(CheckpointError):
    """The checkpoint file exists but cannot be parsed; it is moved aside."""


class VolumeError(AgentError):
    """A pod's volume directory (emptyDir, hostPath DirectoryOrCreate) could not be made."""

    http_status = 500


# -- the daemon's tasks -----------------------------------------------------------------------


class TaskEndedError(AgentError):
    """A task meant to run for the daemon's whole life returned: a bug; the daemon stops."""


class InternalError(AgentError):
    """A request handler failed with a foreign exception (a bug): the client gets 500 with the
    project's error body, the traceback goes to the log."""


# -- the node's link to the master ------------------------------------------------------------


class MasterUnavailableError(AgentError):
    """The master cannot be reached or answered unexpectedly: retry with back-off."""

    http_status = 503


class MasterTimeoutError(MasterUnavailableError):
    """The master did not answer in time (it accepts connections but is stopped, hung, or
    partitioned away): with several masters, the next one right away."""


class MasterAnswerMalformedError(MasterUnavailableError):
    """The master sent what its API does not promise (a watch line or listing that is not JSON
    of the right shape, or too long): counted, and answered by a relist."""


class IdentityRejectedError(AgentError):
    """The master no longer accepts our certificate: register again."""

    http_status = 401


class NotTheMasterError(AgentError, OSError):
    """The server at the master's address verified against the cluster CA, but its certificate
    lacks the master's mark (``agent.pki.names.MASTER_URI``): another certificate of the
    cluster (a node's), not the master. Raised inside the TLS handshake, before anything is
    sent; an ``OSError`` too, because asyncio, uvloop, aiohttp and ``http.client`` take only an
    ``OSError`` there for a failed connection (anything else is logged as a crash)."""

    http_status = 502


class RegistrationDeniedError(AgentError):
    """The master refused our registration (403/409): retry slowly, report it in health."""

    http_status = 403


# -- master store -----------------------------------------------------------------------------


class StoreError(AgentError):
    """The store failed (disk, corruption); the request cannot be served."""

    http_status = 503


class CompactedError(StoreError):
    """A watch asked for history older than what is kept; the caller must relist."""

    http_status = 410


# -- HTTP/2 streaming -------------------------------------------------------------------------


class StreamingError(AgentError):
    """Root of the HTTP/2 streaming errors (exec, port-forward, logs)."""

    http_status = 400
    h2_error_code = H2_CANCEL


class ProtocolViolation(StreamingError):
    """The peer broke HTTP/2 or our framing (or an abuse limit): the connection is ended.

    ``h2_error_code`` is what the GOAWAY says: PROTOCOL_ERROR, or ENHANCE_YOUR_CALM for an
    abuse limit.
    """

    http_status = 400
    h2_error_code = H2_PROTOCOL_ERROR

    def __init__(self, message: str, h2_error_code: int = H2_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.h2_error_code = h2_error_code


class StreamResetError(StreamingError):
    """The stream was reset (by the peer, or by us on a limit) before it completed."""

    def __init__(self, stream_id: int, error_code: int, remote: bool) -> None:
        side = "peer" if remote else "us"
        super().__init__(f"stream {stream_id} reset by {side} (error code {error_code})")
        self.stream_id = stream_id
        self.error_code = error_code
        self.h2_error_code = error_code
        self.remote = remote


class ConnectionClosedError(StreamingError):
    """The HTTP/2 connection is gone (GOAWAY, transport closed, keepalive unanswered)."""

    http_status = 503


class StreamLimitError(StreamingError):
    """The peer's concurrent-stream limit is reached: this request is refused, the connection
    stays (retry later, or on another connection)."""

    http_status = 503
    h2_error_code = H2_REFUSED_STREAM


class NotRunningError(StreamingError):
    """The container of an exec, port-forward or logs request is not running."""

    http_status = 409


class BadGatewayError(StreamingError):
    """The next hop (a node for the master's proxy, a pod's port for the node) failed."""

    http_status = 502
    h2_error_code = H2_REFUSED_STREAM


class PortUnreachableError(BadGatewayError):
    """A port-forward's port inside the pod refused or did not answer."""


# -- command-line tools -----------------------------------------------------------------------


class CliError(AgentError):
    """A command cannot be carried out; ``exit_code`` is the process's exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = code

    @property
    def code(self) -> int:
        return self.exit_code


class ServerError(CliError):
    """nodectl: the master refused a request (4xx/5xx); printed as kubectl prints it,
    ``Error from server (NotFound): pods "x" not found``."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        causes: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"Error from server ({reason}): {message}")
        self.status = status
        self.reason = reason
        self.causes = causes  # a 422's every (field, message), escaped (details.causes)


class InvalidObjectError(ServerError):
    """nodectl: a manifest refused, here or by the master, in kubectl's words and printed as
    is: ``The Pod "x" is invalid: …`` (every error of it, one per line)."""

    def __init__(self, message: str) -> None:
        CliError.__init__(self, message)
        self.status = 422
        self.reason = "Invalid"
        self.causes: tuple[tuple[str, str], ...] = ()


class StreamRefusedError(CliError):
    """nodectl: a stream (exec, logs, port-forward) answered with an error status before it
    started; ``status`` says which (a 502/503/504 from a master may go to another master)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WatchDroppedError(CliError):
    """nodectl: a watch's connection failed or broke (the master restarting, a network); the
    watch reconnects with back-off and resumes."""


class WatchGoneError(CliError):
    """nodectl: the master cannot resume a watch from its revision (410: history compacted,
    another store, a node watch); the watch relists and prints only what differs."""


class SessionUnavailableError(AgentError):
    """nodectl: no usable session for this config; the caller runs the command itself."""
