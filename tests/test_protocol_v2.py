"""The Open Inference Protocol (KServe v2 / Triton HTTP) against a real server, driven by the official tritonclient."""

from __future__ import annotations

import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from eca_serve.api.v2_codec import deserialize_bytes, serialize_bytes
from eca_serve.errors import InferenceRequestError
from eca_serve.repository import read_config
from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from eca_serve.settings import Settings
from tests.hostile_images import jpeg_bytes, png_bytes
from tests.serving_utils import export_small_classifier, export_tiny_detector, running_server

CLS, DET = "shapes_small", "det"
DET_CATEGORIES = ["__background__", "a", "b"]
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("v2_models")
    export_small_classifier(root, CLS)
    export_tiny_detector(root, DET, DET_CATEGORIES)
    settings = Settings(model_repository=root, backend="onnxruntime", max_batch_size=8, max_queue_delay_ms=5, max_body_bytes=1_000_000,
                        max_images_per_request=4)
    with running_server(settings) as (base, app):
        yield base, app, read_config(root / CLS / "1")


@pytest.fixture(scope="module")
def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server[0].removeprefix("http://"), network_timeout=60)


def tensor_input(x: np.ndarray, binary: bool = True) -> triton.InferInput:
    item = triton.InferInput("input", list(x.shape), "FP32")
    item.set_data_from_numpy(x, binary_data=binary)
    return item


def image_input(*images: bytes) -> triton.InferInput:
    item = triton.InferInput("image", [len(images)], "BYTES")
    item.set_data_from_numpy(np.array(images, dtype=object))
    return item


def preprocessed(config, data: bytes) -> np.ndarray:
    """The server's own classifier preprocessing of an encoded image: [3, H, W]."""
    return preprocess_classification(decode_image(data, limits=DecodeLimits(), target=decode_target(config.input)), config.input)


def test_health_metadata_config_and_index(client, server) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "eca-serve" and {"binary_tensor_data", "classification", "statistics"} <= set(meta["extensions"])
    assert client.is_model_ready(CLS) and client.is_model_ready(CLS, "1") and not client.is_model_ready("nope")
    model = client.get_model_metadata(CLS)
    assert model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 64, 64]},
                               {"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: o for o in model["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 8] and outputs["attention/layer4.1.eca"]["shape"] == [-1, 128]
    config = client.get_model_config(CLS, "1")
    assert config["max_batch_size"] == 8 and config["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [3, 64, 64]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000
    det = client.get_model_metadata(DET)
    assert [o["name"] for o in det["outputs"]][:5] == ["boxes", "scores", "labels", "batch_index", "masks"]
    index = client.get_model_repository_index()
    assert [(m["name"], m["state"]) for m in index] == [(DET, "READY"), (CLS, "READY")]


def test_ready_is_503_while_draining_and_live_stays_200(server) -> None:
    base, app, _ = server
    app.state.dataplane.draining = True
    try:
        ready = http.get(f"{base}/v2/health/ready")
        assert ready.status_code == 503 and set(ready.json()) == {"error"}
        assert http.get(f"{base}/v2/health/live").status_code == 200
    finally:
        app.state.dataplane.draining = False
    assert http.get(f"{base}/v2/health/ready").status_code == 200


def test_binary_and_json_tensors_agree_with_each_other_and_v1(client, server) -> None:
    base, _, config = server
    images = [png_bytes((90, 70), seed=1), jpeg_bytes((120, 80), seed=2)]
    x = np.stack([preprocessed(config, d) for d in images])
    everything = client.infer(CLS, [tensor_input(x)])  # no outputs named: all of them, binary
    assert len(everything.get_response()["outputs"]) == 2 + len(config.attention)
    wanted = [triton.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "attention/layer2.0.eca")]
    as_json = client.infer(CLS, [tensor_input(x, binary=False)], outputs=wanted)
    assert [o["name"] for o in as_json.get_response()["outputs"]] == ["probabilities", "attention/layer2.0.eca"]
    assert all("data" in o for o in as_json.get_response()["outputs"])
    probs = everything.as_numpy("probabilities")
    assert probs.shape == (2, 8) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), probs, atol=1e-6)
    np.testing.assert_allclose(as_json.as_numpy("attention/layer2.0.eca"), everything.as_numpy("attention/layer2.0.eca"), atol=1e-6)
    logits = everything.as_numpy("logits").astype(np.float64)
    np.testing.assert_allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-6)
    for row, data in enumerate(images):
        v1 = http.post(f"{base}/v1/models/{CLS}/classify?top_k=8", content=data, headers={"content-type": "image/png"}).json()
        for p in v1["results"][0]["predictions"]:
            assert abs(probs[row, p["index"]] - p["score"]) < 1e-5
        layers = http.post(f"{base}/v1/models/{CLS}/attention", content=data).json()["results"][0]["layers"]
        for layer in layers:
            np.testing.assert_allclose(everything.as_numpy(f"attention/{layer['name']}")[row], layer["weights"], atol=2e-6)


