"""The task contract every protocol speaks: ``run(inputs, params) -> list[Result]``.

A front end (v1 JSON, v2 HTTP, v2 gRPC, ``eca-serve predict``) turns its wire input into
`Inputs` and one task's parameter model, calls the task pipeline's ``run``, and turns the
`Result`\\ s back into wire output. Top-k, score thresholds, coordinate mapping and mask
encoding happen only in the pipelines, with one set of defaults per task.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, TypeVar, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eca_serve.errors import InvalidParameterError

MaskFormat = Literal["rle", "polygon", "none"]
P = TypeVar("P", bound="RunParams")


@dataclass(frozen=True)
class ImageInput:
    """One encoded image of a request.

    Attributes:
        data: The file's bytes.
        content_type: The client's declared media type (a hint; the bytes decide).
        filename: Client-side name, echoed in answers.
    """

    data: bytes
    content_type: str | None = None
    filename: str | None = None


# A preprocessed model input: float32 [3, H, W] (classifiers: normalised, H and W from the config;
# detectors: RGB in [0, 1], any size). Boxes of a detector are then in this tensor's pixels.
TensorInput = np.ndarray
Inputs = Union[list[ImageInput], list[TensorInput]]


class RunParams(BaseModel):
    """What every task takes besides its inputs."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)

    attention: bool = Field(False, description="also return every attention layer's weights")
    priority: int = Field(0, description="higher runs first; 0 is the default")
    timeout_s: float | None = Field(None, gt=0, description="queue + inference limit (default: the model's)")

    @classmethod
    def parse(cls: type[P], values: Mapping[str, Any]) -> P:
        """Parameters from a mapping that may hold other keys (query strings, v2 ``parameters``).

        Raises:
            InvalidParameterError: a known parameter of the wrong type or out of range (HTTP 422 in v1 and v2).
        """
        known = {k: v for k, v in values.items() if k in cls.model_fields and v is not None}
        try:
            return cls.model_validate(known)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidParameterError(f"invalid parameters: {problems}") from None


class ClassifyParams(RunParams):
    """Classification: the ``top_k`` most probable classes of each image (at most the model's class count)."""

    top_k: int | None = Field(None, ge=1, le=1000, description="classes per image (default: min(5, the model's classes))")


class DetectParams(RunParams):
    """Detection and instance segmentation."""

    score_threshold: float = Field(0.5, ge=0.0, le=1.0, description="drop detections scoring below this")
    max_detections: int = Field(100, ge=1, le=1000, description="most detections per image, best first")
    masks: MaskFormat = Field("rle", description="instance masks as COCO RLE, polygons, or not at all")


@dataclass
class StageTimes:
    """Seconds spent per stage for one request (summed over its images where stages repeat)."""

    preprocess: float = 0.0
    queue: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0


@dataclass
class LayerWeights:
    """One attention layer's weights for one image.

    Attributes:
        weights: float32 [C] in (0, 1); ResNeSt and DGC layers flattened from ``shape`` (row-major).
        shape: Per-image shape before flattening, when it is not [C].
    """

    name: str
    kind: str
    channels: int
    k_size: int | None
    weights: np.ndarray
    shape: list[int] | None = None


@dataclass
class Label:
    """One of the top-k classes."""

    index: int
    label: str
    score: float


@dataclass
class Classification:
    """The answer for one image of a classifier.

    Attributes:
        predictions: The top-k classes, most probable first.
        logits: float32 [K], the model's raw scores.
        probabilities: float64 [K], their softmax.
        attention: Per-layer weights when asked for, in config order.
    """

    filename: str | None
    predictions: list[Label]
    logits: np.ndarray
    probabilities: np.ndarray
    attention: list[LayerWeights] | None = None


@dataclass
class Detection:
    """One object: box (x1, y1, x2, y2) in the pixels of the image sent, class, score, optional mask.

    ``mask`` is COCO RLE ``{"size": [H, W], "counts": str}``, polygons ``[[x1, y1, ...], ...]`` or None.
    """

    box: list[float]
    label: int
    category: str
    score: float
    mask: Any = None


@dataclass
class DetectionResult:
    """The answer for one image of a detector: ``width`` x ``height`` is the image sent (or the tensor)."""

    filename: str | None
    width: int
    height: int
    detections: list[Detection] = field(default_factory=list)
    attention: list[LayerWeights] | None = None


Result = Union[Classification, DetectionResult]
