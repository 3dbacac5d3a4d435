"""The master's HTTPS API: the JSON handlers of every master route (``agent.proto.routes``
``MASTER_ROUTES``), served over HTTP/1.1 and HTTP/2 by ``agent.aio.edge``, and the master's
answers to the edge's questions about callers (``Gate``).

Who may do what is the authorization table (``agent.proto.authz``, docs/authorization.md):
anonymous callers may only use ``/healthz``, ``/metrics``, ``/v1/ca`` and registration; a node
certificate acts only on its own node and its own pods and only while its record is Approved
with the same key (the NodeRestriction idea; ``nodectl delete node`` also revokes); viewers read;
administrators do everything. Errors are ``{"error": {"code", "message", "details"}}`` with the
status the error carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping

from cryptography import x509

from agent.aio.edge import (
    ApiRequest,
    ApiResponse,
    JsonHandler,
    error_body,
    json_response,
    text_response,
)
from agent.aio.logs import kv
from agent.aio.metrics import (
    CONTENT_TYPE,
    DEFAULT_RUN_BLOCKING,
    RunBlocking,
    exposition,
    gauge,
    new_registry,
    summary,
)
from agent.errors import (
    AgentError,
    BadRequestError,
    CompactedError,
    JsonNumberTooLongError,
    NotFoundError,
    RuntimeUnavailableError,
    StoreError,
)
from agent.manifest import parse_pod
from agent.manifest_loader import OFF_LOOP_BYTES, load_json
from agent.master import servingnames, watch
from agent.master.leader import Leadership, SoleLeader
from agent.master.nodeevents import parse_report
from agent.master.pods import CREATED, PodStore, mirror_name, pod_object
from agent.master.policy import effective_peer
from agent.master.registry import NodeRegistry
from agent.master.tickets import TicketIssuer
from agent.master.tokens import DEFAULT_TTL_S, check_description, check_labels, check_usages
from agent.master.usage import UsageBook, parse_usage, window
from agent.names import quote
from agent.pki.core import cert_to_pem, principal_of
from agent.proto.authz import CallerKind, Principal, Role
from agent.quantity import INT64_MAX
from agent.types import Pod
from agent.versioninfo import version_info

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 20_000
# /readyz: how long the store may take to answer its cheap read (one key, absent or small)
# before the master says it is not ready; short, as a load balancer's check is frequent.
READYZ_STORE_TIMEOUT_S = 2.0
READYZ_PROBE_KEY = "/readyz"  # never written: reading it costs the store one lookup
LOOP_LAG_PROBE_S = 0.05
NDJSON_TYPE = "application/x-ndjson"
APPLY_RESULT_HEADER = "X-Apply-Result"  # created, configured or unchanged (agent.master.pods)


def not_ready(reason: str) -> ApiResponse:
    """/readyz's 503: the reason on one line, as text (what a load balancer logs)."""
    return ApiResponse(503, f"not ready: {reason}\n".encode(), "text/plain; charset=utf-8")


def _grace_period(text: str | None) -> int | None:
    """``?gracePeriodSeconds=N`` of a pod's deletion (kubectl's DeleteOptions): the seconds
    its containers get to stop, in place of the pod's own; None when absent."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19) or int(text) > INT64_MAX:
        raise BadRequestError(
            f"gracePeriodSeconds: {quote(text)} is not a number of seconds from 0 to "
            f"{INT64_MAX} (as a manifest's terminationGracePeriodSeconds)"
        )
    return int(text)


def _read_pod(body: bytes) -> tuple[object, Pod]:
    """A ``POST /v1/pods`` body: the strict loader's JSON, then the manifest parser."""
    manifest = load_json(body, source="api")
    return manifest, parse_pod(manifest, source="api")


