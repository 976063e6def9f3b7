"""One malformed input, one status per protocol: the error's type decides it in v1, v2 HTTP and gRPC alike.

A real ``eca-serve serve`` process serves the shipped models over HTTP and gRPC; v1 is driven by httpx, v2
HTTP by tritonclient.http and gRPC by tritonclient.grpc (each a real client). A row lists, per protocol that
has the input at all, what is sent and the status expected: HTTP 400 for a malformed request, 422 for a
well-formed one whose parameter values break a rule, 404 unknown model or version, 413 over a size limit,
415 a content type that cannot carry an image, 504 out of time; gRPC the code of the same error type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from tests.grpc_serving import CLS, DET, GrpcServer, grpc_server
from tests.hostile_images import png_bomb, png_bytes

MAX_IMAGES = 2
IMAGE = png_bytes((64, 64))
TEXT = b"hello, this is not an image\n" * 20


@dataclass(frozen=True)
class Clients:
    """One client per protocol, all on the same server."""

    base: str
    v2: th.InferenceServerClient
    grpc: tg.InferenceServerClient


@pytest.fixture(scope="module")
def clients() -> Iterator[Clients]:
    with grpc_server(ECA_SERVE_MAX_IMAGES_PER_REQUEST=str(MAX_IMAGES)) as server:
        yield _clients(server)


def _clients(server: GrpcServer) -> Clients:
    return Clients(server.base, th.InferenceServerClient(server.base.removeprefix("http://"), network_timeout=60),
                   tg.InferenceServerClient(server.address))


# --- what each protocol sends --------------------------------------------------------------------------

V1 = Callable[[str], httpx.Response]


def v1_raw(path: str, body: bytes, content_type: str = "image/png") -> V1:
    """POST ``body`` as the raw request body to ``path`` (with its query)."""
    return lambda base: httpx.post(f"{base}{path}", content=body, headers={"content-type": content_type}, timeout=60)


def v1_parts(path: str, *parts: tuple[str, bytes, str]) -> V1:
    """POST multipart field(s) ``file`` (name, bytes, part type) to ``path``."""
    return lambda base: httpx.post(f"{base}{path}", files=[("file", part) for part in parts], timeout=60)


@dataclass(frozen=True)
class V2:
    """One ``infer`` call, the same for tritonclient.http and tritonclient.grpc."""

    model: str = CLS
    inputs: tuple[tuple[str, str, np.ndarray], ...] = ()  # (name, datatype, data)
    version: str = ""
    classification: int = 0  # asked of the classifier's logits output
    parameters: dict[str, Any] | None = None
    timeout_us: int | None = None

    def call(self, client: Any, module: Any) -> None:
        inputs = []
        for name, datatype, data in self.inputs:
            item = module.InferInput(name, list(data.shape), datatype)
            item.set_data_from_numpy(data)
            inputs.append(item)
        outputs = [module.InferRequestedOutput("logits", class_count=self.classification)] if self.classification else None
        client.infer(self.model, inputs, model_version=self.version, outputs=outputs, parameters=self.parameters,
                     timeout=self.timeout_us)


def images(*items: bytes) -> tuple[tuple[str, str, np.ndarray], ...]:
    return (("image", "BYTES", np.array(items, dtype=np.object_)),)


def tensor(data: np.ndarray, datatype: str = "FP32") -> tuple[tuple[str, str, np.ndarray], ...]:
    return (("input", datatype, data),)


ZEROS = np.zeros((1, 3, 64, 64), np.float32)
CLASSIFY, DETECT = f"/v1/models/{CLS}/classify", f"/v1/models/{DET}/detect"


@dataclass(frozen=True)
class Row:
    """One malformed input: (request, expected status) per protocol that can carry it; v2 feeds HTTP and gRPC."""

    v1: tuple[V1, int] | None
    v2: tuple[V2, int, str] | None  # (call, HTTP status, gRPC code name)


TABLE: dict[str, Row] = {
    "valid image": Row((v1_raw(CLASSIFY, IMAGE), 200), (V2(inputs=images(IMAGE)), 200, "OK")),
    "bad image bytes": Row((v1_raw(CLASSIFY, IMAGE[:200]), 400), (V2(inputs=images(IMAGE[:200])), 400, "INVALID_ARGUMENT")),
    "text part": Row((v1_parts(CLASSIFY, ("a.txt", TEXT, "text/plain")), 400), (V2(inputs=images(TEXT)), 400, "INVALID_ARGUMENT")),
    "text content type": Row((v1_raw(CLASSIFY, IMAGE, "text/plain"), 415), None),
    "decompression bomb": Row((v1_raw(CLASSIFY, png_bomb()), 413), (V2(inputs=images(png_bomb())), 413, "RESOURCE_EXHAUSTED")),
    "too many images": Row((v1_parts(CLASSIFY, *[("a.png", IMAGE, "image/png")] * (MAX_IMAGES + 1)), 413),
                           (V2(inputs=images(*[IMAGE] * (MAX_IMAGES + 1))), 413, "RESOURCE_EXHAUSTED")),
    "unknown model": Row((v1_raw("/v1/models/nope/classify", IMAGE), 404), (V2(model="nope", inputs=images(IMAGE)), 404, "NOT_FOUND")),
    "unknown version": Row((v1_raw(f"{CLASSIFY}?version=7", IMAGE), 404), (V2(inputs=images(IMAGE), version="7"), 404, "NOT_FOUND")),
    "bad parameter type": Row((v1_raw(f"{DETECT}?score_threshold=high", IMAGE), 422),
                              (V2(DET, images(IMAGE), parameters={"score_threshold": "high"}), 422, "INVALID_ARGUMENT")),
    "out-of-range parameter": Row((v1_raw(f"{CLASSIFY}?top_k=99", IMAGE), 422),
                                  (V2(inputs=images(IMAGE), classification=99), 422, "INVALID_ARGUMENT")),
    "out-of-range detector parameter": Row((v1_raw(f"{DETECT}?score_threshold=2", IMAGE), 422),
                                           (V2(DET, images(IMAGE), parameters={"score_threshold": 2.0}), 422, "INVALID_ARGUMENT")),
    "another task's endpoint": Row((v1_raw(f"/v1/models/{CLS}/detect", IMAGE), 422), None),
    # v1 refuses a query name its route does not take; v2 parameters are open (clients add their own), so
    # a detector's parameter sent to a classifier is ignored there.
    "another task's parameter": Row((v1_raw(f"{CLASSIFY}?score_threshold=0.5", IMAGE), 400),
                                    (V2(inputs=images(IMAGE), parameters={"score_threshold": 0.5}), 200, "OK")),
    "NaN tensor": Row(None, (V2(inputs=tensor(np.full((1, 3, 64, 64), np.nan, np.float32))), 400, "INVALID_ARGUMENT")),
    "wrong tensor shape": Row(None, (V2(inputs=tensor(np.zeros((1, 3, 32, 32), np.float32))), 400, "INVALID_ARGUMENT")),
    "wrong datatype": Row(None, (V2(inputs=tensor(ZEROS.astype(np.int32), "INT32")), 400, "INVALID_ARGUMENT")),
    "missing input": Row((v1_raw(CLASSIFY, b""), 400), (V2(), 400, "INVALID_ARGUMENT")),
    "timed out": Row(None, (V2(inputs=images(IMAGE), timeout_us=1), 504, "DEADLINE_EXCEEDED")),
}


def _cases(protocol: str) -> list[Any]:
    return [pytest.param(name, id=name) for name, row in TABLE.items() if getattr(row, "v1" if protocol == "v1" else "v2")]


@pytest.mark.parametrize("name", _cases("v1"))
def test_v1_status(clients: Clients, name: str) -> None:
    send, status = TABLE[name].v1
    response = send(clients.base)
    assert response.status_code == status, response.text
    assert status == 200 or response.json()["error"], response.text


@pytest.mark.parametrize("name", _cases("v2"))
def test_v2_http_status(clients: Clients, name: str) -> None:
    call, status, _ = TABLE[name].v2
    assert _http_status(lambda: call.call(clients.v2, th)) == status


@pytest.mark.parametrize("name", _cases("v2"))
def test_grpc_status(clients: Clients, name: str) -> None:
    call, _, code = TABLE[name].v2
    assert _grpc_code(lambda: call.call(clients.grpc, tg)) == code


def _http_status(send: Callable[[], None]) -> int:
    try:
        send()
    except InferenceServerException as exc:
        assert exc.message(), "an error answer without a message"
        return int(exc.status())
    return 200


def _grpc_code(send: Callable[[], None]) -> str:
    try:
        send()
    except InferenceServerException as exc:
        assert exc.message(), "an error answer without a message"
        return str(exc.status()).removeprefix("StatusCode.")
    return "OK"


def test_the_server_still_serves_after_the_table(clients: Clients) -> None:
    """Every refusal above left the server whole: a valid request still gets its answer over each protocol."""
    assert httpx.post(f"{clients.base}{CLASSIFY}", content=IMAGE, headers={"content-type": "image/png"}, timeout=60).status_code == 200
    assert _http_status(lambda: V2(inputs=images(IMAGE)).call(clients.v2, th)) == 200
    assert _grpc_code(lambda: V2(inputs=images(IMAGE)).call(clients.grpc, tg)) == "OK"