def test_image_bytes_input_and_classification_extension(client, server) -> None:
    base, _, config = server
    images = [png_bytes((64, 64), seed=3), jpeg_bytes((200, 150), seed=4)]
    from_images = client.infer(CLS, [image_input(*images)])
    from_tensor = client.infer(CLS, [tensor_input(np.stack([preprocessed(config, d) for d in images]))])
    np.testing.assert_allclose(from_images.as_numpy("logits"), from_tensor.as_numpy("logits"), atol=1e-5)
    top = client.infer(CLS, [image_input(*images)], outputs=[triton.InferRequestedOutput("probabilities", class_count=3),
                                                              triton.InferRequestedOutput("logits")])
    classes = top.as_numpy("probabilities")
    assert classes.shape == (2, 3) and top.as_numpy("logits").shape == (2, 8)
    for row, data in enumerate(images):
        v1 = http.post(f"{base}/v1/models/{CLS}/classify?top_k=3", content=data).json()["results"][0]["predictions"]
        parsed = [item.decode().split(":") for item in classes[row]]
        assert [(int(i), label) for _, i, label in parsed] == [(p["index"], p["label"]) for p in v1]
        np.testing.assert_allclose([float(s) for s, _, _ in parsed], [p["score"] for p in v1], atol=1e-5)


def test_statistics_follow_the_batcher(client, server) -> None:
    _, app, config = server
    before = client.get_inference_statistics(CLS)["model_stats"][0]
    client.infer(CLS, [tensor_input(np.zeros((3, 3, 64, 64), np.float32))], outputs=[triton.InferRequestedOutput("logits")])
    after = client.get_inference_statistics(CLS, "1")["model_stats"][0]
    assert (after["name"], after["version"]) == (CLS, "1")
    assert after["inference_count"] - before["inference_count"] == 3
    assert 1 <= after["execution_count"] - before["execution_count"] <= 3
    stats = after["inference_stats"]
    assert stats["success"]["count"] == after["inference_count"] and stats["compute_infer"]["ns"] > 0
    assert app.state.manager.get(CLS).batcher.stats().inference_count == after["inference_count"]
    everyone = client.get_inference_statistics()["model_stats"]
    assert sorted(s["name"] for s in everyone) == [DET, CLS]


def test_detector_image_matches_v1_detect(client, server) -> None:
    from pycocotools import mask as mask_utils

    base, _, _ = server
    data = png_bytes((150, 110), seed=7)
    result = client.infer(DET, [image_input(data)], parameters={"score_threshold": 0.0, "max_detections": 1000})
    boxes, scores, labels = result.as_numpy("boxes"), result.as_numpy("scores"), result.as_numpy("labels")
    v1 = http.post(f"{base}/v1/models/{DET}/detect?score_threshold=0&max_detections=1000", content=data).json()
    served = v1["results"][0]["detections"]
    assert len(served) == len(boxes) > 0 and labels.dtype == np.int64 and not result.as_numpy("batch_index").any()
    np.testing.assert_allclose(boxes, [d["box"] for d in served], atol=0.01)
    np.testing.assert_allclose(scores, [d["score"] for d in served], atol=1e-6)
    assert labels.tolist() == [d["label"] for d in served]
    masks = [json.loads(m) for m in result.as_numpy("masks")]
    assert masks == [d["mask"] for d in served]
    assert mask_utils.decode({"size": masks[0]["size"], "counts": masks[0]["counts"].encode()}).shape == (110, 150)
    assert result.as_numpy("attention/layer4.1.eca").shape == (1, 128)


