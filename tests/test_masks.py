"""Mask encoding: the region-limited resize must give the pixels of resizing the whole map."""

from __future__ import annotations

import numpy as np
import pytest
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
