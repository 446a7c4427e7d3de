"""Prometheus counters of the notifications service (registered in the application's registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class NotifyMetrics:
    """What the notifications service counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.decisions = Counter(
            "flatgigs_notify_decisions",
            "Notification requests by policy decision (queued, held, throttled, deduplicated, ...)",
            ["outcome"],
            registry=registry,
        )
        self.attempts = Counter(
            "flatgigs_notify_attempts",
            "Delivery attempts to one channel, by result (ok, failed, timeout)",
            ["result"],
            registry=registry,
        )
        self.deliveries = Counter(
            "flatgigs_notify_deliveries",
            "Deliveries finished, by outcome (sent, dead, cancelled)",
            ["outcome"],
            registry=registry,
        )
        self.resent = Counter(
            "flatgigs_notify_resent", "Dead letters re-sent through the API", registry=registry
        )
        self.queue_full = Counter(
            "flatgigs_notify_queue_full",
            "Deliveries refused because their channel's queue was full",
            registry=registry,
        )
        self.queued = Gauge("flatgigs_notify_queued", "Deliveries waiting or in progress", registry=registry)
        self.log_pending = Gauge(
            "flatgigs_notify_log_pending", "Delivery log records not yet written", registry=registry
        )
        self.seconds = Histogram(
            "flatgigs_notify_delivery_seconds",
            "Time from queueing to the final outcome of a delivery",
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
