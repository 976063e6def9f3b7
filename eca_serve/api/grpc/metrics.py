"""gRPC request metrics, in the app's own registry next to the HTTP ones.

NOTE: a family of its own (``eca_serve_grpc_*``) with a constant ``protocol="grpc"`` label, so that it
merges later into the HTTP request family (being reworked for bounded labels) without renaming series.
"""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from eca_serve.api.metrics import LATENCY_BUCKETS

PROTOCOL = "grpc"


class GrpcMetrics:
    """Requests by model, RPC and status code, and their latency; labels are bounded by the caller."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("eca_serve_grpc_requests", "gRPC requests by model, RPC and status code",
                                ["protocol", "model", "method", "code"], registry=registry)
        self.seconds = Histogram("eca_serve_grpc_request_duration_seconds", "gRPC request latency",
                                 ["protocol", "model", "method"], buckets=LATENCY_BUCKETS, registry=registry)

    def observe(self, model: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(PROTOCOL, model, method, code.name).inc()
        self.seconds.labels(PROTOCOL, model, method).observe(seconds)
