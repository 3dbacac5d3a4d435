"""The strict reader of manifest texts: YAML (static files, ``nodectl apply``) and JSON (the
master's ``POST /v1/pods`` body) into plain data, with every bound a hostile text could abuse.

One loader for every path into the manifest parser (:mod:`agent.manifest`), so a text refused
on one path is refused on the others for the same reason:

* **YAML** goes through PyYAML's C parser (libyaml) where the installed build has it, the
  pure-Python one otherwise, and the data is built from the parser's events in one pass
  (:class:`_Build`: PyYAML's composing and constructing took twice as long as the rest, 0.3 s
  for 8,000 containers) that enforces the bounds as it goes, reading YAML 1.1 as PyYAML's safe
  loader does otherwise (implicit types, merge keys, anchors; held to it by a property test):

  - at most :data:`MAX_DEPTH` nested collections and :data:`MAX_NODES` values in a text;
  - aliases are allowed (merge keys ``<<: *base`` are in use) but each one counts the full
    size of what it names: the *expanded* text may hold at most :data:`MAX_EXPANDED_CHARS`
    characters, so a 100 KB file cannot become 600 MB when the manifest is serialized for its
    uid; an alias to a collection that contains it is refused;
  - only the plain core tags: ``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``,
    ``!!map``, ``!!seq`` — no ``!!timestamp``, ``!!binary``, ``!!set``, ``!!python/…``, nor
    the non-specific ``!`` (YAML 1.1 and 1.2 read ``! 12`` differently); an
    explicitly tagged scalar must read as its tag (``!!int ""`` is our error, not PyYAML's
    IndexError); unquoted dates stay strings (Kubernetes does not have a date type);
  - a number of more than :data:`MAX_NUMBER_CHARS` characters is refused before Python turns it
    into an int (YAML 1.1's ``1:2:3:…`` base-60 integers are quadratic to build);
  - no lone surrogate (``"\\ud800"``) anywhere: it could not be encoded later (logs, events,
    the checkpoint, the uid's hash) and would crash whoever tried.

  Duplicate keys are an error (PyYAML keeps the last one silently: a repeated ``containers:``
  would drop a whole list), and so is a collection as a key.
* **JSON** is decoded by the standard library's C decoder with the same bounds (depth, values,
  number length, surrogates, duplicate keys), checked on the decoded value; ``NaN`` and
  ``Infinity`` are not JSON.

Every error is a :class:`~agent.errors.ManifestError` naming the field path where the text went
wrong (``spec.containers[3].args[1]``) and, for YAML, the line and column. No other exception
leaves :func:`load_yaml` or :func:`load_json` (tests/unit/fuzz/test_manifest_hypothesis.py
holds them to it over some 10,000 generated documents). A field path in a message is at most
some :data:`PATH_MAX_CHARS` characters (:func:`short_path`).

It also owns :func:`shown`, how a user's value appears in any manifest error: at most
100 characters, JSON-like, never a Python repr, always encodable.

Sans-IO: the callers decide where parsing runs (off the event loop above
:data:`OFF_LOOP_BYTES`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from agent import names
from agent.errors import ManifestError

MAX_MANIFEST_BYTES = 1 << 20  # a file, a request body: Kubernetes' own limit is 1.5 MiB (etcd)
MAX_DEPTH = 100  # a pod nests some 8 levels; Kubernetes' JSON decoder allows 10,000
MAX_NODES = 100_000  # values (scalars, lists, maps) in one text: a pod with 8,000 containers
#                      has some 50,000; libyaml builds about 400,000 a second here
MAX_EXPANDED_CHARS = MAX_MANIFEST_BYTES  # scalar characters + 1 per value, aliases expanded
MAX_NUMBER_CHARS = 100  # an int64 has 19 digits; a float's longest exact form some 25
PATH_MAX_CHARS = 100  # of a field path, in a message (its start and its end)
_MAX_INT_BITS = 333  # 10**100 < 2**333: integers of up to some 100 digits
OFF_LOOP_BYTES = 64 * 1024  # callers parse larger texts on their thread bridge
# An error's field path is found by reading the text again up to the error. libyaml looks
# ahead a whole flow collection before it emits it, so its events stop short of the error;
# the pure-Python parser (some 190 KB/s) stops right at it: used up to this many characters.
PY_REPLAY_CHARS = 32 * 1024

_CORE = "tag:yaml.org,2002:"
# Not the non-specific tag `!` either: YAML 1.1 (PyYAML, libyaml) reads `! 12` as the number,
# YAML 1.2 as the string; a manifest has no use for it, so it is refused rather than guessed.
_SCALAR_TAGS = frozenset({None, *(f"{_CORE}{t}" for t in ("str", "int", "float", "bool", "null"))})
_COLLECTION_TAGS = frozenset({None, f"{_CORE}map", f"{_CORE}seq"})
# Implicit resolutions we do not want: dates (datetime objects in a manifest), `=` (the "value"
# type no constructor knows), the unused `yaml` type.
_DROPPED_IMPLICIT = frozenset({f"{_CORE}timestamp", f"{_CORE}value", f"{_CORE}yaml"})
_NUMBER_TAGS = frozenset({f"{_CORE}int", f"{_CORE}float"})
_SURROGATE = re.compile("[\ud800-\udfff]")
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]{1,100}")
# What a YAML constructor may raise on a value that slipped past the event pass: never ours.
_FOREIGN = (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError)

if TYPE_CHECKING:
    _Base = yaml.SafeLoader
else:
    _Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: some 20x faster

C_LOADER = _Base is not yaml.SafeLoader


# --- showing a user's value ---------------------------------------------------------------


def shown(value: object) -> str:
    """A user's value in a message: strings quoted by :func:`agent.names.quote` (double quotes,
    at most 100 characters, control characters and lone surrogates escaped), numbers and
    ``true``/``false``/``null`` as JSON writes them, other values by their type."""
    if isinstance(value, str):
        return names.quote(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:  # str() of a huge int: slow or ValueError
            return f"(an integer of some {int(value.bit_length() * 0.30103)} digits)"
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)  # NaN, Infinity: as JavaScript writes them
    return f"(a value of type {type_name(value)})"


def type_name(value: object) -> str:
    """JSON's name for a value's type (``object``, ``list``, ``string``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    return "value"


def field_path(parent: str, key: str) -> str:
    """``parent.key``, or ``parent["key"]`` for a key that is not a plain word (a long or odd
    key must not make the path unbounded or ambiguous)."""
    if _SIMPLE_KEY.fullmatch(key):
        return f"{parent}.{key}" if parent else key
    return f"{parent}[{shown(key)}]"


def short_path(path: str) -> str:
    """A field path for a message, at most some :data:`PATH_MAX_CHARS` characters: its start
    (which field) and its end (where in it); a path 100 levels deep under long keys would
    otherwise be kilobytes."""
    if len(path) <= PATH_MAX_CHARS:
        return path
    head = PATH_MAX_CHARS * 2 // 3
    return path[:head] + "…" + path[head - PATH_MAX_CHARS :]


def has_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    return _SURROGATE.search(text) is not None


def _problem(text: object) -> str:
    """A foreign library's problem description, escaped and bounded."""
    problem = names.escape(str(text))
    limit = 2 * names.QUOTE_MAX_CHARS
    return problem if len(problem) <= limit else problem[:limit] + "…"


# --- YAML ---------------------------------------------------------------------------------


class _Mark(Protocol):
    """A position in the text (PyYAML's and libyaml's marks both have these)."""

    line: int  # 0-based
    column: int


class _Refused(Exception):
    """The event pass refusing a text: where and why (becomes a ManifestError)."""

    def __init__(self, path: str, problem: str, mark: _Mark | None) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem
        self.mark = mark


@dataclass(slots=True)
class _Frame:
    mapping: bool
    anchor: str | None
    start: int  # the expanded size when the collection started
    children: int = 0  # for a mapping: keys and values alternate
    key: str = "?"  # the mapping's current key


class _Walk:
    """The bounds over a stream of parser events, and the field path of where it is."""

    def __init__(self) -> None:
        self.frames: list[_Frame] = []
        self.nodes = 0
        self.expanded = 0
        self.sizes: dict[str, int] = {}  # finished anchors: their expanded size
        self.documents = 0

    def path(self, key: str | None = None) -> str:
        """The path of the next node (shortened for a message); ``key``: that node is this
        mapping key."""
        out = ""
        for frame in self.frames:
            if not frame.mapping:
                out += f"[{frame.children}]"
            elif frame.children % 2:  # a value: under its key
                out = field_path(out, frame.key)
        if key is not None and self.frames and self.frames[-1].mapping:
            out = field_path(out, key)
        return short_path(out)

    def _is_key(self) -> bool:
        return bool(self.frames) and self.frames[-1].mapping and self.frames[-1].children % 2 == 0

    def _refuse(self, problem: str, event: yaml.Event, key: str | None = None) -> _Refused:
        return _Refused(self.path(key), problem, event.start_mark)

    def _grow(self, size: int, event: yaml.Event) -> None:
        self.expanded += size
        if self.expanded > MAX_EXPANDED_CHARS:
            raise self._refuse(
                f"the text expands to more than {MAX_EXPANDED_CHARS} characters "
                "(aliases count as copies of what they name)",
                event,
            )

    def _node(self, event: yaml.Event) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self._refuse(f"more than {MAX_NODES} values in one text", event)

    def _done(self, key: str | None) -> None:
        if self.frames:
            frame = self.frames[-1]
            if frame.mapping and frame.children % 2 == 0:
                frame.key = "?" if key is None else key
            frame.children += 1

    def feed(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.ScalarEvent):
            self._scalar(event)
        elif isinstance(event, yaml.AliasEvent):
            self._node(event)
            anchor = event.anchor or ""
            if anchor not in self.sizes:
                open_anchors = {f.anchor for f in self.frames}
                problem = (
                    f"the alias *{_problem(anchor)} refers to a value that contains it"
                    if anchor in open_anchors
                    else f"the alias *{_problem(anchor)} refers to no anchor before it"
                )
                raise self._refuse(problem, event)
            self._grow(self.sizes[anchor], event)
            self._done(None)
        elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            self._node(event)
            if event.tag not in _COLLECTION_TAGS:
                raise self._refuse(f"the tag {shown(event.tag)} is not supported", event)
            if len(self.frames) >= MAX_DEPTH:
                raise self._refuse(f"nested more than {MAX_DEPTH} levels deep", event)
            mapping = isinstance(event, yaml.MappingStartEvent)
            self._grow(1, event)
            self.frames.append(_Frame(mapping, event.anchor, self.expanded - 1))
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frame = self.frames.pop()
            if frame.anchor is not None:
                self.sizes[frame.anchor] = self.expanded - frame.start
            self._done(None)
        elif isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            self.sizes.clear()  # anchors are per document

    def _scalar(self, event: yaml.ScalarEvent) -> None:
        value = event.value
        key = value if self._is_key() else None
        self._node(event)
        if has_surrogate(value):
            raise self._refuse(
                f"{shown(value)} holds a lone surrogate (not a character: it cannot be encoded)",
                event,
                key and "?",
            )
        tag = event.tag
        if tag not in _SCALAR_TAGS:
            raise self._refuse(f"the tag {shown(tag)} is not supported", event, key)
        plain = tag is None and event.implicit[0]
        core = tag is not None and tag.startswith(_CORE) and tag != f"{_CORE}str"
        if core and tag is not None and not _reads_as(tag, value):
            raise self._refuse(
                f"{shown(value)} is not a valid {tag.removeprefix(_CORE)}", event, key
            )
        if len(value) > MAX_NUMBER_CHARS and (
            tag in _NUMBER_TAGS or (plain and any(_reads_as(t, value) for t in _NUMBER_TAGS))
        ):
            raise self._refuse(
                f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS}; "
                "quote it if it is a string)",
                event,
                key,
            )
        self._grow(len(value) + 1, event)
        if event.anchor is not None:
            self.sizes[event.anchor] = len(value) + 1
        self._done(value if key is not None else None)


