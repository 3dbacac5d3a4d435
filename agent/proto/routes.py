"""The route tables of the master's API and of the node's API, and the one parser of request
targets for both (sans-IO): method + path → route name and path parameters, or the error.

Each route says whether it is a JSON route (served over HTTP/1.1 and HTTP/2 alike) or a stream
route (exec, port-forward, logs: HTTP/2 only), and whose node a request concerns (``Subject``),
which the authorization table (``agent.proto.authz``) needs to tell a node acting on itself from
one acting on another. Path parameters are percent-decoded and validated here, once, each by
the check of its kind in :mod:`agent.names` (``_PARAM_CHECKS``: a node or pod name is a DNS-1123
subdomain, a namespace a DNS-1123 label): a segment that cannot name anything (``*``,
``system:masters``, ``a/b`` encoded, a NUL, non-ASCII, over 253 characters) is a 400 quoting it
escaped, before any handler sees it. An empty segment or an unknown path is 404; a known path
with another method is 405 with the methods it takes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from agent import jointoken, names
from agent.errors import AgentError, BadRequestError, MethodNotAllowedError, NotFoundError

MAX_PARAM_CHARS = names.DNS1123_SUBDOMAIN_MAX_CHARS  # Kubernetes' longest object name
MAX_QUERY_FIELDS = 1000
_PARAM_PREFIX = "{"


class Subject(enum.Enum):
    """Whose node a request is about, for telling "the node itself" from "another node"."""

    NONE = "none"  # no node in particular (lists, cluster-wide objects)
    PATH = "path"  # the node named by the path's ``node`` parameter
    CALLER = "caller"  # the node named in the caller's own certificate (registration)
    POD = "pod"  # the node the pod named in the path is bound to (looked up by the API)
    API = "api"  # the node whose API this is (every route of the node's API)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    method: str
    pattern: tuple[str, ...]  # path segments; "{x}" is the parameter x
    stream: bool = False  # a stream route: HTTP/2 only
    subject: Subject = Subject.NONE

    @property
    def path(self) -> str:
        return "/" + "/".join(self.pattern)

    def params_of(self, segments: list[str]) -> dict[str, str] | None:
        """The path parameters if ``segments`` (decoded) fit this route's shape, else None."""
        if len(segments) != len(self.pattern):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.pattern, segments, strict=True):
            if want.startswith(_PARAM_PREFIX):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A request target resolved against a route table."""

    route: Route
    path: str  # the decoded path, for messages
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, list[str]] = field(default_factory=dict)

    def param(self, name: str) -> str:
        return self.params[name]

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name`` (``default`` when absent)."""
        values = self.query.get(name)
        return values[-1] if values else default


REQUEST_ID_MAX_CHARS = 64  # a SHA-256 in hex; the registry uses the first 32 digits
# A registration's id is a token the registry derived: lowercase alphanumerics and '-'.
_REQUEST_ID = re.compile(r"[-a-z0-9]+")


def _check_request_id(text: str, field: str, fail: names.Fail) -> str:
    if len(text) > REQUEST_ID_MAX_CHARS or _REQUEST_ID.fullmatch(text) is None:
        raise fail(
            field,
            f"{names.quote(text)} is not a registration id (at most {REQUEST_ID_MAX_CHARS} "
            "lowercase alphanumerics and '-')",
        )
    return text


def _check_token_id(text: str, field: str, fail: names.Fail) -> str:
    if not jointoken.is_token_id(text):
        raise fail(field, f"{names.quote(text)} is not a join token id (6 of a-z and 0-9)")
    return text


# Every path parameter of every route, by its name, and the check of its kind (every route
# matching its own path, in tests/unit/test_routes.py, proves none is missing).
_PARAM_CHECKS: Mapping[str, Callable[[str, str, names.Fail], str]] = {
    "node": names.check_node_name,
    "namespace": names.check_namespace,
    "pod": names.check_pod_name,
    "rid": _check_request_id,
    "token": _check_token_id,
}


def _param_error(name: str, problem: str) -> AgentError:
    return BadRequestError(f"path parameter {name}: {problem}")


def _check_param(name: str, value: str) -> None:
    _PARAM_CHECKS[name](value, name, _param_error)


