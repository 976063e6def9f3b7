"""OpenTelemetry traces of the real app (uvicorn + gRPC on one loop, shipped classifier, ONNX Runtime).

Spans are read from the SDK's in-memory exporter added to the app's own tracer provider.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eca_serve import tracing
from eca_serve.api import create_app
from eca_serve.api.grpc.protocol import SERVICE, messages
from eca_serve.api.server import Server
from eca_serve.settings import Settings
from tests.serving_utils import free_port

ROOT = Path(__file__).resolve().parents[1]
CLS = "shapes_classifier"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PHOTO = (ROOT / "examples" / "cat.jpg").read_bytes()


@contextmanager
def traced_server(monkeypatch: pytest.MonkeyPatch, **otel: str) -> Iterator[tuple[str, str, InMemorySpanExporter]]:
    """(HTTP base URL, gRPC address, exporter) of a server with tracing on and ``otel`` as ``OTEL_*`` variables."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    for name, value in otel.items():
        monkeypatch.setenv(name, value)
    port, grpc_port = free_port(), free_port()
    settings = Settings(model_repository=ROOT / "models", models=[CLS], tracing=True, port=port, grpc_port=grpc_port,
                        log_level="warning")
    app = create_app(settings)
    exporter = InMemorySpanExporter()
    app.state.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = Server(app, "127.0.0.1", port, 1.0, grpc_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        exporter.clear()
        yield base, f"127.0.0.1:{grpc_port}", exporter
    finally:
        server.request_exit()
        thread.join(timeout=30)
        tracing.install(None)


def _wait_ready(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server did not become ready")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, str, InMemorySpanExporter]]:
    with pytest.MonkeyPatch.context() as monkeypatch, traced_server(monkeypatch) as running:
        yield running


def finished(exporter: InMemorySpanExporter, count: int, timeout_s: float = 10) -> list[Any]:
    """The spans once at least ``count`` have ended (the batch span may end after the response is sent)."""
    deadline = time.monotonic() + timeout_s
    while len(exporter.get_finished_spans()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(exporter.get_finished_spans())


def check_request_tree(spans: list[Any], server_name: str, model_inputs: int, decode: bool) -> Any:
    """The SERVER span named ``server_name``, after checking its children, queue waits and batch links."""
    (root,) = [s for s in spans if s.name == server_name]
    assert root.kind == SpanKind.SERVER
    assert root.attributes["eca.model"] == CLS and root.attributes["eca.version"] == "2"
    children = [s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id]
    names = sorted(s.name for s in children if s.name != "batch_execution")
    assert names == sorted(["postprocess", *["queue_wait"] * model_inputs, *(["decode"] if decode else [])])
    for child in children:
        assert child.context.trace_id == root.context.trace_id
        assert child.attributes["eca.model"] == CLS
        # queue_wait's times are converted from time.perf_counter: allow a millisecond of clock skew
        assert root.start_time - 1_000_000 <= child.start_time <= child.end_time <= root.end_time + 1_000_000
    batches = [s for s in spans if s.name == "batch_execution" and any(link.context.span_id == root.context.span_id for link in s.links)]
    assert 1 <= len(batches) <= model_inputs
    assert sum(b.attributes["eca.batch_size"] for b in batches) >= model_inputs
    for batch in batches:
        assert batch.attributes["eca.batch_size"] >= len(batch.links) >= 1
    return root


def test_v1_request_span_tree_continues_the_clients_trace(server) -> None:
    base, _, exporter = server
    response = httpx.post(f"{base}/v1/models/{CLS}/classify", files=[("file", ("a.jpg", PHOTO, "image/jpeg"))] * 2,
                          headers={"traceparent": TRACEPARENT, "X-Request-ID": "req-42"}, timeout=30)
    assert response.status_code == 200, response.text
    root = check_request_tree(finished(exporter, 6), "POST /v1/models/{name}/classify", model_inputs=2, decode=True)
    assert format(root.context.trace_id, "032x") == TRACE_ID
    assert format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["eca.request_id"] == "req-42"
    assert root.attributes["http.response.status_code"] == 200
    assert response.headers["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    exporter.clear()


def test_v2_http_tensor_request(server) -> None:
    base, _, exporter = server
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [0.0] * (3 * 64 * 64)}]}
    response = httpx.post(f"{base}/v2/models/{CLS}/infer", json=body, timeout=30)
    assert response.status_code == 200, response.text
    root = check_request_tree(finished(exporter, 4), "POST /v2/models/{name}/infer", model_inputs=1, decode=False)
    assert root.parent is None  # no traceparent sent: a new trace
    prefix, flags = response.headers["traceparent"].rsplit("-", 1)
    assert prefix == f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}" and int(flags, 16) & 1  # sampled (02: random id)
    exporter.clear()


