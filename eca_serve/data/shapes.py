"""Seeded procedural dataset of coloured shapes, for training small default models offline.

Two views share one generator of textured backgrounds and rotated, coloured shapes:

* classification: one dominant shape per image, label in ``0 .. 7`` (index into ``SHAPE_CLASSES``);
* detection: scenes of 0 to ``max_objects`` overlapping shapes with instance masks, boxes and
  1-based category ids (0 is the background, as torchvision detection models expect).

Determinism: sample ``index`` of ``seed`` is drawn from ``sample_rng(seed, index)`` alone, so any
sample can be rebuilt by itself and the same ``(seed, index)`` gives the same bytes. The datasets
and exporters give classification item ``index`` the label ``index % 8`` (balanced classes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from eca_serve.data._draw import (
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS,
    SHAPE_CLASSES,
    add_distractor,
    as_segment,
    finish,
    mask_boxes,
    occlude,
    paint,
    pick_colour,
    place_shapes,
    rasterize,
    sample_shape,
    scene_colours,
    textured_background,
)
from eca_serve.errors import ConfigError

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

NUM_CLASSES = len(SHAPE_CLASSES)
# ImageFolder sorts class folders by name; the numeric prefix makes that order SHAPE_CLASSES order.
IMAGEFOLDER_CLASSES: tuple[str, ...] = tuple(f"{i:02d}_{name}" for i, name in enumerate(SHAPE_CLASSES))
_MAIN_SIDE_FRACTION = (0.35, 0.8)  # diameter of the dominant shape / image side
_DISTRACTOR_PROBABILITY = 0.5
_MIN_CLASSIFY_SIDE = 16
_MIN_SCENE_SIDE = 32
# Noisy images barely compress: fast zlib halves the writing time for ~10 % larger files.
_PNG_COMPRESS_LEVEL = 1

RngLike = np.random.Generator | int | Sequence[int]
DetectionTarget = dict[str, Tensor]


@dataclass(eq=False)
class Scene:
    """One detection sample.

    Attributes:
        image: RGB image of size (W, H).
        boxes: [N, 4] float32 tight (x1, y1, x2, y2) boxes of the visible masks, x2/y2 exclusive.
        labels: [N] int64 category ids in ``1 .. 8`` (``SHAPE_CLASSES[label - 1]``).
        masks: [N, H, W] uint8 visible masks in {0, 1}, in drawing order; they never overlap.
    """

    image: Image.Image
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of dataset ``seed`` (both non-negative integers)."""
    return np.random.default_rng([_count(seed, "seed"), _count(index, "index")])


def _as_rng(rng_or_seed: RngLike) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    try:
        return np.random.default_rng(rng_or_seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"expected a numpy Generator or a non-negative seed, got {rng_or_seed!r}") from exc


def _side(size: int, minimum: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < minimum:
        raise ConfigError(f"image side must be an integer >= {minimum}, got {size!r}")
    return int(size)


def _scene_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple | list):
        if len(size) != 2:
            raise ConfigError(f"scene size must be an int or (height, width), got {size!r}")
        return _side(size[0], _MIN_SCENE_SIDE), _side(size[1], _MIN_SCENE_SIDE)
    side = _side(size, _MIN_SCENE_SIDE)
    return side, side


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def make_classification_sample(
    rng_or_seed: RngLike, size: int = 64, *, label: int | None = None
) -> tuple[Image.Image, int]:
    """One dominant shape on a textured background, sometimes with a small distractor shape.

    The dominant shape's diameter is 35-80 % of the side and at least 70 % of it stays visible; the
    optional distractor's radius is 25-45 % of the dominant one.

    Args:
        rng_or_seed: A numpy Generator (advanced in place), or a seed for ``np.random.default_rng``.
        size: Image side S (>= 16).
        label: Force this class (0-based); None draws one. The random draws are the same either
            way, so forcing the label that would have been drawn gives the same image.

    Returns:
        An RGB image of size (S, S) and its 0-based label.
    """
    side = _side(size, _MIN_CLASSIFY_SIDE)
    if label is not None and not (isinstance(label, int | np.integer) and 0 <= label < NUM_CLASSES):
        raise ConfigError(f"label must be in 0..{NUM_CLASSES - 1}, got {label!r}")
    rng = _as_rng(rng_or_seed)
    drawn = int(rng.integers(NUM_CLASSES))
    label = drawn if label is None else int(label)
    canvas, palette = textured_background(rng, side, side)
    radius = rng.uniform(*_MAIN_SIDE_FRACTION) * side / 2
    main = rasterize(sample_shape(rng, label, radius, side, side), side, side)
    colour = pick_colour(rng, palette[None])
    paint(canvas, main, colour)
    if rng.random() < _DISTRACTOR_PROBABILITY:
        add_distractor(rng, canvas, main, radius, np.stack([palette, as_segment(colour)]))
    return finish(rng, canvas), label


