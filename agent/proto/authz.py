"""Who may do what on the master's API and the node's API, over HTTP/1.1 and HTTP/2 alike: one
table, route by caller kind to decision, and the pure functions around it (sans-IO).

The caller kinds are the table's columns. A TLS peer certificate is mapped to a ``Principal``
once (``agent.pki.core.principal_of``); the kind then depends on the request only for nodes:
a node acts as *itself* when the request concerns its own node (``routes.Subject``) and, on the
master, while its record is Approved with the key it presents (``nodectl delete node`` revokes
at once); any other node certificate is *another node*. The master's streaming proxy
(``O=system:node-proxies``) names the user it acts for in headers that the node believes from
that identity only: such a request is authorized as that user (viewer or admin). Every decision
is listed in docs/authorization.md; ``tests/unit/proto/test_authz.py`` holds the two together.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from agent.proto.routes import RouteMatch
from agent.proto.tickets import Ticket

# Set by the master's streaming proxy on the streams it relays to a node: the user it acts for
# and that user's groups (comma-separated). A node believes them from the proxy identity only.
USER_HEADER = "node-agent-user"
GROUPS_HEADER = "node-agent-groups"


class Role(enum.Enum):
    """What a certificate (or its absence) says its holder is."""

    ANONYMOUS = "anonymous"  # no certificate, or one that verifies against no CA we trust
    FLEET = "fleet"  # issued by an external fleet CA (the client-cert registration rule)
    NODE = "node"  # O=system:nodes, CN=system:node:<name>
    VIEWER = "viewer"  # O=system:viewers
    ADMIN = "admin"  # O=system:masters
    PROXY = "proxy"  # O=system:node-proxies without a user it acts for
    USER = "user"  # a cluster certificate with none of the groups above


class CallerKind(enum.Enum):
    """The authorization table's columns."""

    ANONYMOUS = "anonymous"
    FLEET = "fleet"
    NODE_SELF = "node-self"
    NODE_OTHER = "node-other"
    VIEWER = "viewer"
    ADMIN = "admin"
    PROXY = "proxy"
    USER = "user"


class Decision(enum.Enum):
    ALLOW = "allow"
    UNAUTHENTICATED = "unauthenticated"  # 401: who you are does not count here
    FORBIDDEN = "forbidden"  # 403: known, but not allowed


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated identity of a request's peer."""

    role: Role
    name: str = ""  # the node's name for a node, else the certificate's CN (or proxied user)
    groups: tuple[str, ...] = ()
    node: str = ""  # NODE: the node its certificate names
    key_id: str = ""  # NODE: sha256 of its public key, checked against the node's record
    cert_der: bytes | None = None  # FLEET: the certificate, for the registration policy
    note: str = ""  # why a presented certificate did not count for more
    # A user acting by a master's ticket (node API): the request it allows is checked by the
    # edge (agent.proto.tickets.check_request) before any handler runs.
    ticket: Ticket | None = None


ANONYMOUS = Principal(Role.ANONYMOUS)


@dataclass(frozen=True, slots=True)
class Caller:
    """A principal seen from one request: its column in the table."""

    principal: Principal
    kind: CallerKind
    note: str = ""


_KIND_OF_ROLE = {
    Role.ANONYMOUS: CallerKind.ANONYMOUS,
    Role.FLEET: CallerKind.FLEET,
    Role.VIEWER: CallerKind.VIEWER,
    Role.ADMIN: CallerKind.ADMIN,
    Role.PROXY: CallerKind.PROXY,
    Role.USER: CallerKind.USER,
}


def caller_of(principal: Principal, subject_node: str | None, current: bool) -> Caller:
    """The caller kind of ``principal`` for a request about ``subject_node``; ``current``:
    whether the node's record is Approved with the key the principal presented."""
    if principal.role is not Role.NODE:
        return Caller(principal, _KIND_OF_ROLE[principal.role])
    if subject_node is None or principal.node != subject_node:
        return Caller(principal, CallerKind.NODE_OTHER)
    if not current:
        note = f"node {principal.node!r} is not (or no longer) approved with this key"
        return Caller(principal, CallerKind.NODE_OTHER, note)
    return Caller(principal, CallerKind.NODE_SELF)


_K = CallerKind
_EVERYONE = frozenset(CallerKind)
_READERS = frozenset({_K.VIEWER, _K.ADMIN})
_ADMINS = frozenset({_K.ADMIN})
_NODE_OR_ADMIN = frozenset({_K.NODE_SELF, _K.ADMIN})
_NODE_ONLY = frozenset({_K.NODE_SELF})

