"""The embedding task: a classifier entry whose graph outputs its pooled features serves them in every
protocol and in ``eca-serve predict``, from the same forward pass as its classification."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from onnx import numpy_helper

from eca_serve.settings import Settings
from tests.task_serving import ROOT, classifier_with_embedding, http_and_grpc

NAME = "shapes_embed"
IMAGES = {f: (ROOT / "examples" / f).read_bytes() for f in ("star.png", "cross.png", "pentagon.png")}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embed_models")
    classifier_with_embedding(root, NAME)
    classifier_with_embedding(root, "shapes_classifier", embedding=False)
    return root


@pytest.fixture(scope="module")
def served(repository: Path):
    with http_and_grpc(Settings(model_repository=repository)) as running:
        yield running


def head(repository: Path) -> tuple[np.ndarray, np.ndarray]:
    """The classifier head's weight [K, D] and bias [K], read from the graph."""
    model = onnx.load(str(repository / NAME / "1" / "model.onnx"))
    gemm = next(n for n in model.graph.node if "logits" in n.output)
    tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return tensors[gemm.input[1]], tensors[gemm.input[2]]


def v1_embed(base: str, query: str = "") -> dict[str, Any]:
    files = [("file", (name, data, "image/png")) for name, data in IMAGES.items()]
    response = httpx.post(f"{base}/v1/models/{NAME}/embed{query}", files=files, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_v1_embed_returns_unit_vectors_whose_raw_features_feed_the_head(served: Any, repository: Path) -> None:
    base, _, _ = served
    unit, raw = v1_embed(base), v1_embed(base, "?normalize=false")
    assert [r["filename"] for r in unit["results"]] == list(IMAGES)
    vectors, features = (np.array([r["embedding"] for r in body["results"]]) for body in (unit, raw))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose([r["norm"] for r in raw["results"]], np.linalg.norm(features, axis=1), rtol=1e-5)
    np.testing.assert_allclose(vectors * np.linalg.norm(features, axis=1, keepdims=True), features, rtol=1e-4, atol=1e-5)
    weight, bias = head(repository)
    item = th.InferInput("image", [len(IMAGES)], "BYTES")
    item.set_data_from_numpy(np.array(list(IMAGES.values()), dtype=np.object_))
    logits = th.InferenceServerClient(base.removeprefix("http://")).infer(NAME, [item], outputs=[th.InferRequestedOutput("logits")])
    np.testing.assert_allclose(features @ weight.T + bias, logits.as_numpy("logits"), rtol=1e-4, atol=1e-4)
    assert unit["results"][0]["dimension"] == weight.shape[1]


def test_v2_http_and_grpc_return_the_embedding_output(served: Any, repository: Path) -> None:
    base, address, _ = served
    width = head(repository)[0].shape[1]
    meta = httpx.get(f"{base}/v2/models/{NAME}", timeout=10).json()
    assert {"name": "embedding", "datatype": "FP32", "shape": [-1, width]} in meta["outputs"]
    data = np.array(list(IMAGES.values()), dtype=np.object_)
    over_http = th.InferInput("image", [len(data)], "BYTES")
    over_http.set_data_from_numpy(data)
    http_result = th.InferenceServerClient(base.removeprefix("http://")).infer(
        NAME, [over_http], outputs=[th.InferRequestedOutput("embedding"), th.InferRequestedOutput("probabilities", class_count=1)],
        parameters={"normalize": False})
    over_grpc = tg.InferInput("image", [len(data)], "BYTES")
    over_grpc.set_data_from_numpy(data)
    grpc_result = tg.InferenceServerClient(address).infer(NAME, [over_grpc], outputs=[tg.InferRequestedOutput("embedding")])
    raw, unit = http_result.as_numpy("embedding"), grpc_result.as_numpy("embedding")
    assert raw.shape == unit.shape == (len(data), width) and raw.dtype == np.float32
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    files = [("file", (name, image, "image/png")) for name, image in IMAGES.items()]
    classified = httpx.post(f"{base}/v1/models/{NAME}/classify?top_k=1", files=files, timeout=60).json()["results"]
    top1 = [r["predictions"][0]["label"] for r in classified]
    assert [p.decode().split(":")[2] for p in http_result.as_numpy("probabilities").ravel()] == top1
    session = ort.InferenceSession(str(repository / NAME / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[-1].name == "embedding"


def test_a_classifier_without_the_output_does_not_embed(served: Any) -> None:
    base, _, _ = served
    response = httpx.post(f"{base}/v1/models/shapes_classifier/embed", content=IMAGES["star.png"],
                          headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 422 and "does not embed" in response.json()["error"]
    outputs = [o["name"] for o in httpx.get(f"{base}/v2/models/shapes_classifier", timeout=10).json()["outputs"]]
    assert "embedding" not in outputs and "logits" in outputs


def test_predict_prints_the_v1_embed_body(served: Any, repository: Path) -> None:
    base, _, _ = served
    out = subprocess.run([sys.executable, "-m", "eca_serve.cli", "predict", str(ROOT / "examples" / "star.png"),
                          "--model", NAME, "--model-repository", str(repository), "--task", "embedding", "--no-normalize",
                          "--backend", "onnxruntime"], capture_output=True, text=True, timeout=300, check=True)
    printed = json.loads(out.stdout)["results"][0]
    served_body = httpx.post(f"{base}/v1/models/{NAME}/embed?normalize=false", content=IMAGES["star.png"],
                             headers={"content-type": "image/png"}, timeout=60).json()["results"][0]
    np.testing.assert_allclose(printed["embedding"], served_body["embedding"], rtol=1e-5, atol=1e-6)
    assert printed["norm"] == pytest.approx(served_body["norm"], rel=1e-5)


def test_onnxruntime_and_eager_pytorch_give_the_same_embedding(tmp_path: Path) -> None:
    from eca_serve.pipelines.embedding import EmbedParams, EmbeddingTask
    from eca_serve.pipelines.task import Ran
    from eca_serve.repository import read_config
    from eca_serve.runtime import BackendOptions, create_backend
    from tests.serving_utils import export_small_classifier

    export_small_classifier(tmp_path, "small")
    folder = tmp_path / "small" / "1"
    config = read_config(folder)
    assert config.embedding is not None and EmbeddingTask().serves(config)
    batch = np.random.default_rng(3).standard_normal((4, 3, 64, 64), dtype=np.float32)
    task = EmbeddingTask()
    answers = {}
    for kind in ("onnxruntime", "eager"):
        outputs = create_backend(folder, config, BackendOptions(kind, "cpu")).infer(batch)
        for normalize in (False, True):
            answers[kind, normalize] = np.stack([task.result_of(Ran(o, (3, 64, 64), (64, 64)), EmbedParams(normalize=normalize), config).vector
                                                 for o in outputs])
    assert answers["eager", False].shape == (4, config.embedding.dim)
    for normalize in (False, True):
        assert np.abs(answers["onnxruntime", normalize] - answers["eager", normalize]).max() <= 1e-4
