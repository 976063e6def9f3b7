"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from fastapi import FastAPI

from eca_serve.errors import ConfigError
if TYPE_CHECKING:
    from eca_serve.api.grpc.server import GrpcServer

log = logging.getLogger("eca_serve.server")


class DrainingServer(uvicorn.Server):
    """uvicorn server whose first SIGTERM/SIGINT drains before exiting.

    At once: readiness turns 503 and new requests are answered 503 (``app.state.draining``). Requests
    already in flight (including queued ones) finish, up to ``grace_s``; then uvicorn shuts down and the
    process exits 0. A second signal exits immediately.

    With ``grpc_port``, the gRPC API is served on the same event loop (so it shares the app's models,
    batchers, in-flight counter and metrics): it starts once the lifespan has started the app, turns
    NOT_SERVING with the drain, and stops before the lifespan stops the models. NOTE: here and not in the
    lifespan, which also runs for in-process apps (tests' TestClient) that must not bind a port.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float, grpc_port: int = 0) -> None:
        super().__init__(config)
        self.app, self.grace_s = app, grace_s
        self._drain_task: asyncio.Task | None = None
        self.grpc_port, self.failed = grpc_port, False
        self.grpc: GrpcServer | None = None

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.grpc_port and not self.should_exit:
            from eca_serve.api.grpc.server import GrpcServer, grpc_address

            front = GrpcServer(self.app.state, grpc_address(self.config.host, self.grpc_port))
            try:
                await front.start()
                self.grpc = front
            except RuntimeError as exc:
                log.error("cannot serve gRPC on port %d: %s", self.grpc_port, exc)
                self.should_exit = self.failed = True

    async def shutdown(self, sockets: list | None = None) -> None:
        if self.grpc is not None:
            await self.grpc.stop(grace_s=min(1.0, self.grace_s))  # in-flight calls had the drain's grace already
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.app.state.draining:
            super().handle_exit(sig, frame)
            return
        self.app.state.draining = True
        log.info("signal %s: draining %d in-flight request(s), grace %.0fs", sig, self.app.state.inflight, self.grace_s)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        if self.grpc is not None:
            await self.grpc.drain()
        while self.app.state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.app.state.inflight:
            log.warning("grace period over with %d request(s) still in flight", self.app.state.inflight)
        self.should_exit = True


def check_ports(host: str, ports: list[int]) -> None:
    """Raise `ConfigError` if any of ``ports`` (0 = none) cannot be bound on ``host`` now.

    Checked before the models load: otherwise uvicorn's bind error comes after seconds of loading logs
    and scrolls away under them. Same socket options as uvicorn (SO_REUSEADDR), so a port in TIME_WAIT passes.
    """
    for port in [p for p in ports if p]:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def serve(app: FastAPI, host: str, port: int, grace_s: float, grpc_port: int = 0) -> None:
    """Serve ``app`` (and gRPC on ``grpc_port`` unless 0) until a signal drains it (blocking).

    One process only: uvicorn's ``workers`` supervisor would run plain ``uvicorn.Server`` workers,
    which stop on SIGTERM without this drain (hence ``eca-serve serve`` refuses ``--workers`` > 1).

    Raises:
        SystemExit: The gRPC port could not be bound (status 1, as uvicorn does for its own port).
    """
    config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=max(1, int(grace_s)))
    server = DrainingServer(config, app, grace_s, grpc_port)
    server.run()
    if server.failed:
        raise SystemExit(1)
