"""Mask encoding: the region-limited resize must give the pixels of resizing the whole map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from eca_serve.pipelines.masks import encode_mask, encode_polygons, encode_rle, mask_region, to_original_size


def instance_map(shape: tuple[int, int], box: tuple[int, int, int, int], seed: int) -> np.ndarray:
    """A Mask R-CNN-like probability map [h, w]: smooth values inside ``box`` (x0, y0, x1, y1), zero outside."""
    rng = np.random.default_rng(seed)
    prob = np.zeros(shape, dtype=np.float32)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    cy, cx = (y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2
    blob = 1 - ((yy - cy) / max(1, (y1 - y0) / 2)) ** 2 - ((xx - cx) / max(1, (x1 - x0) / 2)) ** 2
    prob[y0:y1, x0:x1] = np.clip(blob + rng.normal(0, 0.15, blob.shape), 0, 1)
    return prob


CASES = [  # (map shape (h, w), box in the map, original size (width, height))
    ((192, 192), (40, 50, 120, 140), (4000, 3000)),  # a 12-megapixel photo: large upscale
    ((192, 160), (0, 0, 60, 80), (333, 401)),  # box at the top-left border, odd factors
    ((120, 160), (100, 70, 160, 120), (640, 480)),  # box at the bottom-right border
    ((300, 400), (10, 20, 390, 290), (150, 110)),  # shrinking (the filter widens)
    ((64, 64), (20, 20, 44, 44), (64, 64)),  # same size: no resize
    ((96, 128), (30, 30, 31, 31), (1280, 960)),  # a one-pixel instance
]


def reference_binary(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The obvious implementation: resize the whole map, then threshold."""
    return to_original_size(prob, size) > 0.5


@pytest.mark.parametrize("shape,box,size", CASES)
def test_rle_equals_whole_map_resize(shape, box, size):
    for seed in range(3):
        prob = instance_map(shape, box, seed)
        expected = reference_binary(prob, size)
        got = encode_mask(prob, size, "rle")
        assert got == encode_rle(expected)
        decoded = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode()})
        assert decoded.shape == (size[1], size[0]) and np.array_equal(decoded.astype(bool), expected)


@pytest.mark.parametrize("shape,box,size", CASES)
def test_polygons_equal_whole_map_polygons(shape, box, size):
    prob = instance_map(shape, box, seed=7)
    assert encode_mask(prob, size, "polygon") == encode_polygons(reference_binary(prob, size))


def rasterise(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """Polygons drawn back (pixel centres inside or on an edge are set) as a bool mask [H, W]."""
    canvas = Image.new("1", size, 0)
    draw = ImageDraw.Draw(canvas)
    for flat in polygons:
        draw.polygon(flat, fill=1, outline=1)
    return np.asarray(canvas)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def without_holes(binary: np.ndarray) -> np.ndarray:
    """``binary`` with every unset region that does not reach the border set (polygons have no holes)."""
    import cv2

    outside = np.pad(binary, 1).astype(np.uint8)
    cv2.floodFill(outside, None, (0, 0), 2)  # 4-connected from the padding: the unset pixels outside
    return outside[1:-1, 1:-1] != 2


@pytest.mark.parametrize("shape,box,size", CASES)
def test_polygons_cover_the_mask(shape, box, size):
    for seed in range(2):
        prob = instance_map(shape, box, seed)
        expected = reference_binary(prob, size)
        polygons = encode_mask(prob, size, "polygon")
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
        assert iou(rasterise(polygons, size), without_holes(expected)) > 0.9


def covered(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    """Exact geometry for small masks [H, W]: is each pixel centre inside or on the edge of a polygon?"""
    import cv2

    out = np.zeros(size[::-1], dtype=bool)
    for flat in polygons:
        contour = np.asarray(flat, np.float32).reshape(-1, 1, 2)
        for y, x in np.ndindex(*out.shape):
            out[y, x] |= cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0
    return out


@pytest.mark.parametrize("pixels, extra", [
    ([(3, 2)], 0),  # a single pixel
    ([(2, 5), (3, 5), (4, 5), (5, 5)], 0),  # a one-pixel line
    ([(1, 1), (2, 1), (1, 2), (2, 2), (6, 6)], 0),  # a square through pixel centres and a pixel
    ([(x, 4) for x in range(2, 8)] + [(7, y) for y in range(0, 4)], 0),  # a thin L: edges through its pixels
    ([(x, x) for x in range(1, 6)], 20),  # a diagonal line: its bounding rectangle
])
def test_thin_masks_get_polygons_covering_every_pixel(pixels, extra):
    binary = np.zeros((10, 12), dtype=bool)
    for x, y in pixels:
        binary[y, x] = True
    drawn = covered(encode_polygons(binary), (12, 10))
    assert drawn[binary].all() and (drawn & ~binary).sum() == extra


def test_polygon_vertices_are_in_image_pixels():
    binary = np.zeros((40, 50), dtype=bool)
    binary[10:20, 5:25] = True  # x 5..24, y 10..19
    (polygon,) = encode_polygons(binary[8:22, 3:27], offset=(3, 8))
    xs, ys = polygon[0::2], polygon[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (5, 24, 10, 19)
    assert np.array_equal(rasterise([polygon], (50, 40)), binary)


def test_region_holds_every_set_pixel():
    prob = instance_map((192, 192), (40, 50, 120, 140), seed=1)
    x0, y0, x1, y1 = mask_region(prob, (4000, 3000))
    full = reference_binary(prob, (4000, 3000))
    assert full.sum() > 0 and full[y0:y1, x0:x1].sum() == full.sum()
    assert (x1 - x0) * (y1 - y0) < 0.5 * full.size  # and it is much smaller than the image


def test_empty_mask():
    prob = np.full((50, 60), 0.4, dtype=np.float32)
    assert mask_region(prob, (600, 500)) is None
    rle = encode_mask(prob, (600, 500), "rle")
    assert rle == encode_rle(np.zeros((500, 600), dtype=bool)) and rle["size"] == [500, 600]
    assert encode_mask(prob, (600, 500), "polygon") == []
    assert encode_mask(prob, (600, 500), "none") is None
