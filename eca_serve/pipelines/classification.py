"""Classification: top-k classes, the full probabilities, and the attention of the same forward pass."""

from __future__ import annotations

import numpy as np

from eca_serve.errors import InvalidParameterError
from eca_serve.pipelines.base import ModelPipeline, Ran
from eca_serve.pipelines.contract import Classification, ClassifyParams, Label, RunParams
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.preprocess import preprocess_classification, stack_batch
from eca_serve.pipelines.preprocess_fast import preprocess_classification_fast

DEFAULT_TOP_K = 5  # at most: a model with fewer classes returns them all


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64 for stability."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class ClassificationPipeline(ModelPipeline):
    """Decode -> resize/crop/normalise -> batch -> logits + attention -> top-k."""

    params_type = ClassifyParams
    action = "classify"

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        if self.preprocessing == "fast":
            return preprocess_classification_fast(decoded, self.config.input)
        return preprocess_classification(decoded, self.config.input)

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        outputs = self.backend.infer(stack_batch(tensors))
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(tensors))]

    def check_params(self, params: RunParams) -> ClassifyParams:
        params = super().check_params(params)
        if params.top_k is None:
            return params.model_copy(update={"top_k": min(DEFAULT_TOP_K, self.config.num_classes)})
        if params.top_k > self.config.num_classes:
            raise InvalidParameterError(f"top_k must be between 1 and {self.config.num_classes}, got {params.top_k}")
        return params

    async def postprocess(self, ran: list[Ran], params: ClassifyParams) -> list[Classification]:
        return [self.classify_one(r, params) for r in ran]

    def classify_one(self, ran: Ran, params: ClassifyParams) -> Classification:
        """Top-k of the softmax of one image's logits [K]; attention layers in config order."""
        logits = np.asarray(ran.outputs["logits"], np.float32).reshape(-1)
        probs = softmax(logits)
        order = np.argsort(-probs, kind="stable")[: params.top_k]
        labels = [Label(int(i), self.config.categories[i], float(probs[i])) for i in order]
        attention = self.layer_weights(ran.outputs) if params.attention else None
        return Classification(ran.filename, labels, logits, probs, attention)
