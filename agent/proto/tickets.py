"""Direct-stream tickets (issue 20 item 3, docs/streaming.md "Direct streams with a master's
ticket"), sans-IO: the claims, the token's envelope and its parser, the binding of a ticket to
one stream request, and the node's replay cache. Signing and checking the signature are
``agent.pki.tickets`` (they need ``cryptography``).

A ticket says: the master authorized ``user`` (with ``groups``) for one stream request —
``action`` on ``namespace/pod`` with exactly these query parameters (``target``, a SHA-256 of
their canonical form) — on ``node``, from ``iat`` until ``exp``, once (``jti``). The token is
``nat1.<claims>.<signer certificate>.<signature>``, each part base64url without padding: the
claims as JSON, the DER certificate of the master's proxy identity (``O=system:node-proxies``,
issued from the cluster CA) and its ECDSA P-256 signature over ``SIGNING_CONTEXT`` + the
claims' part. Everything here is bounded before it is decoded, and every malformed input raises
``TicketError`` (a 403), nothing else (``tests/unit/proto/test_tickets.py`` fuzzes it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent import names
from agent.errors import TicketError
from agent.proto.routes import RouteMatch

HEADER = "node-agent-ticket"  # the stream request's header carrying the token
PREFIX = "nat1"  # node-agent ticket, version 1
SIGNING_CONTEXT = b"node-agent stream ticket v1\n"  # a ticket's signature is never anything else
LIFETIME_S = 30  # from issue to the last moment a node accepts it, seconds
CLOCK_SKEW_S = 5  # a node accepts a ticket this much before its iat / after its exp, seconds
MAX_TOKEN_CHARS = 8192  # ~1.4 KiB in practice (claims ~300 B, certificate ~600 B, signature)
MAX_CLAIMS_BYTES = 4096
MAX_CERT_BYTES = 4096
MAX_SIGNATURE_BYTES = 80  # DER ECDSA P-256: at most 72
MAX_GROUPS = 32
MAX_GROUP_CHARS = 256
MAX_USER_CHARS = 256
ACTIONS = ("exec", "portforward", "logs")
_JTI = re.compile(r"[0-9a-f]{32}")  # 128 random bits in hex
_DIGEST = re.compile(r"[0-9a-f]{64}")
_B64 = re.compile(r"[A-Za-z0-9_-]*")
_FIELDS = frozenset(
    {"v", "jti", "user", "groups", "node", "namespace", "pod", "action", "target", "iat", "exp"}
)
MAX_TIME_S = 1 << 40  # far beyond any real clock, small enough for float arithmetic


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket's claims (verified or not: see ``agent.pki.tickets.verify``)."""

    jti: str
    user: str
    groups: tuple[str, ...]
    node: str
    namespace: str
    pod: str
    action: str
    target: str  # target_digest() of the request it allows
    iat: int  # issued at, seconds since the epoch (the master's clock)
    exp: int  # last second of validity

    @property
    def short_id(self) -> str:
        """What logs name it by: the jti's first 12 digits (never the token)."""
        return self.jti[:12]


