"""Fast classifier preprocessing against the reference: same shapes, pixels within a bound, same top-1.

Real photographs (scikit-image's samples) as JPEG, crops and rescales of them, and large PNGs (the only
inputs where ``reducing_gap`` acts); top-1 on the shipped Shapes classifier through ONNX Runtime on
held-out generated images. The full-size measurement (a few hundred images, ECA-MobileNetV2 too) is
``bench/fast_path_agreement.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eca_serve.batching import BatchPolicy
from eca_serve.data._samples import classification_item
from eca_serve.errors import ConfigError
from eca_serve.pipelines.classification import ClassificationPipeline
from eca_serve.runtime import stack_outputs
from eca_serve.pipelines.images import DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import (
    decode_target,
    preprocess_classification,
    stack_batch,
)
from eca_serve.pipelines.preprocess_fast import (
    check_mode,
    preprocess_classification_fast,
)
from eca_serve.repository import read_config
from eca_serve.runtime import BackendOptions, create_backend
from tests.image_samples import ONE_LEVEL, classifier_spec

SHAPES = Path(__file__).resolve().parents[1] / "models" / "shapes_classifier" / "1"


def _encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _photos() -> dict[str, bytes]:
    from skimage import data

    out = {}
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        out[name] = _encode(image)
        out[f"{name}_crop"] = _encode(image.crop((10, 20, 310, 290)))
        out[f"{name}_up"] = _encode(image.resize((1100, 1100 * image.height // image.width)))
        out[f"{name}_png"] = _encode(image.resize((2000, 2000 * image.height // image.width)), "PNG")
    return out


def _pair(data: bytes, spec) -> tuple[np.ndarray, np.ndarray]:
    decoded = decode_image(data, limits=DecodeLimits(), target=decode_target(spec))
    return preprocess_classification(decoded, spec), preprocess_classification_fast(decoded, spec)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_fast_matches_the_reference_within_two_levels(interpolation: str) -> None:
    spec = classifier_spec(interpolation)
    identical = 0
    for name, data in _photos().items():
        ref, fast = _pair(data, spec)
        assert fast.shape == ref.shape == (3, 224, 224) and fast.dtype == np.float32 and fast.flags.c_contiguous
        levels = np.abs(fast - ref) / ONE_LEVEL
        assert levels.max() <= 2.0 + 1e-3, name
        assert levels.mean() <= 0.25, name
        identical += int(levels.max() == 0)
    assert identical >= 12  # only images >= 6x their target (reducing_gap) may differ at all


def test_fast_without_crop_resizes_like_the_reference() -> None:
    spec = classifier_spec(crop=False, resize=None, size=(160, 200))
    ref, fast = _pair(_photos()["coffee"], spec)
    assert fast.shape == ref.shape == (3, 160, 200)
    assert np.abs(fast - ref).max() <= 2 * ONE_LEVEL


def test_fast_pads_a_crop_larger_than_the_image_as_the_reference() -> None:
    spec = classifier_spec(resize=None)  # crop 224 of the image as decoded: padding for a small one
    small = _encode(Image.new("RGB", (100, 80), (200, 30, 30)))
    ref, fast = _pair(small, spec)
    np.testing.assert_array_equal(fast, ref)


def test_same_top1_on_held_out_shapes_images() -> None:
    config = read_config(SHAPES)
    backend = create_backend(SHAPES, config, BackendOptions("onnxruntime", "cpu", threads=1))
    refs, fasts = [], []
    for index in range(48):  # seed 7: not the training/validation seeds
        image, _ = classification_item(7, index, 64 + 17 * (index % 9))
        ref, fast = _pair(_encode(image.convert("RGB")), config.input)
        refs.append(ref)
        fasts.append(fast)
    top_ref = stack_outputs(backend.infer(stack_batch(refs)))["logits"].argmax(1)
    top_fast = stack_outputs(backend.infer(stack_batch(fasts)))["logits"].argmax(1)
    assert (top_ref == top_fast).mean() >= 0.995


def test_pipeline_mode_from_the_server_and_the_entry_wins() -> None:
    config = read_config(SHAPES)
    policy = BatchPolicy()

    def built(cfg, mode: str) -> str:
        return ClassificationPipeline(cfg, SHAPES, None, policy, DecodeLimits(), preprocessing=mode).preprocessing

    assert built(config, "reference") == "reference" and built(config, "fast") == "fast"
    pinned = config.model_copy(update={"input": config.input.model_copy(update={"preprocessing": "reference"})})
    assert built(pinned, "fast") == "reference"
    with pytest.raises(ConfigError, match="preprocessing must be one of"):
        check_mode("quick")