class MasterApi:
    def __init__(
        self,
        registry: NodeRegistry,
        pods: PodStore,
        trusted_proxies: tuple[str, ...],
        run_blocking: RunBlocking = DEFAULT_RUN_BLOCKING,
    ) -> None:
        self._run_blocking = run_blocking
        self.registry = registry
        self.pods = pods
        self.trusted_proxies = trusted_proxies
        # The cluster-wide watches' bounds (agent.master.watch); tests shorten them.
        self.watch_max_s = watch.WATCH_MAX_S
        self.watch_bookmark_s = watch.BOOKMARK_EVERY_S
        self.watch_node_check_s = watch.NODE_CHECK_S
        self.watch_slots = watch.WatchSlots()  # the watches each caller holds (429 past them)
        self.metrics_registry = new_registry()
        self.usage = UsageBook()  # the nodes' latest usage (nodectl top), in memory
        # Who leads (agent.master.leader): alone, this master; the composition root sets the
        # etcd election when there are several.
        self.leadership: Leadership = SoleLeader("")
        # Why this master cannot take a lease renewal now ('' when it can): with several
        # masters, when it cannot pass renewals on to the others (agent.master.app sets it).
        self.renewals_refused: Callable[[], str] = lambda: ""
        # Recent samples (seconds) for /metrics quantiles: lease handling time, and how late
        # the event loop runs a timer (queueing every request sees when the loop is busy).
        self.lease_seconds: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.loop_lag_seconds: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.handlers: Mapping[str, JsonHandler] = {
            "healthz": self.healthz,
            "readyz": self.readyz,
            "version": self.version,
            "metrics": self.metrics,
            "ca": self.ca,
            "registrations.create": self.register,
            "registrations.get": self.poll_registration,
            "nodes.list": self.list_nodes,
            "nodes.get": self.get_node,
            "nodes.delete": self.delete_node,
            "nodes.approve": self.node_action,
            "nodes.deny": self.node_action,
            "nodes.cordon": self.node_action,
            "nodes.uncordon": self.node_action,
            "nodes.lease": self.renew_lease,
            "nodes.certificate": self.rotate_certificate,
            "nodes.events": self.post_node_events,
            "certificaterequests.list": self.list_serving_names,
            "servingnames.approve": self.decide_serving_names,
            "servingnames.deny": self.decide_serving_names,
            "nodes.pods": self.node_pods,
            "mirrorpods.put": self.put_mirror,
            "mirrorpods.delete": self.delete_mirror,
            "pods.create": self.apply_pod,
            "pods.list": self.list_pods,
            "events.list": self.list_events,
            "pods.get": self.get_pod,
            "pods.delete": self.delete_pod,
            "pods.evict": self.evict_pod,
            "nodemetrics.list": self.node_metrics,
            "podmetrics.list": self.pod_metrics,
            "pods.status": self.put_pod_status,
            "tokens.create": self.create_token,
            "tokens.list": self.list_tokens,
            "tokens.delete": self.delete_token,
            "tickets.create": self.create_ticket,
        }
        # Set by the composition root once the proxy identity exists (agent.master.app).
        self.tickets: TicketIssuer | None = None

    async def sample_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + LOOP_LAG_PROBE_S
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self.loop_lag_seconds.append(max(0.0, loop.time() - expected))

    # -- the edge's questions (agent.aio.edge.Gate) ------------------------------------------

    def principal(self, peer_der: bytes | None, headers: Mapping[str, str]) -> Principal:
        # The proxy's user headers are believed by nodes only: here the proxy is itself.
        return principal_of(peer_der, [self.registry.pki.ca_cert], self.registry.client_cas)

    def is_current(self, principal: Principal) -> bool:
        return self.registry.is_current_node(principal.node, principal.key_id)

    async def pod_node(self, namespace: str, pod: str) -> str | None:
        obj = await self.pods.get(namespace, pod)
        return str(obj.get("nodeName") or "") or None

    # -- handlers ---------------------------------------------------------------------------

    async def healthz(self, request: ApiRequest) -> ApiResponse:
        return text_response("ok")

    async def readyz(self, request: ApiRequest) -> ApiResponse:
        """Readiness for load balancers (``/healthz`` stays liveness): 200 ``ok`` when a cheap
        read of the store answers within ``READYZ_STORE_TIMEOUT_S`` and :attr:`leader_known`
        says yes; 503 with the reason otherwise (a body of one line, for people)."""
        try:
            async with asyncio.timeout(READYZ_STORE_TIMEOUT_S):
                await self.registry.store.get(READYZ_PROBE_KEY)
        except TimeoutError:
            return not_ready(f"store: no answer within {READYZ_STORE_TIMEOUT_S:g} s")
        except AgentError as exc:  # StoreError and its kin: the store's own words
            return not_ready(f"store: {exc}")
        reason = self.leader_known()
        if reason:
            return not_ready(reason)
        return text_response("ok")

    def leader_known(self) -> str:
        """'' when this master knows who leads (agent.master.leader: alone, itself), else why
        not: out of touch with the store, or between two leaders."""
        return self.leadership.unknown()

    async def version(self, request: ApiRequest) -> ApiResponse:
        return json_response(version_info())

    async def metrics(self, request: ApiRequest) -> ApiResponse:
        records = await self.registry.records()
        by_phase: dict[str, int] = {}
        ready = 0
        for record in records:
            by_phase[record["registration"]] = by_phase.get(record["registration"], 0) + 1
            ready += self.registry.readiness(record["name"])[0] == "True"
        families = [
            gauge(
                "node_master_nodes",
                "Nodes by registration state.",
                (((phase,), n) for phase, n in sorted(by_phase.items())),
                labels=("registration",),
            ),
            gauge("node_master_nodes_ready", "Nodes whose lease is current.", [((), ready)]),
            gauge(
                "node_master_leader",
                "1 when this master leads (judges readiness, evicts, expires, compacts), else 0.",
                [((), int(self.leadership.is_leader()))],
            ),
        ]
        # Copied here: the loop appends to the deques while the render runs in a thread.
        lease_s, lag_s = tuple(self.lease_seconds), tuple(self.loop_lag_seconds)

        def render() -> bytes:
            # The quantiles sort up to 2 x LATENCY_SAMPLES values: off the loop, like the
            # process collector's /proc reads.
            latencies = [
                summary(
                    "node_master_lease_handling_seconds",
                    "Time to handle one lease renewal (recent renewals).",
                    lease_s,
                ),
                summary(
                    "node_master_loop_lag_seconds",
                    "How late the event loop runs a timer (recent probes).",
                    lag_s,
                ),
            ]
            return exposition(self.metrics_registry, [*families, *latencies])

        body = await self._run_blocking(render)
        return ApiResponse(200, body, CONTENT_TYPE)

    async def ca(self, request: ApiRequest) -> ApiResponse:
        return text_response(
            cert_to_pem(self.registry.pki.ca_cert).decode(), "application/x-pem-file"
        )

    async def register(self, request: ApiRequest) -> ApiResponse:
        who = request.caller
        der = who.principal.cert_der
        peer = effective_peer(
            request.peer_ip, request.headers.get("x-forwarded-for"), self.trusted_proxies
        )
        policy = self.registry.config.registration
        if who.kind is not CallerKind.NODE_SELF:
            # Before the body is parsed: a flood costs a bucket look-up per request.
            self.registry.rate_limit.take(
                peer, policy.registration_rate_per_s, policy.registration_burst
            )
        body = request.json()
        if who.kind is CallerKind.NODE_SELF and body.get("nodeName") != who.principal.node:
            # A node registering another name is a newcomer like any other (its join token
            # a guess like any other): charged to its source's bucket.
            self.registry.rate_limit.take(
                peer, policy.registration_rate_per_s, policy.registration_burst
            )
        result = await self.registry.register(
            body,
            peer,
            x509.load_der_x509_certificate(der) if der and who.kind is CallerKind.FLEET else None,
            # A node re-registering with its current certificate stays trusted.
            who.principal.node if who.kind is CallerKind.NODE_SELF else None,
        )
        return json_response(result.body, result.status)

    async def poll_registration(self, request: ApiRequest) -> ApiResponse:
        try:
            timeout_s = float(request.query("timeoutSeconds", "0") or "0")
        except ValueError as exc:
            raise BadRequestError("timeoutSeconds must be a number") from exc
        # float() takes "nan" and "inf", which no caller means (and a wait of nan seconds is
        # a ValueError under uvloop's call_later).
        if not math.isfinite(timeout_s) or timeout_s < 0:
            raise BadRequestError(
                f"timeoutSeconds must be a finite number of seconds >= 0, not {timeout_s}"
            )
        result = await self.registry.poll(request.param("rid"), timeout_s)
        return json_response(result.body, result.status)

    async def list_nodes(self, request: ApiRequest) -> ApiResponse:
        if request.query("watch") in ("1", "true"):
            params = watch.watch_params(request, self.watch_max_s)
            steps = watch.node_steps(self.registry, params, self.watch_node_check_s)
            return ApiResponse(
                200, content_type=NDJSON_TYPE, stream=self._paced(request, steps, params)
            )
        items = [self.registry.node_object(r) for r in await self.registry.records()]
        return json_response({"apiVersion": "v1", "kind": "NodeList", "items": items})

    async def get_node(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        found = await self.registry.get_record(name)
        if found is None:
            raise NotFoundError(f"node {name!r} not found")
        return json_response(self.registry.node_object(found[0]))

    async def delete_node(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        await self.registry.delete(name)
        self.usage.forget(name)
        await self.pods.delete_mirrors_of(name)  # its static pods are gone from the cluster
        return json_response({"deleted": name})

    async def node_action(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        action = request.match.route.pattern[-1]
        if action == "approve":
            body = request.json(optional=True)
            fingerprint = body.get("fingerprint", "")
            if not isinstance(fingerprint, str):
                raise BadRequestError("fingerprint must be a string (sha256:<hex>)")
            record = await self.registry.approve(
                name, force_replace=bool(body.get("forceReplace")), fingerprint=fingerprint
            )
        elif action == "deny":
            body = request.json(optional=True)
            record = await self.registry.deny(name, str(body.get("reason", "")))
        else:
            record = await self.registry.set_unschedulable(name, action == "cordon")
            if action == "uncordon":
                self.pods.kick.set()
        log.info("node action", extra=kv(node=name, action=action, by=request.principal.name))
        return json_response(self.registry.node_object(record))

    async def renew_lease(self, request: ApiRequest) -> ApiResponse:
        started = time.perf_counter()
        try:
            return await self._renew_lease(request)
        finally:
            self.lease_seconds.append(time.perf_counter() - started)

    async def _renew_lease(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        refused = self.renewals_refused()
        if refused:
            # A renewal kept here would reach no other master, and the leader would judge the
            # node NotReady: 503, and the node moves to another master (agent.node.masterlink).
            raise StoreError(f"lease not renewed here: {refused}")
        first = name not in self.registry.leases
        self.registry.renew_lease(name)
        if first:
            await self.registry.note_ready(name)
        body = request.json(optional=True)
        if isinstance(body.get("status"), dict):
            await self.registry.update_status(name, body["status"])
        if "usage" in body:
            try:
                self.usage.put(name, parse_usage(body["usage"]))
            except BadRequestError as exc:  # figures for top: never worth failing the lease
                log.warning("node usage refused", extra=kv(node=name, error=str(exc)))
        if first:
            self.pods.kick.set()  # a node became Ready: retry pending pods, off this request
        return json_response(
            {"renewed": name, "leaseRenewSeconds": self.registry.config.lease_renew_s}
        )

    async def rotate_certificate(self, request: ApiRequest) -> ApiResponse:
        body = request.json()
        certificate = await self.registry.rotate(
            request.param("node"),
            str(body.get("csr", "")),
            # The address the rotation came from is the one the new certificate may name.
            effective_peer(
                request.peer_ip, request.headers.get("x-forwarded-for"), self.trusted_proxies
            ),
        )
        return json_response(
            {
                "certificate": certificate,
                "caBundle": cert_to_pem(self.registry.pki.ca_cert).decode(),
            }
        )

    async def list_serving_names(self, request: ApiRequest) -> ApiResponse:
        """Every node's serving-names request (``nodectl get csr``)."""
        found = (servingnames.request_object(r) for r in await self.registry.records())
        items = [item for item in found if item is not None]
        return json_response(
            {"apiVersion": "v1", "kind": "ServingNamesRequestList", "items": items}
        )

    async def decide_serving_names(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        approve = request.match.route.pattern[-1] == "approve"
        names = request.json(optional=True).get("names")
        if names is not None and (
            not isinstance(names, list) or not all(isinstance(n, str) for n in names)
        ):
            raise BadRequestError("names must be a list of strings (those nodectl get csr shows)")
        record = await self.registry.decide_serving_names(name, approve=approve, names=names)
        log.info(
            "serving names decided",
            extra=kv(node=name, approved=approve, by=request.principal.name),
        )
        answer = servingnames.request_object(record)
        return json_response(answer if answer is not None else {})

    async def node_pods(self, request: ApiRequest) -> ApiResponse:
        name = request.param("node")
        if request.query("watch") not in ("1", "true"):
            objs, rev = await self.pods.list(node=name)
            # A terminating pod is deleted for its node (its watch said so): a relist must not
            # bring it back.
            items = [pod_object(o) for o in objs if not o.get("deletionTimestamp")]
            return json_response({"kind": "PodList", "resourceVersion": rev, "items": items})
        try:
            after = int(request.query("resourceVersion", "0") or "0")
        except ValueError as exc:
            raise BadRequestError("resourceVersion must be an integer") from exc
        return ApiResponse(200, content_type=NDJSON_TYPE, stream=self._watch(name, after))

    async def _watch(self, node: str, after: int) -> AsyncIterator[bytes]:
        """The pod watch as newline-delimited JSON events."""
        try:
            async for event in self.pods.watch_node(node, after):
                yield json.dumps(event).encode() + b"\n"
        except CompactedError as exc:
            # In-band, as Kubernetes does: the client relists.
            error = {"type": "ERROR", "object": error_body(410, str(exc))}
            yield json.dumps(error).encode() + b"\n"

    async def put_mirror(self, request: ApiRequest) -> ApiResponse:
        ns, pod = request.param("namespace"), request.param("pod")
        body = request.json()
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict) or meta.get("namespace") != ns or meta.get("name") != pod:
            raise BadRequestError("the manifest's namespace/name must match the URL")
        await self.pods.put_mirror(request.param("node"), body)
        return json_response({"mirrored": f"{ns}/{pod}"})

    async def delete_mirror(self, request: ApiRequest) -> ApiResponse:
        ns, pod = request.param("namespace"), request.param("pod")
        await self.pods.delete_mirror(request.param("node"), ns, pod)
        return json_response({"deleted": f"{ns}/{pod}"})

    async def apply_pod(self, request: ApiRequest) -> ApiResponse:
        # The rules of every JSON body: its type (415), syntax, depth (400). A number too long
        # for Python's int() is left to the loader below, which names it with its path.
        with contextlib.suppress(JsonNumberTooLongError):
            request.json()
        # Then the manifest loader's rules (duplicate keys, surrogates, long numbers: what
        # nodectl's and the agent's YAML path refuse, naming the field path) and the parser;
        # off the loop for a large body.
        body = request.body
        if len(body) > OFF_LOOP_BYTES:
            manifest, pod = await self._run_blocking(functools.partial(_read_pod, body))
        else:
            manifest, pod = _read_pod(body)
        # `?dryRun=All` (kubectl's --dry-run=server): every check, the object that would be
        # stored in the answer, nothing stored.
        dry_run = request.query("dryRun")
        if dry_run not in (None, "All"):
            raise BadRequestError(f"dryRun: {quote(dry_run)} is not All (the one value)")
        obj, outcome = await self.pods.apply_outcome(manifest, pod, dry_run=dry_run == "All")
        # What happened, for nodectl's "pod/x created|configured|unchanged" (the body is the
        # pod, as the API server answers).
        answer = json_response(pod_object(obj), 201 if outcome == CREATED else 200)
        return dataclasses.replace(answer, headers=((APPLY_RESULT_HEADER, outcome),))

    async def list_pods(self, request: ApiRequest) -> ApiResponse:
        if request.query("watch") in ("1", "true"):
            params = watch.watch_params(request, self.watch_max_s)
            steps = watch.pod_steps(self.pods.store, params)
            return ApiResponse(
                200, content_type=NDJSON_TYPE, stream=self._paced(request, steps, params)
            )
        objs, rev = await self.pods.list()
        namespace = request.query("namespace")
        items = [
            pod_object(o)
            for o in objs
            if namespace is None or o["manifest"]["metadata"]["namespace"] == namespace
        ]
        return json_response({"kind": "PodList", "resourceVersion": rev, "items": items})

    def _paced(
        self,
        request: ApiRequest,
        steps: AsyncGenerator[watch.Step, None],
        params: watch.WatchParams,
    ) -> AsyncIterator[bytes]:
        """A cluster-wide watch's lines (``agent.master.watch``), bounded in time and counted
        against the caller (429 past its share)."""
        lines = watch.paced(steps, params.timeout_s, self.watch_bookmark_s)
        return self.watch_slots.hold(request.principal.name, lines)

    async def post_node_events(self, request: ApiRequest) -> ApiResponse:
        """A node's events about itself and the pods bound to it, filed under its name (the
        report's parser sets the source); an event about anything else is not filed, and
        counted as rejected in the answer."""
        node = request.param("node")
        reported = parse_report(request.json(), node)
        bound: dict[tuple[str, str], bool] = {}
        accepted = 0
        for item in reported:
            if item.kind == "Node":
                ok = item.name == node
            else:
                key = (item.namespace, item.name)
                if key not in bound:
                    try:
                        pod = await self.pods.get(item.namespace, item.name)
                    except NotFoundError:
                        pod = {}
                    bound[key] = str(pod.get("nodeName") or "") == node
                ok = bound[key]
            if ok:
                self.registry.events.file_reported(item.event)
                accepted += 1
        return json_response({"accepted": accepted, "rejected": len(reported) - accepted})

    async def list_events(self, request: ApiRequest) -> ApiResponse:
        items = self.registry.events.list(request.query("kind"), request.query("name"))
        return json_response({"apiVersion": "v1", "kind": "EventList", "items": items})

    async def get_pod(self, request: ApiRequest) -> ApiResponse:
        obj = await self.pods.get(request.param("namespace"), request.param("pod"))
        return json_response(pod_object(obj))

    async def delete_pod(self, request: ApiRequest) -> ApiResponse:
        ns, pod = request.param("namespace"), request.param("pod")
        grace_s = _grace_period(request.query("gracePeriodSeconds"))
        await self.pods.delete(ns, pod, grace_s=grace_s)
        return json_response({"deleted": f"{ns}/{pod}"})

    async def evict_pod(self, request: ApiRequest) -> ApiResponse:
        """``nodectl drain``'s eviction (kubectl's ``pods/eviction``): ``{"force": bool,
        "gracePeriodSeconds": N}``, ``?dryRun=All`` for the answer alone; what happens is
        :meth:`PodStore.evict`'s."""
        ns, pod = request.param("namespace"), request.param("pod")
        body = request.json(optional=True)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequestError("force must be true or false")
        grace_s = body.get("gracePeriodSeconds")
        if grace_s is not None and (
            isinstance(grace_s, bool)
            or not isinstance(grace_s, int)
            or not 0 <= grace_s <= INT64_MAX
        ):
            raise BadRequestError(
                f"gracePeriodSeconds must be a number of seconds from 0 to {INT64_MAX}"
            )
        dry_run = request.query("dryRun")
        if dry_run not in (None, "All"):
            raise BadRequestError(f"dryRun: {quote(dry_run)} is not All (the one value)")
        action = await self.pods.evict(
            ns, pod, force=force, dry_run=dry_run == "All", grace_s=grace_s
        )
        if dry_run is None:
            log.info("pod evicted", extra=kv(pod=f"{ns}/{pod}", by=request.principal.name))
        return json_response({"kind": "Eviction", "pod": f"{ns}/{pod}", "action": action})

    async def node_metrics(self, request: ApiRequest) -> ApiResponse:
        """``nodectl top nodes``: each node's latest usage (metrics.k8s.io's NodeMetrics)."""
        items = []
        for record in await self.registry.records():
            found = self.usage.get(record["name"])
            figures = found[1].node if found is not None else None
            if found is None or figures is None:
                continue
            at, usage = found
            items.append(
                {
                    "metadata": {"name": record["name"]},
                    "timestamp": at,
                    "window": window(usage),
                    "usage": figures.usage(),
                }
            )
        return json_response({"apiVersion": "v1", "kind": "NodeMetricsList", "items": items})

    async def pod_metrics(self, request: ApiRequest) -> ApiResponse:
        """``nodectl top pods``: the latest usage of each pod's containers as its node reported
        it (metrics.k8s.io's PodMetrics), only for pods bound to that node; a static pod's
        figures under its mirror's name. ``?namespace=`` narrows."""
        namespace = request.query("namespace")
        objs, _ = await self.pods.list()
        stored = {
            (o["manifest"]["metadata"]["namespace"], o["manifest"]["metadata"]["name"]): o
            for o in objs
        }
        items = []
        for record in await self.registry.records():
            node = record["name"]
            found = self.usage.get(node)
            if found is None:
                continue
            at, usage = found
            for pod in usage.pods:
                if namespace is not None and pod.namespace != namespace:
                    continue
                name = pod.name
                obj = stored.get((pod.namespace, name))
                if obj is None or obj["nodeName"] != node or obj.get("mirror"):
                    name = mirror_name(pod.name, node)
                    obj = stored.get((pod.namespace, name))
                    if obj is None or obj["nodeName"] != node or not obj.get("mirror"):
                        continue  # not bound there: a node speaks for its own pods only
                items.append(
                    {
                        "metadata": {"name": name, "namespace": pod.namespace},
                        "timestamp": at,
                        "window": window(usage),
                        "containers": [
                            {"name": c, "usage": figures.usage()} for c, figures in pod.containers
                        ],
                    }
                )
        return json_response({"apiVersion": "v1", "kind": "PodMetricsList", "items": items})

    async def put_pod_status(self, request: ApiRequest) -> ApiResponse:
        ns, name = request.param("namespace"), request.param("pod")
        body = request.json()
        mirror: bool | None = None
        if request.principal.role is Role.NODE:
            # The edge checked the pod's node when the headers arrived; the body came after, as
            # slowly as the client liked, and the pod may have been evicted and rebound since:
            # a node writes only while the pod is bound to it (set_status checks, atomically).
            node = request.principal.node
            # Whether the node reports a static pod (to its mirror) or one of ours.
            flag = request.query("mirror")
            mirror = None if flag is None else flag in ("1", "true")
        else:
            # An administrator writes whatever the pod is bound to now, even to no node yet
            # (its node is "", never the admin's name).
            node = str((await self.pods.get(ns, name)).get("nodeName") or "")
        await self.pods.set_status(ns, name, body, node, mirror)
        return json_response({"updated": f"{ns}/{name}"})

    async def create_token(self, request: ApiRequest) -> ApiResponse:
        """A new join token: the only answer that ever holds its secret."""
        body = request.json(optional=True)
        token, shown = await self.registry.tokens.create(
            ttl_s=body.get("ttlSeconds", DEFAULT_TTL_S),
            usages=check_usages(body.get("usages")),
            labels=check_labels(body.get("labels")),
            description=check_description(body.get("description")),
        )
        log.info(
            "join token created",
            extra=kv(token=token.id, expires=shown["expiresAt"], by=request.principal.name),
        )
        return json_response({**shown, "token": str(token)}, 201)

    async def list_tokens(self, request: ApiRequest) -> ApiResponse:
        items = await self.registry.tokens.list()
        return json_response({"apiVersion": "v1", "kind": "JoinTokenList", "items": items})

    async def delete_token(self, request: ApiRequest) -> ApiResponse:
        token_id = request.param("token")
        await self.registry.tokens.delete(token_id)
        log.info("join token deleted", extra=kv(token=token_id, by=request.principal.name))
        return json_response({"deleted": token_id})

    async def create_ticket(self, request: ApiRequest) -> ApiResponse:
        """``POST /v1/tickets``: a direct-stream ticket (agent.master.tickets)."""
        if self.tickets is None:
            raise RuntimeUnavailableError("this master issues no stream tickets yet (starting)")
        return await self.tickets.create(request)
