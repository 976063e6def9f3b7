"""Frozen per-model configuration: the single source of preprocessing and label truth."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pydantic import AliasChoices, Field, PositiveInt

from eca_serve.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing


class PreprocessConfig(Preprocessing):
    """A model's `Preprocessing` record with the ImageNet classifier defaults: a 224 px crop of a 256 px resize.

    Export writes these fields as they are into config.json's ``input`` (`eca_serve.repository.InputSpec`)
    and into the weights' metadata, under ``input_size`` there (the name older weights carry).
    """

    size: tuple[PositiveInt, PositiveInt] = Field((224, 224), validation_alias=AliasChoices("input_size", "size"),
                                  serialization_alias="input_size", description="(H, W) the model sees")
    resize: PositiveInt | None = 256
    crop: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def input_size(self) -> tuple[int, int]:
        """``size``: (H, W) of the tensor the model sees."""
        return self.size


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
        return {**dataclasses.asdict(self), "preprocess": self.preprocess.model_dump(mode="json", by_alias=True)}

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)