def make_scene(
    rng_or_seed: RngLike,
    size: int | tuple[int, int] = 128,
    max_objects: int = 8,
    *,
    num_objects: int | None = None,
) -> Scene:
    """A textured background with 0 to ``max_objects`` overlapping, partly occluded shapes.

    Shapes have diameters of 16-40 % of the shorter side. Each keeps at least 30 % of its area
    (and 20 pixels) visible; placements that would break this are retried and finally dropped, so
    a scene may hold fewer objects than requested.

    Args:
        rng_or_seed: A numpy Generator (advanced in place), or a seed for ``np.random.default_rng``.
        size: Side S, or (H, W); each side >= 32.
        max_objects: Largest object count drawn uniformly from ``0 .. max_objects``.
        num_objects: Request exactly this many objects instead (0 gives an empty scene).

    Returns:
        A ``Scene`` with N <= requested objects.
    """
    height, width = _scene_hw(size)
    max_objects = _count(max_objects, "max_objects")
    rng = _as_rng(rng_or_seed)
    drawn = int(rng.integers(max_objects + 1))
    count = drawn if num_objects is None else _count(num_objects, "num_objects")
    canvas, palette = textured_background(rng, height, width)
    specs, full = place_shapes(rng, count, height, width)
    for mask, colour in zip(full, scene_colours(rng, full, palette), strict=True):
        paint(canvas, mask, colour)
    image = finish(rng, canvas)
    masks = occlude(np.asarray(full, dtype=bool).reshape(len(full), height, width))
    return Scene(
        image=image,
        boxes=mask_boxes(masks),
        labels=np.array([spec.label + 1 for spec in specs], dtype=np.int64),
        masks=masks.astype(np.uint8),
    )


def _classification_item(seed: int, index: int, size: int) -> tuple[Image.Image, int]:
    return make_classification_sample(sample_rng(seed, index), size, label=index % NUM_CLASSES)


