"""Detection and instance segmentation: boxes in the pixels of the image sent, masks as RLE/polygons/none."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline
from eca_serve.pipelines.contract import Detection, DetectionResult, DetectParams
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.masks import encode_mask
from eca_serve.pipelines.preprocess import preprocess_detection
from eca_serve.pipelines.task import Column, OutputAsk, Ran, Task, TensorSpec, with_attention
from eca_serve.repository import DetectionSpec, EntryConfig, InputSpec

MASKS = "masks"


def detector_input(image: Image.Image, spec: InputSpec, detection: DetectionSpec) -> np.ndarray:
    """RGB image -> float32 [3, H, W] already at the model's working size.

    NOTE: resizing here (Pillow, antialiased) instead of inside the model keeps TorchScript and ONNX
    Runtime identical (their internal upsampling rounds sizes differently) and makes large photos cheap.
    """
    size = detection.input_size(*image.size)
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return preprocess_detection(image, spec)


class DetectionPipeline(ModelPipeline):
    """Decode -> resize to the model's working size -> batch (same size only) -> detector graph."""

    def decode_target(self) -> tuple[int, int] | None:
        side = self._detection.min_size
        return (side, side)

    def preprocess(self, decoded: DecodedImage) -> np.ndarray:
        return detector_input(decoded.image, self.config.input, self._detection)

    @property
    def _detection(self) -> DetectionSpec:
        if self.config.detection is None:  # export writes it for every detector; a hand-made config may not
            raise ConfigError(f"{self.config.name}/{self.config.version}: a detector's config.json needs a detection block")
        return self.config.detection


class DetectionItem(BaseModel):
    box: list[float] = Field(description="x1, y1, x2, y2 in original image pixels", examples=[[12.0, 30.5, 88.2, 101.0]])
    label: int = Field(examples=[3])
    category: str = Field(examples=["triangle"])
    score: float = Field(examples=[0.97])
    mask: Any = Field(None, description="COCO RLE {size: [H, W], counts} | polygons [[x1, y1, ...]] | null")


class DetectResult(BaseModel):
    filename: str | None = None
    width: int
    height: int
    detections: list[DetectionItem]


def detection_items(result: DetectionResult) -> list[DetectionItem]:
    return [DetectionItem(box=d.box, label=d.label, category=d.category, score=d.score, mask=d.mask) for d in result.detections]


class DetectionTask(Task):
    """Boxes in the pixels of the image sent; v2 detections of N images concatenated, ``batch_index`` says whose."""

    name = "detection"
    action = "detect"
    params_type = DetectParams
    result_type = DetectResult
    batched = False  # one output row per detection, not per image

    def required_outputs(self, config: EntryConfig) -> set[str]:
        return {"boxes", "labels", "scores"}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        return [TensorSpec("boxes", "FP32", (-1, 4)), TensorSpec("scores", "FP32", (-1,)),
                TensorSpec("labels", "INT64", (-1,)), TensorSpec("batch_index", "INT64", (-1,))]

    def v2_parameters(self, asked: list[OutputAsk]) -> dict[str, Any]:
        return {"masks": "rle" if any(a.name == MASKS for a in asked) else "none"}

    async def postprocess(self, ran: list[Ran], params: DetectParams, config: EntryConfig, executor: Executor | None) -> list[DetectionResult]:
        """Masks cost milliseconds per instance: they are encoded in the decode threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*[loop.run_in_executor(executor, self.result_of, r, params, config) for r in ran]))

    def result_of(self, ran: Ran, params: DetectParams, config: EntryConfig) -> DetectionResult:
        """Threshold, cap, map to the image's pixels and encode masks for one image."""
        outputs, (width, height) = ran.outputs, ran.size
        scores = np.asarray(outputs["scores"], np.float32)
        keep = np.flatnonzero(scores >= params.score_threshold)[: params.max_detections]
        boxes = to_original_pixels(np.asarray(outputs["boxes"])[keep], ran.input_shape, ran.size)
        masks = outputs.get(MASKS)
        detections = []
        for row, i in enumerate(keep):
            label = int(outputs["labels"][i])
            mask = encode_mask(masks[i, 0], (width, height), params.masks) if masks is not None else None
            detections.append(Detection([round(float(v), 2) for v in boxes[row]], label, _category(config, label), float(scores[i]), mask))
        return DetectionResult(ran.filename, width, height, detections, with_attention(config, ran, params))

    def columns(self, config: EntryConfig, results: list[DetectionResult]) -> dict[str, Column]:
        found = [(i, d) for i, r in enumerate(results) for d in r.detections]
        return {
            "boxes": np.array([d.box for _, d in found], np.float32).reshape(-1, 4),
            "scores": np.array([d.score for _, d in found], np.float32),
            "labels": np.array([d.label for _, d in found], np.int64),
            "batch_index": np.array([i for i, _ in found], np.int64),
            MASKS: [json.dumps(d.mask, separators=(",", ":")).encode() for _, d in found if d.mask is not None],
        }

    def v1_item(self, result: DetectionResult) -> DetectResult:
        return DetectResult(filename=result.filename, width=result.width, height=result.height, detections=detection_items(result))

    def attention_fields(self, result: DetectionResult) -> dict[str, list[DetectionItem]]:
        return {"detections": detection_items(result)}


class InstanceSegmentationTask(DetectionTask):
    """Detection plus a mask per instance: v2 ``masks`` BYTES [D] (COCO RLE JSON)."""

    name = "instance_segmentation"

    def required_outputs(self, config: EntryConfig) -> set[str]:
        return {*super().required_outputs(config), MASKS}

    def output_specs(self, config: EntryConfig) -> list[TensorSpec]:
        return [*super().output_specs(config), TensorSpec(MASKS, "BYTES", (-1,))]


def _category(config: EntryConfig, label: int) -> str:
    categories = config.categories
    return categories[label] if 0 <= label < len(categories) else str(label)


def to_original_pixels(boxes: np.ndarray, input_shape: tuple[int, ...], original: tuple[int, int]) -> np.ndarray:
    """Boxes [K, 4] in model-input pixels (input [3, H, W]) -> original (width, height) pixels, clipped."""
    sx, sy = original[0] / input_shape[2], original[1] / input_shape[1]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, original[0])
    out[:, 1::2] = out[:, 1::2].clip(0, original[1])
    return out
