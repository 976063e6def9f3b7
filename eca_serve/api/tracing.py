"""OpenTelemetry traces (``--tracing`` / ``ECA_SERVE_TRACING=1``): the hooks of `eca_serve.tracing`, an ASGI
middleware for HTTP and a wrapper for gRPC handlers. OpenTelemetry is imported only once tracing is on.

Per request: a SERVER span (``POST /v2/models/{name}/infer``, ``grpc ModelInfer``) with the children
``decode``, ``queue_wait`` (one per queued input) and ``postprocess``; each batch gets one ``batch_execution``
span, a child of the first recorded request of the batch and linked to every recorded request in it. A W3C
``traceparent`` header (or gRPC metadata) from the client is the parent; the server span's own
``traceparent`` goes back in the response headers (gRPC: initial metadata). Health, metrics, docs and the
demo page are not traced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eca_serve import tracing
from eca_serve.errors import ConfigError
from eca_serve.tracing import Attributes, TracingConfig

TRACED_PREFIXES = ("/v1/", "/v2/")
UNTRACED_PREFIXES = ("/v2/health/",)
UNTRACED_RPCS = ("ServerLive", "ServerReady", "ModelReady")  # probes
GrpcHandler = Callable[[bytes, Any], Awaitable[bytes]]


def _epoch_ns(perf_s: float) -> int:
    """A ``time.perf_counter`` reading as the wall-clock nanoseconds OpenTelemetry expects."""
    return time.time_ns() - int((time.perf_counter() - perf_s) * 1e9)


class OtelTracing:
    """`eca_serve.tracing.TraceHooks` over an OpenTelemetry ``TracerProvider`` (``provider``)."""

    def __init__(self, provider: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._trace = trace
        self.provider = provider
        self.tracer = provider.get_tracer("eca_serve")
        self.propagator = TraceContextTextMapPropagator()

    def stage(self, name: str, attributes: Attributes) -> AbstractContextManager[Any]:
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def capture(self) -> object | None:
        span = self._trace.get_current_span()
        return span.get_span_context() if span.is_recording() else None

    def queue_wait(self, context: object, start: float, end: float, attributes: Attributes) -> None:
        parent = self._trace.set_span_in_context(self._trace.NonRecordingSpan(context))
        span = self.tracer.start_span("queue_wait", context=parent, attributes=attributes, start_time=_epoch_ns(start))
        span.end(end_time=_epoch_ns(end))

    def batch(self, contexts: Sequence[object], attributes: Attributes) -> AbstractContextManager[Any]:
        parent = self._trace.set_span_in_context(self._trace.NonRecordingSpan(contexts[0]))
        links = [self._trace.Link(c) for c in contexts]
        return self.tracer.start_as_current_span("batch_execution", context=parent, links=links, attributes=attributes)

    def annotate(self, attributes: Attributes) -> None:
        span = self._trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attributes)

    def server_span(self, name: str, carrier: Mapping[str, str], attributes: Attributes) -> AbstractContextManager[Any]:
        """A SERVER span, child of the ``traceparent`` in ``carrier`` if it holds a valid one."""
        parent = self.propagator.extract(carrier)
        return self.tracer.start_as_current_span(name, context=parent, kind=self._trace.SpanKind.SERVER, attributes=attributes)

    def traceparent(self) -> dict[str, str]:
        """The current span's ``traceparent`` (and ``tracestate``) headers."""
        carrier: dict[str, str] = {}
        self.propagator.inject(carrier)
        return carrier


def build_tracing(config: TracingConfig) -> OtelTracing:
    """A tracer provider with ``config``'s sampler and exporter.

    Raises:
        ConfigError: The ``tracing`` extra is not installed.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError("tracing needs OpenTelemetry: pip install 'eca-serve[tracing]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}), sampler=sampler(config))
    exporter = span_exporter(config)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return OtelTracing(provider)


def sampler(config: TracingConfig) -> Any:
    """The OpenTelemetry sampler named by ``config.sampler`` (ratio samplers take ``config.ratio``)."""
    from opentelemetry.sdk.trace import sampling

    root = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
            "traceidratio": sampling.TraceIdRatioBased(config.ratio)}[config.sampler.removeprefix("parentbased_")]
    return sampling.ParentBased(root) if config.sampler.startswith("parentbased_") else root


def span_exporter(config: TracingConfig) -> Any:
    """The exporter of ``config.exporter`` (None for ``none``)."""
    if config.exporter == "none":
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(f"the OTLP {config.protocol} exporter is missing: pip install 'eca-serve[tracing]'") from None
    return OTLPSpanExporter(endpoint=config.endpoint)


def install_tracing(app: Any, enabled: bool, env: Mapping[str, str] | None = None) -> OtelTracing | None:
    """With ``enabled``, trace ``app``: hooks for the pipelines, the HTTP middleware, ``app.state.tracing``.

    Call before adding the request-tracking middleware, so that this one runs inside it (the request id is set).
    """
    app.state.tracing = None
    if not enabled:
        return None
    try:
        config = TracingConfig.from_env(os.environ if env is None else env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    hooks = app.state.tracing = build_tracing(config)
    tracing.install(hooks)
    app.add_middleware(TracingMiddleware, hooks=hooks)
    return hooks


def traced_path(path: str) -> bool:
    """Whether an HTTP request to ``path`` gets a span: the v1 and v2 APIs, not health, metrics, docs or the UI."""
    return path.startswith(TRACED_PREFIXES) and not path.startswith(UNTRACED_PREFIXES)


class TracingMiddleware:
    """Pure ASGI middleware: one SERVER span per traced HTTP request, ``traceparent`` in and out."""

    def __init__(self, app: ASGIApp, hooks: OtelTracing) -> None:
        self.app, self.hooks = app, hooks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not traced_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in (b"traceparent", b"tracestate")}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        with self.hooks.server_span(scope["method"], carrier, attributes) as span:  # named by its route once routed
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.hooks.traceparent().items()]

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *headers]
                    _finish_http(span, scope, message["status"])
                await send(message)

            await self.app(scope, receive, send_traced)


def _finish_http(span: Any, scope: Scope, status: int) -> None:
    """Name the span by its route template (bounded, as the metrics' labels) and record the answer."""
    if not span.is_recording():
        return
    route = getattr(scope.get("route"), "path", None)
    if route:
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)
    span.set_attribute("http.response.status_code", status)
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        span.set_attribute("eca.request_id", request_id)
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))


def trace_grpc(hooks: OtelTracing | None, name: str, handler: GrpcHandler) -> GrpcHandler:
    """``handler`` of RPC ``name`` in a SERVER span (unchanged when tracing is off or ``name`` is a probe)."""
    if hooks is None or name in UNTRACED_RPCS:
        return handler

    async def traced(data: bytes, context: Any) -> bytes:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if k in ("traceparent", "tracestate", "x-request-id")}
        attributes = {"rpc.system": "grpc", "rpc.method": name}
        with hooks.server_span(f"grpc {name}", metadata, attributes) as span:
            await context.send_initial_metadata(tuple(hooks.traceparent().items()))
            try:
                return await handler(data, context)
            finally:
                trailing = dict(context.trailing_metadata() or ())
                if span.is_recording() and "x-request-id" in trailing:
                    span.set_attribute("eca.request_id", trailing["x-request-id"])

    return traced
