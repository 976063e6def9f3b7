"""One server object: REST (uvicorn) and gRPC (grpc.aio) as peers over one data plane, drained together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

from eca_serve.api.grpc.server import GrpcServer, grpc_address
from eca_serve.api.metrics import ServerMetrics
from eca_serve.api.tracing import OtelTracing
from eca_serve.dataplane import DataPlane
from eca_serve.errors import ConfigError
from eca_serve.settings import Settings

log = logging.getLogger("eca_serve.server")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRPC_STOP_S = 1.0  # what RPCs still running get once the drain's grace is over


class _Http(uvicorn.Server):
    """uvicorn without its own signal handling: the `Server` that owns it decides when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Server:
    """REST and gRPC started side by side over the app's data plane, which this object starts and stops.

    The first SIGTERM/SIGINT (or `request_exit`) drains: at once, readiness turns 503 / NOT_SERVING and
    new requests of both protocols are refused (``plane.draining``); requests already held (queued ones
    included) are answered, up to ``grace_s``; then gRPC stops, uvicorn stops, and the models stop. A
    second signal skips what is left of the grace period.

    Args:
        app: The app of `eca_serve.api.create_app` (its data plane, settings, metrics and tracing hooks).
        host: Address both protocols listen on.
        port: HTTP port.
        grace_s: Most seconds a drain waits for the requests held.
        grpc_port: gRPC port; 0 serves no gRPC.
    """

    def __init__(self, app: FastAPI, host: str, port: int, grace_s: float, grpc_port: int = 0) -> None:
        self.plane: DataPlane = app.state.dataplane
        settings: Settings = app.state.settings
        metrics: ServerMetrics = app.state.metrics
        tracing: OtelTracing | None = getattr(app.state, "tracing", None)
        self.grace_s, self.failed = grace_s, False
        config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=max(1, int(grace_s)))
        self.http = _Http(config)
        self.grpc = GrpcServer(self.plane, settings, metrics, grpc_address(host, grpc_port), tracing) if grpc_port else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._exit_asked = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop both protocols and the data plane run on (None until `serve` runs)."""
        return self._loop

    def run(self) -> None:
        """Serve until a signal (or `request_exit`) drains the server (blocking)."""
        # uvicorn's event loop (uvloop when installed), as uvicorn.run would pick it
        with self._signals(), asyncio.Runner(loop_factory=self.http.config.get_loop_factory()) as runner:
            runner.run(self.serve())

    async def serve(self) -> None:
        """Start the data plane, then gRPC and HTTP; wait for the exit request; drain and stop in order."""
        self._loop, self._exit, self._hurry = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        if self._exit_asked:  # a signal that came before the loop ran
            self._on_exit()
        await self.plane.start()
        try:
            if self.grpc is not None and not await self._start_grpc():
                return
            http = asyncio.create_task(self.http.serve(), name="http")
            exit_wait = asyncio.create_task(self._exit.wait())
            await asyncio.wait({http, exit_wait}, return_when=asyncio.FIRST_COMPLETED)
            exit_wait.cancel()
            await self._drain()
            if self.grpc is not None:
                await self.grpc.stop(grace_s=0 if self._hurry.is_set() else min(GRPC_STOP_S, self.grace_s))
            self.http.should_exit = True
            self.http.force_exit = self._hurry.is_set()
            await http
        finally:
            await self.plane.stop()

    async def _start_grpc(self) -> bool:
        assert self.grpc is not None
        try:
            await self.grpc.start()
            return True
        except RuntimeError as exc:
            log.error("cannot serve gRPC on %s: %s", self.grpc.address, exc)
            self.failed = True
            return False

    async def _drain(self) -> None:
        """Refuse new requests in both protocols; wait for those held, up to the grace period (or a second signal)."""
        self.plane.draining = True
        if self.grpc is not None:
            await self.grpc.drain()
        log.info("draining %d in-flight request(s), grace %.0fs", self.plane.inflight, self.grace_s)
        assert self._hurry is not None
        hurry = asyncio.create_task(self._hurry.wait())
        drain = asyncio.create_task(self.plane.drain(self.grace_s))
        await asyncio.wait({drain, hurry}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drain, hurry):
            task.cancel()

    def request_exit(self) -> None:
        """Start the drain (a second call hurries it); safe from any thread and from a signal handler."""
        self._exit_asked = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server has stopped already
                self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        assert self._exit is not None and self._hurry is not None
        if self._exit.is_set():
            self._hurry.set()
        self.plane.draining = True  # at once, before the drain task runs
        self._exit.set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT call `request_exit` while serving (main thread only; elsewhere the caller stops us)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(sig: int, frame: FrameType | None) -> None:
            log.info("signal %s: shutting down", signal.Signals(sig).name)
            self.request_exit()

        previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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
    server = Server(app, host, port, grace_s, grpc_port)
    server.run()
    if server.failed:
        raise SystemExit(1)
