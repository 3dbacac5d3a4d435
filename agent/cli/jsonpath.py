"""``nodectl get -o jsonpath=TEMPLATE``: kubectl's JSONPath subset, parsed and run here.

What kubectl's templates use: text with ``{…}`` expressions; in them a path from the root (``$``,
or a leading ``.``) or from the current item (``@``): fields (``.name``, ``['name']``), every
element or value (``[*]``, ``.*``), indexes (``[0]``, ``[-1]``), slices (``[1:3]``), unions
(``[0,2]``, ``['a','b']``), recursive descent (``..name``), filters (``[?(@.path)]``,
``[?(@.path == "x")]`` with ``== != < <= > >=`` against a string, number, ``true``, ``false`` or
``null``); string literals (``{"\\n"}``); ``{range PATH}…{end}``, whose body runs once per
result with paths relative to it. Missing fields print nothing, as ``kubectl get`` (which allows
missing keys). Results of one expression are joined by a space; strings print as they are,
everything else as JSON.

Our own parser (no dependency, ~300 lines): the input is bounded (:data:`MAX_TEMPLATE_CHARS`,
range nesting :data:`MAX_RANGE_DEPTH`) and every malformed template is a :class:`CliError`
naming the template and the position, never a traceback (fuzzed in
tests/unit/cli/test_jsonpath.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from agent.errors import CliError
from agent.names import escape

MAX_TEMPLATE_CHARS = 4096
MAX_RANGE_DEPTH = 16
MAX_OUTPUT_CHARS = 64 << 20  # a template whose ranges multiply past this is refused
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-/")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">")


# -- the parsed form ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    names: tuple[str, ...]  # one, or a union ['a','b']


@dataclass(frozen=True, slots=True)
class Wildcard:
    pass


@dataclass(frozen=True, slots=True)
class Indexes:
    indexes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Slice:
    start: int | None
    stop: int | None
    step: int | None


@dataclass(frozen=True, slots=True)
class Recursive:
    name: str | None  # None: every descendant (``..*``)


@dataclass(frozen=True, slots=True)
class Filter:
    path: Path
    operator: str | None  # None: the path exists
    literal: object


Step = Field | Wildcard | Indexes | Slice | Recursive | Filter


@dataclass(frozen=True, slots=True)
class Path:
    from_root: bool  # ``$``: the document, whatever the range; else the current item
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Expression:
    path: Path


@dataclass(frozen=True, slots=True)
class Range:
    path: Path
    body: tuple[Node, ...]


Node = Text | Expression | Range


# -- parsing -----------------------------------------------------------------------------------


class _Error(Exception):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(message)
        self.position = position
        self.message = message


def parse(template: str) -> tuple[Node, ...]:
    """The template's nodes; :class:`CliError` (exit 1) naming what is wrong and where."""
    if len(template) > MAX_TEMPLATE_CHARS:
        raise CliError(f"jsonpath template longer than {MAX_TEMPLATE_CHARS} characters")
    try:
        nodes, position, closer = _parse_nodes(template, 0, 0)
        if closer is not None:
            raise _Error(closer, "{end} without {range}")
        assert position == len(template)
        return nodes
    except _Error as exc:
        shown = escape(template[:80]) + ("…" if len(template) > 80 else "")
        raise CliError(
            f"error parsing jsonpath {shown!r}: {exc.message} (at character {exc.position})"
        ) from None


def _parse_nodes(template: str, i: int, depth: int) -> tuple[tuple[Node, ...], int, int | None]:
    """Nodes up to the end of the template or an ``{end}`` (its position is returned)."""
    nodes: list[Node] = []
    text: list[str] = []
    while i < len(template):
        ch = template[i]
        if ch != "{":
            if ch == "}":
                raise _Error(i, "unexpected '}'")
            text.append(ch)
            i += 1
            continue
        close = _closing_brace(template, i)
        inner = template[i + 1 : close].strip()
        start = i
        i = close + 1
        if text:
            nodes.append(Text("".join(text)))
            text = []
        if inner == "end":
            return tuple(nodes), i, start
        if inner.startswith("range ") or inner == "range":
            if depth >= MAX_RANGE_DEPTH:
                raise _Error(start, f"ranges nested deeper than {MAX_RANGE_DEPTH}")
            path = _parse_path(inner[len("range") :].strip(), start + 1)
            body, i, closer = _parse_nodes(template, i, depth + 1)
            if closer is None:
                raise _Error(start, "{range} without {end}")
            nodes.append(Range(path, body))
        elif inner[:1] in ("'", '"'):
            literal, end = _string(inner, 0, start + 1)
            if end != len(inner):
                raise _Error(start + 1 + end, "text after a string literal")
            nodes.append(Text(literal))
        elif not inner:
            raise _Error(start, "empty expression {}")
        else:
            nodes.append(Expression(_parse_path(inner, start + 1)))
    if text:
        nodes.append(Text("".join(text)))
    return tuple(nodes), i, None


