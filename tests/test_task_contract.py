"""One task contract for every protocol: v1, v2 and `eca-serve predict` answer from the same `Result`s."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from eca_serve.errors import ConfigError, InvalidParameterError, WrongTaskError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.classification import ClassificationPipeline
from eca_serve.pipelines.contract import Classification, ClassifyParams, DetectionResult, DetectParams, ImageInput
from eca_serve.pipelines.detection import DetectionPipeline
from eca_serve.pipelines.tasks import pipeline_class, register_task, registered_tasks, task_of, tasks_for
from eca_serve.repository import read_config
from eca_serve.settings import Settings
from tests.serving_utils import running_server

ROOT = Path(__file__).resolve().parents[1]
CLS, DET = "shapes_classifier", "shapes_detector"
http = httpx.Client(timeout=60)


@pytest.fixture(scope="module")
def server():
    with running_server(Settings(model_repository=ROOT / "models")) as (base, app):
        yield base, app


def run_in_server(app, coroutine):
    """Run ``coroutine`` on the server's own event loop (its batchers live there)."""
    loop = app.state.manager.pipelines[CLS][1].batcher._loop
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=60)


def test_the_config_task_is_checked_against_the_registry_when_served() -> None:
    assert {"classification", "detection", "instance_segmentation", "embedding"} <= set(registered_tasks())
    assert pipeline_class("classification") is ClassificationPipeline
    assert pipeline_class("instance_segmentation") is DetectionPipeline
    with pytest.raises(ConfigError, match="no pipeline serves task 'segmentation'"):
        pipeline_class("segmentation")
    with pytest.raises(ConfigError, match="registered already"):
        register_task(task_of("detection"), ModelPipeline)
    config = read_config(ROOT / "models" / CLS / "1", verify=False)
    with pytest.raises(ConfigError, match="no pipeline serves task 'segmentation'"):
        tasks_for(config.model_copy(update={"task": "segmentation"}))


def test_parameters_have_one_model_and_one_set_of_defaults_per_task() -> None:
    assert ClassifyParams().top_k is None and DetectParams().score_threshold == 0.5 and DetectParams().masks == "rle"
    assert DetectParams.parse({"score_threshold": 1, "top_k": 3, "unrelated": "x"}) == DetectParams(score_threshold=1.0)
    for bad in ({"score_threshold": True}, {"score_threshold": "0.3"}, {"max_detections": 0}, {"masks": "png"}):
        with pytest.raises(InvalidParameterError, match="invalid parameters"):
            DetectParams.parse(bad)


def test_a_pipeline_refuses_another_tasks_parameters_and_empty_or_mixed_inputs(server) -> None:
    _, app = server
    classifier = app.state.manager.get(CLS)
    star = ImageInput((ROOT / "examples" / "star.png").read_bytes())
    with pytest.raises(WrongTaskError, match="does not classify"):
        run_in_server(app, classifier.run([star], DetectParams()))
    with pytest.raises(InvalidParameterError, match="top_k must be between 1 and 8"):
        run_in_server(app, classifier.run([star], ClassifyParams(top_k=9)))
    with pytest.raises(InvalidParameterError, match="no image"):
        run_in_server(app, classifier.run([], ClassifyParams()))
    with pytest.raises(InvalidParameterError, match="not both"):
        run_in_server(app, classifier.run([star, np.zeros((3, 64, 64), np.float32)], ClassifyParams()))


def test_v1_and_v2_classify_answer_from_the_same_result(server) -> None:
    base, app = server
    data = (ROOT / "examples" / "star.png").read_bytes()
    [result] = run_in_server(app, app.state.manager.get(CLS).run([ImageInput(data)], ClassifyParams(top_k=3)))
    assert isinstance(result, Classification)
    v1 = http.post(f"{base}/v1/models/{CLS}/classify?top_k=3", content=data, headers={"content-type": "image/png"}).json()
    assert v1["results"][0]["predictions"] == [{"index": p.index, "label": p.label, "score": p.score} for p in result.predictions]

    client = triton.InferenceServerClient(base.removeprefix("http://"))
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    outputs = [triton.InferRequestedOutput("probabilities", class_count=3), triton.InferRequestedOutput("logits")]
    v2 = client.infer(CLS, [image], outputs=outputs)
    expected = [f"{p.score:f}:{p.index}:{p.label}" for p in result.predictions]
    assert [s.decode() for s in v2.as_numpy("probabilities").reshape(-1)] == expected
    np.testing.assert_allclose(v2.as_numpy("logits")[0], result.logits, rtol=1e-6)


def test_v1_and_v2_detect_use_the_same_defaults_and_result(server) -> None:
    base, app = server
    data = (ROOT / "examples" / "scene.png").read_bytes()
    [result] = run_in_server(app, app.state.manager.get(DET).run([ImageInput(data)], DetectParams()))
    assert isinstance(result, DetectionResult) and result.detections
    v1 = http.post(f"{base}/v1/models/{DET}/detect", content=data, headers={"content-type": "image/png"}).json()
    assert [d["box"] for d in v1["results"][0]["detections"]] == [d.box for d in result.detections]

    client = triton.InferenceServerClient(base.removeprefix("http://"))
    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([data], dtype=object))
    v2 = client.infer(DET, [image])  # no parameters: the task's defaults
    np.testing.assert_allclose(v2.as_numpy("boxes"), [d.box for d in result.detections], atol=1e-4)
    assert v2.as_numpy("labels").tolist() == [d.label for d in result.detections]
    assert [json.loads(m) for m in v2.as_numpy("masks")] == [d.mask for d in result.detections]


@pytest.mark.parametrize(("model", "image", "endpoint", "options"), [
    (CLS, "star.png", "classify?top_k=2", ["--top-k", "2"]),
    (DET, "scene.png", "detect?masks=polygon", ["--masks", "polygon"]),
    (CLS, "cross.png", "attention", ["--attention"]),
])
def test_predict_prints_exactly_the_v1_body(server, model: str, image: str, endpoint: str, options: list[str]) -> None:
    base, _ = server
    data = (ROOT / "examples" / image).read_bytes()
    served = http.post(f"{base}/v1/models/{model}/{endpoint}", files={"file": (image, data, "image/png")}).json()
    printed = subprocess.run([sys.executable, "-m", "eca_serve.cli", "predict", str(ROOT / "examples" / image), "--model", model,
                              "--model-repository", str(ROOT / "models"), *options], capture_output=True, text=True, check=True)
    body = json.loads(printed.stdout)
    assert set(body) == set(served) == {"model", "version", "results", "timing"}
    assert body["results"] == served["results"]
