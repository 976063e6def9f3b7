"""A task is one module: a task registered here only (the mean of a classifier's logits) is served by
the shipped classifier over v1, v2 HTTP and gRPC with no change to any protocol code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from pydantic import BaseModel, Field

from eca_serve.pipelines.classification import ClassificationPipeline
from eca_serve.pipelines.contract import LayerWeights, RunParams
from eca_serve.pipelines.task import Column, Ran, Task, TensorSpec, with_attention
from eca_serve.pipelines.tasks import register_task, unregister_task
from eca_serve.repository import EntryConfig
from eca_serve.settings import Settings
from tests.task_serving import ROOT, http_and_grpc

CLS = "shapes_classifier"
STAR = (ROOT / "examples" / "star.png").read_bytes()
SQUARE = (ROOT / "examples" / "cross.png").read_bytes()


class MeanParams(RunParams):
    scale: float = Field(1.0, gt=0, description="multiply the mean by this")


@dataclass
class LogitMean:
    filename: str | None
    mean: float
    attention: list[LayerWeights] | None = None


class MeanResult(BaseModel):
    filename: str | None = None
    mean: float


class LogitMeanTask(Task):
    """The mean of each image's logits, times ``scale``."""

    name = "toy_logit_mean"
    action = "mean"
    params_type = MeanParams
    result_type = MeanResult
    extra = True

    def required_outputs(self, config: EntryConfig) -> set[str]:
        return {"logits"}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        return [TensorSpec("logit_mean", "FP32", (-1,))]

    def result_of(self, ran: Ran, params: MeanParams, config: EntryConfig) -> LogitMean:
        mean = float(np.mean(ran.outputs["logits"], dtype=np.float64)) * params.scale
        return LogitMean(ran.filename, mean, with_attention(config, ran, params))

    def columns(self, config: EntryConfig, results: list[LogitMean]) -> dict[str, Column]:
        return {"logit_mean": np.array([r.mean for r in results], np.float32)}

    def v1_item(self, result: LogitMean) -> MeanResult:
        return MeanResult(filename=result.filename, mean=result.mean)


@pytest.fixture(scope="module")
def served():
    register_task(LogitMeanTask(), ClassificationPipeline)
    try:
        with http_and_grpc(Settings(model_repository=ROOT / "models", models=[CLS])) as running:
            yield running
    finally:
        unregister_task(LogitMeanTask.name)


def logits_of(base: str, *images: bytes) -> np.ndarray:
    """The classifier's own logits [N, K] for ``images`` (v2 HTTP), to check the toy task against."""
    item = th.InferInput("image", [len(images)], "BYTES")
    item.set_data_from_numpy(np.array(images, dtype=np.object_))
    client = th.InferenceServerClient(base.removeprefix("http://"))
    return client.infer(CLS, [item], outputs=[th.InferRequestedOutput("logits")]).as_numpy("logits")


def test_v1_serves_the_toy_task_with_its_own_parameters(served: Any) -> None:
    base, _, _ = served
    expected = logits_of(base, STAR).mean(1)
    files = [("file", ("star.png", STAR, "image/png"))]
    body = httpx.post(f"{base}/v1/models/{CLS}/mean?scale=2", files=files, timeout=60).json()
    assert [r["filename"] for r in body["results"]] == ["star.png"] and set(body) == {"model", "version", "results", "timing"}
    assert body["results"][0]["mean"] == pytest.approx(2 * expected[0], rel=1e-5)
    bad = httpx.post(f"{base}/v1/models/{CLS}/mean?scale=0", files=files, timeout=60)
    assert bad.status_code == 422 and "scale" in bad.json()["error"]
    assert httpx.post(f"{base}/v1/models/{CLS}/mean?top_k=2", files=files, timeout=60).status_code == 400
    spec = httpx.get(f"{base}/openapi.json", timeout=10).json()
    assert [p["name"] for p in spec["paths"]["/v1/models/{name}/mean"]["post"]["parameters"]] == ["name", "version", "scale"]


def test_v2_http_lists_and_returns_the_toy_output_from_the_same_pass(served: Any) -> None:
    base, _, _ = served
    meta = httpx.get(f"{base}/v2/models/{CLS}", timeout=10).json()
    assert {"name": "logit_mean", "datatype": "FP32", "shape": [-1]} in meta["outputs"]
    item = th.InferInput("image", [2], "BYTES")
    item.set_data_from_numpy(np.array([STAR, SQUARE], dtype=np.object_))
    client = th.InferenceServerClient(base.removeprefix("http://"))
    outputs = [th.InferRequestedOutput("logit_mean"), th.InferRequestedOutput("logits")]
    result = client.infer(CLS, [item], outputs=outputs, parameters={"scale": 0.5})
    np.testing.assert_allclose(result.as_numpy("logit_mean"), 0.5 * result.as_numpy("logits").mean(1), rtol=1e-5)
    default = client.infer(CLS, [item])  # no outputs named: the entry's own task's (an extra task's when named)
    assert default.as_numpy("logit_mean") is None and default.as_numpy("probabilities").shape == (2, 8)


def test_grpc_returns_the_toy_output(served: Any) -> None:
    base, address, _ = served
    item = tg.InferInput("image", [1], "BYTES")
    item.set_data_from_numpy(np.array([SQUARE], dtype=np.object_))
    client = tg.InferenceServerClient(address)
    result = client.infer(CLS, [item], outputs=[tg.InferRequestedOutput("logit_mean")], parameters={"scale": 3.0})
    np.testing.assert_allclose(result.as_numpy("logit_mean"), 3 * logits_of(base, SQUARE).mean(1), rtol=1e-5)
    with pytest.raises(Exception, match="classification does not apply"):
        client.infer(CLS, [item], outputs=[tg.InferRequestedOutput("logit_mean", class_count=1)])
