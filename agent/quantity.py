"""TEMPORARY minimal quantities (replaced by the full one)."""

from __future__ import annotations


def parse_cpu_millis(value: object, field: str) -> int:
    s = str(value)
    return int(s[:-1]) if s.endswith("m") else int(float(s) * 1000)


def parse_memory_bytes(value: object, field: str) -> int:
    s = str(value)
    for suf, mul in (("Ki", 1024), ("Mi", 1024**2), ("Gi", 1024**3)):
        if s.endswith(suf):
            return int(s[:-2]) * mul
    return int(s)
