"""Geometry and drawing of the procedural shapes: outlines, masks, backgrounds, colours, layout.

Only numpy and Pillow. Every random choice comes from the ``np.random.Generator`` passed in, so a
caller that seeds the generator gets the same pixels back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "pentagon",
    "hexagon",
    "star",
    "cross",
    "ellipse",
)
ELLIPSE = SHAPE_CLASSES.index("ellipse")

_ROUND_VERTICES = 64
_STAR_INNER_RADIUS = 0.42
_CROSS_HALF_WIDTH = 0.3
# Minor/major ratio of ellipses: well below 1 so that an ellipse never passes for a circle.
_ELLIPSE_ASPECT = (0.4, 0.65)
_TEXTURES = ("flat", "gradient", "stripes", "checker", "blotches")
# RGB distance a shape's colour keeps from the background and from the shapes it touches.
_MIN_COLOUR_DISTANCE = 90.0
_COLOUR_CANDIDATES = 32
_MAX_NOISE_SIGMA = 10.0
# An instance keeps its label only if this much of it stays visible after occlusion.
MIN_VISIBLE_FRACTION = 0.3
MIN_VISIBLE_PIXELS = 20
# Relative to the dominant radius: small enough that the dominant shape is never in doubt.
_DISTRACTOR_SCALE = (0.25, 0.45)
_MAIN_MIN_VISIBLE = 0.7
_SCENE_SIDE_FRACTION = (0.16, 0.4)  # shape diameter / shorter scene side
_MAX_TRIES = 30


def _regular_polygon(n: int, start: float = -math.pi / 2) -> np.ndarray:
    """Unit-circumradius regular n-gon [n, 2] float64, first vertex at angle ``start``."""
    angles = start + 2.0 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    """Five-pointed star [10, 2]: outer and inner vertices alternate."""
    radii = np.where(np.arange(10) % 2 == 0, 1.0, _STAR_INNER_RADIUS)
    return _regular_polygon(10) * radii[:, None]


def _cross() -> np.ndarray:
    """Plus sign [12, 2] with arms reaching the unit circle's axes."""
    w = _CROSS_HALF_WIDTH
    corners = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1)]
    corners += [(-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    return np.asarray(corners, dtype=np.float64)


# Outlines at unit circumradius, indexed like SHAPE_CLASSES; the ellipse is squashed per instance.
_UNIT_OUTLINES: tuple[np.ndarray, ...] = (
    _regular_polygon(_ROUND_VERTICES),
    _regular_polygon(4, start=-math.pi / 4),
    _regular_polygon(3),
    _regular_polygon(5),
    _regular_polygon(6),
    _star(),
    _cross(),
    _regular_polygon(_ROUND_VERTICES),
)


@dataclass(frozen=True)
class ShapeSpec:
    """One shape instance in pixel coordinates.

    Attributes:
        label: 0-based index into ``SHAPE_CLASSES``.
        cx: Centre x in pixels.
        cy: Centre y in pixels.
        radius: Circumradius in pixels (half the major axis for an ellipse).
        angle: Rotation in radians.
        aspect: Minor/major axis ratio; below 1 only for ellipses.
    """

    label: int
    cx: float
    cy: float
    radius: float
    angle: float
    aspect: float = 1.0

    def vertices(self) -> np.ndarray:
        """Outline [K, 2] float64 of (x, y) pixel coordinates."""
        unit = _UNIT_OUTLINES[self.label] * np.array([1.0, self.aspect])
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        rotation = np.array([[cos, -sin], [sin, cos]])
        return unit @ rotation.T * self.radius + np.array([self.cx, self.cy])


def sample_shape(
    rng: np.random.Generator, label: int, radius: float, height: int, width: int
) -> ShapeSpec:
    """A shape of class ``label`` with random centre and rotation that lies inside the canvas.

    Args:
        rng: Source of randomness.
        label: 0-based class index.
        radius: Circumradius in pixels; at most half the shorter canvas side.
        height: Canvas height H.
        width: Canvas width W.
    """
    angle = float(rng.uniform(0.0, 2.0 * math.pi))
    aspect = float(rng.uniform(*_ELLIPSE_ASPECT)) if label == ELLIPSE else 1.0
    cx = float(rng.uniform(radius, width - radius))
    cy = float(rng.uniform(radius, height - radius))
    return ShapeSpec(label, cx, cy, radius, angle, aspect)


def rasterize(spec: ShapeSpec, height: int, width: int) -> np.ndarray:
    """Pixels covered by ``spec`` when drawn alone on an 'L' canvas: [H, W] bool."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(spec.vertices().ravel().tolist(), fill=255)
    return np.asarray(canvas) > 0


def occlude(masks: np.ndarray) -> np.ndarray:
    """Visible part of each mask when masks are drawn in order (later ones on top).

    Args:
        masks: Full masks [N, H, W] bool in drawing order.

    Returns:
        Visible masks [N, H, W] bool; no pixel belongs to two of them.
    """
    if len(masks) == 0:
        return masks.astype(bool, copy=True)
    covered_from = np.logical_or.accumulate(masks[::-1], axis=0)[::-1]  # [i] = any(masks[i:])
    later = np.concatenate([covered_from[1:], np.zeros_like(masks[:1])])
    return masks & ~later


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of non-empty masks.

    Args:
        masks: [N, H, W] bool or uint8, every mask with at least one pixel set.

    Returns:
        [N, 4] float32 (x1, y1, x2, y2) in pixel-edge coordinates: x2 and y2 are the last set column
        and row plus one, so ``x2 - x1`` is the width that ``pycocotools.mask.toBbox`` reports.
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def _texture_weights(kind: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Mixing weights [H, W] float32 in [0, 1] between the two background colours."""
    if kind == "flat":
        return np.zeros((height, width), dtype=np.float32)
    if kind == "blotches":
        cells = rng.uniform(0, 255, size=(int(rng.integers(2, 7)), int(rng.integers(2, 7))))
        smooth = Image.fromarray(cells.astype(np.uint8)).resize((width, height), Image.BICUBIC)
        return np.asarray(smooth, dtype=np.float32) / 255.0
    theta = rng.uniform(0.0, math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u = xs * math.cos(theta) + ys * math.sin(theta)
    if kind == "gradient":
        return (u - u.min()) / max(float(np.ptp(u)), 1.0)
    period = rng.uniform(0.08, 0.3) * min(height, width)
    if kind == "stripes":
        return (np.floor(u / period) % 2).astype(np.float32)
    v = ys * math.cos(theta) - xs * math.sin(theta)
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def textured_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A flat, gradient, striped, checkered or blotchy mix of two related random colours.

    Returns:
        canvas: [H, W, 3] float32 in [0, 255].
        palette: [2, 3] float32, the two colours mixed; every background pixel lies between them.
    """
    first = rng.uniform(0.0, 255.0, size=3)
    # A moderate second colour keeps the texture visible but weaker than a shape's edge.
    second = np.clip(first + rng.normal(0.0, 50.0, size=3), 0.0, 255.0)
    weights = _texture_weights(_TEXTURES[int(rng.integers(len(_TEXTURES)))], rng, height, width)
    canvas = first + weights[..., None] * (second - first)
    return canvas.astype(np.float32), np.stack([first, second]).astype(np.float32)


def _segment_distances(points: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Distance [K, S] from RGB points [K, 3] to colour segments [S, 2, 3] (a point is a = b)."""
    start, direction = segments[:, 0], segments[:, 1] - segments[:, 0]  # [S, 3]
    offsets = points[:, None, :] - start[None]  # [K, S, 3]
    length2 = np.maximum((direction**2).sum(-1), 1e-9)
    t = np.clip((offsets * direction[None]).sum(-1) / length2, 0.0, 1.0)  # [K, S]
    return np.linalg.norm(offsets - t[..., None] * direction[None], axis=-1)


def pick_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A random colour far from every colour segment in ``avoid``.

    Args:
        rng: Source of randomness; always consumes the same number of draws.
        avoid: [S, 2, 3] colour segments (a background palette, or a shape colour repeated).

    Returns:
        [3] float32: the first candidate at least ``_MIN_COLOUR_DISTANCE`` away, else the farthest.
    """
    candidates = rng.uniform(0.0, 255.0, size=(_COLOUR_CANDIDATES, 3))
    if len(avoid) == 0:
        return candidates[0].astype(np.float32)
    nearest = _segment_distances(candidates, np.asarray(avoid, dtype=np.float64)).min(axis=1)
    far_enough = np.flatnonzero(nearest >= _MIN_COLOUR_DISTANCE)
    best = far_enough[0] if far_enough.size else int(nearest.argmax())
    return candidates[best].astype(np.float32)


def as_segment(colour: np.ndarray) -> np.ndarray:
    """A single colour [3] as a degenerate segment [2, 3] for ``pick_colour``."""
    return np.stack([colour, colour])


def finish(rng: np.random.Generator, canvas: np.ndarray) -> Image.Image:
    """Add sensor-like Gaussian noise to ``canvas`` [H, W, 3] float32 and return an RGB image."""
    sigma = rng.uniform(0.0, _MAX_NOISE_SIGMA)
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(sigma)
    pixels = np.rint(np.clip(canvas + noise, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(pixels)


# Composition: where shapes go, and which colours keep them apart.


def paint(canvas: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    """Fill the pixels of ``mask`` [H, W] bool in ``canvas`` [H, W, 3] float32 with ``colour`` [3]."""
    canvas[mask] = colour


def add_distractor(
    rng: np.random.Generator, canvas: np.ndarray, main: np.ndarray, main_radius: float, avoid: np.ndarray
) -> None:
    """Paint a small shape that covers part of ``main`` [H, W] bool or lies beside it."""
    side = canvas.shape[0]
    overlap_wanted = bool(rng.random() < 0.5)
    label = int(rng.integers(len(SHAPE_CLASSES)))
    max_hidden = (1.0 - _MAIN_MIN_VISIBLE) * main.sum()
    for _ in range(_MAX_TRIES):
        radius = rng.uniform(*_DISTRACTOR_SCALE) * main_radius
        mask = rasterize(sample_shape(rng, label, radius, side, side), side, side)
        hidden = int((mask & main).sum())
        if (hidden > 0) == overlap_wanted and hidden <= max_hidden:
            paint(canvas, mask, pick_colour(rng, avoid))
            return


def _fits(mask: np.ndarray, visible: list[np.ndarray], areas: list[int]) -> bool:
    """Whether a new top shape ``mask`` leaves every earlier shape visible enough to keep its label."""
    if mask.sum() < MIN_VISIBLE_PIXELS:
        return False
    for seen, area in zip(visible, areas, strict=True):
        if (seen & ~mask).sum() < max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * area):
            return False
    return True


def place_shapes(
    rng: np.random.Generator, count: int, height: int, width: int
) -> tuple[list[ShapeSpec], list[np.ndarray]]:
    """Up to ``count`` shapes in drawing order with their full masks [H, W] bool.

    A candidate that would hide too much of an earlier shape is redrawn elsewhere, and skipped after
    ``_MAX_TRIES`` attempts, so every pixel of a drawn shape belongs to a labelled instance.
    """
    specs: list[ShapeSpec] = []
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    for _ in range(count):
        label = int(rng.integers(len(SHAPE_CLASSES)))  # drawn once so crowding does not skew the classes
        for _ in range(_MAX_TRIES):
            radius = rng.uniform(*_SCENE_SIDE_FRACTION) * min(height, width) / 2
            spec = sample_shape(rng, label, radius, height, width)
            mask = rasterize(spec, height, width)
            if _fits(mask, visible, [int(m.sum()) for m in full]):
                visible = [seen & ~mask for seen in visible] + [mask]
                specs.append(spec)
                full.append(mask)
                break
    return specs, full


def _touches(a: np.ndarray, b: np.ndarray, margin: int = 2) -> bool:
    """Whether two [4] xyxy boxes overlap once grown by ``margin`` pixels."""
    apart_x = a[2] + margin <= b[0] or b[2] + margin <= a[0]
    apart_y = a[3] + margin <= b[1] or b[3] + margin <= a[1]
    return not (apart_x or apart_y)


def scene_colours(rng: np.random.Generator, full: list[np.ndarray], palette: np.ndarray) -> list[np.ndarray]:
    """A colour [3] float32 per shape, far from the background and from earlier shapes it touches."""
    boxes = mask_boxes(np.asarray(full)) if full else np.zeros((0, 4), np.float32)
    colours: list[np.ndarray] = []
    for i, box in enumerate(boxes):
        near = [as_segment(colours[j]) for j in range(i) if _touches(box, boxes[j])]
        colours.append(pick_colour(rng, np.stack([palette, *near])))
    return colours