def _closing_brace(template: str, i: int) -> int:
    """The ``}`` closing the ``{`` at ``i``, skipping quoted strings."""
    j = i + 1
    while j < len(template):
        ch = template[j]
        if ch in ("'", '"'):
            _, end = _string(template, j, 0)
            j = end
            continue
        if ch == "{":
            raise _Error(j, "'{' inside an expression")
        if ch == "}":
            return j
        j += 1
    raise _Error(i, "unclosed '{'")


def _string(text: str, i: int, offset: int) -> tuple[str, int]:
    """The quoted string at ``text[i]`` (``\\n``, ``\\t``, ``\\\\`` and the quote escaped);
    returns it and the index after the closing quote."""
    quote = text[i]
    out: list[str] = []
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\" and j + 1 < len(text):
            nxt = text[j + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            j += 2
            continue
        if ch == quote:
            return "".join(out), j + 1
        out.append(ch)
        j += 1
    raise _Error(offset + i, "unterminated string")


def _parse_path(text: str, offset: int) -> Path:
    if not text:
        raise _Error(offset, "empty path")
    path, end = _path_at(text, 0, offset, in_filter=False)
    if end != len(text):
        raise _Error(offset + end, f"unexpected {text[end]!r}")
    return path


def _path_at(text: str, i: int, offset: int, *, in_filter: bool) -> tuple[Path, int]:
    from_root = False
    if text.startswith("$", i):
        from_root = True
        i += 1
    elif text.startswith("@", i):
        i += 1
    elif in_filter:
        raise _Error(offset + i, "a filter's path starts with @")
    steps: list[Step] = []
    while i < len(text):
        ch = text[i]
        if text.startswith("..", i):
            i += 2
            if text.startswith("*", i):
                steps.append(Recursive(None))
                i += 1
                continue
            name, i = _name(text, i, offset)
            steps.append(Recursive(name))
        elif ch == ".":
            i += 1
            if text.startswith("*", i):
                steps.append(Wildcard())
                i += 1
                continue
            if i < len(text) and text[i] == "[":
                continue  # ``.[0]``: kubectl accepts the dot before a bracket
            name, i = _name(text, i, offset)
            steps.append(Field((name,)))
        elif ch == "[":
            step, i = _bracket(text, i, offset)
            steps.append(step)
        else:
            break
    return Path(from_root, tuple(steps)), i


def _name(text: str, i: int, offset: int) -> tuple[str, int]:
    j = i
    while j < len(text) and text[j] in _NAME_CHARS:
        j += 1
    if j == i:
        raise _Error(offset + i, "a field name was expected")
    return text[i:j], j


def _bracket(text: str, i: int, offset: int) -> tuple[Step, int]:
    close = _bracket_end(text, i, offset)
    inner = text[i + 1 : close].strip()
    after = close + 1
    if inner == "*":
        return Wildcard(), after
    if inner.startswith("?"):
        return _filter(inner[1:].strip(), offset + i + 2), after
    if inner[:1] in ("'", '"'):
        names: list[str] = []
        j = 0
        while True:
            name, j = _string(inner, j, offset + i + 1)
            names.append(name)
            rest = inner[j:].lstrip()
            if not rest:
                return Field(tuple(names)), after
            if not rest.startswith(","):
                raise _Error(offset + i, "a union of names is 'a','b'")
            rest = rest[1:].lstrip()
            j = len(inner) - len(rest)
            if inner[j : j + 1] not in ("'", '"'):
                raise _Error(offset + i, "a union of names is 'a','b'")
    if ":" in inner:
        parts = inner.split(":")
        if len(parts) > 3:
            raise _Error(offset + i, f"bad slice [{inner}]")
        bounds = [_int(p, offset + i) if p.strip() else None for p in parts] + [None]
        if bounds[2] == 0:
            raise _Error(offset + i, "a slice's step cannot be 0")
        return Slice(bounds[0], bounds[1], bounds[2]), after
    if not inner:
        raise _Error(offset + i, "empty []")
    return Indexes(tuple(_int(p, offset + i) for p in inner.split(","))), after


def _bracket_end(text: str, i: int, offset: int) -> int:
    """The ``]`` closing the ``[`` at ``i`` (strings and nested brackets skipped)."""
    depth = 0
    j = i
    while j < len(text):
        ch = text[j]
        if ch in ("'", '"'):
            _, j = _string(text, j, offset)
            continue
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise _Error(offset + i, "unclosed '['")


def _int(text: str, position: int) -> int:
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    if not digits.isdigit() or not digits.isascii() or len(digits) > 9:
        raise _Error(position, f"{text!r} is not an index")
    return int(text)


def _filter(text: str, offset: int) -> Filter:
    if not (text.startswith("(") and text.endswith(")")):
        raise _Error(offset, "a filter is ?(@.path OP value)")
    body = text[1:-1].strip()
    path, i = _path_at(body, 0, offset + 1, in_filter=True)
    rest = body[i:].strip()
    if not rest:
        return Filter(path, None, None)
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise _Error(offset + 1 + i, f"unknown operator in filter: {rest[:10]!r}")
    return Filter(path, operator, _literal(rest[len(operator) :].strip(), offset + 1 + i))


def _literal(text: str, position: int) -> object:
    if text[:1] in ("'", '"'):
        value, end = _string(text, 0, position)
        if end != len(text):
            raise _Error(position, "text after a string literal")
        return value
    words: dict[str, object] = {"true": True, "false": False, "null": None}
    if text in words:
        return words[text]
    try:
        number = float(text)
    except ValueError:
        raise _Error(position, f"{text!r} is not a string, number, true, false or null") from None
    if not math.isfinite(number):
        raise _Error(position, f"{text!r} is not a finite number")
    return number


# -- running -----------------------------------------------------------------------------------


def render(nodes: tuple[Node, ...], document: object) -> str:
    """The template run over ``document``."""
    out: list[str] = []
    size = [0]
    _render(nodes, document, document, out, size)
    return "".join(out)


def _render(
    nodes: tuple[Node, ...], root: object, current: object, out: list[str], size: list[int]
) -> None:
    for node in nodes:
        if isinstance(node, Text):
            piece = node.text
        elif isinstance(node, Expression):
            piece = " ".join(_show(v) for v in evaluate(node.path, root, current))
        else:
            for item in evaluate(node.path, root, current):
                _render(node.body, root, item, out, size)
            continue
        size[0] += len(piece)
        if size[0] > MAX_OUTPUT_CHARS:
            raise CliError(f"jsonpath output larger than {MAX_OUTPUT_CHARS} characters")
        out.append(piece)


def _show(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))  # kubectl prints objects compactly


