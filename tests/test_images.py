"""Image decoding and preprocessing on real encoded images made here with Pillow (no mocks)."""

from __future__ import annotations

import io
import statistics
import struct
import threading
import time
import zlib
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from eca_serve.errors import (
    ConfigError, ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError,
)
from eca_serve.repository import InputSpec
from eca_serve.pipelines.images import DecodedImage, DecodeLimits, decode_image
from eca_serve.pipelines.preprocess import (
    boxes_to_original, decode_target, original_scale, preprocess_classification, preprocess_detection,
    stack_batch, to_chw_float,
)

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


# --- formats and pixel modes -------------------------------------------------------------------

@pytest.mark.parametrize("fmt, kw, exact", [
    ("JPEG", {"quality": 95}, False), ("PNG", {}, True), ("WEBP", {"lossless": True}, True),
    ("BMP", {}, True), ("TIFF", {}, True), ("GIF", {}, False),
])
def test_formats_decode_to_rgb_at_their_size(fmt, kw, exact):
    src = photo_like(120, 80, seed=3)
    out = decode(encode(src, fmt, **kw))
    assert (out.image.mode, out.size, out.original_size, out.format) == ("RGB", (120, 80), (120, 80), fmt)
    assert out.scale == 1.0
    diff = np.abs(np.asarray(out.image, np.int16) - np.asarray(src, np.int16))
    assert (diff.max() == 0) if exact else (diff.mean() < 12)  # JPEG is lossy, GIF has 256 colours


@pytest.mark.parametrize("fmt, kw", [("GIF", {}), ("WEBP", {"lossless": True})])
def test_animated_images_give_their_first_frame(fmt, kw):
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = decode(data)
    assert out.size == (40, 30) and pixel(out, 20, 15) == RED


def test_grayscale_becomes_equal_rgb_channels():
    gray = photo_like(64, 48, seed=4).convert("L")
    out = np.asarray(decode(encode(gray, "PNG")).image)
    assert out.shape == (48, 64, 3) and (out == np.asarray(gray)[..., None]).all()


def test_16bit_png_is_scaled_not_clipped():
    values = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    im16 = Image.fromarray(values)
    data = encode(im16, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(decode(data).image)
    assert (out == (values >> 8).astype(np.uint8)[..., None]).all() and out.max() > 200


@pytest.mark.parametrize("mode, values, expected", [
    ("I", np.array([[0, 256, 65535, 70000]], np.int32), [0, 1, 255, 255]),
    ("F", np.array([[0.0, 1.4, 254.6, 300.0]], np.float32), [0, 1, 255, 255]),
])
def test_32bit_grayscale_tiff(mode, values, expected):
    out = decode(encode(Image.fromarray(values, mode=mode), "TIFF"))
    assert np.asarray(out.image)[0, :, 0].tolist() == expected


def test_palette_transparency_is_composited_on_white():
    im = Image.new("P", (20, 10), 0)
    im.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)
    im.paste(1, (10, 0, 20, 10))
    out = decode(encode(im, "PNG", transparency=0))
    assert pixel(out, 2, 5) == (255, 255, 255) and pixel(out, 15, 5) == (200, 30, 40)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_alpha_is_composited_on_white(fmt):
    rgba = np.zeros((10, 30, 4), np.uint8)
    rgba[:, :, :3] = (0, 100, 200)
    rgba[:, 10:20, 3], rgba[:, 20:, 3] = 128, 255
    out = decode(encode(Image.fromarray(rgba), fmt, lossless=True))
    assert pixel(out, 5, 5) == (255, 255, 255) and pixel(out, 25, 5) == (0, 100, 200)
    assert all(abs(a - b) <= 1 for a, b in zip(pixel(out, 15, 5), (127, 177, 227)))


def test_grayscale_with_alpha():
    la = Image.merge("LA", (Image.new("L", (8, 8), 50), Image.new("L", (8, 8), 0)))
    la.paste((50, 255), (4, 0, 8, 8))
    out = decode(encode(la, "PNG"))
    assert pixel(out, 1, 1) == (255, 255, 255) and pixel(out, 6, 6) == (50, 50, 50)


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    out = decode(encode(cmyk, "JPEG", quality=95))
    assert out.image.mode == "RGB" and all(abs(a - b) <= 3 for a, b in zip(pixel(out, 16, 16), RED))


# --- EXIF orientation ---------------------------------------------------------------------------

