"""``nodectl get``'s selections and script formats, as kubectl's: label selectors (``-l``),
field selectors (``--field-selector``), ``-o name``, ``-o custom-columns=…`` and the parsing of
``-o`` itself. Imported only by a get that uses one of them (start-up stays lean).

Selections run here, on what the master listed (decided in docs/decisions.md: the master's
list reads every pod from its store anyway, so filtering there would save only the transfer
of a few kilobytes a pod, and would add query parameters to fuzz on a trust boundary).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.errors import CliError
from agent.names import escape, quote

MAX_SELECTOR_CHARS = 4096
# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters;
# a value: empty or such a name (kubectl's validation, which a selector is held to).
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}")
_VALUE = re.compile(rf"({_NAME})?")


# -- -o ---------------------------------------------------------------------------------------

FORMATS = ("wide", "json", "yaml", "name")
TEMPLATE_FORMATS = ("jsonpath", "custom-columns")


@dataclass(frozen=True, slots=True)
class Output:
    """``-o``: a format and, for jsonpath and custom-columns, its template."""

    format: str | None
    template: str = ""


def parse_output(text: str | None) -> Output:
    if text is None:
        return Output(None)
    if text in FORMATS:
        return Output(text)
    kind, sep, template = text.partition("=")
    if sep and kind in TEMPLATE_FORMATS:
        if not template:
            raise CliError(f"-o {kind}= needs a template", 2)
        return Output(kind, template)
    known = ", ".join((*FORMATS, "jsonpath=…", "custom-columns=…"))
    raise CliError(f"unknown output format {quote(text)} (known: {known})", 2)


# -- label selectors --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        # != and notin match an object without the label too, as Kubernetes'.
        return not present or value not in self.values


def _split_requirements(text: str) -> list[str]:
    """The comma-separated requirements, commas inside ``(…)`` kept."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise CliError(f"unable to parse requirement: unbalanced ')' in {quote(text)}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise CliError(f"unable to parse requirement: unclosed '(' in {quote(text)}")
    parts.append("".join(current))
    return parts


_SET = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)\s*$")


def parse_selector(text: str) -> tuple[Requirement, ...]:
    """``-l``: equality (``a=b``, ``a==b``, ``a!=b``), set-based (``a in (x,y)``,
    ``a notin (x)``), existence (``a``, ``!a``), comma-separated (all must hold)."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise CliError(f"label selector longer than {MAX_SELECTOR_CHARS} characters")
    if not text.strip():
        return ()
    requirements = []
    for part in _split_requirements(text):
        requirements.append(_requirement(part))
    return tuple(requirements)


def _requirement(part: str) -> Requirement:
    if match := _SET.match(part):
        values = [v.strip() for v in match["values"].split(",")]
        if match["op"] == "in" and values == [""]:
            raise CliError(f"unable to parse requirement {quote(part)}: 'in' needs values")
        key = _key(match["key"], part)
        return Requirement(key, match["op"], frozenset(_value(v, part) for v in values))
    if match := _EQUALITY.match(part):
        operator = "!=" if match["op"] == "!=" else "="
        key = _key(match["key"], part)
        return Requirement(key, operator, frozenset({_value(match["value"], part)}))
    if match := _EXISTS.match(part):
        return Requirement(_key(match["key"], part), "!" if match["neg"] else "exists")
    raise CliError(
        f"unable to parse requirement {quote(part)}: expected key, !key, key=value, "
        f"key!=value, key in (a,b) or key notin (a,b)"
    )


def _key(key: str, part: str) -> str:
    if not _KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63:
        raise CliError(f"unable to parse requirement {quote(part)}: invalid label key {quote(key)}")
    return key


def _value(value: str, part: str) -> str:
    if not _VALUE.fullmatch(value):
        raise CliError(
            f"unable to parse requirement {quote(part)}: invalid label value {quote(value)}"
        )
    return value


def select(items: list[dict[str, Any]], selector: tuple[Requirement, ...]) -> list[dict[str, Any]]:
    def labels(item: dict[str, Any]) -> dict[str, str]:
        found = item.get("metadata", {}).get("labels")
        return found if isinstance(found, dict) else {}

    return [item for item in items if all(r.matches(labels(item)) for r in selector)]


# -- field selectors --------------------------------------------------------------------------


def _node_name(item: dict[str, Any]) -> str:
    return str(item.get("spec", {}).get("nodeName") or "")


# The fields kubectl's API server lets a selector name, per kind (strings as the API compares).
FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "pods": {
        "metadata.name": lambda o: str(o["metadata"].get("name", "")),
        "metadata.namespace": lambda o: str(o["metadata"].get("namespace", "")),
        "spec.nodeName": _node_name,
        "status.phase": lambda o: str(o.get("status", {}).get("phase") or ""),
    },
    "nodes": {
        "metadata.name": lambda o: str(o["metadata"].get("name", "")),
        "spec.unschedulable": lambda o: str(bool(o.get("spec", {}).get("unschedulable"))).lower(),
    },
    "csr": {"metadata.name": lambda o: str(o["metadata"].get("name", ""))},
}


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    field: str
    equal: bool
    value: str


def parse_field_selector(text: str) -> tuple[FieldRequirement, ...]:
    """``--field-selector a=b,c!=d`` (``==`` too)."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise CliError(f"field selector longer than {MAX_SELECTOR_CHARS} characters")
    requirements = []
    for part in text.split(","):
        for operator in ("!=", "==", "="):
            field, sep, value = part.partition(operator)
            if sep:
                break
        else:
            raise CliError(f"invalid field selector {quote(part)}: expected field=value")
        requirements.append(FieldRequirement(field.strip(), operator != "!=", value.strip()))
    return tuple(requirements)


