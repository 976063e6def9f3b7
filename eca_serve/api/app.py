"""The FastAPI application: lifespan loads the repository in the background, routes stay thin."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

import eca_serve
from eca_serve.api import routes_admin, routes_v1, routes_v2
from eca_serve.api.docs import install_docs
from eca_serve.api.drift_metrics import DriftCollector
from eca_serve.api.errors import install_error_handlers
from eca_serve.api.metrics import ServerMetrics
from eca_serve.api.tracing import install_tracing
from eca_serve.api.tracking import RequestTracking
from eca_serve.api.ui import install_ui
from eca_serve.dataplane import DataPlane
from eca_serve.pipelines.manager import ModelManager, serving_options
from eca_serve.settings import Settings, inflight_limit

log = logging.getLogger("eca_serve.api")
__all__ = ["create_app", "serving_options"]  # serving_options: eca_serve.pipelines.manager's, the tests' import


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start and stop the data plane, unless a `eca_serve.api.server.Server` (its owner) already started it."""
    plane: DataPlane = app.state.dataplane
    owned = not plane.started
    if owned:
        await plane.start()
    try:
        yield
    finally:
        if owned:
            await plane.stop()


def create_app(settings: Settings | None = None) -> FastAPI:
    """The eca-serve application for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    routes_admin.check_admin_settings(settings)
    app = FastAPI(title="eca-serve", version=eca_serve.__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None,  # FastAPI's pages load from a CDN: ours are local (api/docs.py)
                  # Spans are ours (api/tracing.py). FastAPI's native telemetry would look up OpenTelemetry's
                  # global providers on every request (~20 us, a sixth of a 503 refusal) and duplicate our spans.
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Classification, detection and per-layer channel attention of ECA-Net models.")
    app.state.settings = settings
    options = serving_options(settings)
    metrics = ServerMetrics(inflight=lambda: plane.inflight)
    manager = ModelManager(options, on_stage=metrics.observe_stage, on_batch_for=metrics.batch_observer)
    app.state.dataplane = plane = DataPlane(manager, inflight_limit(settings, options.backend.device))
    app.state.metrics = metrics
    app.state.manager, app.state.admission = manager, plane.admission  # the plane's own, for tests and tools
    metrics.watch(manager, plane.admission)
    metrics.registry.register(DriftCollector(manager))
    install_error_handlers(app)
    install_tracing(app, settings.tracing)  # before RequestTracking: runs inside it, the request id set
    app.add_middleware(RequestTracking)
    app.include_router(routes_v1.router)
    app.include_router(routes_v1.build_router())
    app.include_router(routes_v2.router)
    app.include_router(routes_admin.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)
    install_docs(app)
    if settings.ui:
        install_ui(app)
    return app


async def healthz(request: Request) -> JSONResponse:
    """Liveness plus whether every model is ready (Kubernetes probes should use /v2/health/*)."""
    plane: DataPlane = request.app.state.dataplane
    ready = plane.server_ready().ready
    body = {"live": True, "ready": ready, "draining": plane.draining, "error": plane.manager.loading_error}
    return JSONResponse(body, status_code=200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
