"""``nodectl get pods|nodes -w``: kubectl's watch over the master's cluster-wide watches
(``agent.master.watch``).

The table first (unless ``--watch-only``), from the watch's own initial events, so the list
and the watch are one consistent request; then one line per change in the same columns (no
header again; ``--output-watch-events`` adds the EVENT column); ``-o json|yaml|name|jsonpath``
print each changed object. A line is printed when what it shows changes: a pod's status write
that changes no column prints nothing (nor does a node's lease renewal, which the master does
not even send), an object leaving the selection (``-l``, ``--field-selector``) is DELETED.

The watch lives through its connection: the master ends it after its bound (reconnected at
once), a dropped connection or a master restart is retried with back-off (one line on stderr
per outage) and resumed at the last revision seen; when the master cannot resume (410: its
history was compacted, or it is another master; node watches never resume, their readiness is
not stored) the watch relists and prints only what really differs from what was printed.
Ctrl-C ends it quietly with status 1, as kubectl's interrupt handler does.

The transport is a :class:`Transport` (HTTP/1.1 to the master here, scripted in unit tests);
every line the master sends is decoded by :func:`decode_event`, which lets nothing but
:class:`~agent.errors.CliError` out.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, TypeVar

from agent.errors import CliError, ServerError, WatchDroppedError, WatchGoneError
from agent.names import escape

# A watch silent this long is a dead connection: the master sends a BOOKMARK every 15 s
# (agent.master.watch.BOOKMARK_EVERY_S) while nothing changes.
READ_TIMEOUT_S = 45.0
BACKOFF_FIRST_S = 0.5  # the first retry after a dropped connection, then doubled
BACKOFF_MAX_S = 8.0  # the longest wait between two attempts
GIVE_UP_AFTER_S = 600.0  # attempts failing for this long end the watch (exit 1)
QUICK_END_S = 1.0  # a watch the master ends sooner than this is retried with back-off
MAX_LINE_BYTES = 4 << 20  # one event; a pod object is far smaller (the manifest limit)
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
T = TypeVar("T")
EXIT_INTERRUPTED = 1  # kubectl get -w's status on Ctrl-C (its interrupt handler's os.Exit(1))


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    obj: dict[str, Any]
    revision: int | None
    initial_end: bool = False  # the BOOKMARK that ends a watch's initial events


def _malformed(problem: str) -> CliError:
    return CliError(f"the master sent a watch line that is not an event: {problem}")


def _revision(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _malformed("resourceVersion is not a revision")
    text = str(value)
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise _malformed(f"resourceVersion {escape(text[:40])!r} is not a revision")
    return int(text)


def decode_event(line: bytes, kind: str) -> WatchEvent:
    """One NDJSON line of a ``kind`` (pods, nodes) watch. An ERROR event is raised: 410 as
    WatchGoneError (relist), another as ServerError; anything not an event is a CliError
    naming what is wrong. Nothing else comes out, whatever the line holds."""
    if len(line) > MAX_LINE_BYTES:
        raise _malformed(f"longer than {MAX_LINE_BYTES} bytes")
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, an integer too long, nesting
        raise _malformed("not JSON") from None
    if not isinstance(data, dict):
        raise _malformed("not a JSON object")
    kind_of = data.get("type")
    if not isinstance(kind_of, str) or kind_of not in EVENT_TYPES:
        raise _malformed("no event type (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)")
    obj = data.get("object")
    if not isinstance(obj, dict):
        raise _malformed(f"{kind_of} without an object")
    if kind_of == "ERROR":
        error = obj.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        text = escape(message[:300]) if isinstance(message, str) else "(no message)"
        if code == 410:
            raise WatchGoneError(text)
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            from agent.cli.nodectl import HTTP_REASONS

            raise ServerError(code, HTTP_REASONS.get(code, f"HTTP {code}"), text)
        raise _malformed("an ERROR event without an error code")
    revision = _revision(data.get("resourceVersion"))
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        raise _malformed(f"{kind_of} object without metadata")
    if kind_of == "BOOKMARK":
        annotations = metadata.get("annotations")
        end = isinstance(annotations, dict) and annotations.get(INITIAL_EVENTS_END) == "true"
        return WatchEvent(kind_of, obj, revision, end)
    if not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise _malformed(f"{kind_of} object without a name")
    if kind == "pods" and not isinstance(metadata.get("namespace"), str):
        raise _malformed(f"{kind_of} pod without a namespace")
    for part in ("spec", "status"):
        if not isinstance(obj.get(part), dict):
            raise _malformed(f"{kind_of} object without {part}")
    return WatchEvent(kind_of, obj, revision)


class Transport(Protocol):
    def lines(self, path: str) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """The lines of a watch response (``path``: ``/v1/pods?watch=1…``), each ending at a
        newline. Raises WatchDroppedError when the master cannot be reached or the
        connection breaks (also while iterating), ServerError when it refuses the watch."""
        ...


class HttpTransport:
    """A watch on its own HTTP/1.1 connection to the master (the stream holds it)."""

    def __init__(self, client: Any) -> None:
        self._client = client  # agent.cli.nodectl.Client: its address and TLS context

    @contextlib.contextmanager
    def lines(self, path: str) -> Iterator[Iterator[bytes]]:
        import http.client

        from agent.cli.nodectl import HTTP_REASONS
        from agent.errors import NotTheMasterError

        servers = self._client.servers  # with several masters, a failed one passes the turn
        host, port = servers.address
        conn = http.client.HTTPSConnection(
            host,
            port,
            context=self._client.context,
            timeout=servers.connect_timeout_s(READ_TIMEOUT_S),
        )
        try:
            try:
                conn.connect()
                conn.sock.settimeout(READ_TIMEOUT_S)
                conn.request("GET", path)
                response = conn.getresponse()
            except NotTheMasterError as exc:
                raise CliError(exc.message) from exc
            except (OSError, http.client.HTTPException) as exc:
                servers.switch(f"watch: {exc}")
                raise WatchDroppedError(f"cannot reach the master: {exc}") from exc
            if response.status >= 400:
                body = response.read(64 << 10)
                try:
                    message = json.loads(body)["error"]["message"]
                except (ValueError, KeyError, TypeError, RecursionError):
                    message = body.decode(errors="replace")
                status = response.status
                if status == 410:
                    raise WatchGoneError(escape(str(message)))
                if status >= 500:
                    servers.switch(f"watch: answered {status}")
                    raise WatchDroppedError(f"the master answered {status}: {escape(str(message))}")
                reason = HTTP_REASONS.get(status, f"HTTP {status}")
                raise ServerError(status, reason, escape(str(message)))

            def read() -> Iterator[bytes]:
                while True:
                    try:
                        line = response.readline(MAX_LINE_BYTES + 1)
                    except (OSError, http.client.HTTPException) as exc:
                        raise WatchDroppedError(f"the watch broke: {exc}") from exc
                    if not line:
                        return
                    if not line.endswith(b"\n") and len(line) > MAX_LINE_BYTES:
                        raise _malformed(f"longer than {MAX_LINE_BYTES} bytes")
                    if line.strip():
                        yield line

            try:
                yield read()
            except WatchDroppedError as exc:  # broke while open: resumed on the next master
                servers.switch(str(exc))
                raise
        finally:
            conn.close()


@dataclass
class Rendering:
    """How the changes are printed: the ``get`` options, as the watch needs them."""

    kind: str  # pods or nodes
    output: str  # table, wide, json, yaml, name, jsonpath
    template: str = ""
    all_namespaces: bool = False
    namespace: str = "default"  # what "No resources found in … namespace" names ("": -A)
    no_headers: bool = False
    show_labels: bool = False
    watch_events: bool = False  # --output-watch-events
    names: tuple[str, ...] = ()  # get pods -w NAME: only these
    selector: tuple[Any, ...] = ()
    fields: tuple[Any, ...] = ()
    lost: frozenset[str] = frozenset()  # nodes not Ready when the watch began (NodeLost)


def identity(obj: dict[str, Any]) -> str:
    metadata = obj["metadata"]
    return f"{metadata.get('namespace', '')}/{metadata['name']}"


@dataclass
class Printer:
    """Prints the initial table and the change lines; remembers what each line showed."""

    rendering: Rendering
    out: TextIO
    err: TextIO = field(default_factory=lambda: sys.stderr)
    widths: list[int] = field(default_factory=list)
    header_printed: bool = False
    shown: dict[str, Any] = field(default_factory=dict)  # identity → what was printed
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # identity → its object

    def wanted(self, obj: dict[str, Any]) -> bool:
        r = self.rendering
        if r.names and obj["metadata"]["name"] not in r.names:
            return False
        if r.selector or r.fields:
            from agent.cli import output as out

            return bool(out.select_fields(out.select([obj], r.selector), r.kind, r.fields))
        return True

    def _row(self, obj: dict[str, Any], event: str, now: float | None) -> list[str]:
        from agent.cli import nodectl as ctl

        r = self.rendering
        options = ctl.TableOptions(
            wide=r.output == "wide",
            all_namespaces=r.all_namespaces,
            show_labels=r.show_labels,
        )
        header, *rows = _guarded(lambda: ctl._table_rows([obj], r.kind, options, r.lost))
        row = rows[0]
        if now is not None:  # the same row at a fixed time: what a change is compared on
            fixed = _guarded(
                lambda: (
                    ctl._pod_row(obj, options.wide, r.all_namespaces, now=now, lost=r.lost)
                    if r.kind == "pods"
                    else ctl._node_row(obj, options.wide, now)
                )
            )
            row = fixed + row[len(fixed) :]
        if not self.widths:
            self.widths = [len(c) for c in (["EVENT"] if r.watch_events else []) + header]
        return ([event] if r.watch_events else []) + row

    def _header(self) -> list[str]:
        from agent.cli import nodectl as ctl

        r = self.rendering
        options = ctl.TableOptions(
            wide=r.output == "wide", all_namespaces=r.all_namespaces, show_labels=r.show_labels
        )
        header = _guarded(lambda: ctl._table_rows([], r.kind, options))[0]
        return (["EVENT"] if r.watch_events else []) + header

    def _line(self, cells: list[str]) -> None:
        widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=False)]
        widths += [len(c) for c in cells[len(widths) :]]
        self.widths = widths
        text = "   ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
        print(text, file=self.out)

    def initial(self, objects: list[dict[str, Any]], watch_only: bool) -> None:
        """The table ``get`` prints, remembered; with ``watch_only`` nothing is printed."""
        r = self.rendering
        for obj in objects:
            self._remember(obj, self._seen(obj))
        if watch_only:
            return
        if not objects:
            where = f" in {escape(r.namespace)} namespace" if r.namespace else ""
            print(f"No resources found{where if r.kind == 'pods' else ''}.", file=self.err)
            return
        if r.output not in ("table", "wide"):
            for obj in objects:
                self._document(obj, "ADDED")
            return
        rows = [self._header(), *(self._row(o, "ADDED", None) for o in objects)]
        self.widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows[1:] if r.no_headers else rows:
            self._line(row)
        self.header_printed = True
        self.out.flush()

    def _remember(self, obj: dict[str, Any], seen: Any) -> None:
        self.shown[identity(obj)] = seen
        self.objects[identity(obj)] = obj

    def _seen(self, obj: dict[str, Any]) -> Any:
        """What a change is compared on: the row at a fixed time (a table), else the object."""
        if self.rendering.output in ("table", "wide"):
            return self._row(obj, "", 0.0)[1 if self.rendering.watch_events else 0 :]
        if self.rendering.kind == "nodes":  # a relist's newer heartbeat time is no change
            return _without_heartbeat(obj)
        return obj

    def change(self, event: str, obj: dict[str, Any]) -> None:
        """One change: printed when it shows something new (or the object went)."""
        ident = identity(obj)
        seen = self._seen(obj)
        if event == "DELETED":
            if ident not in self.shown:
                return
            del self.shown[ident]
            del self.objects[ident]
        else:
            before = self.shown.get(ident)
            if before == seen:
                return
            event = "ADDED" if before is None else "MODIFIED"
            self._remember(obj, seen)
        if self.rendering.output not in ("table", "wide"):
            self._document(obj, event)
            return
        if not self.header_printed and not self.rendering.no_headers:
            self.widths = [len(c) for c in self._header()]
            self._line(self._header())
        self.header_printed = True
        self._line(self._row(obj, event, None))
        self.out.flush()

    def _document(self, obj: dict[str, Any], event: str) -> None:
        r = self.rendering
        shown: Any = {"type": event, "object": obj} if r.watch_events else obj
        if r.output == "json":
            print(json.dumps(shown, indent=2), file=self.out)
        elif r.output == "yaml":
            from agent.cli.nodectl import _yaml

            print("---", file=self.out)
            print(_yaml(shown), end="", file=self.out)
        elif r.output == "name":
            from agent.cli import output as out

            name = out.name_of(r.kind, obj)
            print(f"{event} {name}" if r.watch_events else name, file=self.out)
        else:  # jsonpath: the template's output as is, per object
            from agent.cli import jsonpath

            print(jsonpath.render(jsonpath.parse(r.template), shown), end="", file=self.out)
        self.out.flush()


def _without_heartbeat(node: dict[str, Any]) -> dict[str, Any]:
    """A node as a change is judged (agent.master.watch.node_view): without the heartbeat
    time every lease renewal moves."""
    status = node.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    if not isinstance(conditions, list):
        return node
    kept = [
        {k: v for k, v in c.items() if k != "lastHeartbeatTime"} if isinstance(c, dict) else c
        for c in conditions
    ]
    return {**node, "status": {**status, "conditions": kept}}  # type: ignore[dict-item]


def _guarded(render: Callable[[], T]) -> T:
    """A row of an object the master sent: a field of the wrong type is an error naming the
    watch, never a traceback (the table code trusts what ``get`` lists)."""
    try:
        return render()
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        raise _malformed(f"an object nodectl cannot show ({type(exc).__name__})") from None


@dataclass
class Watcher:
    """The watch loop: connect, print, reconnect and resume (or relist) until interrupted."""

    transport: Transport
    printer: Printer
    namespace: str | None  # pods of this namespace; None: every one
    watch_only: bool = False
    err: TextIO = field(default_factory=lambda: sys.stderr)
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    revision: int | None = None  # pods: where to resume; None: (re)list
    listed: bool = False  # the initial table was printed
    max_connections: int | None = None  # tests: stop after this many (None: never)
    received: bool = False  # the current connection brought an event

    @property
    def kind(self) -> str:
        return self.printer.rendering.kind

    def _path(self) -> str:
        query = {"watch": "1"}
        if self.kind == "pods" and self.revision is not None:
            query["resourceVersion"] = str(self.revision)
        else:
            query["sendInitialEvents"] = "true"
        if self.kind == "pods" and self.namespace is not None:
            query["namespace"] = self.namespace
        return f"/v1/{self.kind}?{urllib.parse.urlencode(query)}"

    def run(self) -> None:
        backoff = BACKOFF_FIRST_S
        failing_since: float | None = None
        warned = False
        connections = 0
        while self.max_connections is None or connections < self.max_connections:
            connections += 1
            opened = self.clock()
            self.received = False
            try:
                self._once()
            except WatchGoneError:
                self.revision = None  # relist, and print what differs
                continue
            except WatchDroppedError as exc:
                problem = str(exc)
            else:
                if self.clock() - opened >= QUICK_END_S or self.received:
                    # The master's bound ended it, or a healthy watch: reconnect at once.
                    backoff, failing_since, warned = BACKOFF_FIRST_S, None, False
                    continue
                problem = "the master ended the watch at once"
            if self.received:  # it worked for a while: a new outage starts now
                backoff, failing_since, warned = BACKOFF_FIRST_S, None, False
            now = self.clock()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since > GIVE_UP_AFTER_S:
                raise CliError(f"gave up the watch after {GIVE_UP_AFTER_S:.0f} s: {problem}")
            if not warned:
                print(
                    f"nodectl: the watch was interrupted ({problem}); reconnecting",
                    file=self.err,
                    flush=True,
                )
                warned = True
            self.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _once(self) -> None:
        """One connection; ``received``: whether an event (or bookmark) came through it."""
        relisting = self.kind == "nodes" or self.revision is None
        snapshot: list[dict[str, Any]] = []
        with self.transport.lines(self._path()) as lines:
            for line in lines:
                event = decode_event(line, self.kind)
                self.received = True
                if event.revision is not None and self.kind == "pods":
                    if relisting and event.type == "ADDED":
                        pass  # the initial events' revisions are each object's, not the list's
                    else:
                        self.revision = event.revision
                if relisting:
                    if event.type == "ADDED":
                        if self.printer.wanted(event.obj):
                            snapshot.append(event.obj)
                        continue
                    if event.type == "BOOKMARK" and event.initial_end:
                        self._listed(snapshot)
                        relisting = False
                    continue  # nothing else comes before the initial events end
                if event.type == "BOOKMARK":
                    continue
                obj = event.obj
                if event.type != "DELETED" and not self.printer.wanted(obj):
                    event_type = "DELETED"  # it left the selection: gone from this view
                else:
                    event_type = event.type
                self.printer.change(event_type, obj)

    def _listed(self, objects: list[dict[str, Any]]) -> None:
        """The watch's list: the table the first time, the differences after a relist."""
        if not self.listed:
            self.printer.initial(objects, self.watch_only)
            self.listed = True
            return
        current = {identity(o): o for o in objects}
        for obj in objects:
            self.printer.change("ADDED", obj)
        for ident in list(self.printer.shown):
            if ident not in current:
                self.printer.change("DELETED", self.printer.objects[ident])