# The implicit resolutions of a plain scalar (YAML 1.1, as PyYAML), by its first character.
_IMPLICIT: dict[str | None, list[tuple[str, re.Pattern[str]]]] = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_IMPLICIT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PATTERNS: dict[str, list[re.Pattern[str]]] = {}
for _resolvers in _IMPLICIT.values():
    for _tag, _regexp in _resolvers:
        if _regexp not in _PATTERNS.setdefault(_tag, []):
            _PATTERNS[_tag].append(_regexp)
_STR, _MERGE_TAG = f"{_CORE}str", f"{_CORE}merge"
_CONSTRUCTOR = yaml.constructor.SafeConstructor()  # its scalar conversions (int, float, bool)


class _MergeKey:
    """A mapping's ``<<`` key (YAML 1.1 merge), while its value is awaited."""


_MERGE = _MergeKey()


@dataclass(slots=True)
class _Open:
    """A collection being built, and where it goes when it ends."""

    value: dict[Any, Any] | list[Any]
    anchor: str | None
    is_key: bool
    key: object = None  # a mapping's key awaiting its value
    merges: list[dict[Any, Any]] | None = None  # a mapping's `<<` sources, in PyYAML's order
    key_texts: dict[object, str] | None = None  # a mapping's non-string keys as written


def _resolve(value: str, plain: bool) -> str:
    """The tag of an untagged scalar (PyYAML's resolver, without the dropped resolutions)."""
    if plain:
        first = value[0] if value else ""
        candidates: list[tuple[str, re.Pattern[str]]] = [
            *_IMPLICIT.get(first, ()),
            *_IMPLICIT.get(None, ()),
        ]
        for tag, regexp in candidates:
            if regexp.match(value):
                return tag
    return _STR


