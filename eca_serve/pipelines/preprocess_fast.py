"""The fast classifier preprocessing: fewer passes over the pixels, near the same answers.

The reference (`preprocess_classification`) repeats torchvision's PIL transform: a horizontal
resampling boxed to the crop's columns, a vertical one over every row, a crop copy, then ``ToTensor``
+ ``Normalize`` as four numpy passes (transpose copy, divide, subtract, divide). The fast mode:

* one ``Image.resize(crop, box=...)`` call: both passes only compute the pixels that survive the
  crop (the reference must resample every row, see `_resize_and_crop`), no crop copy; with
  ``reducing_gap`` an image still more than ``REDUCING_GAP`` times larger than its target (a large
  PNG, which draft decoding cannot shrink) is first box-reduced by an integer factor, in C;
* normalisation stays the reference's (bit-identical for given 8-bit pixels): measured on the Zen 1
  box, a per-channel look-up table (0.9-1.1 ms for 224x224) and a fused multiply-add (0.40 ms)
  were no faster than numpy's four passes (0.42-0.63 ms), so only the resampling can differ (the
  vertical pass on a boxed window, and reduction averaging before filtering).

JPEG decoding is shared with the reference: the smallest DCT scale that keeps the resize target
(`decode_target`). Agreement with the reference is measured by ``bench/fast_path_agreement.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from eca_serve.errors import ConfigError
from eca_serve.pipelines.images import DecodedImage
from eca_serve.pipelines.preprocess import (
    _RESAMPLE,
    _center_crop_box,
    _normalisation,
    _resized_size,
    _rgb,
    preprocess_classification,
    to_chw_float,
)

if TYPE_CHECKING:
    from eca_serve.repository import InputSpec

MODES = ("fast", "reference")
# Pillow's documented trade-off: a gap of 3 is "indistinguishable from fair resampling in most cases";
# it acts only on images >= 2 * gap times their target (never after a JPEG draft, which leaves < 2).
REDUCING_GAP = 3.0


def preprocess_classification_fast(img: Image.Image | DecodedImage, spec: InputSpec) -> np.ndarray:
    """One classifier input from an RGB image, as `preprocess_classification` but cheaper.

    Args:
        img: RGB image (mode ``"RGB"``), or a `DecodedImage`.
        spec: The model's input spec (``layout="NCHW"``).

    Returns:
        float32 array [3, H, W], C-contiguous, normalised like the reference.
    """
    if spec.layout != "NCHW":
        raise ConfigError(f"preprocess_classification_fast needs an NCHW input spec, got {spec.layout}")
    image = _rgb(img)
    resized = _resized_size(image.size, spec)
    resample = _RESAMPLE[spec.interpolation]
    if spec.crop and spec.size is not None:
        crop = (spec.size[1], spec.size[0])
        box = _center_crop_box(resized, crop)
        if box[0] < 0 or box[1] < 0 or box[2] > resized[0] or box[3] > resized[1]:
            return preprocess_classification(image, spec)  # zero padding: rare, left to the reference
        sx, sy = image.size[0] / resized[0], image.size[1] / resized[1]
        source = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        pixels = image.resize(crop, resample, box=source, reducing_gap=REDUCING_GAP)
    elif resized != image.size:
        pixels = image.resize(resized, resample, reducing_gap=REDUCING_GAP)
    else:
        pixels = image
    return to_chw_float(pixels, *_normalisation(spec))


def check_mode(mode: str) -> str:
    """``mode`` if it is a preprocessing mode, else ConfigError."""
    if mode not in MODES:
        raise ConfigError(f"preprocessing must be one of {MODES}, got {mode!r}")
    return mode
