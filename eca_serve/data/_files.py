"""The shapes dataset on disk: an ImageFolder tree (classification) or COCO instances (detection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from eca_serve.data._draw import SHAPE_CLASSES
from eca_serve.data._samples import (
    MIN_CLASSIFY_SIDE, NUM_CLASSES, Scene, check_count, check_side, classification_item, make_scene, sample_rng, scene_hw,
)
from eca_serve.errors import ConfigError

# ImageFolder sorts class folders by name; the numeric prefix makes that order SHAPE_CLASSES order.
IMAGEFOLDER_CLASSES: tuple[str, ...] = tuple(f"{i:02d}_{name}" for i, name in enumerate(SHAPE_CLASSES))
# Noisy images barely compress: fast zlib halves the writing time for ~10 % larger files.
_PNG_COMPRESS_LEVEL = 1
OnImage = Callable[[int], None] | None


def write_imagefolder(
    root: str | Path, count: int, seed: int, size: int = 64, *, split: str | None = None, on_image: OnImage = None
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
        on_image: Called with the number of images written so far, after each one (progress).

    Returns:
        The number of images written.
    """
    count, size = check_count(count, "count"), check_side(size, MIN_CLASSIFY_SIDE)
    sample_rng(seed, 0)  # validates the seed before anything is written
    if count < NUM_CLASSES:
        raise ConfigError(f"count must be >= {NUM_CLASSES} so that every class folder is non-empty")
    if split is not None and (not split or Path(split).name != split or split in (".", "..")):
        raise ConfigError(f"split must be a plain directory name, got {split!r}")
    out = Path(root) / split if split else Path(root)
    for folder in IMAGEFOLDER_CLASSES:
        (out / folder).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, label = classification_item(seed, index, size)
        image.save(out / IMAGEFOLDER_CLASSES[label] / f"{index:06d}.png", compress_level=_PNG_COMPRESS_LEVEL)
        if on_image:
            on_image(index + 1)
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
    root: str | Path, count: int, seed: int, size: int | tuple[int, int] = 128, max_objects: int = 8,
    *, on_image: OnImage = None,
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
        on_image: Called with the number of images written so far, after each one (progress).

    Returns:
        The number of images written.
    """
    count, max_objects = check_count(count, "count"), check_count(max_objects, "max_objects")
    size = scene_hw(size)
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
        if on_image:
            on_image(index + 1)
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
    on_image: OnImage = None,
) -> int:
    """Write a shapes dataset: an ImageFolder tree (``classify``) or COCO instances (``detect``).

    Args:
        out_dir: Output directory.
        kind: ``"classify"`` (``write_imagefolder``) or ``"detect"`` (``write_coco``).
        count: Number of images.
        seed: Dataset seed.
        size: Image side (or (H, W) for ``detect``); None gives 64 for classify, 128 for detect.
        on_image: Called with the number of images written so far, after each one (progress).

    Returns:
        The number of images written.
    """
    if kind == "classify":
        if isinstance(size, tuple | list):
            raise ConfigError("classification images are square: give size as one integer")
        return write_imagefolder(out_dir, count, seed, 64 if size is None else size, on_image=on_image)
    if kind == "detect":
        return write_coco(out_dir, count, seed, 128 if size is None else size, on_image=on_image)
    raise ConfigError(f"kind must be 'classify' or 'detect', got {kind!r}")
