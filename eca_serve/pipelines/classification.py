"""Classification: top-k classes, the full probabilities, and the attention of the same forward pass.

`ClassificationPipeline` runs a classifier graph (input [N, 3, H, W] at the config's size);
`ClassificationTask` turns its ``logits`` into answers. Other tasks on the same graph (embedding)
share the pipeline and its forward pass.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field

from eca_serve.errors import InvalidParameterError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import Classification, ClassifyParams, Label, RunParams
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.preprocess import preprocess_classification
from eca_serve.pipelines.preprocess_fast import preprocess_classification_fast
from eca_serve.pipelines.task import Column, OutputAsk, Ran, Task, TensorSpec, with_attention
from eca_serve.repository import EntryConfig

DEFAULT_TOP_K = 5  # at most: a model with fewer classes returns them all
LOGITS, PROBABILITIES = "logits", "probabilities"
# The v2 output parameter (and protocol extension) that asks for top-k labels instead of a tensor.
CLASSIFICATION_EXTENSION = "classification"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64 for stability."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class ClassificationPipeline(ModelPipeline):
    """Decode -> resize/crop/normalise -> batch -> classifier graph (logits, attention, [embedding])."""

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        if self.preprocessing == "fast":
            return preprocess_classification_fast(decoded, self.config.input)
        return preprocess_classification(decoded, self.config.input)


class Prediction(BaseModel):
    index: int = Field(examples=[5])
    label: str = Field(examples=["star"])
    score: float = Field(examples=[0.993])


class ClassifyResult(BaseModel):
    filename: str | None = Field(None, examples=["star.png"])
    predictions: list[Prediction]


def predictions(result: Classification) -> list[Prediction]:
    return [Prediction(index=l.index, label=l.label, score=l.score) for l in result.predictions]


class ClassificationTask(Task):
    """Top-k of the softmax of each image's logits [K]; v2 ``logits`` and ``probabilities`` FP32 [N, K]."""

    name = "classification"
    action = "classify"
    params_type = ClassifyParams
    result_type = ClassifyResult
    classification_outputs = (LOGITS, PROBABILITIES)

    def required_outputs(self, config: EntryConfig) -> set[str]:
        return {LOGITS}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        return [TensorSpec(LOGITS, "FP32", (-1, config.num_classes)), TensorSpec(PROBABILITIES, "FP32", (-1, config.num_classes))]

    def check_params(self, params: RunParams, config: EntryConfig) -> ClassifyParams:
        assert isinstance(params, ClassifyParams)
        if params.top_k is None:
            return params.model_copy(update={"top_k": min(DEFAULT_TOP_K, config.num_classes)})
        if params.top_k > config.num_classes:
            raise InvalidParameterError(f"top_k must be between 1 and {config.num_classes}, got {params.top_k}")
        return params

    def check_output(self, ask: OutputAsk, config: EntryConfig) -> None:
        super().check_output(ask, config)
        if ask.classification > config.num_classes:
            raise InvalidParameterError(f"classification must be between 1 and {config.num_classes}, got {ask.classification}")

    def v2_parameters(self, asked: list[OutputAsk]) -> dict[str, int]:
        return {"top_k": max([a.classification for a in asked] + [1])}

    def result_of(self, ran: Ran, params: ClassifyParams, config: EntryConfig) -> Classification:
        logits = np.asarray(ran.outputs[LOGITS], np.float32).reshape(-1)
        probs = softmax(logits)
        order = np.argsort(-probs, kind="stable")[: params.top_k]
        labels = [Label(int(i), config.categories[i], float(probs[i])) for i in order]
        return Classification(ran.filename, labels, logits, probs, with_attention(config, ran, params))

    def columns(self, config: EntryConfig, results: list[Classification]) -> dict[str, Column]:
        return {LOGITS: np.stack([r.logits for r in results]).astype(np.float32),
                PROBABILITIES: np.stack([r.probabilities for r in results]).astype(np.float32)}

    def classification_column(self, name: str, results: list[Classification], k: int) -> Column:
        """BYTES [N, k] of ``"<probability>:<index>:<label>"``, most probable first."""
        return [f"{p.score:f}:{p.index}:{p.label}".encode() for r in results for p in r.predictions[:k]]

    def v1_item(self, result: Classification) -> ClassifyResult:
        return ClassifyResult(filename=result.filename, predictions=predictions(result))

    def attention_fields(self, result: Classification) -> dict[str, list[Prediction]]:
        return {"predictions": predictions(result)}
