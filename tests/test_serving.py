"""The v1 HTTP API against a real server, real batcher and real ONNX Runtime."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import decode_target, preprocess_classification
from eca_serve.export import read_config
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
    settings = Settings(model_repository=root, max_batch_size=8, max_queue_delay_ms=20, max_body_bytes=2_000_000)
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
    start = time.perf_counter()
    response = http.post(f"{base}/v1/models/shapes_small/classify", content=data, headers={"content-type": content_type}, timeout=30)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and response.json()["error"]
    assert time.perf_counter() - start < 5
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
