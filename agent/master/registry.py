"""The node registry: registration requests, node records, certificates, leases, readiness.

Four separate facts per node, each shown to operators: registration (Pending / Approved /
Denied), trust (the rule that admitted it, certificate expiry), readiness (from leases), and
schedulability (cordon). Records live in the store under ``/nodes/<name>`` and survive master
restarts; leases are kept in memory only (they are renewed every few seconds and judged only
after the master has been up for a full grace period, so losing them on restart costs nothing).
With several masters each one's renewals are reported to the others (agent.master.renewals),
and a master that cannot see them all (out of touch with the store) judges no node NotReady:
``Unknown``, reason ``MasterOutOfTouch`` (:attr:`NodeRegistry.view_since`).
The records are cached in memory (the authorization of every node request reads the cache), and
the cache follows the store's watch (:meth:`NodeRegistry.follow`): another master sharing the
store (etcd) deletes, denies, re-keys or cordons a node, and this one's cache has it as soon as
the watch delivers the change.

Anonymous callers can make the registry store things, so what they can make it store is
bounded (docs/security.md, "Registration under load and replacement keys"): each source address
has a token bucket (:class:`SourceRateLimit`), the requests waiting for an administrator (new
nodes under ``approval``, replacement keys) are capped in number and bytes and expire, every
field of a registration has a size limit, and labels follow Kubernetes' rules.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import ipaddress
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from agent.aio.clock import Clock, SystemClock
from agent.aio.logs import kv
from agent.config import split_host_port
from agent.errors import (
    BadRequestError,
    CompactedError,
    ConfigError,
    KeyMismatchError,
    NameConflictError,
    NotFoundError,
    RegistrationRefusedError,
    StoreError,
    TooManyRequestsError,
    UpdateConflictError,
)
from agent.events import EventRecorder
from agent.jointoken import JoinToken, parse_token
from agent.master import servingnames
from agent.master.config import MasterConfig
from agent.master.pki_files import ClusterPki
from agent.master.policy import Caller, Decision, Verdict, evaluate
from agent.master.store.base import EventType, Store, WatchEvent
from agent.master.tokens import JoinTokens, TokenCheck
from agent.names import (
    check_label_value,
    check_node_name,
    check_qualified_name,
    is_node_name,
    quote,
)
from agent.pki.core import PIN_PREFIX, cert_to_pem, issue, load_csr, public_key_id
from agent.pki.names import NODE_CN_PREFIX, NODES_GROUP

log = logging.getLogger(__name__)

NODES_PREFIX = "/nodes/"
PENDING = "Pending"
APPROVED = "Approved"
DENIED = "Denied"
MAX_POLL_S = 60.0
MAX_NODE_CONDITIONS = 16
MAX_CONDITION_TEXT = 1024
# A DNS name's 253 characters, brackets, ":" and a five-digit port: anything longer is refused
# before it is parsed (or echoed in an error).
MAX_ENDPOINT_CHARS = 253 + 2 + 1 + 5
DNS_NAME_MAX_CHARS = 253
# RFC 1123 host name label, any case (the API endpoint is connected to, not compared).
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# Size limits of what a node reports (registration and lease status). Labels as Kubernetes
# (keys are qualified names, values at most 63 characters) plus a count and a total, which
# Kubernetes leaves to the object size limit; the rest is generous for any real node.
MAX_LABELS = 64
MAX_LABELS_BYTES = 16 * 1024  # keys and values together
MAX_ADDRESSES = 32
MAX_CAPACITY_ENTRIES = 32
MAX_FACT_CHARS = 253  # an address, a host name, a capacity name or value, a version
MAX_CSR_CHARS = 16 * 1024  # a P-256 CSR with a few names is under 1 KiB
# A full queue of waiting requests frees up only when an administrator acts or a request
# expires: a client is told to come back in a minute (the agent backs off on its own anyway).
PENDING_FULL_RETRY_AFTER_S = 60
# The token buckets kept at once: a bucket that has refilled is dropped first, then the one
# used least recently (whose source may then start again with a full bucket: the pending cap,
# not the bucket, is what bounds the store).
MAX_RATE_SOURCES = 10_000
IPV6_SOURCE_PREFIX = 64  # one host usually holds a whole /64: its addresses share a bucket
# How often expired requests are looked for: a quarter of the time-to-live, within bounds.
EXPIRY_CHECK_MIN_S = 0.25
EXPIRY_CHECK_MAX_S = 60.0
# The watch of the node records broken (the store away): the pause before it resumes from the
# revision it reached, doubling from the first to the last while it keeps failing.
FOLLOW_RETRY_FIRST_S = 0.5
FOLLOW_RETRY_MAX_S = 8.0


def node_csr_key(name: str, csr_pem: str) -> ec.EllipticCurvePublicKey:
    """The public key of a valid CSR for node ``name`` (CN=system:node:<name>)."""
    try:
        pem = csr_pem.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate, which a JSON \u escape can carry
        raise BadRequestError("the CSR is not PEM text") from exc
    csr = load_csr(pem)
    ident = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not ident or ident[0].value != NODE_CN_PREFIX + name:
        raise BadRequestError(f"the CSR's CN must be {NODE_CN_PREFIX}{name}")
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)  # load_csr refuses other keys
    return public_key


def request_id(name: str, key_id: str) -> str:
    """Deterministic per (name, key): retries of one node never pile up requests."""
    return hashlib.sha256(f"{name}\n{key_id}".encode()).hexdigest()[:32]


def _timestamp(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime(_TIMESTAMP_FORMAT)


def _strings(value: object, field: str, max_items: int = MAX_ADDRESSES) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequestError(f"{field} must be a list of strings")
    if len(value) > max_items:
        raise BadRequestError(f"{field} has {len(value)} items, more than {max_items}")
    for item in value:
        _bounded(item, field)
    return list(value)


def _bounded(text: str, field: str, max_chars: int = MAX_FACT_CHARS) -> str:
    if len(text) > max_chars:
        raise BadRequestError(f"{field}: {quote(text)} is longer than {max_chars} characters")
    return text


def _text(value: object, field: str, max_chars: int = MAX_FACT_CHARS) -> str:
    """A scalar as text (a node may send a version as a number); an object or a list is
    refused (its ``str`` could be anything, and raises RecursionError when nested deeply)."""
    if isinstance(value, dict | list):
        raise BadRequestError(f"{field} must be a string")
    return _bounded(str(value), field, max_chars)


def _string_map(value: object, field: str, max_items: int = MAX_CAPACITY_ENTRIES) -> dict[str, str]:
    """A mapping of names to scalars, as strings (capacity quantities may come as numbers)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()
    ):
        raise BadRequestError(f"{field} must be an object of strings or numbers")
    if len(value) > max_items:
        raise BadRequestError(f"{field} has {len(value)} entries, more than {max_items}")
    return {_bounded(str(k), field): _bounded(str(v), field) for k, v in value.items()}


