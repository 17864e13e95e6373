"""Prometheus metrics of ``resnets serve`` (one registry per server, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

# Fixed endpoint labels: a label per raw path would let any client grow the registry without bound.
_ENDPOINTS = (("/predictions/", "predictions"), ("/explain/", "explain"), ("/v2/health/", "health"),
              ("/v2/models/", "v2"), ("/metrics", "metrics"), ("/card", "card"))

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def endpoint_of(path: str) -> str:
    """The metrics label of a request path."""
    if path == "/":
        return "page"
    for prefix, label in _ENDPOINTS:
        if path.startswith(prefix):
            return "v2_infer" if label == "v2" and path.endswith("/infer") else label
    return "other"


class ServeMetrics:
    """Requests, errors by status, latency by endpoint; images per forward pass."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("resnets_requests", "HTTP requests answered", ["endpoint"],
                                registry=self.registry)
        self.errors = Counter("resnets_request_errors", "HTTP requests answered with an error status",
                              ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("resnets_request_latency_seconds", "Time to answer a request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("resnets_batch_size", "Images per forward pass of the model",
                                    buckets=BATCH_BUCKETS, registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint).inc()
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
