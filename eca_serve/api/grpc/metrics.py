"""gRPC requests in the same bounded request family as HTTP, told apart by ``protocol="grpc"``."""

from __future__ import annotations

import grpc

from eca_serve.api.metrics import ServerMetrics

PROTOCOL = "grpc"


class GrpcMetrics:
    """Counts gRPC calls by model, RPC (as the endpoint) and status code name; model labels bounded by `ServerMetrics`."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def observe(self, model: str, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.metrics.observe_request(model, method, code.name, seconds, protocol=PROTOCOL)
