"""Preprocessing against the reference transforms (torchvision's PIL path), on images made here with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from eca_serve.errors import ConfigError
from eca_serve.repository import InputSpec
from eca_serve.pipelines.preprocess import (
    decode_target, preprocess_classification, preprocess_detection, stack_batch, to_chw_float,
)
from tests.image_samples import (
    MEAN, STD, ONE_LEVEL, DRAFT_MEAN_TOL, DRAFT_MAX_TOL, DETECTOR_SPEC, classifier_spec, photo_like, encode, decode,
)


# --- preprocessing vs the reference transform --------------------------------------------------

def pillow_reference(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """torchvision's PIL eval transform spelled out with Pillow and numpy: the whole image resized
    (no box), torchvision's center crop (zero padding when too small), ToTensor + Normalize."""
    resize = spec.resize or (None if spec.crop else spec.size)
    resample = getattr(Image.Resampling, spec.interpolation.upper())
    if isinstance(resize, int):
        w, h = img.size
        short, long = min(w, h), max(w, h)
        size = (resize, int(resize * long / short)) if w <= h else (int(resize * long / short), resize)
        img = img.resize(size, resample)
    elif resize is not None:
        img = img.resize((resize[1], resize[0]), resample)
    pixels = np.asarray(img)
    if spec.crop:
        (ch, cw), (h, w) = spec.size, pixels.shape[:2]
        padded = np.zeros((max(h, ch), max(w, cw), 3), np.uint8)
        top, left = (max(ch - h, 0)) // 2, (max(cw - w, 0)) // 2
        padded[top:top + h, left:left + w] = pixels
        ph, pw = padded.shape[:2]
        y, x = int(round((ph - ch) / 2.0)), int(round((pw - cw) / 2.0))
        pixels = padded[y:y + ch, x:x + cw]
    out = pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (out - np.asarray(spec.mean, np.float32)[:, None, None]) / np.asarray(spec.std, np.float32)[:, None, None]


def torchvision_reference(img: Image.Image, spec: InputSpec) -> np.ndarray:
    T = pytest.importorskip("torchvision.transforms")  # the torch extra; not needed to serve

    mode = getattr(T.InterpolationMode, spec.interpolation.upper())
    resize = spec.resize or (None if spec.crop else spec.size)
    steps = [T.Resize(resize, interpolation=mode)] if resize else []
    steps += [T.CenterCrop(spec.size)] if spec.crop else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(spec.mean, spec.std)])(img).numpy()


REFERENCE_CASES = [  # (spec fields, image size)
    ({}, (640, 480)), ({}, (333, 517)), ({"interpolation": "bicubic"}, (517, 333)), ({"interpolation": "nearest"}, (300, 200)),
    ({"resize": None, "crop": True}, (150, 180)), ({"resize": None, "crop": False, "size": (160, 200)}, (333, 250)),
    ({"resize": 100, "crop": False}, (333, 250)),
]


@pytest.mark.parametrize("spec_kw, size", REFERENCE_CASES)
def test_the_pillow_reference_is_torchvision(spec_kw, size):
    img, spec = photo_like(*size, seed=5), classifier_spec(**spec_kw)
    ref, tv = pillow_reference(img, spec), torchvision_reference(img, spec)
    assert ref.shape == tv.shape and np.abs(ref - tv).max() < 1e-6


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize("width, height, gray", [
    (300, 200, False), (640, 480, False), (1920, 1080, False), (333, 517, False), (517, 333, True), (200, 100, False),
])
def test_classification_matches_the_reference(interpolation, width, height, gray):
    img, spec = photo_like(width, height, seed=width, gray=gray), classifier_spec(interpolation)
    ours, ref = preprocess_classification(img, spec), pillow_reference(img, spec)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32 and ours.flags.c_contiguous
    diff = np.abs(ours - ref)
    # The boxed resize may round a pixel one level differently from the whole-image resize, rarely.
    assert diff.max() <= ONE_LEVEL and (diff > 1e-6).mean() < 0.002


@pytest.mark.parametrize("spec_kw, size", REFERENCE_CASES[4:])
def test_other_spec_combinations_match_the_reference(spec_kw, size):
    img, spec = photo_like(*size, seed=7), classifier_spec(**spec_kw)
    ours, ref = preprocess_classification(img, spec), pillow_reference(img, spec)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= ONE_LEVEL


def test_to_tensor_and_normalize_are_bit_identical():
    T = pytest.importorskip("torchvision.transforms")

    img = photo_like(97, 61, seed=12)
    ref = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])(img).numpy()
    assert np.array_equal(to_chw_float(img, MEAN, STD), ref)


def test_normalized_in_model_gives_unit_range():
    img = photo_like(300, 300, seed=8)
    out = preprocess_classification(img, classifier_spec(normalized_in_model=True))
    assert out.min() >= 0 and out.max() <= 1 and out.max() > 0.5


@pytest.mark.parametrize("width, height", [(1920, 1080), (1080, 1920), (1024, 768)])
def test_draft_pipeline_stays_close_to_the_full_resolution_reference(width, height):
    data = encode(photo_like(width, height, seed=9), "JPEG", quality=85)
    spec = classifier_spec()
    ref = pillow_reference(decode(data).image, spec)
    drafted = decode(data, target=decode_target(spec))
    diff = np.abs(preprocess_classification(drafted, spec) - ref)
    assert drafted.scale > 1 and diff.mean() < DRAFT_MEAN_TOL and diff.max() < DRAFT_MAX_TOL


def test_detection_keeps_size_and_range():
    decoded = decode(encode(photo_like(333, 250, seed=10), "PNG"))
    out = preprocess_detection(decoded, DETECTOR_SPEC)
    assert out.shape == (3, 250, 333) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert np.array_equal(out, np.asarray(decoded.image).transpose(2, 0, 1).astype(np.float32) / 255)
    with pytest.raises(ConfigError):
        preprocess_detection(decoded, classifier_spec())
    with pytest.raises(ConfigError):
        preprocess_classification(decoded, DETECTOR_SPEC)


def test_stack_batch():
    items = [np.full((3, 4, 5), i, np.float32) for i in range(3)]
    batch = stack_batch(items)
    assert batch.shape == (3, 3, 4, 5) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert batch[:, 0, 0, 0].tolist() == [0, 1, 2]
    with pytest.raises(ConfigError):
        stack_batch([np.zeros((3, 4, 5), np.float32), np.zeros((3, 4, 6), np.float32)])
    with pytest.raises(ConfigError):
        stack_batch([])
