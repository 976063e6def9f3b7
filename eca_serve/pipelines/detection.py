"""Detection and instance segmentation: boxes in original pixels, masks as RLE/polygons/none."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from eca_serve.errors import InvalidParameterError
from eca_serve.repository import model_input_size
from eca_serve.pipelines.base import ImageInput, LayerWeights, ModelPipeline, Prepared, StageTimes
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.masks import MASK_FORMATS, encode_mask
from eca_serve.pipelines.preprocess import preprocess_detection


@dataclass
class Detection:
    """One object: box (x1, y1, x2, y2) in original pixels, class, score, optional mask."""

    box: list[float]
    label: int
    category: str
    score: float
    mask: Any = None


@dataclass
class DetectionResult:
    """Detections (and optionally backbone attention) of one image."""

    filename: str | None
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)
    attention: list[LayerWeights] | None = None


@dataclass(frozen=True)
class DetectOptions:
    """Per-request postprocessing."""

    score_threshold: float = 0.5
    max_detections: int = 100
    masks: str = "rle"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InvalidParameterError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if self.max_detections < 1:
            raise InvalidParameterError(f"max_detections must be >= 1, got {self.max_detections}")
        if self.masks not in MASK_FORMATS:
            raise InvalidParameterError(f"masks must be one of {list(MASK_FORMATS)}, got {self.masks!r}")


def detector_input(image: Image.Image, spec: Any, detection: dict[str, Any]) -> np.ndarray:
    """RGB image -> float32 [3, H, W] already at the model's working size.

    NOTE: resizing here (Pillow, antialiased) instead of inside the model keeps TorchScript and ONNX
    Runtime identical (their internal upsampling rounds sizes differently) and makes large photos cheap.
    """
    size = model_input_size(*image.size, detection["min_size"], detection["max_size"])
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return preprocess_detection(image, spec)


class DetectionPipeline(ModelPipeline):
    """Decode -> resize to the model's working size -> batch (same size only) -> detector -> original pixels."""

    def decode_target(self) -> tuple[int, int] | None:
        side = self.config.detection["min_size"]
        return (side, side)

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        return detector_input(decoded.image, self.config.input, self.config.detection)

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self.backend.infer(tensors)

    async def detect(self, images: list[ImageInput], options: DetectOptions, *, attention: bool = False,
                     times: StageTimes | None = None, **submit: object) -> list[DetectionResult]:
        """Detections for each image, in request order."""
        times = times or StageTimes()
        ran = await self.infer_images(images, times, **submit)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*[loop.run_in_executor(self.decode_executor, self.postprocess, out, p, options, attention)
                                         for p, out in ran])
        times.postprocess += time.perf_counter() - start
        self.on_stage(self.config.name, "postprocess", time.perf_counter() - start)
        return list(results)

    def postprocess(self, outputs: dict[str, np.ndarray], prepared: Prepared, options: DetectOptions, attention: bool) -> DetectionResult:
        """Threshold, cap, map to original pixels and encode masks for one image."""
        width, height = prepared.decoded.original_size
        keep = np.flatnonzero(outputs["scores"] >= options.score_threshold)[: options.max_detections]
        boxes = to_original_pixels(outputs["boxes"][keep], prepared.tensor.shape, (width, height))
        masks = outputs.get("masks")
        detections = []
        for row, i in enumerate(keep):
            label = int(outputs["labels"][i])
            mask = encode_mask(masks[i, 0], (width, height), options.masks) if masks is not None else None
            detections.append(Detection([round(float(v), 2) for v in boxes[row]], label,
                                        self._category(label), float(outputs["scores"][i]), mask))
        layers = self.layer_weights(outputs) if attention else None
        return DetectionResult(prepared.filename, width, height, detections, layers)

    def _category(self, label: int) -> str:  # noqa: D401
        categories = self.config.categories
        return categories[label] if 0 <= label < len(categories) else str(label)


def to_original_pixels(boxes: np.ndarray, input_shape: tuple[int, ...], original: tuple[int, int]) -> np.ndarray:
    """Boxes [K, 4] in model-input pixels (input [3, H, W]) -> original (width, height) pixels, clipped."""
    sx, sy = original[0] / input_shape[2], original[1] / input_shape[1]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, original[0])
    out[:, 1::2] = out[:, 1::2].clip(0, original[1])
    return out
