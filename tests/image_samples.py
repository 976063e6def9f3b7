"""Encoded test images made here with Pillow, the input specs they are preprocessed with, and decode helpers."""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from eca_serve.repository import InputSpec
from eca_serve.pipelines.images import DecodedImage, DecodeLimits, decode_image

LIMITS = DecodeLimits()
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ONE_LEVEL = 1 / 255 / min(STD) + 1e-6  # one 8-bit step after normalisation: 0.0175
# Documented deviation of a JPEG draft decode (DCT downscaling) from a full decode + the reference transform.
DRAFT_MEAN_TOL, DRAFT_MAX_TOL = 0.02, 1.0
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def classifier_spec(interpolation: str = "bilinear", **kw) -> InputSpec:
    fields = dict(layout="NCHW", size=(224, 224), resize=256, crop=True, interpolation=interpolation,
                  mean=MEAN, std=STD)
    return InputSpec(**{**fields, **kw})


DETECTOR_SPEC = InputSpec(layout="CHW", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@lru_cache(maxsize=None)
def photo_like(width: int, height: int, seed: int = 0, gray: bool = False) -> Image.Image:
    """Smooth colour gradients + random ellipses/rectangles + sensor-like noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / width, y / height
    base = np.stack([120 + 90 * np.sin(2.3 * u + 1.7 * v + p) for p in rng.uniform(0, 6, 3)], -1)
    im = Image.fromarray(np.clip(base + 30 * np.cos(9 * u * v)[..., None], 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(0.05, 0.4) * width, y0 + rng.uniform(0.05, 0.4) * height
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    noisy = np.asarray(im).astype(np.float32) + rng.normal(0, 4, (height, width, 3))
    im = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return im.convert("L").convert("RGB") if gray else im


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def decode(data: bytes, **kw) -> DecodedImage:
    return decode_image(data, limits=kw.pop("limits", LIMITS), **kw)


def pixel(decoded: DecodedImage, x: int, y: int) -> tuple[int, ...]:
    return decoded.image.getpixel((x, y))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to declare width x height (CRC recomputed)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)
