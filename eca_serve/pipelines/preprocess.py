"""Decoded RGB images -> model inputs (numpy float32), driven only by the model's `InputSpec`.

Classifiers (``layout="NCHW"``) follow torchvision's PIL eval transform
``Resize(resize) -> CenterCrop(size) -> ToTensor -> Normalize(mean, std)`` with Pillow and numpy
only (no torch in a serving process). Every filter runs on Pillow, with the horizontal pass
computing only the columns that survive the crop (``Image.resize(..., box=...)``: same source
coordinates, filter support and pass order as the full resize, hence the same 8-bit pixels as
torchvision's PIL path up to a rare 1-level difference from float rounding of the box). NOTE: torch's
vectorised uint8 kernel, used here before, resized a 600x400 photo to 384x256 in 0.8-1.0 ms against
Pillow's 1.4 ms (columns of the crop only), but it brought 670 MB of torch into the process and its
OpenMP workers stole ONNX Runtime's cores. ``ToTensor`` + ``Normalize`` repeat the reference's float32
operations, hence are bit-identical for a given 8-bit image.

How the spec's fields combine (torchvision semantics):

=======  =====  ====================================================================
resize   crop   result
=======  =====  ====================================================================
int      True   shorter side -> ``resize`` (aspect kept), then center crop ``size``
int      False  shorter side -> ``resize`` only (the output size varies)
None     True   center crop ``size`` of the image as decoded (zero-padded if smaller)
None     False  resize to exactly ``size`` (H, W) when given, else the image as decoded
=======  =====  ====================================================================
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image

from eca_serve.errors import ConfigError
from eca_serve.pipelines.images import DecodedImage

if TYPE_CHECKING:
    from eca_serve.repository import InputSpec

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
_Box = tuple[int, int, int, int]


def decode_target(spec: InputSpec, margin: float = 1.0) -> tuple[int, int] | None:
    """The (width, height) to pass as ``decode_image(target=...)`` for ``spec``; None = full size.

    JPEG draft decoding keeps at least this size, so the resize that follows still only shrinks.
    A crop without resize, and detectors (which resize inside the model), get full resolution.

    Args:
        spec: The model's input spec.
        margin: Factor (>= 1) on the size kept: 2 decodes one DCT scale larger, which halves the
            deviation from a full-resolution decode at some decode time.
    """
    if margin < 1:
        raise ConfigError(f"decode margin must be >= 1, got {margin}")
    if spec.layout != "NCHW":
        return None
    if spec.resize is not None:
        side = math.ceil(spec.resize * margin)
        return (side, side)
    if spec.size is not None and not spec.crop:
        return (math.ceil(spec.size[1] * margin), math.ceil(spec.size[0] * margin))
    return None


def preprocess_classification(img: Image.Image | DecodedImage, spec: InputSpec) -> np.ndarray:
    """One classifier input from an RGB image.

    Args:
        img: RGB image (mode ``"RGB"``), or a `DecodedImage`.
        spec: The model's input spec (``layout="NCHW"``).

    Returns:
        float32 array [3, H, W], C-contiguous, normalised with ``spec.mean``/``spec.std`` (or in
        [0, 1] when ``spec.normalized_in_model``).
    """
    if spec.layout != "NCHW":
        raise ConfigError(f"preprocess_classification needs an NCHW input spec, got {spec.layout}")
    image = _rgb(img)
    resized = _resized_size(image.size, spec)
    crop = (spec.size[1], spec.size[0]) if spec.crop and spec.size is not None else None
    resample = _RESAMPLE[spec.interpolation]
    if crop is not None:
        pixels = np.asarray(_resize_and_crop(image, resized, crop, resample))
    else:
        pixels = np.asarray(image.resize(resized, resample) if resized != image.size else image)
    return to_chw_float(pixels, *_normalisation(spec))


def preprocess_detection(img: Image.Image | DecodedImage, spec: InputSpec) -> np.ndarray:
    """One detector input: the whole image at its decoded size (the model resizes internally).

    Args:
        img: RGB image (mode ``"RGB"``), or a `DecodedImage`.
        spec: The model's input spec (``layout="CHW"``); mean/std are applied unless they are
            the identity or ``normalized_in_model`` is set.

    Returns:
        float32 array [3, h, w] where (w, h) is the decoded size, in [0, 1] for identity mean/std.
    """
    if spec.layout != "CHW":
        raise ConfigError(f"preprocess_detection needs a CHW input spec, got {spec.layout}")
    return to_chw_float(_rgb(img), *_normalisation(spec))


def original_scale(decoded: DecodedImage) -> tuple[float, float]:
    """(sx, sy) that map decoded-pixel x/y coordinates to the original upright image.

    Boxes: multiply by these and clip to ``decoded.original_size`` (`boxes_to_original` does
    both). Masks: resize from ``decoded.size`` to ``decoded.original_size``.
    """
    return (decoded.scale, decoded.scale)


def boxes_to_original(boxes: np.ndarray, decoded: DecodedImage) -> np.ndarray:
    """Boxes [K, 4] (x1, y1, x2, y2) in decoded pixels -> float32 [K, 4] in original pixels."""
    sx, sy = original_scale(decoded)
    width, height = decoded.original_size
    out = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def stack_batch(items: Sequence[np.ndarray]) -> np.ndarray:
    """[3, H, W] arrays of one size -> one C-contiguous float32 batch [N, 3, H, W]."""
    if not items:
        raise ConfigError("stack_batch needs at least one item")
    shapes = {tuple(item.shape) for item in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ConfigError(f"stack_batch needs [C, H, W] arrays of one shape, got {sorted(shapes)}")
    out = np.empty((len(items), *next(iter(shapes))), dtype=np.float32)
    for i, item in enumerate(items):
        out[i] = item
    return out


def to_chw_float(image: Image.Image | np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB uint8 image (or [H, W, 3] array) -> float32 [3, H, W] equal to ``Normalize(mean, std)(ToTensor()(image))``.

    The same float32 operations in the same order as torchvision (divide by 255, subtract the
    mean, divide by the std), hence bit-identical results.
    """
    chw = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))
    out = np.empty(chw.shape, dtype=np.float32)
    np.divide(chw, np.float32(255), out=out, dtype=np.float32)
    if any(m != 0 for m in mean):
        out -= np.asarray(mean, dtype=np.float32)[:, None, None]
    if any(s != 1 for s in std):
        out /= np.asarray(std, dtype=np.float32)[:, None, None]
    return out


