"""Detection and instance segmentation: boxes in the pixels of the image sent, masks as RLE/polygons/none."""

from __future__ import annotations

import asyncio

import numpy as np
from PIL import Image

from eca_serve.errors import ConfigError
from eca_serve.pipelines.base import ModelPipeline, Ran
from eca_serve.pipelines.contract import Detection, DetectionResult, DetectParams
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.masks import encode_mask
from eca_serve.pipelines.preprocess import preprocess_detection
from eca_serve.repository import DetectionSpec, InputSpec


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
    """Decode -> resize to the model's working size -> batch (same size only) -> detector -> original pixels."""

    params_type = DetectParams
    action = "detect"

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

    def infer_batch(self, tensors: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        return self.backend.infer(tensors)

    async def postprocess(self, ran: list[Ran], params: DetectParams) -> list[DetectionResult]:
        """Masks cost milliseconds per instance: they are encoded in the decode threads, off the event loop."""
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*[loop.run_in_executor(self.decode_executor, self.detect_one, r, params) for r in ran]))

    def detect_one(self, ran: Ran, params: DetectParams) -> DetectionResult:
        """Threshold, cap, map to the image's pixels and encode masks for one image."""
        outputs, (width, height) = ran.outputs, ran.size
        scores = np.asarray(outputs["scores"], np.float32)
        keep = np.flatnonzero(scores >= params.score_threshold)[: params.max_detections]
        boxes = to_original_pixels(np.asarray(outputs["boxes"])[keep], ran.input_shape, ran.size)
        masks = outputs.get("masks")
        detections = []
        for row, i in enumerate(keep):
            label = int(outputs["labels"][i])
            mask = encode_mask(masks[i, 0], (width, height), params.masks) if masks is not None else None
            detections.append(Detection([round(float(v), 2) for v in boxes[row]], label, self._category(label), float(scores[i]), mask))
        layers = self.layer_weights(outputs) if params.attention else None
        return DetectionResult(ran.filename, width, height, detections, layers)

    def _category(self, label: int) -> str:
        categories = self.config.categories
        return categories[label] if 0 <= label < len(categories) else str(label)


def to_original_pixels(boxes: np.ndarray, input_shape: tuple[int, ...], original: tuple[int, int]) -> np.ndarray:
    """Boxes [K, 4] in model-input pixels (input [3, H, W]) -> original (width, height) pixels, clipped."""
    sx, sy = original[0] / input_shape[2], original[1] / input_shape[1]
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, original[0])
    out[:, 1::2] = out[:, 1::2].clip(0, original[1])
    return out
