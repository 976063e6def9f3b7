"""The v1 HTTP API against a real server, real batcher and real ONNX Runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from eca_serve.repository import DetectionSpec, model_input_size, read_config
from eca_serve.export.parity import match_detections
from eca_serve.pipelines.detection import detector_input, to_original_pixels
from eca_serve.pipelines.masks import to_original_size
from eca_serve.settings import Settings
from tests.hostile_images import corpus, jpeg_bytes, png_bytes
from tests.serving_utils import export_small_classifier, running_server


http = httpx.Client(timeout=60)  # CPU-bound CI machines: first calls import plotting, warm caches


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    root = tmp_path_factory.mktemp("models")
    return root, export_small_classifier(root)


@pytest.fixture(scope="module")
def server(repository):
    root, _ = repository
    settings = Settings(model_repository=root, backend="onnxruntime", max_batch_size=8, max_queue_delay_ms=20, max_body_bytes=2_000_000)
    with running_server(settings) as (base, app):
        yield base, app


def reference(model: torch.nn.Module, config, data: bytes) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Probabilities [K] and attention {layer: [C]} of the eager model on the server's own preprocessing."""
    decoded = decode_image(data, limits=DecodeLimits(), target=decode_target(config.input))
    x = preprocess_classification(decoded, config.input)
    with torch.no_grad():
        logits, attn = model.forward_with_attention(torch.from_numpy(x)[None])
    return torch.softmax(logits[0].double(), 0).numpy(), {k: v[0].numpy() for k, v in attn.items()}


def test_models_listing_and_detail(server) -> None:
    base, _ = server
    models = http.get(f"{base}/v1/models").json()["models"]
    assert models == [{"name": "shapes_small", "version": 1, "task": "classification", "architecture": "eca_resnet18",
                       "ready": True, "versions": [1]}]
    detail = http.get(f"{base}/v1/models/shapes_small").json()
    assert detail["categories"][5] == "star" and detail["inputs"]["size"] == [64, 64] and detail["inputs"]["resize"] == 72
    assert [a["name"] for a in detail["attention_layers"]][:2] == ["layer1.0.eca", "layer1.1.eca"]
    assert detail["backend"] == "onnxruntime" and detail["device"] == "cpu"


def test_classify_multipart_and_raw_body_match_the_model(server, repository) -> None:
    base, _ = server
    root, model = repository
    config = read_config(root / "shapes_small" / "1")
    images = [png_bytes((90, 70), seed=1), jpeg_bytes((300, 200), seed=2)]
    files = [("file", ("a.png", images[0], "image/png")), ("file", ("b.jpg", images[1], "image/jpeg"))]
    body = http.post(f"{base}/v1/models/shapes_small/classify?top_k=3", files=files).json()
    assert [r["filename"] for r in body["results"]] == ["a.png", "b.jpg"]
    for result, data in zip(body["results"], images):
        probs, _ = reference(model, config, data)
        expected = np.argsort(-probs)[:3]
        assert [p["index"] for p in result["predictions"]] == expected.tolist()
        np.testing.assert_allclose([p["score"] for p in result["predictions"]], probs[expected], atol=1e-5)
        assert [p["label"] for p in result["predictions"]] == [config.categories[i] for i in expected]
    raw = http.post(f"{base}/v1/models/shapes_small/classify?top_k=3", content=images[1], headers={"content-type": "image/jpeg"}).json()
    assert raw["results"][0]["predictions"] == body["results"][1]["predictions"]


