"""Frozen per-model configuration: the single source of preprocessing and label truth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB image becomes the model's input tensor.

    Attributes:
        input_size: (H, W) of the tensor the model sees (the crop for classifiers).
        resize: Shorter side after resizing, before the center crop; None = no resize.
        crop: Whether a center crop of ``input_size`` follows the resize.
        interpolation: Pillow/torchvision interpolation name ("bilinear" or "bicubic").
        mean: Per-channel mean of [0, 1] RGB values.
        std: Per-channel standard deviation.
    """

    input_size: tuple[int, int] = (224, 224)
    resize: int | None = 256
    crop: bool = True
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class ModelConfig:
    """What a built model is and how to feed it.

    Attributes:
        name: Registry name, e.g. ``eca_resnet50``.
        task: ``"classification"``, ``"detection"`` or ``"instance_segmentation"``.
        architecture: Family, e.g. ``resnet`` or ``mobilenet_v2``.
        num_classes: Output classes (detectors: including background).
        categories: One name per class index.
        attention: ``"eca"``, ``"se"`` or None.
        preprocess: Input pipeline.
        extra: Architecture arguments used to build the model (JSON-friendly).
    """

    name: str
    task: str
    architecture: str
    num_classes: int
    categories: tuple[str, ...]
    attention: str | None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    extra: dict[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (tuples become lists)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
