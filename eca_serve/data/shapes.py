"""Seeded procedural dataset of coloured shapes, for training small default models offline.

Two views share one generator of textured backgrounds and rotated, coloured shapes:

* classification: one dominant shape per image, label in ``0 .. 7`` (index into ``SHAPE_CLASSES``);
* detection: scenes of 0 to ``max_objects`` overlapping shapes with instance masks, boxes and
  1-based category ids (0 is the background, as torchvision detection models expect).

Determinism: sample ``index`` of ``seed`` is drawn from ``sample_rng(seed, index)`` alone, so any
sample can be rebuilt by itself and the same ``(seed, index)`` gives the same bytes. The datasets
and exporters give classification item ``index`` the label ``index % 8`` (balanced classes).

This module holds the torch datasets and the public names; samples are drawn in ``_samples``
(numpy, Pillow), written to disk in ``_files``, painted in ``_draw``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from eca_serve.data._draw import MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS, SHAPE_CLASSES
from eca_serve.data._files import IMAGEFOLDER_CLASSES, coco_categories, generate, write_coco, write_imagefolder
from eca_serve.data._samples import (
    MIN_CLASSIFY_SIDE, NUM_CLASSES, Scene, check_count, check_side, classification_item, make_classification_sample,
    make_scene, sample_rng, scene_hw,
)

__all__ = [
    "IMAGEFOLDER_CLASSES",
    "MIN_VISIBLE_FRACTION",
    "MIN_VISIBLE_PIXELS",
    "NUM_CLASSES",
    "SHAPE_CLASSES",
    "Scene",
    "ShapesClassification",
    "ShapesDetection",
    "coco_categories",
    "generate",
    "image_to_tensor",
    "make_classification_sample",
    "make_scene",
    "sample_rng",
    "write_coco",
    "write_imagefolder",
]

DetectionTarget = dict[str, Tensor]


def image_to_tensor(image: Image.Image) -> Tensor:
    """An RGB image as a [3, H, W] float32 tensor in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class _GeneratedDataset(Dataset):
    """Common length, seed and index checks of the on-the-fly datasets."""

    def __init__(self, seed: int, length: int) -> None:
        sample_rng(seed, 0)  # validates the seed
        self.seed = int(seed)
        self.length = check_count(length, "length")

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} samples")
        return int(index)


class ShapesClassification(_GeneratedDataset):
    """Classification view generated on the fly; item ``i`` has label ``i % 8``.

    Items are ``(image, label)``: by default image is a [3, S, S] float32 tensor in [0, 1], else
    ``transform(PIL RGB image)``; label is an int in ``0 .. 7``.

    Args:
        seed: Dataset seed (>= 0).
        length: Number of items.
        size: Image side S.
        transform: Optional callable applied to the PIL image instead of the tensor conversion.
    """

    classes: tuple[str, ...] = SHAPE_CLASSES

    def __init__(
        self, seed: int, length: int, size: int = 64, transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        super().__init__(seed, length)
        self.size = check_side(size, MIN_CLASSIFY_SIDE)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = classification_item(self.seed, self._check_index(index), self.size)
        return (self.transform(image) if self.transform else image_to_tensor(image)), label


class ShapesDetection(_GeneratedDataset):
    """Detection view generated on the fly, in the format of torchvision detection models.

    Items are ``(image, target)``: image [3, H, W] float32 in [0, 1]; target ``boxes`` [N, 4]
    float32 xyxy, ``labels`` [N] int64 in ``1 .. 8``, ``masks`` [N, H, W] uint8.

    Args:
        seed: Dataset seed (>= 0).
        length: Number of items.
        size: Side S or (H, W).
        max_objects: Most objects per scene.
        transform: Optional callable ``(image, target) -> (image, target)`` applied to the tensors.
    """

    classes: tuple[str, ...] = SHAPE_CLASSES

    def __init__(
        self,
        seed: int,
        length: int,
        size: int | tuple[int, int] = 128,
        max_objects: int = 8,
        transform: Callable[[Tensor, DetectionTarget], tuple[Tensor, DetectionTarget]] | None = None,
    ) -> None:
        super().__init__(seed, length)
        self.size = scene_hw(size)
        self.max_objects = check_count(max_objects, "max_objects")
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Tensor, DetectionTarget]:
        scene = make_scene(sample_rng(self.seed, self._check_index(index)), self.size, self.max_objects)
        target = {
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.labels),
            "masks": torch.from_numpy(scene.masks),
        }
        image = image_to_tensor(scene.image)
        return self.transform(image, target) if self.transform else (image, target)