RULES: Mapping[str, frozenset[CallerKind]] = {
    # Anyone, so that load balancers and joining nodes need nothing.
    "healthz": _EVERYONE,
    "readyz": _EVERYONE,  # for load balancers, as healthz: says only "ok" or why not
    # As the API server's /version (system:public-info-viewer): the release, the Python
    # version and the platform; no path, host name or configuration.
    "version": _EVERYONE,
    "metrics": _EVERYONE,
    "ca": _EVERYONE,
    # A node's certificate that is not current (record deleted, denied, or another key) is
    # refused rather than treated as anonymous: a revoked node must notice.
    "registrations.create": _EVERYONE - {_K.NODE_OTHER},
    "registrations.get": _EVERYONE - {_K.NODE_OTHER},
    "nodes.list": _READERS,
    "nodes.get": _READERS | {_K.NODE_SELF},
    "nodes.delete": _ADMINS,
    "nodes.approve": _ADMINS,
    "nodes.deny": _ADMINS,
    "nodes.cordon": _ADMINS,
    "nodes.uncordon": _ADMINS,
    "nodes.lease": _NODE_OR_ADMIN,
    "nodes.certificate": _NODE_ONLY,  # a new key is proven by the node, not by an admin
    # A node reports its own events (about itself and the pods bound to it): nobody else.
    "nodes.events": _NODE_ONLY,
    # The names a node asks for beyond those the master verified: an administrator decides.
    "certificaterequests.list": _READERS,
    "servingnames.approve": _ADMINS,
    "servingnames.deny": _ADMINS,
    "nodes.pods": _NODE_OR_ADMIN,
    "mirrorpods.put": _NODE_ONLY,  # mirrors are written by their node only
    "mirrorpods.delete": _NODE_OR_ADMIN,
    "pods.create": _ADMINS,
    "pods.list": _READERS,
    "events.list": _READERS,
    "pods.get": _READERS,
    "pods.delete": _ADMINS,
    "pods.evict": _ADMINS,  # drain: moves or deletes a pod, as a delete does
    "nodemetrics.list": _READERS,  # top: the nodes' and pods' latest usage
    "podmetrics.list": _READERS,
    "pods.status": _NODE_OR_ADMIN,  # the node the pod is bound to (an unbound pod: admins)
    # Join tokens admit nodes: only administrators make, list or delete them.
    "tokens.create": _ADMINS,
    "tokens.list": _ADMINS,
    "tokens.delete": _ADMINS,
    # Running code in a pod or reaching its ports is for administrators; logs are readable.
    "pods.exec": _ADMINS,
    "pods.portforward": _ADMINS,
    "pods.logs": _READERS,
    # A ticket for a stream: asked by whoever may read; the stream's own rule above then
    # decides (a viewer gets logs tickets only: agent.master.tickets).
    "tickets.create": _READERS,
}

_CODE_EXECUTION = frozenset({"pods.exec", "pods.portforward"})


def decide(route: str, kind: CallerKind) -> Decision:
    """The table's answer; KeyError for a route without a decision (a bug the tests catch)."""
    if kind in RULES[route]:
        return Decision.ALLOW
    return Decision.UNAUTHENTICATED if kind is CallerKind.ANONYMOUS else Decision.FORBIDDEN


def needs_subject(route: str) -> bool:
    """Whether the answer differs between a node acting on itself and another node (only
    then is the request's subject node worth looking up)."""
    allowed = RULES[route]
    return (_K.NODE_SELF in allowed) != (_K.NODE_OTHER in allowed)


def refusal(match: RouteMatch, caller: Caller, owner: str | None) -> str:
    """The message of a 401 or 403; ``owner``: the node whose API this is (None: master)."""
    who = caller.principal
    if caller.kind is CallerKind.ANONYMOUS:
        reason = f" ({who.note})" if who.note else ""
        return f"a client certificate from this cluster is required{reason}"
    if caller.note:
        return caller.note
    label = "node" if who.role is Role.NODE else caller.kind.value
    if caller.kind is CallerKind.VIEWER and match.route.name in _CODE_EXECUTION:
        return f"{label} {who.name!r} may read logs but not {match.route.pattern[-1]}"
    where = f"use node {owner!r}'s API: " if owner is not None else ""
    reason = f" ({who.note})" if who.note else ""
    return f"{label} {who.name!r} may not {where}{match.route.method} {match.path}{reason}"
