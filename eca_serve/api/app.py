"""The FastAPI application: lifespan loads the repository in the background, routes stay thin."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import eca_serve
from eca_serve.api import routes_v1
from eca_serve.api.errors import install_error_handlers
from eca_serve.batching import BatchPolicy
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.pipelines.manager import ModelManager, ServingOptions
from eca_serve.runtime import BackendOptions
from eca_serve.settings import Settings

log = logging.getLogger("eca_serve.api")


def serving_options(settings: Settings) -> ServingOptions:
    """Manager options from the settings (unset batching knobs keep the per-device defaults)."""
    overrides = {k: v for k, v in {"max_batch_size": settings.max_batch_size, "max_queue_delay_ms": settings.max_queue_delay_ms,
                                   "max_queue_size": settings.max_queue_size, "timeout_s": settings.request_timeout_s}.items()
                 if v is not None}
    BatchPolicy.for_device(settings.device, **overrides)  # validate at start-up, not on first request
    return ServingOptions(
        repository=settings.model_repository,
        backend=BackendOptions(settings.backend, settings.device, settings.fp16, settings.threads),
        policy_overrides=overrides,
        limits=DecodeLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
        decode_threads=settings.decode_threads, only=list(settings.models), grace_period_s=settings.grace_period_s,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    manager: ModelManager = app.state.manager
    loading = asyncio.create_task(manager.load_all())
    loading.add_done_callback(lambda t: _record_loading_failure(manager, t))
    app.state.loading = loading
    try:
        yield
    finally:
        app.state.draining = True
        if not loading.done():
            loading.cancel()
        await manager.stop()


def _record_loading_failure(manager: ModelManager, task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        manager.loading_error = str(task.exception())
        log.error("loading the model repository failed: %s", task.exception())


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> FastAPI:
    """The eca-serve application for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    app = FastAPI(title="eca-serve", version=eca_serve.__version__, lifespan=lifespan,
                  description="Classification, detection and per-layer channel attention of ECA-Net models.")
    app.state.settings = settings
    app.state.manager = manager or ModelManager(serving_options(settings))
    app.state.draining = False
    install_error_handlers(app)
    app.middleware("http")(request_id_middleware)
    app.include_router(routes_v1.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    return app


async def request_id_middleware(request: Request, call_next) -> Response:  # noqa: ANN001
    """Echo or create ``X-Request-ID`` and log one line per request with it."""
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    request.state.request_id = request_id
    response = await call_next(request)
    response.headers["X-Request-ID"] = request_id
    log.info("request", extra={"request_id": request_id, "method": request.method, "path": request.url.path,
                               "status": response.status_code})
    return response


async def healthz(request: Request) -> JSONResponse:
    """Liveness plus whether every model is ready (the v2 health endpoints come with the protocol)."""
    manager: ModelManager = request.app.state.manager
    ready = manager.ready and not request.app.state.draining
    body = {"live": True, "ready": ready, "error": manager.loading_error}
    return JSONResponse(body, status_code=200 if ready else 503)