def run(client: Any, args: Any) -> int:
    """``get pods|nodes -w`` (``--watch``, ``--watch-only``, ``--output-watch-events``)."""
    from agent.cli import nodectl as ctl

    targets = ctl._targets(args.kind, args.names)
    if len(targets) != 1 or targets[0][0] not in ("pods", "nodes"):
        raise CliError(
            "watch is only supported on one resource type: pods or nodes", ctl.EXIT_USAGE
        )
    kind, names = targets[0]
    output, template = args.output or "table", ""
    if output not in ("table", "wide", "json", "yaml", "name"):
        from agent.cli import output as out

        parsed = out.parse_output(output)
        output, template = parsed.format, parsed.template
        if output != "jsonpath":
            raise CliError(f"-o {output} does not go with --watch", ctl.EXIT_USAGE)
    selector: tuple[Any, ...] = ()
    fields: tuple[Any, ...] = ()
    if args.selector is not None or args.field_selector is not None:
        from agent.cli import output as out

        if names:
            raise CliError("name cannot be provided when a selector is specified", ctl.EXIT_USAGE)
        selector = out.parse_selector(args.selector or "")
        fields = out.parse_field_selector(args.field_selector) if args.field_selector else ()
        out.select_fields([], kind, fields)  # an unsupported field: refused now, not per event
    lost: frozenset[str] = frozenset()
    if kind == "pods" and output in ("table", "wide"):
        # NodeLost as get shows it, from the nodes' readiness when the watch begins.
        lost = frozenset(
            n["metadata"]["name"]
            for n in client.call("GET", "/v1/nodes")["items"]
            if ctl._node_ready(n) != "Ready"
        )
    namespace = None if args.all_namespaces else args.namespace
    rendering = Rendering(
        kind=kind,
        output=output,
        template=template,
        all_namespaces=args.all_namespaces,
        namespace=namespace or "",
        no_headers=args.no_headers,
        show_labels=args.show_labels,
        watch_events=args.output_watch_events,
        names=tuple(names),
        selector=selector,
        fields=fields,
        lost=lost,
    )
    watcher = Watcher(
        HttpTransport(client), Printer(rendering, sys.stdout), namespace, args.watch_only
    )
    try:
        watcher.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0
