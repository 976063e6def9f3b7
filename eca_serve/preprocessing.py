"""The one preprocessing record: how an RGB image becomes a model's input tensor.

A model carries it (`eca_serve.models.PreprocessConfig`, this record with the ImageNet classifier
defaults), export stores it with the weights and in config.json (`eca_serve.repository.InputSpec`
extends it), and serving reads it back from there: the same fields under the same names at every
step, so none copies them by hand.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing(BaseModel):
    """Resize, crop and normalisation of an RGB image in [0, 1].

    Attributes:
        size: (H, W) of the tensor the model sees (the crop for classifiers); None = any size.
        resize: Shorter side after resizing, before the center crop; None = no resize.
        crop: Whether a center crop of ``size`` follows the resize.
        interpolation: Pillow/torchvision interpolation name.
        mean: Per-channel mean of [0, 1] RGB values.
        std: Per-channel standard deviation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[PositiveInt, PositiveInt] | None = Field(None, description="(H, W) fed to the model; None = any size")
    resize: PositiveInt | None = Field(None, description="shorter side before the center crop")
    crop: bool = False
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def record(self) -> dict[str, object]:
        """The record's fields alone (not those of a subclass), as keywords for another `Preprocessing`."""
        return {name: getattr(self, name) for name in Preprocessing.model_fields}