def test_grpc_model_infer(server) -> None:
    _, address, exporter = server
    request = messages().ModelInferRequest(model_name=CLS)
    request.inputs.add(name="input", datatype="FP32", shape=[1, 3, 64, 64])
    request.raw_input_contents.append(np.zeros((1, 3, 64, 64), np.float32).tobytes())
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(f"/{SERVICE}/ModelInfer", request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=messages().ModelInferResponse.FromString)
        _, outcome = call.with_call(request, metadata=[("traceparent", TRACEPARENT), ("x-request-id", "grpc-7")], timeout=30)
    root = check_request_tree(finished(exporter, 4), "grpc ModelInfer", model_inputs=1, decode=False)
    assert format(root.context.trace_id, "032x") == TRACE_ID and format(root.parent.span_id, "016x") == PARENT_ID
    assert root.attributes["eca.request_id"] == "grpc-7"
    assert dict(outcome.initial_metadata())["traceparent"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"
    exporter.clear()


def test_concurrent_requests_share_linked_batch_spans(server) -> None:
    base, _, exporter = server
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 3, 64, 64], "data": [0.0] * (4 * 3 * 64 * 64)}]}
    assert httpx.post(f"{base}/v2/models/{CLS}/infer", json=body, timeout=30).status_code == 200
    spans = finished(exporter, 1 + 4 + 1 + 1)
    root = check_request_tree(spans, "POST /v2/models/{name}/infer", model_inputs=4, decode=False)
    batches = [s for s in spans if s.name == "batch_execution"]
    assert sum(b.attributes["eca.batch_size"] for b in batches) == 4
    assert all(link.context.span_id == root.context.span_id for b in batches for link in b.links)
    exporter.clear()


def test_health_metrics_and_docs_are_not_traced(server) -> None:
    base, address, exporter = server
    for path in ("/healthz", "/v2/health/ready", "/v2/health/live", "/metrics", "/docs", "/openapi.json"):
        response = httpx.get(f"{base}{path}", timeout=10)
        assert response.status_code == 200 and "traceparent" not in response.headers, path
    with grpc.insecure_channel(address) as channel:
        channel.unary_unary(f"/{SERVICE}/ServerLive")(messages().ServerLiveRequest().SerializeToString(), timeout=10)
    httpx.get(f"{base}/v2/models/{CLS}", timeout=10)  # traced: proves spans still arrive
    spans = finished(exporter, 1)
    assert [s.name for s in spans] == ["GET /v2/models/{name}"]
    exporter.clear()


def test_sampling_ratio_zero_records_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with traced_server(monkeypatch, OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0") as (base, _, exporter):
        response = httpx.post(f"{base}/v1/models/{CLS}/classify", files={"file": ("a.jpg", PHOTO, "image/jpeg")}, timeout=30)
        assert response.status_code == 200
        assert not int(response.headers["traceparent"].rsplit("-", 1)[1], 16) & 1  # not sampled, still a context to continue
        time.sleep(0.2)
        assert exporter.get_finished_spans() == ()
