"""Admission before work and cancellation of abandoned requests, on the real app over real sockets.

uvicorn (HTTP) and gRPC serve the shipped classifier in a thread of this process, one batch at a time. A
gate held in front of ONNX Runtime keeps the running batch from finishing, so that which requests are
running, queued, refused or cancelled is decided by the test, not by timing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from eca_serve.api import create_app
from eca_serve.api.grpc.service import peek_model_name
from eca_serve.api.server import Server
from eca_serve.batching import BatchPolicy
from eca_serve.batching.admission import Admission
from eca_serve.settings import Settings
from tests.reliability.clients import metric

MODELS = Path(__file__).resolve().parents[1] / "models"
CLS = "shapes_classifier"
STAR = (Path(__file__).resolve().parents[1] / "examples" / "star.png").read_bytes()
PNG = {"content-type": "image/png"}


class Served:
    """The app, its HTTP base URL, its gRPC address and the gate in front of the classifier's inference."""

    def __init__(self, app: Any, base: str, address: str) -> None:
        self.app, self.base, self.address = app, base, address
        self.gate = threading.Event()
        self.pipeline = app.state.manager.get(CLS)
        run = self.pipeline.infer_batch

        def gated(tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
            self.gate.wait(60)
            return run(tensors)

        self.pipeline.infer_batch = gated

    def stats(self) -> Any:
        return self.pipeline.batcher.stats()

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def cancelled(self, reason: str) -> float:
        return metric(self.metrics(), "eca_serve_requests_cancelled_total", model=CLS, reason=reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repository(root: Path, **serving: Any) -> Path:
    """The shipped classifier's version 1, its config.json serving block: one batch of one at a time (+ ``serving``)."""
    source, entry = MODELS / CLS / "1", root / CLS / "1"
    entry.mkdir(parents=True)
    for path in source.iterdir():
        if path.name != "config.json":
            (entry / path.name).symlink_to(path)
    config = json.loads((source / "config.json").read_text())
    config["serving"] = {"device": "cpu", "max_batch_size": 1, "instances": 1, **serving}
    (entry / "config.json").write_text(json.dumps(config))
    return root


@contextmanager
def serve(models: Path, **settings: Any) -> Iterator[Served]:
    """The app on ``models`` over HTTP and gRPC, in a thread."""
    port, grpc_port = _free_port(), _free_port()
    app = create_app(Settings(model_repository=models, ui=False, port=port, grpc_port=grpc_port, **settings))
    server = Server(app, "127.0.0.1", port, grace_s=1, grpc_port=grpc_port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _ready(base), "the server is ready")
        served = Served(app, base, f"127.0.0.1:{grpc_port}")
        yield served
        served.gate.set()
    finally:
        server.request_exit()
        thread.join(timeout=30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll ``condition`` (the timeout only guards against a hang; nothing here asserts on time)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited in vain for: {what}")
        time.sleep(0.02)


def in_background(call: Callable[[], Any]) -> list[Any]:
    """Run ``call`` in a thread; its result (or exception) lands in the returned list."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    threading.Thread(target=target, daemon=True).start()
    return out


def classify(served: Served) -> list[Any]:
    return in_background(lambda: httpx.post(f"{served.base}/v1/models/{CLS}/classify", content=STAR, headers=PNG, timeout=60))


def hold_one_running_one_queued(served: Served) -> list[list[Any]]:
    running = classify(served)
    wait(lambda: served.stats().in_flight == 1, "a batch runs (held at the gate)")
    queued = classify(served)
    wait(lambda: served.stats().queue_depth == 1, "a request is queued")
    return [running, queued]


def image_input(data: bytes) -> tg.InferInput:
    item = tg.InferInput("image", [1], "BYTES")
    item.set_data_from_numpy(np.array([data], dtype=object))
    return item


def raw_exchange(base: str, head: bytes, body: bytes = b"") -> bytes:
    """Send ``head`` (and ``body``) on a fresh connection; everything the server answers until it closes."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_a_flood_beyond_the_model_limit_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    with serve(repository(tmp_path, max_inflight=2)) as served:
        held = hold_one_running_one_queued(served)
        assert served.app.state.admission.admitted(CLS) == 2
        assert metric(served.metrics(), "eca_serve_admitted_requests", model=CLS) == 2
        # Headers only: the 100 kB body is never sent, so an answer proves it was not waited for. Every v1
        # action of the model is admitted the same way (embed is a task registered after the first two).
        for action in ("classify", "embed", "attention"):
            head = (f"POST /v1/models/{CLS}/{action} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    f"Content-Length: 100000\r\nConnection: close\r\n\r\n").encode()
            answer = raw_exchange(served.base, head)
            assert answer.startswith(b"HTTP/1.1 503"), (action, answer[:200])
            assert b"retry-after:" in answer.lower()
        v2 = httpx.post(f"{served.base}/v2/models/{CLS}/infer", json={"inputs": []}, timeout=30)
        assert v2.status_code == 503 and v2.headers["retry-after"] and "limit of 2" in v2.json()["error"]
        with pytest.raises(InferenceServerException) as refused:
            tg.InferenceServerClient(served.address).infer(CLS, [image_input(STAR)])
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert served.stats().inference_count == 0  # nothing was decoded or run for the refused ones
        served.gate.set()
        wait(lambda: all(h for h in held), "the held requests are answered")
        assert [h[0].status_code for h in held] == [200, 200]
        assert served.app.state.admission.admitted(CLS) == 0
        assert httpx.post(f"{served.base}/v1/models/{CLS}/classify", content=STAR, headers=PNG, timeout=60).status_code == 200


def test_a_client_that_disconnects_while_queued_never_reaches_inference(tmp_path: Path) -> None:
    with serve(repository(tmp_path)) as served:
        running = classify(served)
        wait(lambda: served.stats().in_flight == 1, "a batch runs (held at the gate)")
        host, port = served.base.removeprefix("http://").split(":")
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(f"POST /v1/models/{CLS}/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {len(STAR)}\r\n\r\n".encode() + STAR)
        wait(lambda: served.stats().queue_depth == 1, "the request is queued")
        sock.close()
        wait(lambda: served.stats().queue_depth == 0, "the queue lets the request go")
        assert served.cancelled("disconnect") == 1
        served.gate.set()
        wait(lambda: bool(running), "the running request is answered")
        assert running[0].status_code == 200
        assert served.stats().inference_count == 1  # the running one only
        text = served.metrics()
        assert metric(text, "eca_serve_requests_total", protocol="http", model=CLS,
                      endpoint="/v1/models/{name}/classify", status="499") == 1
        assert metric(text, "eca_serve_admitted_requests", model=CLS) == 0


def test_a_request_whose_own_timeout_passes_in_the_queue_is_not_run(tmp_path: Path) -> None:
    with serve(repository(tmp_path)) as served:
        running = classify(served)
        wait(lambda: served.stats().in_flight == 1, "a batch runs (held at the gate)")
        tensor = {"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": [0.5] * (3 * 64 * 64)}],
                  "parameters": {"timeout": 200_000}}  # 0.2 s, in microseconds as Triton's
        answer = httpx.post(f"{served.base}/v2/models/{CLS}/infer", json=tensor, timeout=60)
        assert answer.status_code == 504, answer.text
        assert served.cancelled("timeout") == 1
        served.gate.set()
        wait(lambda: bool(running), "the running request is answered")
        assert served.stats().inference_count == 1


def test_grpc_calls_cancelled_or_past_their_deadline_leave_the_queue(tmp_path: Path) -> None:
    with serve(repository(tmp_path)) as served:
        running = classify(served)
        wait(lambda: served.stats().in_flight == 1, "a batch runs (held at the gate)")
        client = tg.InferenceServerClient(served.address)
        call = client.async_infer(CLS, [image_input(STAR)], callback=lambda result, error: None)
        wait(lambda: served.stats().queue_depth == 1, "the gRPC call is queued")
        call.cancel()
        wait(lambda: served.cancelled("disconnect") == 1, "the cancelled call is counted")
        assert served.stats().queue_depth == 0
        with pytest.raises(InferenceServerException) as late:
            client.infer(CLS, [image_input(STAR)], client_timeout=0.5)
        assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        wait(lambda: served.cancelled("deadline") == 1, "the call past its deadline is counted")
        wait(lambda: served.stats().queue_depth == 0, "the queue lets the late call go")
        served.gate.set()
        wait(lambda: bool(running), "the running request is answered")
        assert running[0].status_code == 200
        assert served.stats().inference_count == 1
        assert served.app.state.admission.admitted(CLS) == 0


def test_admission_counts_against_the_limit_and_ignores_names_not_served() -> None:
    admission = Admission({"a": 2}.get)
    assert [admission.try_admit("a") for _ in range(3)] == [True, True, False]
    assert admission.try_admit("nope") is None and admission.admitted("nope") == 0
    admission.release("a")
    assert admission.admitted("a") == 1 and admission.try_admit("a") is True


def test_the_default_limit_is_the_queue_plus_the_running_batches() -> None:
    assert BatchPolicy(max_batch_size=4, max_queue_size=64, instances=2).inflight_limit == 72
    assert BatchPolicy(max_batch_size=4, max_queue_size=64, instances=2, max_inflight=5).inflight_limit == 5


def test_the_model_name_is_read_from_a_grpc_request_without_parsing_it() -> None:
    from eca_serve.api.grpc.protocol import messages

    data = messages().ModelInferRequest(model_name=CLS, id="x").SerializeToString()
    assert peek_model_name(data) == CLS
    assert peek_model_name(messages().ModelInferRequest(id="x").SerializeToString()) is None
    assert peek_model_name(b"\x0a\x05ab") is None  # truncated
