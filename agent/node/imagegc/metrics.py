"""Image GC's and disk pressure's metrics, registered on the node's registry (``/metrics`` of
the local API). The gauges are set at each observation (every disk check and GC run)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ImageGCMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.images = Gauge("node_agent_images", "Local images on the engine.", registry=registry)
        self.fs_used_bytes = Gauge(
            "node_agent_image_fs_used_bytes",
            "Bytes used on the filesystem of the engine's data root.",
            registry=registry,
        )
        self.fs_capacity_bytes = Gauge(
            "node_agent_image_fs_capacity_bytes",
            "Size of the filesystem of the engine's data root, bytes.",
            registry=registry,
        )
        self.runs = Counter("node_agent_image_gc_runs", "Image GC runs.", registry=registry)
        self.freed_bytes = Counter(
            "node_agent_image_gc_freed_bytes",
            "Bytes of image filesystem freed by image GC (measured before and after).",
            registry=registry,
        )
        self.deleted = Counter(
            "node_agent_image_gc_deleted_images", "Images deleted by image GC.", registry=registry
        )
        self.refused = Counter(
            "node_agent_image_gc_refused",
            "Images image GC did not delete although usage was over the threshold, by reason "
            "(in-use, reserved, sandbox, pinned, too-young, error).",
            ["reason"],
            registry=registry,
        )
        self.dead_containers_removed = Counter(
            "node_agent_dead_containers_removed",
            "Terminated containers removed beyond the per-container or node-wide bound.",
            registry=registry,
        )
        self.disk_pressure = Gauge(
            "node_agent_disk_pressure",
            "1 while the node reports DiskPressure, else 0.",
            registry=registry,
        )