def image_to_tensor(image: Image.Image) -> Tensor:
    """An RGB image as a [3, H, W] float32 tensor in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)


class _GeneratedDataset(Dataset):
    """Common length, seed and index checks of the on-the-fly datasets."""

    def __init__(self, seed: int, length: int) -> None:
        sample_rng(seed, 0)  # validates the seed
        self.seed = int(seed)
        self.length = _count(length, "length")

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
        self.size = _side(size, _MIN_CLASSIFY_SIDE)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = _classification_item(self.seed, self._check_index(index), self.size)
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
        self.size = _scene_hw(size)
        self.max_objects = _count(max_objects, "max_objects")
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


def write_imagefolder(
    root: str | Path, count: int, seed: int, size: int = 64, *, split: str | None = None
) -> int:
    """Write ``count`` classification images as ``root[/split]/<NN_class>/<index:06d>.png``.

    Folder names are ``IMAGEFOLDER_CLASSES`` (e.g. ``00_circle``): their numeric prefix makes
    torchvision's ``ImageFolder`` index them in ``SHAPE_CLASSES`` order. Image ``index`` equals
    item ``index`` of ``ShapesClassification(seed, ...)``. Existing files of the same name are
    overwritten. Use different seeds for different splits.

    Args:
        root: Output directory.
        count: Total number of images (>= 8, so that every class folder holds one).
        seed: Dataset seed.
        size: Image side.
        split: Optional subdirectory such as ``"train"`` or ``"val"``.

    Returns:
        The number of images written.
    """
    count, size = _count(count, "count"), _side(size, _MIN_CLASSIFY_SIDE)
    sample_rng(seed, 0)  # validates the seed before anything is written
    if count < NUM_CLASSES:
        raise ConfigError(f"count must be >= {NUM_CLASSES} so that every class folder is non-empty")
    if split is not None and (not split or Path(split).name != split or split in (".", "..")):
        raise ConfigError(f"split must be a plain directory name, got {split!r}")
    out = Path(root) / split if split else Path(root)
    for folder in IMAGEFOLDER_CLASSES:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, label = _classification_item(seed, index, size)
        image.save(out / IMAGEFOLDER_CLASSES[label] / f"{index:06d}.png", compress_level=_PNG_COMPRESS_LEVEL)
    return count


def coco_categories() -> list[dict[str, Any]]:
    """COCO ``categories`` entries: ids 1..8 in ``SHAPE_CLASSES`` order, supercategory "shape"."""
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPE_CLASSES)]


def _coco_annotations(scene: Scene, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO instance annotations of ``scene``, with compressed-RLE segmentations."""
    from pycocotools import mask as mask_utils

    annotations = []
    for offset, (mask, box, label) in enumerate(zip(scene.masks, scene.boxes, scene.labels, strict=True)):
        rle = mask_utils.encode(np.asfortranarray(mask))
        x1, y1, x2, y2 = (float(v) for v in box)
        annotations.append({
            "id": first_id + offset,
            "image_id": image_id,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": float(mask.sum()),
            "iscrowd": 0,
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
        })
    return annotations


def write_coco(
    root: str | Path, count: int, seed: int, size: int | tuple[int, int] = 128, max_objects: int = 8
) -> int:
    """Write ``count`` scenes as ``root/images/<id:06d>.png`` plus ``root/annotations.json``.

    Image ids and annotation ids start at 1; image id ``index + 1`` is ``make_scene(sample_rng(seed,
    index), size, max_objects)``, i.e. item ``index`` of ``ShapesDetection``. Boxes are
    ``[x, y, w, h]`` of the visible mask, ``area`` its pixel count, segmentations compressed RLE.

    Args:
        root: Output directory.
        count: Number of scenes.
        seed: Dataset seed.
        size: Side S or (H, W).
        max_objects: Most objects per scene.

    Returns:
        The number of images written.
    """
    count, max_objects = _count(count, "count"), _count(max_objects, "max_objects")
    size = _scene_hw(size)
    sample_rng(seed, 0)  # validates the seed before anything is written
    images_dir = Path(root) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in range(count):
        scene = make_scene(sample_rng(seed, index), size, max_objects)
        image_id, file_name = index + 1, f"{index + 1:06d}.png"
        scene.image.save(images_dir / file_name, compress_level=_PNG_COMPRESS_LEVEL)
        width, height = scene.image.size
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        annotations += _coco_annotations(scene, image_id, first_id=len(annotations) + 1)
    dataset = {
        "info": {"description": f"eca-serve procedural shapes, seed {seed}", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(),
    }
    (Path(root) / "annotations.json").write_text(json.dumps(dataset))
    return count


def generate(
    out_dir: str | Path,
    *,
    kind: Literal["classify", "detect"],
    count: int,
    seed: int = 0,
    size: int | tuple[int, int] | None = None,
) -> int:
    """Write a shapes dataset: an ImageFolder tree (``classify``) or COCO instances (``detect``).

    Args:
        out_dir: Output directory.
        kind: ``"classify"`` (``write_imagefolder``) or ``"detect"`` (``write_coco``).
        count: Number of images.
        seed: Dataset seed.
        size: Image side (or (H, W) for ``detect``); None gives 64 for classify, 128 for detect.

    Returns:
        The number of images written.
    """
    if kind == "classify":
        if isinstance(size, tuple | list):
            raise ConfigError("classification images are square: give size as one integer")
        return write_imagefolder(out_dir, count, seed, 64 if size is None else size)
    if kind == "detect":
        return write_coco(out_dir, count, seed, 128 if size is None else size)
    raise ConfigError(f"kind must be 'classify' or 'detect', got {kind!r}")