def _labels(value: object, field: str) -> dict[str, str]:
    """Node labels as Kubernetes has them (qualified-name keys, values of at most 63
    characters), at most ``MAX_LABELS`` of them and ``MAX_LABELS_BYTES`` in all."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequestError(f"{field} must be an object of strings")
    if len(value) > MAX_LABELS:
        raise BadRequestError(f"{field} has {len(value)} labels, more than {MAX_LABELS}")
    total = sum(len(k) + len(v) for k, v in value.items())
    if total > MAX_LABELS_BYTES:
        raise BadRequestError(
            f"{field} hold {total} characters of keys and values, more than {MAX_LABELS_BYTES}"
        )
    for key, text in value.items():
        check_qualified_name(key, f"{field}[{quote(key)}]", "label")
        check_label_value(text, f"{field}[{quote(key)}]")
    return dict(value)


def _int_map(value: object, field: str) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value.values()
    ):
        raise BadRequestError(f"{field} must be an object of integers")
    return {str(k): v for k, v in value.items()}


def _is_dns_name(host: str) -> bool:
    labels = host.split(".")
    return (
        len(host) <= DNS_NAME_MAX_CHARS
        and all(_DNS_LABEL.fullmatch(label) for label in labels)
        # An all-numeric last label is a mistyped address (10.0.0.300), not a name.
        and not labels[-1].isdigit()
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_endpoint(value: str, field: str) -> tuple[str, int]:
    """``HOST:PORT`` as a node reports where its API listens → (host, port) to connect to: the
    host an IP address (IPv6 bracketed) or a DNS name, the port 1..65535; else
    BadRequestError naming ``field``."""
    if len(value) > MAX_ENDPOINT_CHARS:
        raise BadRequestError(f"{field} is longer than {MAX_ENDPOINT_CHARS} characters")
    try:
        host, port = split_host_port(value, field)
    except ConfigError as exc:
        raise BadRequestError(exc.message) from exc
    if not (_is_ip(host) or _is_dns_name(host)):
        raise BadRequestError(f"{field}: {host!r} is neither an IP address nor a DNS name")
    return host, port


def _endpoint(value: object, field: str) -> str:
    """A reported endpoint, checked (``""``: none reported)."""
    endpoint = _text(value, field)
    if endpoint:
        parse_endpoint(endpoint, field)
    return endpoint


@dataclass(frozen=True, slots=True)
class RegistrationResult:
    status: int
    body: dict[str, Any]


def key_fingerprint(key_id: str) -> str:
    """What administrators see of a key: ``sha256:<hex>`` of its SubjectPublicKeyInfo (the
    record's ``publicKeyId`` is that hex), the form of ``agent.pki.core.spki_pin``."""
    return PIN_PREFIX + key_id


def rate_source(peer_ip: str) -> str:
    """The token bucket a peer draws from: its IPv4 address (an IPv4-mapped IPv6 one too), or
    its IPv6 /64, which one host usually holds whole."""
    try:
        address = ipaddress.ip_address(peer_ip)
    except ValueError:
        return peer_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SOURCE_PREFIX), strict=False))
    return str(address)


class SourceRateLimit:
    """A token bucket per source address: ``burst`` requests at once, then ``rate_per_s``.
    The rate and burst are passed on every call, so a policy reload applies at once. At most
    ``max_sources`` buckets are kept (refilled ones are forgotten first)."""

    def __init__(self, clock: Clock, max_sources: int = MAX_RATE_SOURCES) -> None:
        self._clock = clock
        self._max_sources = max_sources
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at)

    def take(self, peer_ip: str, rate_per_s: float, burst: int) -> None:
        """Spend one token of ``peer_ip``'s bucket; TooManyRequestsError when it has none."""
        source = rate_source(peer_ip)
        now = self._clock.monotonic()
        tokens, at = self._buckets.pop(source, (float(burst), now))
        tokens = min(float(burst), tokens + (now - at) * rate_per_s)
        self._buckets[source] = (tokens - 1 if tokens >= 1 else tokens, now)  # most recent last
        if len(self._buckets) > self._max_sources:
            self._forget(now, rate_per_s, burst)
        if tokens < 1:
            retry_after_s = max(1, math.ceil((1 - tokens) / rate_per_s))
            raise TooManyRequestsError(
                f"too many registration requests from {source}: at most {burst} at once and "
                f"{rate_per_s:g} per second; retry in {retry_after_s} s",
                retry_after_s,
            )

    def _forget(self, now: float, rate_per_s: float, burst: int) -> None:
        for source, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * rate_per_s >= burst:
                del self._buckets[source]
        while len(self._buckets) > self._max_sources:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def _parse_record(name: str, value: bytes) -> dict[str, Any] | None:
    """A stored node record, or None (with a warning) when it is not one: a record no master
    wrote must not stop the master's cache from following the store."""
    try:
        record = json.loads(value)
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("registration"), str):
        log.warning("a node record that is not one is ignored", extra=kv(node=name))
        return None
    return record


def _is_new_node_request(record: dict[str, Any]) -> bool:
    """A Pending record of a node never approved (``certExpiry`` is set by the first
    certificate): a request only an anonymous caller made, so bounded and expiring."""
    return record["registration"] == PENDING and "certExpiry" not in record