def oriented_jpeg(orientation: int, size: tuple[int, int] = (64, 32)) -> bytes:
    """Stored image with a red top-left quarter, tagged with EXIF ``orientation``."""
    im = Image.new("RGB", size, (0, 0, 0))
    im.paste(RED, (0, 0, size[0] // 2, size[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize("orientation, size, red_corner", [
    (1, (64, 32), (0, 0)), (3, (64, 32), (1, 1)), (6, (32, 64), (1, 0)), (8, (32, 64), (0, 1)),
])
def test_exif_orientation_rotates_and_reports_upright_size(orientation, size, red_corner):
    out = decode(oriented_jpeg(orientation))
    assert out.size == out.original_size == size
    w, h = size
    x, y = (w - 4 if red_corner[0] else 4), (h - 4 if red_corner[1] else 4)
    assert pixel(out, x, y)[0] > 200 and pixel(out, w - 1 - x, h - 1 - y)[0] < 50


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(orientation):
    data = oriented_jpeg(orientation, (40, 24))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert np.array_equal(np.asarray(decode(data).image), np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize("mode, transparent", [("RGB", (10, 20, 30)), ("L", 10)])
def test_transparent_colour_of_rgb_and_gray_png_is_composited_on_white(mode, transparent):
    im = Image.new(mode, (8, 4), transparent)
    im.paste((200, 100, 50) if mode == "RGB" else 200, (4, 0, 8, 4))
    out = decode(encode(im, "PNG", transparency=transparent))
    assert pixel(out, 1, 1) == (255, 255, 255) and pixel(out, 6, 2) == ((200, 100, 50) if mode == "RGB" else (200,) * 3)


def test_draft_of_a_rotated_jpeg_reports_the_upright_original_size():
    out = decode(oriented_jpeg(6, (1600, 800)), target=(200, 200))
    assert (out.original_size, out.size, out.scale) == ((800, 1600), (200, 400), 4.0)
    assert pixel(out, 190, 10)[0] > 200


# --- rejected uploads ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_images_are_invalid(fmt):
    data = encode(photo_like(200, 150, seed=5), fmt)
    with pytest.raises(InvalidImageError, match="truncated"):
        decode(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("data", [b"", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                                  b"hello, this is a text file\n" * 20, b"GIF89a\x00"])
def test_not_images_are_invalid(data):
    with pytest.raises(InvalidImageError, match="empty|JPEG, PNG, WEBP|corrupt"):
        decode(data)


def test_load_truncated_images_switched_on_elsewhere_is_refused(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ConfigError, match="LOAD_TRUNCATED_IMAGES"):
        decode(encode(photo_like(20, 20), "PNG"))


@pytest.mark.parametrize("width, height", [(20000, 20000), (10000, 10000), (7000, 7000), (20000, 1)])
def test_decompression_bombs_are_refused_from_the_header(width, height):
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError):
        decode(png_declaring(width, height))
    assert time.perf_counter() - start < 0.5


def test_a_12_megapixel_photo_is_accepted():
    out = decode(encode(Image.new("RGB", (4000, 3000), (10, 20, 30)), "PNG"), target=(256, 256))
    assert out.size == (4000, 3000) and out.scale == 1.0


@lru_cache(maxsize=1)
def phone_photo_48mp() -> bytes:
    """An 8000x6000 JPEG, the size of a 48-megapixel phone camera's photos."""
    im = Image.new("RGB", (8000, 6000), (90, 120, 150))
    ImageDraw.Draw(im).ellipse((2000, 1500, 6000, 4500), fill=(200, 40, 40))
    return encode(im, "JPEG", quality=80)


def test_a_48_megapixel_jpeg_passes_when_decoded_at_a_reduced_scale():
    out = decode(phone_photo_48mp(), target=(256, 256))
    assert out.original_size == (8000, 6000) and out.scale == 8 and out.size == (1000, 750)
    assert max(abs(a - b) for a, b in zip(pixel(out, 500, 375), (200, 40, 40))) <= 3


def test_a_48_megapixel_image_decoded_at_full_scale_is_refused():
    with pytest.raises(ImageTooLargeError, match="decodes to 8000x6000"):
        decode(phone_photo_48mp())  # no target: full resolution
    assert decode(phone_photo_48mp(), target=(4000, 3000)).size == (4000, 3000)  # 1/2: 12 MP fits
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode(phone_photo_48mp(), target=(5000, 4000))  # needs the full scale
    with pytest.raises(ImageTooLargeError):
        decode(png_declaring(8000, 6000), target=(256, 256))  # no DCT scaling for PNG


def test_body_over_max_bytes_is_refused():
    data = encode(photo_like(200, 150), "PNG")
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode(data, limits=DecodeLimits(max_bytes=len(data) - 1))
    assert decode(data, limits=DecodeLimits(max_bytes=len(data))).size == (200, 150)


def test_content_type_is_a_hint_the_bytes_overrule():
    data = encode(photo_like(30, 20), "PNG")
    for declared in ("image/jpeg", "image/png; q=1", "application/octet-stream", "IMAGE/WEBP", "text/plain",
                     "application/json", "multipart/form-data; boundary=x"):
        assert decode(data, content_type=declared).format == "PNG"
    for bad in ("text/plain", "application/json", "multipart/form-data; boundary=x"):
        with pytest.raises(UnsupportedMediaTypeError):
            decode(b"not an image, and not declared as one" * 4, content_type=bad)
    with pytest.raises(InvalidImageError):
        decode(b"not an image, though declared as one" * 4, content_type="image/png")


def test_limits_are_validated():
    for bad in ({"max_bytes": 0}, {"max_pixels": -1}, {"min_side": 5, "max_side": 4}, {"max_side": 2.5}):
        with pytest.raises(ConfigError):
            DecodeLimits(**bad)
    with pytest.raises(InvalidImageError, match="smaller"):
        decode(encode(Image.new("RGB", (3, 40)), "PNG"), limits=DecodeLimits(min_side=4))


def test_concurrent_decodes_stay_correct():
    good, bomb, results = encode(photo_like(64, 48), "PNG"), png_declaring(10000, 10000), []

    def work() -> None:
        for _ in range(20):
            results.append(decode(good).size)
            with pytest.raises(ImageTooLargeError):
                decode(bomb)
            results.append("refused")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count((64, 48)) == 80 and results.count("refused") == 80


# --- draft mode ---------------------------------------------------------------------------------

def test_draft_mode_reduces_a_large_jpeg_and_reports_the_scale():
    im = Image.new("RGB", (1920, 1080), (200, 200, 200))
    ImageDraw.Draw(im).rectangle((400, 200, 799, 599), fill=(0, 0, 0))
    data = encode(im, "JPEG", quality=90)
    full, small = decode(data), decode(data, target=(256, 256))
    assert (full.size, full.scale) == ((1920, 1080), 1.0)
    assert (small.size, small.original_size, small.scale) == ((480, 270), (1920, 1080), 4.0)
    assert original_scale(small) == (4.0, 4.0)
    ys, xs = np.nonzero(np.asarray(small.image)[..., 0] < 100)
    box = boxes_to_original(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]), small)
    assert np.abs(box - [[400, 200, 800, 600]]).max() <= 4
    assert boxes_to_original(np.array([[470.0, -3.0, 481.0, 300.0]]), small).tolist() == [[1880, 0, 1920, 1080]]


