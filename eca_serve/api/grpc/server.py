"""The grpc.aio server: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on one port.

A peer of the HTTP server (`eca_serve.api.server.Server` starts both on one event loop): both answer from
one data plane (models, batchers, in-flight counts) and one metrics registry, without locks or threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from eca_serve.api.grpc.metrics import GrpcMetrics
from eca_serve.api.grpc.protocol import SERVICE, rpc_types
from eca_serve.api.grpc.service import InferenceService
from eca_serve.api.metrics import ServerMetrics
from eca_serve.api.tracing import OtelTracing, trace_grpc
from eca_serve.dataplane import DataPlane
from eca_serve.settings import Settings

log = logging.getLogger("eca_serve.api.grpc")
HEALTH_POLL_S = 0.25


class _Routes(grpc.GenericRpcHandler):
    """Our RPCs on raw bytes (parsed by the service, so malformed protobuf is INVALID_ARGUMENT, not INTERNAL);
    the service's other RPCs (streaming, shared memory, load/unload, trace, log) answer UNIMPLEMENTED."""

    def __init__(self, service: InferenceService, metrics: GrpcMetrics, hooks: OtelTracing | None) -> None:
        self.handlers = {f"/{SERVICE}/{name}": grpc.unary_unary_rpc_method_handler(trace_grpc(hooks, name, service.rpc_handler(name)))
                         for name in rpc_types()}
        self.metrics = metrics

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self.handlers.get(details.method)
        if handler is None and details.method.startswith(f"/{SERVICE}/"):
            return grpc.stream_stream_rpc_method_handler(self._unimplemented(details.method.rsplit("/", 1)[-1]))
        return handler

    def _unimplemented(self, rpc: str) -> Any:
        # A stream handler serves any call kind and aborts without reading the request.
        async def abort(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            self.metrics.observe("", "other", grpc.StatusCode.UNIMPLEMENTED, 0.0)
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"eca-serve does not implement {SERVICE}/{rpc[:64]}")
            yield b""  # pragma: no cover - makes this an async generator
        return abort


class GrpcServer:
    """gRPC over a data plane: drains with it, stops before the plane stops the models.

    Args:
        plane: The data plane HTTP shares.
        settings: The server's settings (the request size limit is gRPC's message limit).
        metrics: The server's metrics registry.
        address: ``host:port`` to listen on.
        tracing: Span hooks, when tracing is on.
    """

    def __init__(self, plane: DataPlane, settings: Settings, metrics: ServerMetrics, address: str,
                 tracing: OtelTracing | None = None) -> None:
        self.plane, self.settings, self.address, self.tracing = plane, settings, address, tracing
        self.service = InferenceService(plane, settings, metrics)
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Listen on ``address``.

        Raises:
            RuntimeError: The port cannot be bound (in use: SO_REUSEPORT is off so two servers never share it).
        """
        options = [("grpc.max_receive_message_length", self.settings.max_body_bytes),
                   ("grpc.max_send_message_length", -1),  # answers are bounded by the request limits
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers([_Routes(self.service, self.service.metrics, self.tracing)])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        server.add_insecure_port(self.address)
        await server.start()
        self.server = server
        self._health_task = asyncio.create_task(self._follow_readiness())
        log.info("gRPC listening on %s", self.address)

    async def _follow_readiness(self) -> None:
        """Health says SERVING while every model is ready and the server is not draining."""
        last = None
        while True:
            ready = self.plane.server_ready().ready
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for service in ("", SERVICE):
                    await self.health.set(service, status)
                last = status
            await asyncio.sleep(HEALTH_POLL_S)

    async def drain(self) -> None:
        """Health turns NOT_SERVING for good; new RPCs are refused by the data plane (``plane.draining``)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Stop listening, give RPCs still running ``grace_s`` to finish, then cancel them."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        if self.server is not None:
            await self.server.stop(grace_s)


def grpc_address(host: str, port: int) -> str:
    """``host:port`` as gRPC spells it (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
