"""The node's metrics (``/metrics`` on the local API), through ``prometheus_client``.

Counters and histograms are updated in the loop by the managers that own what they count; the
state gauges (pods by phase, restarts, runtime health) are read from the pod manager and the
runtime adapter at scrape time so they are never stale. The registry also carries the standard
``process_*`` metrics (resident memory, open fds, CPU seconds) that long-running tests read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric

from agent.aio.metrics import exposition, gauge, new_registry

RECONCILE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.reconcile_seconds = Histogram(
            "node_agent_reconcile_duration_seconds",
            "Duration of one pod sync.",
            buckets=RECONCILE_BUCKETS_S,
            registry=self.registry,
        )
        self.checkpoint_seconds = Histogram(
            "node_agent_checkpoint_write_duration_seconds",
            "Duration of one checkpoint write.",
            buckets=RECONCILE_BUCKETS_S,
            registry=self.registry,
        )
        self._checkpoint_errors = Counter(
            "node_agent_checkpoint_errors", "Failed checkpoint writes.", registry=self.registry
        )
        self._master_watch_errors = Counter(
            "node_agent_master_watch_errors",
            "Malformed pod watch events and listings from the master (each answered by a "
            "relist) and pods whose manifest was rejected.",
            registry=self.registry,
        )

    def checkpoint_error(self) -> None:
        self._checkpoint_errors.inc()

    def master_watch_error(self) -> None:
        self._master_watch_errors.inc()

    @property
    def checkpoint_errors(self) -> int:
        return _count(self._checkpoint_errors)

    @property
    def master_watch_errors(self) -> int:
        return _count(self._master_watch_errors)


def _count(counter: Counter) -> int:
    """A counter's value from the counter alone (the registry would also run the process
    collector, which reads /proc)."""
    [family] = counter.collect()
    return int(next(s.value for s in family.samples if s.name.endswith("_total")))


def render(
    metrics: NodeMetrics,
    *,
    pods_by_phase: Mapping[str, int],
    restarts: Iterable[tuple[str, str, str, int]],
    runtime_errors: int,
    runtime_up: bool,
) -> bytes:
    """This scrape's exposition: the state gauges, then the registry."""
    families: list[Metric] = [
        gauge(
            "node_agent_pods",
            "Pods on this node by phase.",
            (((phase,), n) for phase, n in sorted(pods_by_phase.items())),
            labels=("phase",),
        ),
        gauge(
            "node_agent_container_restarts",
            "Restart count of each container.",
            (((ns, pod, c), n) for ns, pod, c, n in restarts),
            labels=("namespace", "pod", "container"),
        ),
        gauge(
            "node_agent_runtime_up",
            "Whether the container runtime answered the last check.",
            [((), float(runtime_up))],
        ),
    ]
    # A counter kept by the runtime adapter, read at scrape time.
    families.append(
        CounterMetricFamily(
            "node_agent_runtime_errors", "Failed container runtime calls.", value=runtime_errors
        )
    )
    return exposition(metrics.registry, families)