def test_draft_never_goes_below_the_target_and_skips_other_formats():
    data = encode(photo_like(1000, 700, seed=6), "JPEG")
    assert decode(data, target=(256, 256)).size == (500, 350)  # 1/4 would give 175 < 256
    assert decode(data, target=(700, 700)).scale == 1.0
    assert decode(encode(photo_like(1000, 700, seed=6), "PNG"), target=(64, 64)).scale == 1.0


def test_decode_target_follows_the_spec():
    assert decode_target(classifier_spec()) == (256, 256)
    assert decode_target(classifier_spec(), margin=2) == (512, 512)
    assert decode_target(classifier_spec(resize=None, crop=False, size=(200, 300))) == (300, 200)
    assert decode_target(classifier_spec(resize=None)) is None
    assert decode_target(DETECTOR_SPEC) is None


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


# --- timings (printed, not asserted) ------------------------------------------------------------

def test_print_decode_and_preprocess_timings(capsys):
    spec, lines = classifier_spec(), []
    for size in ((640, 480), (1920, 1080)):
        data = encode(photo_like(*size, seed=11), "JPEG", quality=85)
        for label, target in (("full decode", None), ("draft", decode_target(spec))):
            runs = []
            for _ in range(12):
                start = time.perf_counter()
                preprocess_classification(decode(data, target=target), spec)
                runs.append(1000 * (time.perf_counter() - start))
            lines.append(f"{size[0]}x{size[1]} JPEG ({len(data) // 1024} KiB) {label:<12}: "
                         f"median {statistics.median(runs):5.1f} ms, min {min(runs):5.1f} ms")
    assert len(lines) == 4
    with capsys.disabled():
        print("\ndecode + classifier preprocess:\n  " + "\n  ".join(lines))