class RouteTable:
    """The routes of one API (``api`` names it in messages)."""

    def __init__(self, api: str, routes: Iterable[Route]) -> None:
        self.api = api
        self.routes = tuple(routes)
        self.by_name = {r.name: r for r in self.routes}  # unique: tests/unit/test_routes.py

    def match(self, method: str, target: str) -> RouteMatch:
        """Resolve ``target`` (``/path?query`` as sent, percent-encoded) for ``method``."""
        raw_path, _, raw_query = target.partition("?")
        if not raw_path.startswith("/"):
            raise BadRequestError(f"request target {names.quote(target)} is not an absolute path")
        try:
            segments = [unquote(s, errors="strict") for s in raw_path[1:].split("/")]
            query = parse_qs(
                raw_query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS
            )
        except ValueError as exc:  # UnicodeDecodeError is one, so is "too many fields"
            raise BadRequestError(f"request target: {exc}") from exc
        path = "/" + "/".join(segments)
        allowed: list[str] = []
        for route in self.routes:
            params = route.params_of(segments)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            for name, value in params.items():
                _check_param(name, value)
            return RouteMatch(route, path, params, query)
        if allowed:
            allow = tuple(sorted(set(allowed)))
            raise MethodNotAllowedError(
                f"{method} is not allowed on {path} (allowed: {', '.join(allow)})", allow
            )
        raise NotFoundError(f"no such route on the {self.api} API: {method} {path}")


_POD = ("v1", "namespaces", "{namespace}", "pods", "{pod}")


def _stream_routes(subject: Subject) -> list[Route]:
    """exec, port-forward and logs: the node serves them, the master's proxy relays them."""
    return [
        Route("pods.exec", "POST", (*_POD, "exec"), stream=True, subject=subject),
        Route("pods.portforward", "POST", (*_POD, "portforward"), stream=True, subject=subject),
        Route("pods.logs", "GET", (*_POD, "logs"), stream=True, subject=subject),
    ]


_NODE = ("v1", "nodes", "{node}")
_MIRROR = (*_NODE, "mirrorpods", "{namespace}", "{pod}")

MASTER_ROUTES = RouteTable(
    "master",
    [
        Route("healthz", "GET", ("healthz",)),
        Route("readyz", "GET", ("readyz",)),  # readiness for load balancers (store reachable)
        Route("version", "GET", ("version",)),  # nodectl version: the server's version
        Route("metrics", "GET", ("metrics",)),
        Route("ca", "GET", ("v1", "ca")),
        Route("registrations.create", "POST", ("v1", "registrations"), subject=Subject.CALLER),
        Route("registrations.get", "GET", ("v1", "registrations", "{rid}"), subject=Subject.CALLER),
        Route("nodes.list", "GET", ("v1", "nodes")),
        Route("nodes.get", "GET", _NODE, subject=Subject.PATH),
        Route("nodes.delete", "DELETE", _NODE, subject=Subject.PATH),
        Route("nodes.approve", "POST", (*_NODE, "approve"), subject=Subject.PATH),
        Route("nodes.deny", "POST", (*_NODE, "deny"), subject=Subject.PATH),
        Route("nodes.cordon", "POST", (*_NODE, "cordon"), subject=Subject.PATH),
        Route("nodes.uncordon", "POST", (*_NODE, "uncordon"), subject=Subject.PATH),
        Route("nodes.lease", "PUT", (*_NODE, "lease"), subject=Subject.PATH),
        Route("nodes.certificate", "POST", (*_NODE, "certificate"), subject=Subject.PATH),
        Route("nodes.events", "POST", (*_NODE, "events"), subject=Subject.PATH),
        Route("certificaterequests.list", "GET", ("v1", "certificaterequests")),
        Route(
            "servingnames.approve",
            "POST",
            (*_NODE, "servingnames", "approve"),
            subject=Subject.PATH,
        ),
        Route("servingnames.deny", "POST", (*_NODE, "servingnames", "deny"), subject=Subject.PATH),
        Route("nodes.pods", "GET", (*_NODE, "pods"), subject=Subject.PATH),
        Route("mirrorpods.put", "PUT", _MIRROR, subject=Subject.PATH),
        Route("mirrorpods.delete", "DELETE", _MIRROR, subject=Subject.PATH),
        Route("pods.create", "POST", ("v1", "pods")),
        Route("pods.list", "GET", ("v1", "pods")),
        Route("events.list", "GET", ("v1", "events")),
        Route("pods.get", "GET", _POD),
        Route("pods.delete", "DELETE", _POD),
        Route("pods.evict", "POST", (*_POD, "eviction")),  # nodectl drain
        Route("nodemetrics.list", "GET", ("v1", "metrics", "nodes")),  # nodectl top
        Route("podmetrics.list", "GET", ("v1", "metrics", "pods")),
        Route("pods.status", "PUT", (*_POD, "status"), subject=Subject.POD),
        Route("tokens.create", "POST", ("v1", "tokens")),
        Route("tokens.list", "GET", ("v1", "tokens")),
        Route("tokens.delete", "DELETE", ("v1", "tokens", "{token}")),
        # A direct-stream ticket for one exec/port-forward/logs request (agent.master.tickets).
        Route("tickets.create", "POST", ("v1", "tickets")),
        *_stream_routes(Subject.NONE),
    ],
)

NODE_ROUTES = RouteTable(
    "node",
    [
        Route("healthz", "GET", ("healthz",), subject=Subject.API),
        Route("pods.list", "GET", ("v1", "pods"), subject=Subject.API),
        *_stream_routes(Subject.API),
    ],
)
