"""Fast vs reference classifier preprocessing: top-1 agreement, attention deviation, ms saved per image size.

Run: ``nice python bench/fast_path_agreement.py [--images 300] [--repeats 3]``.

Held-out images: scikit-image's colour photographs, and seeded crops (40-100% of each side) and rescales
(0.5x-4x) of them, saved as JPEG (quality 70-95) or, one in five, PNG; for the shipped Shapes classifier
also generated Shapes images of an unseen seed. Models: the shipped ``models/shapes_classifier`` and
ECA-MobileNetV2 224 exported with ``torch.manual_seed(0)`` (weights are random, so its classes mean
nothing, but a top-1 that flips under a small input change would flip here too). Each image is run
through ONNX Runtime after the reference path (today's, `preprocess_classification`) and the fast path
(`preprocess_classification_fast`); the decode is shared (JPEG draft at the resize target). It prints
top-1 agreement, the largest attention-weight difference, the input difference in 8-bit levels, and
decode + preprocess milliseconds per mode by original image size (best of ``--repeats``).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eca_serve.pipelines.images import DecodeLimits, decode_image  # noqa: E402
from eca_serve.pipelines.preprocess import (  # noqa: E402
    decode_target,
    preprocess_classification,
    stack_batch,
)
from eca_serve.pipelines.preprocess_fast import preprocess_classification_fast  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
BUCKETS = ((0, 300, "< 300 px"), (300, 700, "300-700 px"), (700, 1500, "700-1500 px"), (1500, 10**6, ">= 1500 px"))


def photo_set(count: int, seed: int = 0) -> list[bytes]:
    """The photographs as JPEG, then seeded crops/rescales of them until ``count`` images."""
    from skimage import data

    rng = np.random.default_rng(seed)
    bases = [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]
    bases.append(Image.fromarray(data.stereo_motorcycle()[0]).convert("RGB"))
    out = [_encode(b, "JPEG", 90) for b in bases]
    while len(out) < count:
        base = bases[int(rng.integers(len(bases)))]
        w, h = base.size
        cw, ch = int(w * rng.uniform(0.4, 1.0)), int(h * rng.uniform(0.4, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        scale = float(np.exp(rng.uniform(np.log(0.5), np.log(4.0))))
        size = (max(32, int(cw * scale)), max(32, int(ch * scale)))
        image = base.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        png = rng.random() < 0.2
        out.append(_encode(image, "PNG" if png else "JPEG", int(rng.integers(70, 96))))
    return out


def shapes_set(count: int, seed: int = 7) -> list[bytes]:
    """Generated Shapes images of a seed unused in training, 64-400 px, as JPEG."""
    from eca_serve.data._samples import classification_item

    return [_encode(classification_item(seed, i, 64 + 21 * (i % 16))[0].convert("RGB"), "JPEG", 90) for i in range(count)]


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def export_mobilenet(root: Path) -> Path:
    """ECA-MobileNetV2 (224) with seeded weights, exported to ONNX under ``root``."""
    import torch

    from eca_serve import create_model
    from eca_serve.export import ExportOptions, export_model

    folder = root / "eca_mobilenet_v2" / "1"
    torch.manual_seed(0)
    export_model(create_model("eca_mobilenet_v2"), folder, ExportOptions(name="eca_mobilenet_v2", formats=("onnx",)))
    return folder


def compare(folder: Path, images: list[bytes], label: str) -> dict[str, Any]:
    """Top-1 agreement and attention/input deviation of fast vs reference on ``images``."""
    from eca_serve.repository import read_config
    from eca_serve.runtime import BackendOptions, create_backend

    config = read_config(folder)
    backend = create_backend(folder, config, BackendOptions("onnxruntime", "cpu", threads=2))
    spec, target, limits = config.input, decode_target(config.input), DecodeLimits()
    one_level = 1 / 255 / min(spec.std)
    same, attention, levels = 0, 0.0, []
    for data in images:
        decoded = decode_image(data, limits=limits, target=target)
        ref, fast = preprocess_classification(decoded, spec), preprocess_classification_fast(decoded, spec)
        levels.append(float(np.abs(fast - ref).max() / one_level))
        [out_ref], [out_fast] = backend.infer(stack_batch([ref])), backend.infer(stack_batch([fast]))
        same += int(out_ref["logits"].argmax() == out_fast["logits"].argmax())
        for key in out_ref:
            if key.startswith("attention/"):
                attention = max(attention, float(np.abs(out_ref[key] - out_fast[key]).max()))
    return {"model": label, "images": len(images), "top1": same / len(images), "attention_max": attention,
            "levels_max": max(levels), "identical": sum(v == 0 for v in levels)}


def timings(spec: Any, images: list[bytes], repeats: int) -> dict[str, dict[str, float]]:
    """Median ms of decode + preprocess per image by original size bucket, per mode (best of ``repeats``)."""
    target, limits = decode_target(spec), DecodeLimits()
    modes: dict[str, Callable] = {"reference": preprocess_classification, "fast": preprocess_classification_fast}
    per: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in modes}
    for data in images:
        side = min(Image.open(io.BytesIO(data)).size)
        bucket = next(name for lo, hi, name in BUCKETS if lo <= side < hi)
        for mode, fn in modes.items():  # interleaved per image: both see the same machine load
            best = min(_ms(fn, data, spec, target, limits) for _ in range(repeats))
            per[mode][bucket].append(best)
    return {mode: {b: statistics.median(v) for b, v in buckets.items()} for mode, buckets in per.items()}


def _ms(fn: Callable, data: bytes, spec: Any, target: Any, limits: DecodeLimits) -> float:
    """Milliseconds of one decode + ``fn`` preprocessing of ``data``."""
    start = time.perf_counter()
    fn(decode_image(data, limits=limits, target=target), spec)
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300, help="photographs (with crops/rescales) per model")
    parser.add_argument("--shapes", type=int, default=200, help="held-out Shapes images for the shipped classifier")
    parser.add_argument("--repeats", type=int, default=3, help="timing runs per image and mode (best kept)")
    args = parser.parse_args()
    from eca_serve.repository import read_config

    photos = photo_set(args.images)
    shapes = REPO / "models" / "shapes_classifier" / "1"
    with tempfile.TemporaryDirectory() as tmp:
        mnv2 = export_mobilenet(Path(tmp))
        rows = [compare(shapes, shapes_set(args.shapes), "shapes_classifier (Shapes, seed 7)"),
                compare(shapes, photos, "shapes_classifier (photos)"),
                compare(mnv2, photos, "eca_mobilenet_v2 224 (photos)")]
        spec224 = read_config(mnv2).input
    print(f"{'model':<38} {'images':>6} {'top-1 same':>10} {'attn max |d|':>12} {'input max lvl':>13} {'identical':>9}")
    for r in rows:
        print(f"{r['model']:<38} {r['images']:>6} {100 * r['top1']:>9.2f}% {r['attention_max']:>12.2e} "
              f"{r['levels_max']:>13.1f} {r['identical']:>9}")
    t = timings(spec224, photos, args.repeats)
    print("\ndecode + preprocess, ms per image (median of per-image best), 224 crop of 256 resize")
    print(f"{'original short side':<20} {'reference':>10} {'fast':>8} {'saved':>8}")
    for _, _, bucket in BUCKETS:
        if bucket in t["reference"]:
            ref, fast = t["reference"][bucket], t["fast"][bucket]
            print(f"{bucket:<20} {ref:>10.2f} {fast:>8.2f} {ref - fast:>8.2f}")


if __name__ == "__main__":
    main()
