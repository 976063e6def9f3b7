"""Pure ASGI middleware: request ids, admission, refusal while draining, client disconnects, metrics, a log line.

Admission happens here, before the route reads or decodes anything, in the data plane that gRPC shares
(`eca_serve.dataplane.DataPlane.enter` and, for the inference routes, whose model name is in the URL,
``admit``). A client
that disconnects while its request waits cancels the request (its rows leave the batch queue) and is
counted and logged as 499.

The request id (the client's ``X-Request-ID`` or a new one) is ``request.state.request_id`` for the
handlers and is sent back in the ``X-Request-ID`` header, also on a 500.

NOTE: a plain ASGI class instead of ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware wraps
every response in an extra task and stream, a measurable cost per request on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eca_serve.api.disconnect import DisconnectWatch
from eca_serve.api.errors import error_response, server_fault, status_of
from eca_serve.api.metrics import REFUSED, UNMATCHED
from eca_serve.dataplane import DataPlane, InflightLimitError
from eca_serve.errors import ShuttingDownError

log = logging.getLogger("eca_serve.api")
# The routes that queue work for a model: every v1 POST under a model (each task's action and attention;
# not a list of actions, so a newly registered task is admitted like the others), v2 infer (optionally versioned).
INFERENCE_PATH = re.compile(r"/v1/models/([^/]+)/[^/]+|/v2/models/([^/]+)(?:/versions/[^/]+)?/infer")
UNTRACKED = ("/metrics", "/healthz", "/v2/health/live", "/v2/health/ready")  # probes: never refused, not in-flight work


class RequestTracking:
    """Wraps the app; holds each request in the app's data plane (``state.dataplane``) and counts it in ``state.metrics``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNTRACKED:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = scope["app"].state
        plane: DataPlane = state.dataplane
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # what Starlette's request.state reads
        model = _model_of(scope)
        try:
            admitted = _enter(plane, model)
        except (ShuttingDownError, InflightLimitError) as refused:
            status = status_of(refused)
            response = error_response(status, str(refused))
            response.headers["X-Request-ID"] = request_id
            await response(scope, receive, send)
            state.metrics.observe_request(model or "", REFUSED, status, time.perf_counter() - start)
            _log(scope, request_id, status)
            return
        status = 0
        tag = (b"x-request-id", request_id.encode("latin-1"))
        watch = DisconnectWatch(receive, lambda: served.cancel())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                watch.answered()
                message["headers"] = [*message.get("headers", []), tag]
            await send(message)

        served = asyncio.ensure_future(self.app(scope, watch.receive, send_with_id))
        try:
            await served
        except asyncio.CancelledError:
            if not (watch.disconnected and served.cancelled()) or status:
                raise  # the server's own cancellation (shutdown), not a client that left
            status = 499
        except Exception as exc:
            if status:  # the answer has begun: nothing left to send but the connection's end
                raise
            # Answered here rather than by Starlette's outer error middleware, which would skip the id header.
            await server_fault(exc, request_id, scope["path"])(scope, receive, send_with_id)
        finally:
            watch.close()
            plane.leave()
            if admitted:
                plane.release(model)
            status = status or 500  # an app that sent nothing: uvicorn answers 500
            _observe(scope, state, status, time.perf_counter() - start)
            _log(scope, request_id, status)
            if model is not None and status in CANCELLED:
                state.metrics.observe_cancel(model, CANCELLED[status])


CANCELLED = {499: "disconnect", 504: "timeout"}  # statuses of requests given up before their answer


def _model_of(scope: Scope) -> str | None:
    """The model an inference request names in its path, else None."""
    if scope["method"] != "POST":
        return None
    match = INFERENCE_PATH.fullmatch(scope["path"])
    return None if match is None else match.group(1) or match.group(2)


def _enter(plane: DataPlane, model: str | None) -> bool:
    """Hold the request in the data plane (and count it against ``model``'s limit): whether the model counted it."""
    plane.enter()
    try:
        return model is not None and plane.admit(model)
    except InflightLimitError:
        plane.leave()
        raise


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
