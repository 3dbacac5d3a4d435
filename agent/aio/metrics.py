"""Prometheus exposition for both daemons, through ``prometheus_client``.

Each daemon keeps its own ``CollectorRegistry`` (never the library's global one, so several
agents or masters in one test process do not collide) holding the standard ``process_*`` and
``python_info`` collectors and the daemon's counters and histograms. Gauges that describe the
current state (pods by phase, nodes by registration state, latency quantiles) are read at
scrape time, often from async sources, so a scrape builds them first and renders them with the
registry in one exposition (:func:`exposition`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = CONTENT_TYPE_LATEST

_T = TypeVar("_T")


class RunBlocking(Protocol):
    """Runs a blocking call off the event loop: the daemon's thread bridge
    (``ThreadBridge.run``) or, by default, ``asyncio.to_thread``. Rendering reads /proc (the
    process collector); the master also parses large manifests with it."""

    def __call__(self, func: Callable[[], _T], /) -> Awaitable[_T]: ...


async def _to_thread(func: Callable[[], _T], /) -> _T:
    return await asyncio.to_thread(func)


DEFAULT_RUN_BLOCKING: RunBlocking = _to_thread
SUMMARY_QUANTILES = (0.5, 0.99, 1.0)

# ``*_created`` samples (a timestamp per counter and histogram) are noise for a node's scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]


def new_registry() -> CollectorRegistry:
    """A registry with the process collectors: resident memory, open fds, CPU seconds, start."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def gauge(
    name: str, doc: str, samples: Iterable[tuple[Sequence[str], float]], labels: Sequence[str] = ()
) -> GaugeMetricFamily:
    """A gauge family from ``(label values, value)`` pairs (one unlabelled sample when
    ``labels`` is empty)."""
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


def summary(name: str, doc: str, samples: Iterable[float]) -> Metric:
    """A summary with the 0.5, 0.99 and 1 quantiles of recent ``samples``, their count and sum
    (the quantiles are over the samples kept, not a decaying window)."""
    ordered = sorted(samples)
    family = Metric(name, doc, "summary")
    for q in SUMMARY_QUANTILES:
        value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else math.nan
        family.add_sample(name, {"quantile": f"{q:g}"}, value)
    family.add_sample(name + "_count", {}, float(len(ordered)))
    family.add_sample(name + "_sum", {}, math.fsum(ordered))
    return family


class _Snapshot(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(registry: CollectorRegistry, families: Sequence[Metric] = ()) -> bytes:
    """The text exposition of ``registry`` followed by this scrape's ``families``."""
    snapshot = CollectorRegistry(auto_describe=False)
    snapshot.register(_Snapshot(families))
    return generate_latest(snapshot) + generate_latest(registry)
