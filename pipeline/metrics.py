"""Prometheus counters and gauges of the telemetry pipeline."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class PipelineMetrics:
    """What the pipeline counts; registered in the application's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "flatgigs_ingest_readings_received", "Readings taken from the bus", ["source"], registry=registry
        )
        self.stored = Counter(
            "flatgigs_ingest_readings_stored", "Readings written to the store", registry=registry
        )
        self.rejected = Counter(
            "flatgigs_ingest_rejected",
            "Messages refused, by reason and source (each is also a dead letter)",
            ["reason", "source"],
            registry=registry,
        )
        self.dead_letter_overflow = Counter(
            "flatgigs_dead_letter_overflow",
            "Rejections counted but not kept because too many were pending",
            registry=registry,
        )
        self.store_retries = Counter(
            "flatgigs_ingest_store_retries", "Batch writes retried after backpressure", registry=registry
        )
        self.bus_depth = Gauge("flatgigs_ingest_bus_depth", "Readings waiting on the bus", registry=registry)
        self.batch_seconds = Histogram(
            "flatgigs_ingest_batch_seconds",
            "Time to validate, store and fan out one batch",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.status_changes = Counter(
            "flatgigs_device_status_changes", "Device status changes", ["status"], registry=registry
        )