def test_attention_matches_the_model_and_its_predictions(server, repository) -> None:
    base, _ = server
    root, model = repository
    config = read_config(root / "shapes_small" / "1")
    data = png_bytes((64, 64), seed=3)
    body = http.post(f"{base}/v1/models/shapes_small/attention?top_k=2", files={"file": ("x.png", data, "image/png")}).json()
    result = body["results"][0]
    probs, attn = reference(model, config, data)
    assert [l["name"] for l in result["layers"]] == model.attention_layers
    for layer in result["layers"]:
        assert len(layer["weights"]) == layer["channels"] and layer["k_size"] in (3, 5, 7)
        np.testing.assert_allclose(layer["weights"], attn[layer["name"]], atol=1e-5)
    assert result["predictions"][0]["index"] == int(np.argmax(probs))
    png = http.post(f"{base}/v1/models/shapes_small/attention?format=png", content=data, headers={"content-type": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server) -> None:
    base, app = server
    images = [png_bytes((64, 64), seed=100 + i) for i in range(16)]

    async def one(client: httpx.AsyncClient, data: bytes) -> dict:
        r = await client.post(f"{base}/v1/models/shapes_small/classify?top_k=1", content=data, headers={"content-type": "image/png"})
        return r.json()["results"][0]["predictions"][0]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*[one(client, d) for d in images])

    pipeline = app.state.manager.get("shapes_small")
    before = pipeline.batcher.stats()
    concurrent = asyncio.run(run())
    after = pipeline.batcher.stats()
    assert after.inference_count - before.inference_count == 16
    assert after.execution_count - before.execution_count < 16
    sequential = [http.post(f"{base}/v1/models/shapes_small/classify?top_k=1", content=d, headers={"content-type": "image/png"}).json()["results"][0]["predictions"][0] for d in images]
    for a, b in zip(concurrent, sequential):
        assert a["index"] == b["index"] and abs(a["score"] - b["score"]) < 1e-5


