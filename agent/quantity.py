"""Kubernetes resource quantities (``500m``, ``1.5``, ``128Mi``, ``1e3``) as integers.

CPU becomes millicores, memory bytes. Like Kubernetes, a memory quantity that is not a whole
number of bytes (``0.5``, ``1m``) is rounded up; a CPU quantity finer than a millicore is an
error rather than a silent rounding, because it is almost always a typo.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from agent.errors import ManifestError

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_EXPECTED = "a Kubernetes quantity such as 500m, 2, 1.5, 128Mi, 1Gi or 1e3"


def parse_quantity(value: object, field: str) -> Fraction:
    """The exact value of a quantity; strings and plain numbers are accepted (as in YAML)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestError(field, f"{value!r} is not {_EXPECTED}")
    text = str(value).strip() if not isinstance(value, float) else repr(value)
    match = _QUANTITY.match(text)
    if match is None:
        raise ManifestError(field, f"{text!r} is not {_EXPECTED}")
    try:
        number = Fraction(Decimal(match.group("number")))
    except (InvalidOperation, ValueError) as exc:
        raise ManifestError(field, f"{text!r} is not {_EXPECTED}") from exc
    suffix = match.group("suffix") or ""
    if suffix in _BINARY:
        number *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= _DECIMAL[suffix]
    elif suffix:
        number *= Fraction(10) ** int(suffix[1:])
    if number < 0:
        raise ManifestError(field, f"{text!r} must not be negative")
    return number


def parse_cpu_millis(value: object, field: str) -> int:
    millis = parse_quantity(value, field) * 1000
    if millis.denominator != 1:
        raise ManifestError(field, f"{value!r} is finer than 1m (one millicore)")
    return int(millis)


def parse_memory_bytes(value: object, field: str) -> int:
    amount = parse_quantity(value, field)
    whole = amount.numerator // amount.denominator
    return whole + (1 if amount.denominator != 1 and amount % 1 else 0)
