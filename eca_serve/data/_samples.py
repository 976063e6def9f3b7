"""Samples of the shapes dataset: one classification image or one detection scene per (seed, index).

numpy and Pillow only; `eca_serve.data.shapes` wraps them as torch datasets, `eca_serve.data._files`
writes them to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from eca_serve.data._draw import (
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

NUM_CLASSES = len(SHAPE_CLASSES)
_MAIN_SIDE_FRACTION = (0.35, 0.8)  # diameter of the dominant shape / image side
_DISTRACTOR_PROBABILITY = 0.5
MIN_CLASSIFY_SIDE = 16
_MIN_SCENE_SIDE = 32

RngLike = np.random.Generator | int | Sequence[int]


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
    return np.random.default_rng([check_count(seed, "seed"), check_count(index, "index")])


def _as_rng(rng_or_seed: RngLike) -> np.random.Generator:
    if isinstance(rng_or_seed, np.random.Generator):
        return rng_or_seed
    try:
        return np.random.default_rng(rng_or_seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"expected a numpy Generator or a non-negative seed, got {rng_or_seed!r}") from exc


def check_side(size: int, minimum: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < minimum:
        raise ConfigError(f"image side must be an integer >= {minimum}, got {size!r}")
    return int(size)


def scene_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, tuple | list):
        if len(size) != 2:
            raise ConfigError(f"scene size must be an int or (height, width), got {size!r}")
        return check_side(size[0], _MIN_SCENE_SIDE), check_side(size[1], _MIN_SCENE_SIDE)
    side = check_side(size, _MIN_SCENE_SIDE)
    return side, side


def check_count(value: int, name: str) -> int:
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
    side = check_side(size, MIN_CLASSIFY_SIDE)
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
    height, width = scene_hw(size)
    max_objects = check_count(max_objects, "max_objects")
    rng = _as_rng(rng_or_seed)
    drawn = int(rng.integers(max_objects + 1))
    count = drawn if num_objects is None else check_count(num_objects, "num_objects")
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


def classification_item(seed: int, index: int, size: int) -> tuple[Image.Image, int]:
    """Item ``index`` of the classification view of ``seed``: label ``index % 8``."""
    return make_classification_sample(sample_rng(seed, index), size, label=index % NUM_CLASSES)
