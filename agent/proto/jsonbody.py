"""Request bodies of the JSON routes: what a body must be before it is decoded, and its decoding
into a JSON object (sans-IO; the edge, :mod:`agent.aio.edge`, checks the type of every body a
JSON route receives, and decodes one when a handler asks for it).

A body is read only when it says it is JSON: ``Content-Type: application/json``, with at most a
``charset=utf-8`` parameter (RFC 8259 §8.1: JSON between systems is UTF-8). Anything else — a
form, ``text/plain``, no type at all — is a 415, never guessed at. Then its nesting is bounded
(:data:`MAX_JSON_DEPTH` arrays and objects inside one another, a 400 naming the bound) *before*
``json.loads`` sees it, on the raw bytes by C-level passes (strings cut out by splitting at the
quotes left once escapes are gone, then a running sum over the brackets): neither the check nor
the decoder nor anything that later walks the object (a deep copy, a re-encoding) can recurse
out of the stack. The 1 MiB bound on the body's size is the edge's (``MAX_BODY_BYTES``). NaN
and Infinity, which ``json`` would accept, are not JSON: a 400.
"""

from __future__ import annotations

import json
from array import array
from itertools import accumulate
from typing import Any

from agent.errors import BadRequestError, JsonNumberTooLongError, UnsupportedMediaTypeError
from agent.names import quote

JSON_MEDIA_TYPE = "application/json"
# Arrays and objects inside one another. A pod manifest, the deepest body any client sends,
# is about 8 deep (spec.containers[].resources.limits, env[].valueFrom…); Kubernetes' API
# objects stay under 20. 64 leaves room for any of them, and is far below the ~1,000 frames at
# which Python's decoder or a recursive walk would fail.
MAX_JSON_DEPTH = 64
_UTF8_CHARSETS = frozenset({"utf-8", "utf8"})

# The brackets outside strings, as signed steps: an opening one +1, a closing one -1 (0xFF as a
# signed byte), everything else deleted.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# The running depth is followed exactly only through chunks that could pass the bound: a
# chunk whose openings cannot take the depth past it is skipped with two counts.
_CHUNK_BYTES = 64 * 1024


def check_content_type(value: str | None) -> None:
    """415 unless ``value`` (the request's ``Content-Type``) is JSON in UTF-8."""
    if value is None:
        raise UnsupportedMediaTypeError(
            f"request body without a Content-Type: send it as {JSON_MEDIA_TYPE}"
        )
    media, _, parameters = value.partition(";")
    if media.strip().lower() != JSON_MEDIA_TYPE:
        raise UnsupportedMediaTypeError(
            f"request body of type {quote(media.strip())}: this API reads {JSON_MEDIA_TYPE} only"
        )
    for parameter in parameters.split(";"):
        if not parameter.strip():
            continue
        key, _, setting = parameter.partition("=")
        if key.strip().lower() != "charset" or setting.strip().strip('"').lower() not in (
            _UTF8_CHARSETS
        ):
            raise UnsupportedMediaTypeError(
                f"request body of type {quote(value)}: {JSON_MEDIA_TYPE} takes no parameter "
                "but charset=utf-8"
            )


def _outside_strings(body: bytes) -> bytes:
    """``body`` without its JSON strings. Escapes go first (``\\\\`` pairs, then ``\\"``:
    what is left of a run of backslashes escapes the quote after it or not), so the quotes left
    delimit strings, and every other piece between them is outside one. For bytes that are
    not JSON the pieces are some pieces; the decoder refuses those bodies anyway."""
    if b'"' not in body:
        return body
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(body.split(b'"')[::2])


def nests_deeper(body: bytes, limit: int) -> bool:
    """Whether arrays and objects are ever open more than ``limit`` at once in ``body``: exact
    for JSON in UTF-8, whose brackets, quotes and backslashes are never part of another
    character. Linear time in C-level passes (about 40 ms for the worst 1 MiB body on a
    2 GHz core), no recursion; a body with at most ``limit`` openings costs two counts."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    steps = _outside_strings(body).translate(_STEPS, _NOT_BRACKETS)
    depth = 0
    for start in range(0, len(steps), _CHUNK_BYTES):
        chunk = steps[start : start + _CHUNK_BYTES]
        opens = chunk.count(1)
        if depth + opens > limit:
            signed = array("b")
            signed.frombytes(chunk)
            if max(accumulate(signed, initial=depth)) > limit:
                return True
        depth += 2 * opens - len(chunk)
    return False


def _no_constant(name: str) -> Any:
    raise BadRequestError(f"request body is not JSON: {name} is not a JSON number")


def decode_object(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """``body`` (whose type :func:`check_content_type` passed) as a JSON object, or the 400
    naming what is wrong with it: empty, not UTF-8, not JSON, nested deeper than
    ``max_depth``, or not an object."""
    if not body:
        raise BadRequestError("request body is empty: a JSON object is expected")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequestError(
            f"request body is not JSON: not UTF-8 at byte {exc.start} of {len(body)}"
        ) from exc
    if nests_deeper(body, max_depth):
        raise BadRequestError(
            f"request body nests arrays and objects more than {max_depth} deep (the bound on "
            "JSON nesting)"
        )
    try:
        decoded = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise BadRequestError(
            f"request body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except RecursionError as exc:  # not reached under the bound; kept so it can never be a 500
        raise BadRequestError("request body is not JSON: nested too deeply") from exc
    except ValueError as exc:  # an integer past Python's 4,300-digit conversion limit
        raise JsonNumberTooLongError(
            "request body is not JSON for us: it holds an integer over 4300 digits"
        ) from exc
    if not isinstance(decoded, dict):
        raise BadRequestError("request body must be a JSON object")
    return decoded