def select_fields(
    items: list[dict[str, Any]], kind: str, selector: tuple[FieldRequirement, ...]
) -> list[dict[str, Any]]:
    fields = FIELDS.get(kind, {})
    for requirement in selector:
        if requirement.field not in fields:
            supported = ", ".join(fields) or "none"
            raise CliError(
                f"field label not supported: {escape(requirement.field)} (for {kind}: {supported})"
            )
    return [
        item
        for item in items
        if all((fields[r.field](item) == r.value) == r.equal for r in selector)
    ]


# -- -o name, custom-columns ------------------------------------------------------------------

SINGULAR = {"nodes": "node", "pods": "pod", "csr": "certificaterequest"}


def name_of(kind: str, item: dict[str, Any]) -> str:
    return f"{SINGULAR[kind]}/{escape(str(item.get('metadata', {}).get('name', '')))}"


def parse_columns(template: str) -> list[tuple[str, Any]]:
    """``NAME:.metadata.name,NODE:.spec.nodeName``: each header with its parsed path (a path
    may be written bare or in braces, as kubectl allows)."""
    from agent.cli import jsonpath

    columns = []
    for spec in template.split(","):
        header, sep, path = spec.partition(":")
        if not sep or not header or not path:
            raise CliError(
                f"custom-columns: {quote(spec)} is not HEADER:PATH "
                f"(e.g. NAME:.metadata.name,NODE:.spec.nodeName)"
            )
        text = path if path.startswith("{") else "{" + path + "}"
        nodes = jsonpath.parse(text)
        if len(nodes) != 1 or not isinstance(nodes[0], jsonpath.Expression):
            raise CliError(f"custom-columns: {quote(path)} is not one path")
        columns.append((header, nodes[0].path))
    return columns


def column_rows(
    columns: list[tuple[str, Any]], items: list[dict[str, Any]], headers: bool
) -> list[list[str]]:
    """The cells of ``custom-columns``: the values of each path joined by commas,
    ``<none>`` for none, everything escaped (one row per object, whatever it holds)."""
    from agent.cli import jsonpath

    rows = [[escape(header) for header, _ in columns]] if headers else []
    for item in items:
        row = []
        for _, path in columns:
            values = jsonpath.evaluate(path, item, item)
            shown = ",".join(jsonpath._show(v) for v in values) if values else "<none>"
            row.append(escape(shown))
        rows.append(row)
    return rows
