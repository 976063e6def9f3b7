"""A real ``eca-serve serve`` subprocess with gRPC on, on the shipped models; raw gRPC calls."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import httpx

from eca_serve.api.grpc.protocol import SERVICE
from tests.reliability.serverproc import ServerProcess, start_server
from tests.serving_utils import free_port

MODELS = Path(__file__).resolve().parents[1] / "models"
CLS, DET = "shapes_classifier", "shapes_detector"


@dataclass
class GrpcServer:
    """The server process, its HTTP base URL and its gRPC address."""

    process: ServerProcess
    address: str

    @property
    def base(self) -> str:
        return self.process.base

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text


@contextmanager
def grpc_server(**env: str) -> Iterator[GrpcServer]:
    """The shipped models served over HTTP and gRPC (``env``: extra ``ECA_SERVE_*`` settings)."""
    port = free_port()
    process = start_server(MODELS, env={"ECA_SERVE_GRPC_PORT": str(port), **env})
    try:
        yield GrpcServer(process, f"127.0.0.1:{port}")
    finally:
        process.stop(timeout_s=30)


def raw_call(channel: grpc.Channel, rpc: str, data: bytes, timeout_s: float = 30) -> tuple[grpc.StatusCode, bytes | str]:
    """Send ``data`` as the request of ``rpc`` unparsed; (status code, response bytes or error details)."""
    call = channel.unary_unary(f"/{SERVICE}/{rpc}")  # no serializers: bytes in, bytes out
    try:
        return grpc.StatusCode.OK, call(data, timeout=timeout_s)
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
