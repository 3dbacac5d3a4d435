"""Kubernetes resource quantities (``500m``, ``1.5``, ``128Mi``, ``1e3``) as integers.

CPU becomes millicores, memory bytes. The grammar is Kubernetes' ``resource.Quantity``: a signed
decimal number followed by a binary suffix (``Ki`` … ``Ei``), a decimal suffix (``n u m k M G T
P E``) or a decimal exponent (``e3``, ``E-2``). YAML numbers (``2``, ``0.5``) are accepted as the
same quantity written as a string.

Like Kubernetes, a memory quantity that is not a whole number of bytes (``0.5``, ``1500m``) is
rounded up. A CPU quantity finer than a millicore is an error rather than a silent rounding,
because it is almost always a typo. Negative quantities and values beyond a signed 64-bit integer
(what Docker and the kernel take) are rejected; so are exponents beyond ±30, which no real
quantity needs and which would otherwise let ``1e999999999`` stall the parser, and texts longer
than :data:`MAX_QUANTITY_CHARS` (a 900,000-digit number took 47 s to convert; the longest real
quantity, ``9223372036854775807``, has 19 digits).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from agent.errors import ManifestError
from agent.manifest_loader import shown, type_name

INT64_MAX = 2**63 - 1
MAX_EXPONENT = 30
MAX_QUANTITY_CHARS = 64

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?",
    re.ASCII,  # `\d` would otherwise accept any Unicode digit (Arabic-Indic, fullwidth, ...)
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
    """The exact, non-negative value of a quantity in base units (cores, bytes)."""
    # bool is an int subclass; "true" is never a quantity.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestError(field, f"must be {_EXPECTED}, got {type_name(value)}")
    # Bounded before any conversion: str() of a huge int is itself slow (or refused).
    if isinstance(value, int) and value.bit_length() > 4 * MAX_QUANTITY_CHARS:
        raise ManifestError(field, f"{shown(value)} is too large")
    # Kubernetes trims surrounding whitespace when it decodes a quantity from JSON/YAML.
    text = value.strip() if isinstance(value, str) else repr(value)
    if len(text) > MAX_QUANTITY_CHARS:
        raise ManifestError(
            field,
            f"{shown(value)} is not {_EXPECTED} (at most {MAX_QUANTITY_CHARS} characters)",
        )
    match = _QUANTITY.fullmatch(text)
    if match is None:
        raise ManifestError(field, f"{shown(value)} is not {_EXPECTED}")
    try:
        number = Fraction(Decimal(match.group("number")))
    except (InvalidOperation, ValueError) as exc:
        raise ManifestError(field, f"{shown(value)} is not {_EXPECTED}") from exc
    suffix = match.group("suffix") or ""
    if suffix in _BINARY:
        number *= _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= _DECIMAL[suffix]
    elif suffix:
        exponent = int(suffix[1:])
        if abs(exponent) > MAX_EXPONENT:
            raise ManifestError(
                field, f"{shown(value)}: exponent out of range (at most ±{MAX_EXPONENT})"
            )
        number *= Fraction(10) ** exponent
    if number < 0:
        raise ManifestError(field, f"{shown(value)} must not be negative")
    return number


def _checked(amount: int, value: object, field: str) -> int:
    if amount > INT64_MAX:
        raise ManifestError(field, f"{shown(value)} is too large")
    return amount


def parse_cpu_millis(value: object, field: str) -> int:
    """CPU in millicores: ``"500m"`` → 500, ``"1"``/``1`` → 1000, ``0.25`` → 250."""
    millis = parse_quantity(value, field) * 1000
    if millis.denominator != 1:
        raise ManifestError(field, f"{shown(value)} is finer than 1m (one millicore)")
    return _checked(int(millis), value, field)


def parse_memory_bytes(value: object, field: str) -> int:
    """Memory in bytes: ``"128Mi"`` → 134217728, ``"1G"`` → 10**9; fractions round up."""
    return _checked(math.ceil(parse_quantity(value, field)), value, field)
