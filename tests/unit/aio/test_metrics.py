"""The Prometheus exposition shared by both daemons: process metrics, gauges and summaries
rendered with the registry, parseable by Prometheus' own text parser."""

from __future__ import annotations

import math

import pytest
from prometheus_client import Counter
from prometheus_client.parser import text_string_to_metric_families

from agent.aio.metrics import DEFAULT_RUN_BLOCKING, exposition, gauge, new_registry, summary


def _families(text: bytes) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    found: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        found[family.name] = [(s.name, s.labels, s.value) for s in family.samples]
    return found


def test_exposition_has_process_metrics_the_scrape_and_the_registry() -> None:
    registry = new_registry()
    counter = Counter("demo_things", "Things.", registry=registry)
    counter.inc(3)
    text = exposition(
        registry,
        [
            gauge("demo_pods", "Pods by phase.", [(("Running",), 2), (("Failed",), 0)], ["phase"]),
            gauge("demo_up", "Up.", [((), 1)]),
        ],
    )
    families = _families(text)
    assert families["demo_things"] == [("demo_things_total", {}, 3.0)]  # no *_created noise
    assert ("demo_pods", {"phase": "Running"}, 2.0) in families["demo_pods"]
    assert families["demo_up"] == [("demo_up", {}, 1.0)]
    # The standard process collector: what long-running tests read.
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_cpu_seconds"):
        assert families[name][0][2] > 0, name


def test_summary_quantiles_count_and_sum() -> None:
    family = summary("demo_seconds", "Latency.", [0.3, 0.1, 0.2, 0.4])
    samples = {(s.name, s.labels.get("quantile", "")): s.value for s in family.samples}
    assert samples[("demo_seconds", "0.5")] == 0.3
    assert samples[("demo_seconds", "0.99")] == 0.4
    assert samples[("demo_seconds", "1")] == 0.4
    assert samples[("demo_seconds_count", "")] == 4
    assert math.isclose(samples[("demo_seconds_sum", "")], 1.0)


def test_empty_summary_is_nan_not_zero() -> None:
    family = summary("demo_seconds", "Latency.", [])
    quantiles = [s.value for s in family.samples if "quantile" in s.labels]
    assert len(quantiles) == 3 and all(math.isnan(q) for q in quantiles)


@pytest.mark.usefixtures("blockbuster")
async def test_default_renderer_keeps_proc_reads_off_the_loop() -> None:
    registry = new_registry()
    text = await DEFAULT_RUN_BLOCKING(lambda: exposition(registry))
    assert b"process_resident_memory_bytes" in text