def test_detector_tensor_rows_and_batch_index(client) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 128, 160), dtype=np.float32)
    names = ("boxes", "scores", "batch_index", "attention/layer1.0.eca")
    both = client.infer(DET, [tensor_input(x)], outputs=[triton.InferRequestedOutput(n) for n in names],
                        parameters={"score_threshold": 0.05})
    index, scores = both.as_numpy("batch_index"), both.as_numpy("scores")
    assert both.as_numpy("attention/layer1.0.eca").shape == (2, 16) and (scores >= 0.05).all()
    assert np.all(np.diff(index) >= 0) and set(index.tolist()) == {0, 1}
    boxes = both.as_numpy("boxes")
    assert boxes.shape == (len(scores), 4) and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 128).all()
    alone = client.infer(DET, [tensor_input(x[1:])], outputs=[triton.InferRequestedOutput("scores")], parameters={"score_threshold": 0.05})
    np.testing.assert_allclose(alone.as_numpy("scores"), scores[index == 1], atol=1e-5)


def raw_infer(base: str, header: dict | bytes, blob: bytes = b"", header_length: int | None = None, model: str = CLS) -> httpx.Response:
    """POST a hand-built body: JSON header (+ binary blob, declared by Inference-Header-Content-Length)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head) if header_length is None else header_length)} if blob or header_length else {}
    return http.post(f"{base}/v2/models/{model}/infer", content=head + blob, headers=headers)


def fp32(shape: list[int], data: list | None = None, **parameters) -> dict:
    spec = {"name": "input", "datatype": "FP32", "shape": shape, "parameters": parameters}
    return {**spec, "data": data} if data is not None else spec


ZEROS = np.zeros((1, 3, 64, 64), np.float32).tobytes()
ERROR_CASES = {
    "malformed JSON": (b'{"inputs": [', b"", None, 400, "malformed JSON"),
    "not an object": (b"[1, 2]", b"", None, 400, "JSON object"),
    "wrong shape": ({"inputs": [fp32([1, 3, 32, 32], binary_data_size=3 * 32 * 32 * 4)]}, bytes(3 * 32 * 32 * 4), None, 400, "[N, 3, 64, 64]"),
    "wrong datatype": ({"inputs": [{"name": "input", "datatype": "INT32", "shape": [1, 3, 64, 64], "parameters": {"binary_data_size": len(ZEROS)}}]},
                       ZEROS, None, 400, "is FP32, got INT32"),
    "unknown input": ({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1], "data": [0]}]}, b"", None, 400, "no input 'pixels'"),
    "unknown output": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))], "outputs": [{"name": "nope"}]}, ZEROS, None, 400, "no output 'nope'"),
    "truncated binary": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))]}, ZEROS[:-8], None, 400, "truncated"),
    "size mismatch": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS) - 4)]}, ZEROS[:-4], None, 400, "needs 49152 bytes"),
    "extra binary": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))]}, ZEROS + b"xx", None, 400, "2 bytes"),
    "NaN values": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))]},
                   np.full((1, 3, 64, 64), np.nan, np.float32).tobytes(), None, 400, "NaN or infinite"),
    "bad header length": ({"inputs": []}, b"x", 10**6, 400, "Inference-Header-Content-Length"),
    "JSON element count": ({"inputs": [fp32([1, 3, 64, 64], [0.0] * 10)]}, b"", None, 400, "needs 12288 elements"),
    "JSON strings as FP32": ({"inputs": [fp32([1, 3, 64, 64], ["a"] * 12288)]}, b"", None, 400, "FP32 numbers"),
    "classification of attention": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))], "outputs": [
        {"name": "attention/layer1.0.eca", "parameters": {"classification": 2}}]}, ZEROS, None, 400, "classification"),
    "two inputs": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS)), {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
                   ZEROS, None, 400, "exactly one input"),
    "undecodable image": ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not an image"]}]}, b"", None, 400, ""),
    "negative timeout": ({"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))], "parameters": {"timeout": -1}}, ZEROS, None, 422, "timeout"),
    "too many images": ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [5], "data": ["a"] * 5}]}, b"", None, 413, "at most 4"),
    "body too large": ({"inputs": []}, bytes(1_100_000), None, 413, "limit"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_requests_get_4xx_error_json_and_server_keeps_serving(server, case: str) -> None:
    base = server[0]
    header, blob, header_length, status, message = ERROR_CASES[case]
    response = raw_infer(base, header, blob, header_length)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]
    ok = raw_infer(base, {"inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))], "outputs": [{"name": "logits"}]}, ZEROS)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1, 8]


def test_client_errors_carry_the_server_message(client) -> None:
    x = np.zeros((1, 3, 64, 64), np.float32)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as err:
        client.infer("nope", [tensor_input(x)])
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no output 'nope'"):
        client.infer(CLS, [tensor_input(x)], outputs=[triton.InferRequestedOutput("nope")])
    with pytest.raises(InferenceServerException, match="no version 7"):
        client.get_model_config(CLS, "7")
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")
    assert client.infer(CLS, [tensor_input(x)], request_compression_algorithm="gzip").as_numpy("logits").shape == (1, 8)


def test_request_id_priority_timeout_and_binary_response_framing(server) -> None:
    base = server[0]
    request = {"id": "req-42", "parameters": {"priority": 2, "timeout": 20_000_000},
               "inputs": [fp32([1, 3, 64, 64], binary_data_size=len(ZEROS))],
               "outputs": [{"name": "logits", "parameters": {"binary_data": True}}, {"name": "probabilities", "parameters": {"classification": 2}}]}
    response = raw_infer(base, request, ZEROS)
    assert response.status_code == 200 and response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:length])
    assert head["id"] == "req-42" and head["model_name"] == CLS and head["model_version"] == "1"
    logits, classes = head["outputs"]
    assert logits["parameters"]["binary_data_size"] == 32 == len(response.content) - length
    assert classes["datatype"] == "BYTES" and classes["shape"] == [1, 2] and len(classes["data"]) == 2
    plain = raw_infer(base, {"id": "x", "inputs": [fp32([1, 3, 64, 64], [0.0] * 12288)], "outputs": [{"name": "logits"}]})
    assert plain.headers["content-type"] == "application/json" and "Inference-Header-Content-Length" not in plain.headers
    assert plain.json()["id"] == "x"
    np.testing.assert_allclose(plain.json()["outputs"][0]["data"], np.frombuffer(response.content[length:], "<f4"), atol=1e-6)
    binary_default = raw_infer(base, {"parameters": {"binary_data_output": True}, "inputs": [fp32([1, 3, 64, 64], [0.0] * 12288)]})
    assert "id" not in json.loads(binary_default.content[: int(binary_default.headers["Inference-Header-Content-Length"])])


def test_bytes_wire_format_round_trips_and_rejects_truncation() -> None:
    items = [b"", b"abc", bytes(range(256))]
    wire = serialize_bytes(items)
    assert wire[:4] == struct.pack("<I", 0) and deserialize_bytes(wire, 3) == items
    for bad, count in ((wire[:-1], 3), (wire[:2], 1), (wire, 2), (wire, 4)):
        with pytest.raises(InferenceRequestError):
            deserialize_bytes(bad, count)


def test_openapi_describes_the_v2_bodies() -> None:
    from eca_serve.api import create_app

    spec = create_app().openapi()
    infer = spec["paths"]["/v2/models/{name}/infer"]["post"]
    request = infer["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["inputs"] and request["properties"]["inputs"]["items"]["properties"]["name"]["enum"] == ["image", "input"]
    assert infer["responses"]["200"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/InferResponse"
    assert spec["components"]["schemas"]["InferResponse"]["properties"]["outputs"]["items"] == {"$ref": "#/components/schemas/OutputTensor"}
    assert infer["responses"]["404"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorBody"
    metadata = spec["paths"]["/v2/models/{name}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert metadata["$ref"] == "#/components/schemas/ModelMetadata"