def target_digest(namespace: str, pod: str, action: str, query: Mapping[str, list[str]]) -> str:
    """The canonical form of one stream request, hashed: the same for the master (which parsed
    the target nodectl asked a ticket for) and the node (which parsed the request it got), so a
    ticket is good for exactly those parameters (the command and its argument order, the
    container, the port, stdin/tty, every logs option)."""
    canonical = json.dumps(
        [namespace, pod, action, sorted((k, list(v)) for k, v in query.items())],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode_claims(ticket: Ticket) -> bytes:
    obj = {
        "v": 1,
        "jti": ticket.jti,
        "user": ticket.user,
        "groups": list(ticket.groups),
        "node": ticket.node,
        "namespace": ticket.namespace,
        "pod": ticket.pod,
        "action": ticket.action,
        "target": ticket.target,
        "iat": ticket.iat,
        "exp": ticket.exp,
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str, part: str, limit: int) -> bytes:
    if len(text) > (limit * 4 + 2) // 3 or _B64.fullmatch(text) is None:
        raise TicketError(f"ticket: malformed {part}")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise TicketError(f"ticket: malformed {part}") from None


@dataclass(frozen=True, slots=True)
class Envelope:
    """A token cut into its parts, not yet verified."""

    signed: bytes  # what the signature covers: SIGNING_CONTEXT + the claims' base64 part
    claims: bytes
    signer_der: bytes
    signature: bytes


def join(claims: bytes, signer_der: bytes, signature: bytes) -> str:
    return ".".join((PREFIX, b64encode(claims), b64encode(signer_der), b64encode(signature)))


def signed_part(claims: bytes) -> bytes:
    return SIGNING_CONTEXT + b64encode(claims).encode("ascii")


def split(token: str) -> Envelope:
    """The parts of a token (bounded, decoded); TicketError when it is not one."""
    if not isinstance(token, str) or not token:
        raise TicketError("ticket: empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise TicketError(f"ticket: longer than {MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise TicketError(f"ticket: not a {PREFIX} ticket")
    claims = _b64decode(parts[1], "claims", MAX_CLAIMS_BYTES)
    signer = _b64decode(parts[2], "signer certificate", MAX_CERT_BYTES)
    signature = _b64decode(parts[3], "signature", MAX_SIGNATURE_BYTES)
    if not claims or not signer or not signature:
        raise TicketError("ticket: an empty part")
    return Envelope(SIGNING_CONTEXT + parts[1].encode("ascii"), claims, signer, signature)


def _text(obj: Mapping[str, object], key: str, limit: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise TicketError(f"ticket: claim {key} is missing or malformed")
    return value


def _time(obj: Mapping[str, object], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_TIME_S:
        raise TicketError(f"ticket: claim {key} is not a time")
    return value


def _name(check: Callable[[str, str, names.Fail], str], value: str, key: str) -> str:
    def fail(field: str, problem: str) -> TicketError:
        return TicketError(f"ticket: claim {field}: {problem}")

    return check(value, key, fail)


def parse_claims(data: bytes) -> Ticket:
    """The claims of a token (after ``split``); TicketError for anything but version 1's."""
    if len(data) > MAX_CLAIMS_BYTES:
        raise TicketError("ticket: claims too long")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise TicketError("ticket: claims are not JSON") from None
    if not isinstance(obj, dict):
        raise TicketError("ticket: claims are not a JSON object")
    if obj.get("v") != 1 or isinstance(obj.get("v"), bool):
        raise TicketError("ticket: not version 1")
    unknown = sorted(set(obj) - _FIELDS)
    if unknown:
        raise TicketError(f"ticket: unknown claim {names.quote(str(unknown[0])[:64])}")
    jti = obj.get("jti")
    if not isinstance(jti, str) or _JTI.fullmatch(jti) is None:
        raise TicketError("ticket: claim jti is not 128 bits in hex")
    target = obj.get("target")
    if not isinstance(target, str) or _DIGEST.fullmatch(target) is None:
        raise TicketError("ticket: claim target is not a SHA-256 in hex")
    groups = obj.get("groups")
    if (
        not isinstance(groups, list)
        or len(groups) > MAX_GROUPS
        or not all(
            isinstance(g, str) and g and len(g) <= MAX_GROUP_CHARS and g.isprintable()
            for g in groups
        )
    ):
        raise TicketError("ticket: claim groups is malformed")
    action = obj.get("action")
    if action not in ACTIONS:
        raise TicketError("ticket: claim action is not exec, portforward or logs")
    iat, exp = _time(obj, "iat"), _time(obj, "exp")
    if not iat <= exp <= iat + LIFETIME_S:
        raise TicketError(f"ticket: lifetime is not within 0..{LIFETIME_S} s")
    return Ticket(
        jti=jti,
        user=_text(obj, "user", MAX_USER_CHARS),
        groups=tuple(groups),
        node=_name(names.check_node_name, _text(obj, "node", 253), "node"),
        namespace=_name(names.check_namespace, _text(obj, "namespace", 63), "namespace"),
        pod=_name(names.check_pod_name, _text(obj, "pod", 253), "pod"),
        action=str(action),
        target=target,
        iat=iat,
        exp=exp,
    )


def check_times(ticket: Ticket, now: float, not_before: float) -> None:
    """Refused when expired, not yet valid, or issued before ``not_before`` (the node's start:
    its replay cache does not remember the tickets it saw before)."""
    if now > ticket.exp + CLOCK_SKEW_S:
        raise TicketError(f"ticket {ticket.short_id} expired")
    if now < ticket.iat - CLOCK_SKEW_S:
        raise TicketError(f"ticket {ticket.short_id} is not valid yet (clocks disagree?)")
    if ticket.iat < not_before:
        raise TicketError(f"ticket {ticket.short_id} was issued before this node started")


def check_binding(
    ticket: Ticket,
    *,
    node: str,
    namespace: str,
    pod: str,
    action: str,
    query: Mapping[str, list[str]],
) -> None:
    """Refused unless the ticket names this node and exactly this request."""
    if ticket.node != node:
        raise TicketError(f"ticket {ticket.short_id} is for node {ticket.node!r}, not {node!r}")
    if (ticket.namespace, ticket.pod) != (namespace, pod):
        raise TicketError(
            f"ticket {ticket.short_id} is for pod {ticket.namespace}/{ticket.pod}, "
            f"not {namespace}/{pod}"
        )
    if ticket.action != action:
        raise TicketError(f"ticket {ticket.short_id} is for {ticket.action}, not {action}")
    if ticket.target != target_digest(namespace, pod, action, query):
        raise TicketError(
            f"ticket {ticket.short_id} is for other {action} parameters than this request's"
        )


class ReplayCache:
    """The jtis a node has accepted, each kept until its ticket's expiry (plus the skew), so a
    second use is refused. Bounded: at ``capacity`` live entries a new ticket is refused (a
    node is not asked for 65,536 streams in 35 s by honest users; refusing keeps the
    guarantee), and so is a user's ticket past ``per_user`` of its own live ones: any reader
    may get logs tickets, as many as it asks for, and one user filling the cache would have
    every user's direct streams to this node refused (nodectl takes that 403 as final)."""

    def __init__(self, capacity: int = 65_536, per_user: int = 4_096) -> None:
        self.capacity = capacity
        self.per_user = per_user  # a sixteenth: 117 streams a second for 35 s, per user
        # jti -> (expiry, user); inserted in arrival order, expiries nearly so (same lifetime)
        self._seen: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._live: dict[str, int] = {}  # user -> entries in _seen

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: float) -> None:
        while self._seen:
            jti, (until, user) = next(iter(self._seen.items()))
            if until >= now:
                break
            del self._seen[jti]
            left = self._live[user] - 1
            if left:
                self._live[user] = left
            else:
                del self._live[user]

    def use(self, ticket: Ticket, now: float) -> None:
        """Record the ticket's use; TicketError if it was used before (or the cache, or the
        user's share of it, is full)."""
        self._expire(now)
        if ticket.jti in self._seen:
            raise TicketError(f"ticket {ticket.short_id} already used")
        live = self._live.get(ticket.user, 0)
        if live >= self.per_user:
            raise TicketError(
                f"too many tickets of {ticket.user!r} in use on this node ({live}): try again"
            )
        if len(self._seen) >= self.capacity:
            raise TicketError("too many tickets in use on this node: try again")
        self._seen[ticket.jti] = (float(ticket.exp + CLOCK_SKEW_S), ticket.user)
        self._live[ticket.user] = live + 1


def check_request(ticket: Ticket, match: RouteMatch, owner: str | None) -> None:
    """The edge's check of a ticket against the request it came with, on the node whose API
    this is (``owner``): a ticket is good for its one stream request only."""
    if owner is None or not match.route.stream:
        raise TicketError(
            f"ticket {ticket.short_id} is good for one exec, port-forward or logs stream on a "
            f"node, not for {match.route.method} {match.path}"
        )
    check_binding(
        ticket,
        node=owner,
        namespace=match.param("namespace"),
        pod=match.param("pod"),
        action=match.route.pattern[-1],
        query=match.query,
    )
