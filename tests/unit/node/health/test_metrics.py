"""The node's metrics keep their names (node_agent_*) through prometheus_client."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.node.health.metrics import NodeMetrics, render


def test_counters_histograms_and_scrape_gauges() -> None:
    metrics = NodeMetrics()
    metrics.checkpoint_error()
    metrics.master_watch_error()
    metrics.master_watch_error()
    metrics.reconcile_seconds.observe(0.02)
    metrics.checkpoint_seconds.observe(0.001)
    assert (metrics.checkpoint_errors, metrics.master_watch_errors) == (1, 2)
    text = render(
        metrics,
        pods_by_phase={"Running": 1, "Pending": 0},
        restarts=[("default", "web", "main", 4)],
        runtime_errors=7,
        runtime_up=True,
    ).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("node_agent_pods", (("phase", "Running"),))] == 1
    assert samples[("node_agent_pods", (("phase", "Pending"),))] == 0
    key = (("container", "main"), ("namespace", "default"), ("pod", "web"))
    assert samples[("node_agent_container_restarts", key)] == 4
    assert samples[("node_agent_runtime_errors_total", ())] == 7
    assert samples[("node_agent_runtime_up", ())] == 1
    assert samples[("node_agent_checkpoint_errors_total", ())] == 1
    assert samples[("node_agent_master_watch_errors_total", ())] == 2
    assert samples[("node_agent_reconcile_duration_seconds_count", ())] == 1
    assert samples[("node_agent_reconcile_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("node_agent_checkpoint_write_duration_seconds_count", ())] == 1
    assert ("process_resident_memory_bytes", ()) in samples


def test_two_agents_in_one_process_do_not_share_counters() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.checkpoint_error()
    assert (first.checkpoint_errors, second.checkpoint_errors) == (1, 0)


async def test_reading_a_counter_on_the_loop_does_not_touch_proc(blockbuster: object) -> None:
    metrics = NodeMetrics()
    metrics.master_watch_error()
    assert metrics.master_watch_errors == 1  # blockbuster fails a /proc read on the loop
