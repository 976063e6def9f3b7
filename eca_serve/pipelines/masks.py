"""Instance masks as COCO RLE (pycocotools) or polygons (scikit-image contours)."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

MASK_FORMATS = ("rle", "polygon", "none")


def to_original_size(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Probability map [h, w] resized (bilinear) to ``size`` = (width, height) if it differs."""
    if prob.shape[::-1] == tuple(size):
        return prob
    return np.asarray(Image.fromarray(prob.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def encode_rle(binary: np.ndarray) -> dict[str, Any]:
    """COCO RLE of a binary mask [H, W]: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_polygons(binary: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` of a binary mask [H, W] (outer contours at 0.5)."""
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(binary.astype(np.float32), 1)  # closes contours that touch the border
    polygons = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour - 1, tolerance)
        if len(contour) >= 3:
            polygons.append([round(float(v), 1) for yx in contour for v in (yx[1], yx[0])])
    return polygons


def encode_mask(prob: np.ndarray, size: tuple[int, int], fmt: str) -> Any:
    """One instance's probability map [h, w] at decoded size -> the requested format at ``size``."""
    if fmt == "none":
        return None
    binary = to_original_size(prob, size) > 0.5
    return encode_rle(binary) if fmt == "rle" else encode_polygons(binary)
