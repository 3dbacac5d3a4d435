"""Node metrics in the Prometheus text exposition format (no client library needed).

Counters and histograms are updated in the loop; rendering reads the pod manager and the
runtime adapter at scrape time so gauges are never stale.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

RECONCILE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    def __init__(self, buckets: Iterable[float] = RECONCILE_BUCKETS_S) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{name}_sum {self.total:.6f}")
        lines.append(f"{name}_count {self.count}")
        return lines


class NodeMetrics:
    def __init__(self) -> None:
        self.reconcile_seconds = Histogram()
        self.checkpoint_seconds = Histogram()
        self.checkpoint_errors = 0
        self.master_watch_errors = 0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(
    metrics: NodeMetrics,
    *,
    pods_by_phase: Mapping[str, int],
    restarts: Iterable[tuple[str, str, str, int]],
    runtime_errors: int,
    runtime_up: bool,
) -> str:
    lines = [
        "# HELP node_agent_pods Pods on this node by phase.",
        "# TYPE node_agent_pods gauge",
    ]
    lines += [f'node_agent_pods{{phase="{p}"}} {n}' for p, n in sorted(pods_by_phase.items())]
    lines += [
        "# HELP node_agent_container_restarts Restart count of each container.",
        "# TYPE node_agent_container_restarts gauge",
    ]
    lines += [
        f'node_agent_container_restarts{{namespace="{_escape(ns)}",pod="{_escape(pod)}",'
        f'container="{_escape(c)}"}} {n}'
        for ns, pod, c, n in restarts
    ]
    lines += [
        "# HELP node_agent_runtime_errors_total Failed container runtime calls.",
        "# TYPE node_agent_runtime_errors_total counter",
        f"node_agent_runtime_errors_total {runtime_errors}",
        "# HELP node_agent_runtime_up Whether the container runtime answered the last check.",
        "# TYPE node_agent_runtime_up gauge",
        f"node_agent_runtime_up {int(runtime_up)}",
        "# HELP node_agent_checkpoint_errors_total Failed checkpoint writes.",
        "# TYPE node_agent_checkpoint_errors_total counter",
        f"node_agent_checkpoint_errors_total {metrics.checkpoint_errors}",
        "# HELP node_agent_master_watch_errors_total Malformed pod watch events and listings "
        "from the master (each answered by a relist) and pods whose manifest was rejected.",
        "# TYPE node_agent_master_watch_errors_total counter",
        f"node_agent_master_watch_errors_total {metrics.master_watch_errors}",
    ]
    lines += metrics.reconcile_seconds.render(
        "node_agent_reconcile_duration_seconds", "Duration of one pod sync."
    )
    lines += metrics.checkpoint_seconds.render(
        "node_agent_checkpoint_write_duration_seconds", "Duration of one checkpoint write."
    )
    return "\n".join(lines) + "\n"
