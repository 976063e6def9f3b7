"""Pure ASGI middleware: request ids, in-flight count, refusal while draining, metrics and one log line.

The request id (the client's ``X-Request-ID`` or a new one) is ``request.state.request_id`` for the
handlers and is sent back in the ``X-Request-ID`` header, also on a 500.

NOTE: a plain ASGI class instead of ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware wraps
every response in an extra task and stream, a measurable cost per request on a 2-core machine.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eca_serve.api.errors import error_response, server_fault
from eca_serve.api.metrics import REFUSED, UNMATCHED

log = logging.getLogger("eca_serve.api")
UNTRACKED = ("/metrics", "/healthz", "/v2/health/live", "/v2/health/ready")  # probes: never refused, not in-flight work


class RequestTracking:
    """Wraps the app; reads and updates ``scope["app"].state`` (``draining``, ``inflight``, ``metrics``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope["app"].state
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # what Starlette's request.state reads
        refusal = _refusal(state)
        if refusal:
            response = error_response(503, refusal)
            response.headers["X-Request-ID"] = request_id
            await response(scope, receive, send)
            state.metrics.observe_request("", REFUSED, 503, time.perf_counter() - start)
            _log(scope, request_id, 503)
            return
        status = 0
        tag = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), tag]
            await send(message)

        state.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status:  # the answer has begun: nothing left to send but the connection's end
                raise
            # Answered here rather than by Starlette's outer error middleware, which would skip the id header.
            await server_fault(exc, request_id, scope["path"])(scope, receive, send_with_id)
        finally:
            state.inflight -= 1
            status = status or 500  # an app that sent nothing: uvicorn answers 500
            _observe(scope, state, status, time.perf_counter() - start)
            _log(scope, request_id, status)


def _refusal(state: Any) -> str | None:
    """Why a request is turned away before its body is read, if it is."""
    if state.draining:
        return "server is shutting down"
    if state.inflight >= state.max_inflight:
        # Refusing before the body is read keeps a flood from buying decode work and memory.
        return f"server is at its limit of {state.max_inflight} requests in flight; retry later"
    return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")[:128]
    return None


def _observe(scope: Scope, state: Any, status: int, seconds: float) -> None:
    # Starlette's router leaves the matched route in the scope; its template bounds the endpoint label.
    endpoint = getattr(scope.get("route"), "path", None) or UNMATCHED
    model = (scope.get("path_params") or {}).get("name") or ""
    state.metrics.observe_request(model, endpoint, status, seconds)


def _log(scope: Scope, request_id: str, status: int) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("request", extra={"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status})
