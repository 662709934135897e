"""Prometheus metrics of one server (its own registry, so several apps can live in a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dv_requests_total", "Predict requests by HTTP status", ["model", "status"], registry=r
        )
        self.latency = Histogram(
            "dv_request_latency_seconds",
            "Predict request latency",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "dv_queue_time_seconds",
            "Time an item waited for its batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "dv_batch_size",
            "Items per executed batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth = Gauge("dv_queue_depth", "Items waiting in the batch queue", registry=r)
        self.model_version = Gauge(
            "dv_model_version_info",
            "Served model version (value 1)",
            ["model", "version"],
            registry=r,
        )

    def observe_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for w in waits:
            self.queue_time.observe(w)

    def set_version(self, model: str, version: str) -> None:
        self.model_version.clear()
        self.model_version.labels(model, version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
