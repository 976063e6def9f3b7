"""Classification and attention read-out for classifiers."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from eca_serve.errors import InvalidParameterError
from eca_serve.pipelines.base import ImageInput, LayerWeights, ModelPipeline, StageTimes
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.preprocess import preprocess_classification, stack_batch


@dataclass
class Label:
    """One of the top-k classes."""

    index: int
    label: str
    score: float


@dataclass
class ImageResult:
    """Predictions (and optionally attention) for one image."""

    filename: str | None
    labels: list[Label]
    attention: list[LayerWeights] | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float64 for stability."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


class ClassificationPipeline(ModelPipeline):
    """Decode -> resize/crop/normalise -> batch -> logits + attention -> top-k."""

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        return preprocess_classification(decoded, self.config.input)

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        outputs = self.backend.infer(stack_batch(tensors))
        return [{name: value[i] for name, value in outputs.items()} for i in range(len(tensors))]

    async def classify(self, images: list[ImageInput], *, top_k: int = 5, attention: bool = False,
                       times: StageTimes | None = None, **submit: object) -> list[ImageResult]:
        """Top-k labels (and per-layer attention) for each image, in request order."""
        times = times or StageTimes()
        top_k = self.check_top_k(top_k)
        ran = await self.infer_images(images, times, **submit)
        start = time.perf_counter()
        results = [self.postprocess(out, p.filename, top_k, attention) for p, out in ran]
        times.postprocess += time.perf_counter() - start
        self.on_stage(self.config.name, "postprocess", time.perf_counter() - start)
        return results

    def check_top_k(self, top_k: int) -> int:
        if not 1 <= top_k <= self.config.num_classes:
            raise InvalidParameterError(f"top_k must be between 1 and {self.config.num_classes}, got {top_k}")
        return top_k

    def postprocess(self, outputs: dict[str, np.ndarray], filename: str | None, top_k: int, attention: bool) -> ImageResult:
        """Top-k of the softmax of one image's logits [K]; attention layers in config order."""
        probs = softmax(outputs["logits"])
        order = np.argsort(-probs, kind="stable")[:top_k]
        labels = [Label(int(i), self.config.categories[i], float(probs[i])) for i in order]
        return ImageResult(filename, labels, self.layer_weights(outputs) if attention else None)