def _normalisation(spec: InputSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if spec.normalized_in_model:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if any(s <= 0 for s in spec.std):
        raise ConfigError(f"input spec std must be > 0, got {spec.std}")
    return tuple(spec.mean), tuple(spec.std)


def _rgb(img: Image.Image | DecodedImage) -> Image.Image:
    image = img.image if isinstance(img, DecodedImage) else img
    if image.mode != "RGB":
        raise ConfigError(f"preprocessing needs an RGB image, got mode {image.mode!r}; use decode_image")
    return image


def _resized_size(size: tuple[int, int], spec: InputSpec) -> tuple[int, int]:
    """(width, height) after the spec's resize step, as torchvision computes it."""
    width, height = size
    if spec.resize is not None:
        short, long = min(width, height), max(width, height)
        new_short, new_long = spec.resize, int(spec.resize * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)
    if spec.size is not None and not spec.crop:
        return (spec.size[1], spec.size[0])
    return size


def _resize_and_crop(
    image: Image.Image, resized: tuple[int, int], crop: tuple[int, int], resample: Image.Resampling
) -> Image.Image:
    """``CenterCrop(crop)(Resize(resized)(image))``, resampling only the columns that survive.

    Pillow resizes horizontally then vertically, but runs a boxed resize that crops rows
    vertically first, which rounds the 8-bit intermediate differently; so the horizontal pass
    is boxed to the crop's columns only (identical pixels), the vertical pass runs over every row
    and the rows are cropped afterwards.
    """
    box = _center_crop_box(resized, crop)
    if resized == image.size:
        return image.crop(box)
    if box[0] < 0 or box[1] < 0 or box[2] > resized[0] or box[3] > resized[1]:
        return image.resize(resized, resample).crop(box)  # crop larger than the image: zero padding
    width, height = image.size
    sx = width / resized[0]
    columns = image.resize((crop[0], height), resample, box=(box[0] * sx, 0, box[2] * sx, height))
    rows = columns.resize((crop[0], resized[1]), resample)
    return rows.crop((0, box[1], crop[0], box[3]))


def _center_crop_box(size: tuple[int, int], crop: tuple[int, int]) -> _Box:
    """torchvision's center crop (pad with zeros first if smaller) as a PIL box; may exceed ``size``."""
    left, top = (_crop_offset(s, c) for s, c in zip(size, crop))
    return (left, top, left + crop[0], top + crop[1])


def _crop_offset(size: int, crop: int) -> int:
    if crop > size:  # torchvision pads (crop - size) // 2 before, the rest after
        return -((crop - size) // 2)
    return int(round((size - crop) / 2.0))