@pytest.mark.parametrize("name", list(corpus()))
def test_bad_inputs_get_4xx_json_and_server_keeps_serving(server, name: str) -> None:
    base, _ = server
    data, content_type, status = corpus()[name]
    response = http.post(f"{base}/v1/models/shapes_small/classify", content=data, headers={"content-type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    ok = http.post(f"{base}/v1/models/shapes_small/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert ok.status_code == 200


def test_request_errors(server) -> None:
    base, _ = server
    png = png_bytes()
    cases = [
        (http.post(f"{base}/v1/models/nope/classify", content=png, headers={"content-type": "image/png"}), 404, "unknown model"),
        (http.post(f"{base}/v1/models/shapes_small/classify", files={"image": ("a.png", png, "image/png")}), 422, "field 'file'"),
        (http.post(f"{base}/v1/models/shapes_small/classify?top_k=0", content=png, headers={"content-type": "image/png"}), 422, "top_k"),
        (http.post(f"{base}/v1/models/shapes_small/classify?top_k=9", content=png, headers={"content-type": "image/png"}), 422, "top_k"),
        (http.post(f"{base}/v1/models/shapes_small/detect", content=png, headers={"content-type": "image/png"}), 422, "does not detect"),
        (http.post(f"{base}/v1/models/shapes_small/classify", content=b"\0" * 2_500_000, headers={"content-type": "image/png"}), 413, "exceeds"),
        (http.get(f"{base}/v1/models/shapes_small/classify"), 405, "Method Not Allowed"),
        (http.post(f"{base}/v1/models/shapes_small/attention?format=png", files=[("file", ("a.png", png)), ("file", ("b.png", png))]), 422, "one image"),
    ]
    for response, status, fragment in cases:
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"]
    assert "x-request-id" in cases[0][0].headers


def test_too_many_images_is_413(server) -> None:
    base, _ = server
    files = [("file", (f"{i}.png", png_bytes((8, 8)), "image/png")) for i in range(17)]
    response = http.post(f"{base}/v1/models/shapes_small/classify", files=files)
    assert response.status_code == 413 and "at most 16" in response.json()["error"]


def test_openapi_docs_describe_the_api(server) -> None:
    base, _ = server
    spec = http.get(f"{base}/openapi.json").json()
    assert {"/v1/models", "/v1/models/{name}/classify", "/v1/models/{name}/detect", "/v1/models/{name}/attention"} <= set(spec["paths"])
    classify = spec["paths"]["/v1/models/{name}/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert http.get(f"{base}/docs").status_code == 200


@pytest.fixture(scope="module")
def detection_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("det_models")
    torch.manual_seed(0)
    import eca_serve
    from eca_serve.export import ExportOptions, export_model

    model = eca_serve.create_model("maskrcnn_eca_resnet18_fpn", num_classes=3, categories=["__background__", "a", "b"],
                                   widths=[16, 32, 64, 128], stem_width=16, out_channels=32, box_head_dim=64,
                                   mask_head_layers=2, mask_head_dim=32, min_size=128, max_size=192, score_thresh=0.0)
    export_model(model, root / "det" / "1", ExportOptions(name="det", formats=("onnx",), check_inputs=[(1, 128, 128)]))
    with running_server(Settings(model_repository=root)) as (base, _):
        yield base, model


def test_detect_maps_back_to_original_pixels_and_encodes_masks(detection_server) -> None:
    from pycocotools import mask as mask_utils

    base, model = detection_server
    data = png_bytes((150, 110), seed=7)
    body = http.post(f"{base}/v1/models/det/detect?score_threshold=0&max_detections=100", content=data,
                     headers={"content-type": "image/png"}).json()
    result = body["results"][0]
    assert (result["width"], result["height"]) == (150, 110)
    image = torch.from_numpy(preprocess_for_detector(data))
    assert image.shape == (3, 128, 175)  # shorter side to min_size before the model
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model([image])[0].items()}
    ref["boxes"] = to_original_pixels(ref["boxes"], image.shape, (150, 110))
    served = result["detections"]
    got = {"boxes": np.array([d["box"] for d in served], np.float32), "labels": np.array([d["label"] for d in served]),
           "scores": np.array([d["score"] for d in served])}
    pairs = match_detections(ref, got)  # ONNX Runtime may order near-tied random-weight scores differently
    assert len(served) == len(ref["boxes"]) > 0 and len(pairs) == len(served)
    for i, j in pairs[:10]:
        det = served[j]
        np.testing.assert_allclose(det["box"], ref["boxes"][i], atol=0.05)
        assert abs(det["score"] - float(ref["scores"][i])) < 1e-4
        assert det["category"] == ["__background__", "a", "b"][det["label"]]
        decoded = mask_utils.decode({"size": det["mask"]["size"], "counts": det["mask"]["counts"].encode()})
        assert decoded.shape == (110, 150)
        expected = to_original_size(ref["masks"][i, 0], (150, 110)) > 0.5
        assert (decoded == expected).mean() > 0.999
    poly = http.post(f"{base}/v1/models/det/detect?score_threshold=0&max_detections=2&masks=polygon", content=data,
                     headers={"content-type": "image/png"}).json()["results"][0]["detections"]
    assert all(isinstance(d["mask"], list) for d in poly)
    none = http.post(f"{base}/v1/models/det/detect?score_threshold=0.99&masks=none", content=data, headers={"content-type": "image/png"}).json()
    assert all(d["mask"] is None and d["score"] >= 0.99 for d in none["results"][0]["detections"])


def test_detector_attention_comes_from_the_same_pass(detection_server) -> None:
    base, model = detection_server
    data = png_bytes((128, 128), seed=8)
    body = http.post(f"{base}/v1/models/det/attention?score_threshold=0", content=data, headers={"content-type": "image/png"}).json()
    result = body["results"][0]
    with torch.no_grad():
        detections, attention = model.forward_with_attention([torch.from_numpy(preprocess_for_detector(data))])
    assert [l["name"] for l in result["layers"]] == model.attention_layers
    np.testing.assert_allclose(result["layers"][-1]["weights"], attention["layer4.1.eca"][0].numpy(), atol=1e-5)
    assert len(result["detections"]) == len(detections[0]["boxes"])


def test_classify_on_a_detector_is_422(detection_server) -> None:
    base, _ = detection_server
    response = http.post(f"{base}/v1/models/det/classify", content=png_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 422 and "does not classify" in response.json()["error"]


def preprocess_for_detector(data: bytes) -> np.ndarray:
    from eca_serve.repository import InputSpec

    spec = InputSpec(layout="CHW", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), normalized_in_model=True)
    return detector_input(decode_image(data, limits=DecodeLimits()).image, spec, DetectionSpec(min_size=128, max_size=192))


@pytest.mark.parametrize("size, expected", [((150, 110), (175, 128)), ((110, 150), (128, 175)), ((1000, 100), (192, 19)),
                                            ((128, 128), (128, 128)), ((4000, 3000), (171, 128))])
def test_detector_working_size_makes_the_model_transform_an_identity(size, expected) -> None:
    assert model_input_size(*size, 128, 192) == expected
    w, h = expected
    scale = min(128 / min(w, h), 192 / max(w, h))  # torchvision GeneralizedRCNNTransform's rule
    assert scale == 1.0