class _Build(_Walk):
    """The walk, building each document's plain data as it goes: one pass of the parser's
    events instead of PyYAML's composing and constructing (which took twice the time).
    YAML 1.1 as PyYAML's safe loader reads it (implicit types, merge keys, anchors shared),
    but duplicate keys, collections as keys and the refusals of :class:`_Walk` are errors."""

    def __init__(self) -> None:
        super().__init__()
        self.data: list[object] = []  # the documents, empty ones left out
        self.open: list[_Open] = []
        self.anchored: dict[str, object] = {}

    def feed(self, event: yaml.Event) -> None:
        is_key = self._is_key()
        super().feed(event)  # the bounds and the path first
        if isinstance(event, yaml.ScalarEvent):
            self._add(self._scalar_value(event, is_key), event, is_key, event.anchor)
        elif isinstance(event, yaml.AliasEvent):
            self._add(self.anchored[event.anchor or ""], event, is_key, None)
        elif isinstance(event, yaml.SequenceStartEvent):
            self.open.append(_Open([], event.anchor, is_key))
        elif isinstance(event, yaml.MappingStartEvent):
            self.open.append(_Open({}, event.anchor, is_key))
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            done = self.open.pop()
            value = done.value
            if done.merges:
                merged: dict[Any, Any] = {}
                for source in done.merges:
                    merged.update(source)
                merged.update(value)
                value = merged
            self._add(value, event, done.is_key, done.anchor)
        elif isinstance(event, yaml.DocumentStartEvent):
            self.anchored.clear()  # anchors are per document

    def _scalar_value(self, event: yaml.ScalarEvent, is_key: bool) -> object:
        text = event.value
        tag = event.tag if event.tag is not None else _resolve(text, event.implicit[0])
        if tag == _STR:
            return text
        if tag == _MERGE_TAG:
            return _MERGE if is_key else text  # `<<` as a value is the text
        if tag == f"{_CORE}null":
            return None
        node = yaml.ScalarNode(tag, text)
        try:
            if tag == f"{_CORE}bool":
                return _CONSTRUCTOR.construct_yaml_bool(node)
            if tag == f"{_CORE}int":
                return _CONSTRUCTOR.construct_yaml_int(node)
            if tag == f"{_CORE}float":
                return _CONSTRUCTOR.construct_yaml_float(node)
        except _FOREIGN as exc:  # the walk checked the form: not expected
            raise _Refused(
                self.path(), f"invalid value: {_problem(exc)}", event.start_mark
            ) from exc
        raise _Refused(self.path(), f"the tag {shown(tag)} is not supported", event.start_mark)

    def _add(self, value: object, event: yaml.Event, is_key: bool, anchor: str | None) -> None:
        if anchor is not None:
            self.anchored[anchor] = value
        if not self.open:
            if value is not None:
                self.data.append(value)
            return
        top = self.open[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif is_key:
            self._key(top, value, event)
        elif top.key is _MERGE:
            self._merge(top, value, event)
        else:
            top.value[top.key] = value

    def _key(self, top: _Open, key: object, event: yaml.Event) -> None:
        text = event.value if isinstance(event, yaml.ScalarEvent) else "?"
        if isinstance(key, (dict, list)):
            frame = self.frames[-1]
            children, frame.children = frame.children, 0  # the mapping's own path
            where, frame.children = self.path(), children
            raise _Refused(where, "a key must be a scalar, not a collection", event.start_mark)
        assert isinstance(top.value, dict)
        if key is not _MERGE and key in top.value:
            # Python's equality: the keys `1` and `true` (or `1` and `01`) would collapse.
            first = key if isinstance(key, str) else (top.key_texts or {}).get(key, text)
            same = f" (equal to {shown(first)})" if first != text else ""
            raise _Refused(self.path(), f"duplicate key {shown(key)}{same}", event.start_mark)
        if not isinstance(key, str) and key is not _MERGE:
            if top.key_texts is None:
                top.key_texts = {}
            top.key_texts.setdefault(key, text)
        top.key = key

    def _merge(self, top: _Open, value: object, event: yaml.Event) -> None:
        """``<<: value``: PyYAML's order (flatten_mapping): of several ``<<`` keys the later
        wins, in a list the earlier; keys written in the mapping win over all."""
        sources = [value] if isinstance(value, dict) else value
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise _Refused(
                self.path("<<"),
                f"<< merges a mapping or a list of mappings, not a {type_name(value)}",
                event.start_mark,
            )
        if top.merges is None:
            top.merges = []
        top.merges.extend(reversed(sources))


def _reads_as(tag: str, value: str) -> bool:
    return any(regexp.match(value) for regexp in _PATTERNS.get(tag, ()))


def _where(source: str, documents: int) -> str:
    return f"{source} (document {documents})" if documents > 1 else source


def _at(mark: _Mark | None) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _reaches(event: yaml.Event, position: tuple[int, int]) -> bool:
    """Whether ``event`` is a node at ``position`` (line, column) or after it, or a scalar
    spanning it."""
    if not isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
        return False
    start, end = event.start_mark, event.end_mark
    if start is not None and (start.line, start.column) >= position:
        return True
    return (
        isinstance(event, yaml.ScalarEvent)
        and end is not None
        and (end.line, end.column) > position
    )


def _events(
    text: str,
    walk: _Walk,
    until: tuple[int, int] | None = None,
    parser_class: type[yaml.SafeLoader] = _Base,
) -> str | None:
    """Feed ``text``'s events to ``walk``; with ``until`` (line, column), stop at the first node
    there or after and return its path."""
    parser = parser_class(text)
    try:
        while parser.check_event():
            event = parser.get_event()  # type: ignore[no-untyped-call]
            if until is not None and _reaches(event, until):
                if isinstance(event, yaml.ScalarEvent) and walk._is_key():
                    return walk.path(_problem(event.value))
                return walk.path()
            walk.feed(event)
    finally:
        parser.dispose()
    return None


def _line_end(text: str, line: int) -> int:
    """The index just past line ``line`` (0-based) of ``text``."""
    end = -1
    for _ in range(line + 1):
        end = text.find("\n", end + 1)
        if end < 0:
            return len(text)
    return end + 1


def _yaml_error(text: str, source: str, exc: yaml.YAMLError) -> ManifestError:
    """PyYAML's error, with the field path and document of the node it points at."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
        problem = f"{exc.reason} (character #x{exc.character:04x} at offset {exc.position})"
    path, documents = ("", 1) if mark is None else _path_at(text, mark.line, mark.column)
    return ManifestError(
        path, f"invalid YAML{_at(mark)}: {_problem(problem)}", _where(source, documents)
    )


def _path_at(text: str, line: int, column: int) -> tuple[str, int]:
    """The field path of the node at (or just before) a position of ``text``, and in which
    document it is: the text read again up to there."""
    walk = _Walk()
    found = None
    # Up to the end of the position's line (where the pure-Python parser stops at the latest).
    end = _line_end(text, line)
    if end <= PY_REPLAY_CHARS:
        # and not deeper than the walk goes: the pure-Python scanner's look-ahead is quadratic
        # in the flow collections open at once (libyaml's stops at 1,000 of them).
        replay, parser_class = _flow_cut(text[:end]), yaml.SafeLoader
    else:
        replay, parser_class = text[:end], _Base
    with contextlib.suppress(yaml.YAMLError, _Refused, RecursionError):  # then: the path so far
        found = _events(replay, walk, (line, column), parser_class)
    return walk.path() if found is None else found, max(walk.documents, 1)


_BRACKET = re.compile(r"[\[\]{}]")


def _flow_cut(text: str) -> str:
    """``text`` up to where more than :data:`MAX_DEPTH` brackets are open (counted naively, a
    bracket in a string too: a cut too early only shortens an error's path)."""
    depth = 0
    for bracket in _BRACKET.finditer(text):
        if bracket.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text[: bracket.end()]
        else:
            depth = max(0, depth - 1)
    return text


def _surrogate_error(text: str, source: str) -> ManifestError | None:
    """A lone surrogate in the text itself (not escaped: libyaml could not even encode it)."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    index = found.start()
    line = text.count("\n", 0, index)
    column = index - (text.rfind("\n", 0, index) + 1)
    # Surrogates replaced by U+FFFD (one character each): the same lines and columns.
    path, documents = _path_at(_SURROGATE.sub("\ufffd", text), line, column)
    return ManifestError(
        path,
        f"the text holds a lone surrogate (\\u{ord(found.group()):04x}: not a character, it "
        f"cannot be encoded) (line {line + 1}, column {column + 1})",
        _where(source, documents),
    )


def _check_size(length: int, source: str) -> None:
    if length > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES} bytes", source)


def load_yaml(text: str, *, source: str) -> list[object]:
    """Every non-empty document of a YAML (or JSON) text, as plain data, within the bounds."""
    _check_size(len(text), source)
    surrogate = _surrogate_error(text, source)
    if surrogate is not None:
        raise surrogate
    walk = _Build()
    try:
        _events(text, walk)
    except _Refused as refused:
        raise ManifestError(
            refused.path, f"{refused.problem}{_at(refused.mark)}", _where(source, walk.documents)
        ) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(text, source, exc) from None
    return walk.data


# --- JSON ---------------------------------------------------------------------------------


class _Duplicated(dict[str, Any]):
    """A JSON object that repeated a key: the check below reports it with its path."""

    duplicate = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            dup = _Duplicated(pairs)
            dup.duplicate = key
            return dup
        out[key] = value
    return out


@dataclass(frozen=True, slots=True)
class _LongNumber:
    """A JSON number too long to convert: the check below reports it with its path."""

    chars: int


def _int_or_long(text: str) -> int | _LongNumber:
    return _LongNumber(len(text)) if len(text) > MAX_NUMBER_CHARS else int(text)


def _float_or_long(text: str) -> float | _LongNumber:
    return _LongNumber(len(text)) if len(text) > MAX_NUMBER_CHARS else float(text)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _check_json(value: object, source: str) -> None:
    """Depth, values, numbers, surrogates and duplicate keys of a decoded JSON value."""

    def fail(path: str, problem: str) -> ManifestError:
        return ManifestError(short_path(path), problem, source)

    nodes = 0
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise fail(path, f"more than {MAX_NODES} values in one text")
        if isinstance(item, str):
            if has_surrogate(item):
                raise fail(path, f"{shown(item)} holds a lone surrogate (it cannot be encoded)")
        elif isinstance(item, _LongNumber):
            raise fail(path, f"a number of {item.chars} characters (at most {MAX_NUMBER_CHARS})")
        elif isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise fail(path, f"nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, _Duplicated):
                raise fail(
                    field_path(path, item.duplicate), f"duplicate key {shown(item.duplicate)}"
                )
            # Reversed onto the stack: the first problem in the text is the one reported.
            if isinstance(item, dict):
                for key, child in reversed(item.items()):
                    if has_surrogate(key):
                        raise fail(path, f"the key {shown(key)} holds a lone surrogate")
                    stack.append((child, field_path(path, key), depth + 1))
            else:
                stack.extend(
                    (item[i], f"{path}[{i}]", depth + 1) for i in range(len(item) - 1, -1, -1)
                )


# JSON's strings (an unterminated one runs to the end: no backtracking) and punctuation.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{},:]')


@dataclass(slots=True)
class _JsonFrame:
    mapping: bool
    index: int = 0  # a list's current item
    key: str = "?"  # an object's current key
    at_key: bool = True  # an object's next string is a key


def _too_deep_at(text: str) -> str:
    """The path of the first collection nested more than :data:`MAX_DEPTH` levels deep in a
    JSON text (for a text too deep for the decoder to tell): a scan of its punctuation and
    strings, linear, stopping there."""
    frames: list[_JsonFrame] = []
    for token in _JSON_TOKEN.finditer(text):
        char = token.group()[0]
        if char in "[{":
            if len(frames) >= MAX_DEPTH:
                break
            frames.append(_JsonFrame(char == "{"))
        elif char in "]}":
            if frames:
                frames.pop()
        elif not frames:
            continue
        elif char == ",":
            frames[-1].index += 1
            frames[-1].at_key = True
        elif char == ":":
            frames[-1].at_key = False
        elif frames[-1].mapping and frames[-1].at_key:
            try:
                frames[-1].key = str(json.loads(token.group()))
            except ValueError:
                frames[-1].key = token.group()[1:-1]
    else:
        return ""
    path = ""
    for frame in frames:
        path = field_path(path, frame.key) if frame.mapping else f"{path}[{frame.index}]"
    return path


def load_json(data: bytes | str, *, source: str) -> object:
    """One JSON value (a request body), as plain data, within the bounds of :func:`load_yaml`."""
    _check_size(len(data), source)
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError("", f"not UTF-8 (at byte {exc.start})", source) from None
    else:
        text = data
    decode: Callable[[str], object] = json.JSONDecoder(
        object_pairs_hook=_pairs,
        parse_int=_int_or_long,
        parse_float=_float_or_long,
        parse_constant=_no_constant,
    ).decode
    try:
        value = decode(text)
    except json.JSONDecodeError as exc:
        where = f" at line {exc.lineno}, column {exc.colno}"
        raise ManifestError("", f"invalid JSON{where}: {_problem(exc.msg)}", source) from None
    except RecursionError:  # some 1,000 levels: the decoder gave up before our check
        path = short_path(_too_deep_at(text))
        raise ManifestError(path, f"nested more than {MAX_DEPTH} levels deep", source) from None
    except ValueError as exc:  # NaN, Infinity
        raise ManifestError("", f"invalid JSON: {_problem(exc)}", source) from None
    _check_json(value, source)
    return value
