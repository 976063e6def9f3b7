"""Running the app under uvicorn with a graceful drain on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("eca_serve.server")


class DrainingServer(uvicorn.Server):
    """uvicorn server whose first SIGTERM/SIGINT drains before exiting.

    At once: readiness turns 503 and new requests are answered 503 (``app.state.draining``). Requests
    already in flight (including queued ones) finish, up to ``grace_s``; then uvicorn shuts down and the
    process exits 0. A second signal exits immediately.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app, self.grace_s = app, grace_s
        self._drain_task: asyncio.Task | None = None

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
        while self.app.state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.app.state.inflight:
            log.warning("grace period over with %d request(s) still in flight", self.app.state.inflight)
        self.should_exit = True


def serve(app: FastAPI, host: str, port: int, grace_s: float) -> None:
    """Serve ``app`` in this process until a signal drains it (blocking).

    One process only: uvicorn's ``workers`` supervisor would run plain ``uvicorn.Server`` workers,
    which stop on SIGTERM without this drain (hence ``eca-serve serve`` refuses ``--workers`` > 1).
    """
    config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=max(1, int(grace_s)))
    DrainingServer(config, app, grace_s).run()
