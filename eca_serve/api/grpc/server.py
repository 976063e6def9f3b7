"""The grpc.aio server: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health`` on one port.

It runs on the event loop of the HTTP server (uvicorn), so both share one model manager, batchers,
in-flight counter and metrics without locks or threads.
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
from eca_serve.api.tracing import trace_grpc

log = logging.getLogger("eca_serve.api.grpc")
HEALTH_POLL_S = 0.25


class _Routes(grpc.GenericRpcHandler):
    """Our RPCs on raw bytes (parsed by the service, so malformed protobuf is INVALID_ARGUMENT, not INTERNAL);
    the service's other RPCs (streaming, shared memory, load/unload, trace, log) answer UNIMPLEMENTED."""

    def __init__(self, service: InferenceService, metrics: GrpcMetrics) -> None:
        hooks = getattr(service.state, "tracing", None)
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
    """gRPC next to an HTTP app: start after the app's lifespan started, drain with it, stop before it stops.

    Args:
        state: The FastAPI app's ``state`` (manager, settings, inflight, draining, metrics).
        address: ``host:port`` to listen on.
    """

    def __init__(self, state: Any, address: str) -> None:
        self.state, self.address = state, address
        self.metrics = GrpcMetrics(state.metrics)
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._health_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Listen on ``address``.

        Raises:
            RuntimeError: The port cannot be bound (in use: SO_REUSEPORT is off so two servers never share it).
        """
        options = [("grpc.max_receive_message_length", self.state.settings.max_body_bytes),
                   ("grpc.max_send_message_length", -1),  # answers are bounded by the request limits
                   ("grpc.so_reuseport", 0)]
        server = grpc.aio.server(options=options)
        server.add_generic_rpc_handlers([_Routes(InferenceService(self.state, self.metrics), self.metrics)])
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
            ready = self.state.manager.ready and not self.state.draining
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            if status != last:
                for service in ("", SERVICE):
                    await self.health.set(service, status)
                last = status
            await asyncio.sleep(HEALTH_POLL_S)

    async def drain(self) -> None:
        """Health turns NOT_SERVING for good; new RPCs are refused by the service (``state.draining``)."""
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