def _parse_timestamp(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class NodeRegistry:
    def __init__(
        self,
        store: Store,
        pki: ClusterPki,
        config: MasterConfig,
        client_cas: Sequence[x509.Certificate],
        *,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        self.pki = pki
        self.config = config
        self.client_cas = list(client_cas)
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.leases: dict[str, float] = {}
        # Since when this master sees every renewal of the cluster (monotonic), None while it
        # cannot: alone, since it started; with several masters, since it has been in touch
        # with the store and the renewals the others report (agent.master.renewals).
        self.view_since: Callable[[], float | None] = lambda: self.started
        self.sharing = False  # with several masters: renewals here are reported to the others
        self._renewed: set[str] = set()  # renewed here since the last report
        self._cache: dict[str, tuple[dict[str, Any], int]] = {}
        # The store revision the cache is complete up to: where follow()'s watch resumes.
        self._revision = 0
        # Records this master deleted, by the revision of the deletion: a change from before it
        # that the watch delivers late must not bring the record back. Dropped once the watch
        # has passed that revision.
        self._gone: dict[str, int] = {}
        self.events = EventRecorder("node-master", component="node-master")
        self._changed: dict[str, asyncio.Event] = {}
        self._sizes: dict[str, int] = {}  # stored bytes of each record
        self.rate_limit = SourceRateLimit(self.clock)
        self.tokens = JoinTokens(store, self.clock)
        # Held from the room check of a new waiting request to its write, so concurrent
        # requests cannot all pass the check and overshoot the cap together.
        self._queue_lock = asyncio.Lock()

    # -- records ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Fill the record cache from the store (at start-up, and as a relist when the watch's
        history is compacted). A record this master wrote or deleted after the listing's
        revision stays as this master has it (the watch, resuming from that revision, brings
        it again)."""
        items, revision = await self.store.list_prefix(NODES_PREFIX)
        fresh: dict[str, tuple[dict[str, Any], int]] = {}
        sizes: dict[str, int] = {}
        for item in items:
            name = item.key.removeprefix(NODES_PREFIX)
            record = _parse_record(name, item.value)
            if record is not None:
                fresh[name], sizes[name] = (record, item.mod_revision), len(item.value)
        old = self._cache
        if revision < self._revision:
            # The store is behind what the cache followed (replaced, restored): its listing
            # is the truth, nothing newer of ours can be.
            self._gone = {}
        else:
            for name, hit in old.items():
                if hit[1] > revision:
                    fresh[name], sizes[name] = hit, self._sizes.get(name, 0)
            self._gone = {name: rev for name, rev in self._gone.items() if rev > revision}
            for name, deleted_at in self._gone.items():
                if name in fresh and fresh[name][1] < deleted_at:
                    del fresh[name], sizes[name]
        self._cache, self._sizes = fresh, sizes
        self._revision = revision
        for name in old.keys() - fresh.keys():
            self.leases.pop(name, None)
        for name in old.keys() | fresh.keys():
            if old.get(name) != fresh.get(name):
                self._wake_pollers(name)
        for name in fresh.keys() - old.keys():
            if not is_node_name(name):  # stored by a master older than the name checks
                log.warning(
                    "a node record under a name no route can address (not a valid node name): "
                    "it is listed, but no request can renew, approve or delete it",
                    extra=kv(node=name),  # both log formats escape a field's value
                )

    async def follow(self) -> NoReturn:
        """Keep the cache as the store has it, for as long as the master runs: every change
        under ``/nodes/`` from the revision the cache was loaded at is applied (another
        master's approval, denial, key replacement, cordon or delete included), and wakes the
        pollers of that node's request. A compacted history relists (:meth:`load`); a broken
        watch (the store away) resumes from the revision reached, after a pause, and the cache
        keeps its last state meanwhile. Ends only when cancelled."""
        pause_s = FOLLOW_RETRY_FIRST_S
        relist = False
        while True:
            try:
                if relist:
                    await self.load()
                    relist = False
                async for event in self.store.watch(NODES_PREFIX, self._revision):
                    self._apply(event)
                    pause_s = FOLLOW_RETRY_FIRST_S
                raise StoreError("the watch of the node records ended")  # it never should
            except CompactedError as exc:
                log.warning(
                    "node records: the watch's history is compacted; relisting",
                    extra=kv(error=str(exc), revision=self._revision),
                )
                relist = True
            except StoreError as exc:
                log.warning(
                    "node records: the store's watch broke; the cache keeps its last state",
                    extra=kv(error=str(exc), revision=self._revision, retry_s=pause_s),
                )
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, FOLLOW_RETRY_MAX_S)

    def _apply(self, event: WatchEvent) -> None:
        """One change of a record, from the watch: skipped when the cache already holds this
        or a later revision (this master's own write, or its delete)."""
        name = event.key.removeprefix(NODES_PREFIX)
        self._revision = max(self._revision, event.revision)
        if self._gone:
            self._gone = {n: rev for n, rev in self._gone.items() if rev > self._revision}
        hit = self._cache.get(name)
        if hit is not None and hit[1] >= event.revision:
            return
        if event.type is EventType.DELETE:
            if hit is not None:
                self._forget(name)
            return
        if name in self._gone:
            return  # a change from before this master deleted the record (a later revision)
        record = _parse_record(name, event.value)
        if record is None:
            if hit is not None:
                self._forget(name)
            return
        if hit is not None and hit[0].get("publicKeyId") != record.get("publicKeyId"):
            self.leases.pop(name, None)  # a new key: the old one's lease is not its
        self._cache[name] = (record, event.revision)
        self._sizes[name] = len(event.value)
        self._wake_pollers(name)

    async def get_record(self, name: str) -> tuple[dict[str, Any], int] | None:
        """A private copy of the record and its revision (for compare-and-swap)."""
        hit = self._cache.get(name)
        if hit is None:
            return None
        return copy.deepcopy(hit[0]), hit[1]

    def is_current_node(self, name: str, key_id: str) -> bool:
        """The authorization question asked on every node request: answered from memory."""
        hit = self._cache.get(name)
        return (
            hit is not None
            and hit[0]["registration"] == APPROVED
            and hit[0]["publicKeyId"] == key_id
        )

    def _now_iso(self) -> str:
        return _timestamp(self.clock.time())

    def _wake_pollers(self, name: str) -> None:
        self._changed.pop(name, asyncio.Event()).set()

    async def _save(self, record: dict[str, Any], expected_rev: int) -> bool:
        record["updatedAt"] = self._now_iso()
        data = json.dumps(record, sort_keys=True).encode()
        rev = await self.store.compare_and_swap(NODES_PREFIX + record["name"], data, expected_rev)
        if rev is None:
            # Changed since it was read: by a write of ours in between (the cache has it), or by
            # another master sharing the store (etcd), which the watch has not delivered yet.
            # The cache takes the stored record now, so the caller's next attempt starts from
            # it instead of failing the swap again until the watch catches up.
            await self._refresh(record["name"])
            return False
        self._cache[record["name"]] = (copy.deepcopy(record), rev)
        self._sizes[record["name"]] = len(data)
        self._wake_pollers(record["name"])
        return True

    async def _refresh(self, name: str) -> None:
        """The cache entry of ``name`` as the store has it now."""
        found = await self.store.get(NODES_PREFIX + name)
        if found is None:
            if name in self._cache:
                self._forget(name)
            return
        hit = self._cache.get(name)
        record = _parse_record(name, found.value)
        if record is None:
            self._forget(name)
        elif hit is None or hit[1] < found.mod_revision:
            self._cache[name] = (record, found.mod_revision)
            self._sizes[name] = len(found.value)

    async def records(self) -> list[dict[str, Any]]:
        """Every node record (shared: callers must not modify them)."""
        return [record for record, _ in self._cache.values()]

    # -- registration ----------------------------------------------------------------------

    def _issue_for(self, record: dict[str, Any], public_key: ec.EllipticCurvePublicKey) -> str:
        # Only names the master verified (agent.master.servingnames), never the node's say.
        names = servingnames.certificate_names(record)
        cert = issue(
            self.pki.ca_key,
            self.pki.ca_cert,
            public_key,
            common_name=NODE_CN_PREFIX + record["name"],
            groups=[NODES_GROUP],
            sans=names,
            lifetime_s=self.config.node_cert_lifetime_s,
            client=True,
            server=True,
        )
        record["certExpiry"] = cert.not_valid_after_utc.strftime(_TIMESTAMP_FORMAT)
        return cert_to_pem(cert).decode()

    def _certified(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` is an Approved node holding a certificate that has not expired."""
        expiry = record.get("certExpiry")
        if record.get("registration") != APPROVED or not record.get("certificate") or not expiry:
            return False
        try:
            until = datetime.strptime(str(expiry), _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            return False
        return until.timestamp() > self.clock.time()

    def _answer(self, record: dict[str, Any]) -> RegistrationResult:
        phase = record["registration"]
        if phase == APPROVED and record.get("certificate"):
            return RegistrationResult(
                200,
                {
                    "status": APPROVED,
                    "certificate": record["certificate"],
                    "caBundle": cert_to_pem(self.pki.ca_cert).decode(),
                    "admittedBy": record.get("admittedBy", ""),
                    "leaseRenewSeconds": self.config.lease_renew_s,
                },
            )
        if phase == DENIED:
            return RegistrationResult(403, {"status": DENIED, "reason": record.get("reason", "")})
        return RegistrationResult(202, {"status": PENDING, "requestId": record["requestId"]})

    async def register(
        self,
        body: dict[str, Any],
        caller_ip: str,
        peer_cert: x509.Certificate | None,
        trusted_node: str | None,
    ) -> RegistrationResult:
        """Handle one registration (or re-registration) request."""
        name = body.get("nodeName")
        csr_pem = body.get("csr")
        if not isinstance(name, str) or not isinstance(csr_pem, str):
            raise BadRequestError("nodeName and csr (PEM) are required strings")
        # The one check of every edge (agent.names): a name becomes a store key, a path
        # segment, a certificate's CN and a row of `nodectl get nodes`.
        check_node_name(name, "nodeName")
        if len(csr_pem) > MAX_CSR_CHARS:
            raise BadRequestError(f"csr is longer than {MAX_CSR_CHARS} characters")
        public_key = node_csr_key(name, csr_pem)
        key_id = public_key_id(public_key)
        rid = request_id(name, key_id)
        facts = {
            "addresses": _strings(body.get("addresses"), "addresses"),
            "hostname": _text(body.get("hostname", ""), "hostname"),
            "capacity": _string_map(body.get("capacity"), "capacity"),
            "labels": _labels(body.get("labels"), "labels"),
            "agentVersion": _text(body.get("agentVersion", ""), "agentVersion"),
        }
        token = parse_token(body["token"]) if body.get("token") is not None else None
        judge = _Judge(self, name, caller_ip, peer_cert, token)
        asked = servingnames.asked_names(csr_pem, *facts["addresses"], str(facts["hostname"]))
        for _ in range(5):  # compare-and-swap retries against concurrent admin actions
            found = await self.get_record(name)
            if found is not None:
                record, rev = found
                if record["publicKeyId"] != key_id:
                    if not await self._request_replacement(
                        record, rev, key_id, csr_pem, caller_ip, await judge.check()
                    ):
                        continue
                    raise NameConflictError(
                        f"node {name!r} is registered with a different key; an administrator "
                        f"must run `nodectl delete node {name}` or `nodectl approve {name} "
                        f"--force-replace --fingerprint {key_fingerprint(key_id)}` before it "
                        f"can join with this one"
                    )
                was_pending = record["registration"] == PENDING
                # Nothing an unauthenticated request says changes a node holding a valid
                # certificate unless the policy admits it (see below).
                stored = copy.deepcopy(record)
                record.update(facts)
                _apply_token_labels(record)
                servingnames.note(record, asked, caller_ip, self._now_iso())
                if trusted_node == name:
                    # Trusted nodes stay trusted whatever the policy says now.
                    record["registration"] = APPROVED
                    record["certificate"] = self._issue_for(record, public_key)
                elif record["registration"] == APPROVED and record.pop("pickup", False):
                    pass  # approved by an administrator with this key: hand over that certificate
                elif record["registration"] == DENIED:
                    # Kept so that an administrator's later approval can issue a certificate.
                    record["csr"] = csr_pem
                else:
                    # Approved once (certificate lost or expired), or waiting: back through
                    # the policy, which may have changed since (a SIGHUP reload).
                    await judge.note_spent(record)
                    decision = await judge.decide()
                    if decision.verdict is not Verdict.ADMIT and self._certified(stored):
                        # The CSR is no proof of possession now: a replayed body (an old
                        # registration's, the record's own csr) must not turn an Approved
                        # node Denied or Pending and drop its certificate. Only an
                        # administrator (deny, delete node) revokes a node; the caller gets
                        # the policy's refusal, or the node as it is.
                        if decision.verdict is Verdict.REFUSE:
                            self._event(
                                name,
                                "RegistrationRefusedError",
                                f"from {caller_ip}: {decision.reason}; the node stays "
                                f"Approved with its certificate",
                                warning=True,
                            )
                            return RegistrationResult(
                                403, {"status": DENIED, "reason": decision.reason}
                            )
                        return self._answer(stored)
                    record["admittedBy"] = decision.rule
                    record["reason"] = decision.reason
                    if decision.verdict is Verdict.ADMIT:
                        judge.note_token(record, decision)
                        record["registration"] = APPROVED
                        record["certificate"] = self._issue_for(record, public_key)
                        record.pop("csr", None)
                    else:
                        record["registration"] = (
                            PENDING if decision.verdict is Verdict.QUEUE else DENIED
                        )
                        record["csr"] = csr_pem
                        record.pop("certificate", None)
                        if record["registration"] == PENDING and not was_pending:
                            record["pendingSince"] = self._now_iso()
                if record == stored:
                    return self._answer(record)  # a node asking again: nothing to write
                if await self._save(record, rev):
                    return self._answer(record)
                continue
            decision = await judge.decide()
            if decision.verdict is Verdict.REFUSE:
                self._refuse(name, caller_ip, decision)
            record = {
                "name": name,
                "publicKeyId": key_id,
                "requestId": rid,
                "registration": APPROVED if decision.verdict is Verdict.ADMIT else PENDING,
                "admittedBy": decision.rule,
                "reason": decision.reason,
                "unschedulable": False,
                "createdAt": self._now_iso(),
                **facts,
            }
            servingnames.note(record, asked, caller_ip, self._now_iso())
            if decision.verdict is Verdict.ADMIT:
                judge.note_token(record, decision)
                record["certificate"] = self._issue_for(record, public_key)
                saved = await self._save(record, 0)
            else:
                record["csr"] = csr_pem
                record["pendingSince"] = record["createdAt"]
                async with self._queue_lock:
                    self._check_room(name, len(json.dumps(record, sort_keys=True)))
                    saved = await self._save(record, 0)
            if saved:
                self._event(
                    name,
                    "Registered" if decision.verdict is Verdict.ADMIT else "RegistrationQueued",
                    f"{decision.reason} (from {caller_ip})",
                )
                log.info(
                    "node registered"
                    if decision.verdict is Verdict.ADMIT
                    else "registration queued for approval",
                    extra=kv(node=name, rule=decision.rule, peer=caller_ip),
                )
                return self._answer(record)
        raise UpdateConflictError("registration kept conflicting with concurrent changes; retry")

    def _decide(self, caller: Caller) -> Decision:
        return evaluate(self.config.registration, caller, self.client_cas)

    def _refuse(self, name: str, caller_ip: str, decision: Decision) -> None:
        self._event(
            name, "RegistrationRefusedError", f"from {caller_ip}: {decision.reason}", warning=True
        )
        log.info(
            "registration refused", extra=kv(node=name, peer=caller_ip, reason=decision.reason)
        )
        raise RegistrationRefusedError(decision.reason)

    async def _request_replacement(
        self,
        record: dict[str, Any],
        rev: int,
        key_id: str,
        csr_pem: str,
        caller_ip: str,
        caller: Caller,
    ) -> bool:
        """A registration for a held name with another key: remembered with its evidence (the
        key's fingerprint, the source address, the time, the rule that let it in) so that an
        administrator can accept exactly that key; a request from another key replaces it, with
        a new event. False when the record changed meanwhile (the caller retries)."""
        name = record["name"]
        previous = record.get("replacement")
        if previous is not None and previous.get("publicKeyId") == key_id:
            return True  # already waiting: the evidence of its first request stays
        decision = self._decide(caller)
        if decision.verdict is Verdict.REFUSE:
            self._refuse(name, caller_ip, decision)
        fp = key_fingerprint(key_id)
        record["replacement"] = {
            "publicKeyId": key_id,
            "fingerprint": fp,
            "csr": csr_pem,
            "source": caller_ip,
            "requestedAt": self._now_iso(),
            "admittedBy": decision.rule,
        }
        async with self._queue_lock:
            if previous is None:
                self._check_room(name, len(json.dumps(record["replacement"])))
            if not await self._save(record, rev):
                return False
        message = (
            f"a registration from {caller_ip} (rule {decision.rule}) asks to replace the key of "
            f"node {name} with {fp}; `nodectl approve {name} --force-replace --fingerprint {fp}` "
            f"accepts it"
        )
        if previous is not None:
            message += (
                f"; it replaces the waiting request for {key_fingerprint(previous['publicKeyId'])}"
            )
        self._event(name, "KeyReplacementRequested", message, warning=True)
        log.warning(
            "key replacement requested", extra=kv(node=name, peer=caller_ip, fingerprint=fp)
        )
        return True

    # -- the queue of requests waiting for an administrator --------------------------------

    def pending_usage(self) -> tuple[int, int]:
        """(requests, stored bytes) waiting for an administrator: new nodes' registrations and
        replacement keys (a record holding one counts whole)."""
        count = used = 0
        for name, (record, _) in self._cache.items():
            if _is_new_node_request(record) or "replacement" in record:
                count += 1
                used += self._sizes.get(name, 0)
        return count, used

    def _check_room(self, name: str, size: int) -> None:
        """TooManyRequestsError when one more waiting request of ``size`` bytes would pass
        ``max_pending_registrations`` or ``max_pending_bytes``."""
        policy = self.config.registration
        count, used = self.pending_usage()
        problem = ""
        if count >= policy.max_pending_registrations:
            problem = f"{count} requests wait (max_pending_registrations)"
        elif used + size > policy.max_pending_bytes:
            problem = f"they hold {used} bytes (max_pending_bytes {policy.max_pending_bytes})"
        if problem:
            log.warning("registration queue full", extra=kv(node=name, waiting=count, bytes=used))
            raise TooManyRequestsError(
                f"the queue of registrations waiting for an administrator is full: {problem}; "
                f"retry later",
                PENDING_FULL_RETRY_AFTER_S,
            )

    def expiry_check_s(self) -> float:
        """How long the expiry task waits between rounds: a quarter of the time-to-live."""
        ttl = self.config.registration.pending_registration_ttl_s
        return min(max(ttl / 4, EXPIRY_CHECK_MIN_S), EXPIRY_CHECK_MAX_S)

    async def expire_pending(self) -> int:
        """Drop the waiting requests older than ``pending_registration_ttl_s``: a new node's
        record goes, a replacement key is forgotten (the node keeps its current key). Returns
        how many were dropped; each leaves an event."""
        ttl = self.config.registration.pending_registration_ttl_s
        now = self.clock.time()
        expired = 0
        for name, (record, rev) in list(self._cache.items()):
            if _is_new_node_request(record):
                since = _parse_timestamp(record.get("pendingSince") or record.get("createdAt"))
                if since is None or now - since < ttl:
                    continue
                gone = await self.store.delete(NODES_PREFIX + name, expected_mod_revision=rev)
                if gone is None:
                    continue  # changed meanwhile (approved, denied): looked at next round
                self._forget(name, gone)
            elif "replacement" in record:
                waiting = record["replacement"]
                since = _parse_timestamp(waiting.get("requestedAt"))
                if since is None or now - since < ttl:
                    continue
                kept = copy.deepcopy(record)
                del kept["replacement"]
                if not await self._save(kept, rev):
                    continue
            else:
                continue
            expired += 1
            self._event(
                name,
                "RegistrationExpired",
                f"the request waited longer than {ttl:g} s for an administrator and was dropped",
                warning=True,
            )
        if expired:
            log.info("waiting registrations expired", extra=kv(expired=expired))
        return expired

    async def poll(self, rid: str, timeout_s: float) -> RegistrationResult:
        """Long-poll a pending request until it is decided or ``timeout_s`` (at most
        ``MAX_POLL_S``) passes."""
        # Written so that nan (min(nan, 60) is nan, which uvloop's call_later refuses with a
        # ValueError) and negative values wait not at all; the API refuses them with a 400.
        wait_s = min(timeout_s, MAX_POLL_S) if timeout_s > 0 else 0.0
        deadline = self.clock.monotonic() + wait_s
        while True:
            record = next((r for r in await self.records() if r.get("requestId") == rid), None)
            if record is None:
                raise NotFoundError(f"registration request {rid} not found")
            result = self._answer(record)
            remaining = deadline - self.clock.monotonic()
            if result.status != 202 or remaining <= 0:
                return result
            event = self._changed.setdefault(record["name"], asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return self._answer(record)

    # -- admin actions ---------------------------------------------------------------------

    def _event(self, node: str, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.record(
            kind="Node", name=node, namespace="", reason=reason, message=message, warning=warning
        )

    async def _mutate(self, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        for _ in range(5):
            found = await self.get_record(name)
            if found is None:
                raise NotFoundError(f"node {name!r} not found")
            record, rev = found
            change(record)
            if await self._save(record, rev):
                return record
        raise UpdateConflictError(f"node {name!r} kept changing; retry")

    async def approve(
        self, name: str, *, force_replace: bool = False, fingerprint: str = ""
    ) -> dict[str, Any]:
        """Approve a waiting node; with ``force_replace``, accept its waiting replacement key,
        which must be the one ``fingerprint`` names (the key the administrator saw)."""

        def change(record: dict[str, Any]) -> None:
            if force_replace:
                replacement = record.get("replacement")
                if not replacement:
                    raise BadRequestError(
                        f"node {name!r} has no registration from a new key to accept"
                    )
                waiting = key_fingerprint(replacement["publicKeyId"])
                wanted = fingerprint.strip().lower()
                if not wanted:
                    raise BadRequestError(
                        f"accepting a new key for node {name!r} needs its fingerprint "
                        f"(--fingerprint sha256:…): `nodectl describe node {name}` shows the "
                        f"waiting key's, where it came from and when"
                    )
                if wanted != waiting:
                    raise KeyMismatchError(
                        f"node {name!r} waits with key {waiting}, not {quote(wanted)}: the "
                        f"request you saw was replaced (or mistyped); check `nodectl describe "
                        f"node {name}` and accept only a key you trust"
                    )
                del record["replacement"]
                # The new key was seen from there (the evidence the administrator approved).
                servingnames.note(
                    record, [], replacement.get("source"), self._now_iso(), keep_request=True
                )
                record["publicKeyId"] = replacement["publicKeyId"]
                record["requestId"] = request_id(name, replacement["publicKeyId"])
                record["csr"] = replacement["csr"]
                record["registration"] = PENDING
                record["pickup"] = True
                self.leases.pop(name, None)
            elif record["registration"] == APPROVED and record.get("certificate"):
                return
            csr_pem = record.get("csr")
            if not csr_pem:
                raise BadRequestError(f"node {name!r} has no pending certificate request")
            public_key = node_csr_key(name, csr_pem)
            record["registration"] = APPROVED
            record["admittedBy"] = "approval"
            record["reason"] = "approved by an administrator"
            record["certificate"] = self._issue_for(record, public_key)
            record.pop("csr", None)

        approved = await self._mutate(name, change)
        self._event(
            name,
            "Approved",
            "approved by an administrator"
            + (
                f" (new key {key_fingerprint(approved['publicKeyId'])} accepted)"
                if force_replace
                else ""
            ),
        )
        return approved

    async def deny(self, name: str, reason: str) -> dict[str, Any]:
        def change(record: dict[str, Any]) -> None:
            record["registration"] = DENIED
            record["reason"] = reason or "denied by an administrator"
            record.pop("certificate", None)

        denied = await self._mutate(name, change)
        self._event(name, "Denied", denied["reason"], warning=True)
        return denied

    async def set_unschedulable(self, name: str, value: bool) -> dict[str, Any]:
        def change(record: dict[str, Any]) -> None:
            record["unschedulable"] = value

        return await self._mutate(name, change)

    async def update_status(self, name: str, status: dict[str, Any]) -> None:
        """Node-reported facts (addresses, capacity, version); written only when changed."""
        facts = {
            "addresses": _strings(status.get("addresses"), "status.addresses"),
            "capacity": _string_map(status.get("capacity"), "status.capacity"),
            "agentVersion": _text(status.get("agentVersion", ""), "status.agentVersion"),
            "imageFs": _int_map(status.get("imageFs"), "status.imageFs"),
            "nodeConditions": _node_conditions(status.get("conditions")),
            # Checked here, where the node reports it, so the proxy can always connect to it.
            "apiEndpoint": _endpoint(status.get("apiEndpoint", ""), "status.apiEndpoint"),
            # The master URL the node's link uses (several masters: which one it talks to).
            "master": _text(status.get("master", ""), "status.master"),
        }
        found = await self.get_record(name)
        if found is None or all(found[0].get(k) == v for k, v in facts.items()):
            return

        def change(record: dict[str, Any]) -> None:
            record.update(facts)

        await self._mutate(name, change)

    def api_endpoint(self, name: str) -> tuple[str, int] | None:
        """Where node ``name``'s API listens, as (host, port) to connect to; None when the node
        is unknown or has reported none (or its record, written before endpoints were
        checked, holds one that is not HOST:PORT)."""
        hit = self._cache.get(name)
        endpoint = hit[0].get("apiEndpoint") if hit else None
        if not isinstance(endpoint, str) or not endpoint:
            return None
        try:
            return parse_endpoint(endpoint, "apiEndpoint")
        except BadRequestError:
            return None

    async def delete(self, name: str) -> None:
        gone = await self.store.delete(NODES_PREFIX + name)
        if gone is None:
            raise NotFoundError(f"node {name!r} not found")
        self._forget(name, gone)

    def _forget(self, name: str, deleted_at: int | None = None) -> None:
        """A deleted record's traces in memory (``deleted_at``: the revision of this master's
        deletion, which the watch must not undo with an older change)."""
        if deleted_at is not None and deleted_at > self._revision:
            self._gone[name] = deleted_at
        self._cache.pop(name, None)
        self._sizes.pop(name, None)
        self.leases.pop(name, None)
        self._wake_pollers(name)  # a poll of its request now answers 404

    async def rotate(self, name: str, csr_pem: str, source: str | None = None) -> str:
        """A trusted node renews over its mTLS session from ``source`` (None: the address seen
        before): same name, any new key, no approval, and no name the master did not verify
        (agent.master.servingnames)."""
        public_key = node_csr_key(name, csr_pem)
        asked = servingnames.asked_names(csr_pem)
        issued: list[str] = []

        def change(record: dict[str, Any]) -> None:
            if record["registration"] != APPROVED:
                raise RegistrationRefusedError(f"node {name!r} is {record['registration']}")
            servingnames.note(record, asked, source, self._now_iso(), keep_request=True)
            record["publicKeyId"] = public_key_id(public_key)
            record["requestId"] = request_id(name, record["publicKeyId"])
            record["certificate"] = self._issue_for(record, public_key)
            issued.append(record["certificate"])

        await self._mutate(name, change)
        return issued[-1]

    async def decide_serving_names(
        self, name: str, *, approve: bool, names: list[str] | None = None
    ) -> dict[str, Any]:
        """An administrator approves (or denies) the serving names node ``name`` asked for
        (``names``: exactly those they saw): approved ones are on its next certificate, denied
        ones never."""
        decided: list[str] = []

        def change(record: dict[str, Any]) -> None:
            decided[:] = servingnames.decide(record, approve=approve, names=names)

        record = await self._mutate(name, change)
        verb = "approved" if approve else "denied"
        self._event(
            name,
            "ServingNamesApproved" if approve else "ServingNamesDenied",
            f"serving names {verb} by an administrator: {', '.join(decided)}",
            warning=not approve,
        )
        return record

    # -- leases and readiness --------------------------------------------------------------

    def renew_lease(self, name: str) -> None:
        self.leases[name] = self.clock.monotonic()
        if self.sharing:
            self._renewed.add(name)

    def take_renewed(self) -> list[str]:
        """The nodes renewed here since the last call (to report them to the other masters)."""
        names, self._renewed = sorted(self._renewed), set()
        return names

    def give_back(self, names: Sequence[str]) -> None:
        """A report that could not be written: its names go with the next one."""
        self._renewed.update(names)

    def renewed_elsewhere(self, names: Sequence[str]) -> bool:
        """Nodes another master (or this one) reported renewed: their leases are current from
        now, by this master's clock. Names of no record known here are skipped (a report
        cannot make the registry remember more than its records). True when one of them had
        no lease here yet (it became Ready: the scheduler may place pods on it)."""
        now = self.clock.monotonic()
        new = False
        for name in names:
            if name in self._cache:
                new = new or name not in self.leases
                self.leases[name] = now
        return new

    async def note_ready(self, name: str) -> None:
        """The node renewed a lease: remembered once (``firstReadyAt``, kept across master
        restarts), because only nodes that were Ready once count toward disruption mode."""
        hit = self._cache.get(name)
        if hit is None or hit[0].get("firstReadyAt"):
            return

        def change(record: dict[str, Any]) -> None:
            record.setdefault("firstReadyAt", self._now_iso())

        await self._mutate(name, change)

    def was_ever_ready(self, name: str) -> bool:
        hit = self._cache.get(name)
        return hit is not None and bool(hit[0].get("firstReadyAt"))

    def readiness(self, name: str) -> tuple[str, str]:
        now = self.clock.monotonic()
        seen = self.leases.get(name)
        grace = self.config.lease_grace_s
        if seen is not None and now - seen <= grace:
            return "True", "NodeLeaseCurrent"
        view = self.view_since()
        if view is None:
            # Out of touch with the store (several masters): the renewals the others receive
            # do not reach this one, so a missing renewal here proves nothing.
            return "Unknown", "MasterOutOfTouch"
        if now - view < grace:
            # Just restarted (or back in touch): not enough time to judge; never mark every
            # node NotReady at once.
            return "Unknown", "MasterStarting"
        return "False", "NodeLeaseExpired"

    def not_ready_for_s(self, name: str) -> float | None:
        """How long the node has been NotReady; None while Ready or Unknown. Counted from
        the later of its last renewal and the start of this master's view of the renewals."""
        if self.readiness(name)[0] != "False":
            return None
        seen = self.leases.get(name)
        view = self.view_since() or self.started
        since = max(seen if seen is not None else view, view) + self.config.lease_grace_s
        return max(0.0, self.clock.monotonic() - since)

    def node_object(self, record: dict[str, Any]) -> dict[str, Any]:
        status, reason = self.readiness(record["name"])
        seen = self.leases.get(record["name"])
        heartbeat = None
        if seen is not None:
            heartbeat = _timestamp(self.clock.time() - (self.clock.monotonic() - seen))
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": record["name"],
                "labels": record.get("labels", {}),
                "creationTimestamp": record.get("createdAt"),
            },
            "spec": {"unschedulable": bool(record.get("unschedulable"))},
            "status": {
                "registration": {
                    "phase": record["registration"],
                    "admittedBy": record.get("admittedBy", ""),
                    "reason": record.get("reason", ""),
                    "certificateExpiry": record.get("certExpiry"),
                    "keyFingerprint": key_fingerprint(record["publicKeyId"]),
                    "servingNames": servingnames.shown(record),
                    **_waiting(record),
                },
                "conditions": [
                    {
                        "type": "Ready",
                        "status": status,
                        "reason": reason,
                        "lastHeartbeatTime": heartbeat,
                    },
                    *record.get("nodeConditions", []),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": a} for a in record.get("addresses", [])
                ]
                + (
                    [{"type": "Hostname", "address": record["hostname"]}]
                    if record.get("hostname")
                    else []
                ),
                "capacity": record.get("capacity", {}),
                "nodeInfo": {"agentVersion": record.get("agentVersion", "")},
                "daemonEndpoints": {"nodeApi": record.get("apiEndpoint", "")},
                "imageFs": record.get("imageFs", {}),
                "master": record.get("master", ""),
            },
        }


class _Judge:
    """The trust policy's verdict on one registration request, with its join token: the token
    is looked up once (a read), and a use of it is taken only when the ``token`` rule is the
    one that admits (a compare-and-swap; a use lost to another node sends the policy on to its
    next rules with the reason). One use per request, however often the request retries."""

    def __init__(
        self,
        registry: NodeRegistry,
        name: str,
        caller_ip: str,
        peer_cert: x509.Certificate | None,
        token: JoinToken | None,
    ) -> None:
        self._registry = registry
        self._caller = Caller(name, caller_ip, peer_cert)
        self._token = token
        self._checked: TokenCheck | None = None
        self._taken: TokenCheck | None = None

    async def check(self) -> Caller:
        """The caller with its token as the store judges it now (nothing is written)."""
        if self._token is None or "token" not in self._registry.config.registration.trust:
            return self._caller
        if self._checked is None:
            self._checked = await self._registry.tokens.check(self._token)
        return dataclasses.replace(self._caller, token=self._taken or self._checked)

    async def decide(self) -> Decision:
        caller = await self.check()
        decision = self._registry._decide(caller)
        if decision.rule != "token" or decision.verdict is not Verdict.ADMIT:
            return decision
        if self._taken is None:
            assert self._token is not None  # the rule admits only with one
            self._taken = await self._registry.tokens.use(self._token)
        return self._registry._decide(dataclasses.replace(caller, token=self._taken))

    async def note_spent(self, record: dict[str, Any]) -> None:
        """A node the token rule admitted with this very key and token, asking again (its
        answer was lost, or it restarted before keeping its certificate): it holds its use
        already, so it takes none (a one-use token would refuse it and turn the node Denied);
        the token must still exist, hold this secret and be unexpired."""
        if (
            self._token is None
            or self._taken is not None
            or record.get("registration") != APPROVED
            or record.get("joinToken") != self._token.id
            or "token" not in self._registry.config.registration.trust
        ):
            return
        self._taken = await self._registry.tokens.check(self._token, spent=True)

    def note_token(self, record: dict[str, Any], decision: Decision) -> None:
        """On a node the token rule admitted: which token, and its labels (kept apart so that
        the node's own labels, reported again at each registration, never replace them)."""
        if decision.rule != "token" or self._taken is None:
            return
        record["joinToken"] = self._taken.token_id
        record["tokenLabels"] = dict(self._taken.labels)
        _apply_token_labels(record)


def _apply_token_labels(record: dict[str, Any]) -> None:
    """A token's labels are the administrator's: they win over the node's own."""
    if record.get("tokenLabels"):
        record["labels"] = {**record.get("labels", {}), **record["tokenLabels"]}


def _waiting(record: dict[str, Any]) -> dict[str, Any]:
    """What an administrator decides on: since when a new node waits, and the evidence of a
    waiting replacement key (never its CSR)."""
    shown: dict[str, Any] = {}
    if _is_new_node_request(record):
        shown["pendingSince"] = record.get("pendingSince") or record.get("createdAt")
    replacement = record.get("replacement")
    if replacement:
        shown["replacement"] = {
            "fingerprint": key_fingerprint(replacement["publicKeyId"]),
            "source": replacement.get("source", ""),
            "requestedAt": replacement.get("requestedAt", ""),
            "admittedBy": replacement.get("admittedBy", ""),
        }
    return shown


def _node_conditions(raw: Any) -> list[dict[str, str]]:
    """The node's own conditions (RuntimeReady, CheckpointWritable), bounded and as strings;
    ``Ready`` is the master's to judge from the lease, never the node's to claim."""
    if not isinstance(raw, list):
        return []
    found: list[dict[str, str]] = []
    for item in raw[:MAX_NODE_CONDITIONS]:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            continue
        if item["type"] == "Ready":
            continue
        if any(isinstance(item.get(key), dict | list) for key in ("status", "reason", "message")):
            continue  # not a condition: its fields are text
        found.append(
            {
                key: str(item.get(key, ""))[:MAX_CONDITION_TEXT]
                for key in ("type", "status", "reason", "message")
            }
        )
    return found