def evaluate(path: Path, root: object, current: object) -> list[Any]:
    values: list[Any] = [root if path.from_root else current]
    for step in path.steps:
        values = _step(step, values, root)
    return values


def _step(step: Step, values: list[Any], root: object) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(step, Field):
            if isinstance(value, dict):
                out += [value[name] for name in step.names if name in value]
        elif isinstance(step, Wildcard):
            out += _children(value)
        elif isinstance(step, Indexes):
            if isinstance(value, list):
                out += [value[n] for n in step.indexes if -len(value) <= n < len(value)]
        elif isinstance(step, Slice):
            if isinstance(value, list):
                out += value[step.start : step.stop : step.step]
        elif isinstance(step, Recursive):
            out += _descendants(value, step.name)
        else:
            out += [child for child in _children(value) if _matches(step, root, child)]
    return out


def _children(value: object) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, list):
        return list(value)
    return []


def _descendants(value: object, name: str | None) -> list[Any]:
    """Every value under ``value`` (itself included) keyed ``name``, in document order;
    iterative, so a deep document cannot exhaust the stack."""
    out: list[Any] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if name is None:
                out += node.values()
            elif name in node:
                out.append(node[name])
        if isinstance(node, dict | list):
            stack += reversed(_children(node))
    return out


def _matches(step: Filter, root: object, item: object) -> bool:
    found = evaluate(step.path, root, item)
    if step.operator is None:
        return bool(found)
    return any(_compare(value, step.operator, step.literal) for value in found)


def _compare(value: object, operator: str, literal: object) -> bool:
    if operator == "==":
        return _equal(value, literal)
    if operator == "!=":
        return not _equal(value, literal)
    numbers = (int, float)
    if isinstance(value, bool) or isinstance(literal, bool):
        return False
    if isinstance(value, numbers) and isinstance(literal, numbers):
        a, b = float(value), float(literal)
    elif isinstance(value, str) and isinstance(literal, str):
        return _ordered(value, operator, literal)
    else:
        return False
    return _ordered(a, operator, b)


def _ordered(a: Any, operator: str, b: Any) -> bool:
    return bool(
        {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[operator]  # both are computed: cheap
    )


def _equal(value: object, literal: object) -> bool:
    if isinstance(value, bool) or isinstance(literal, bool):
        return value is literal
    if isinstance(value, int | float) and isinstance(literal, int | float):
        return float(value) == float(literal)
    return value == literal
