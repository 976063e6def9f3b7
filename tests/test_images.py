"""Image decoding on real encoded images made here with Pillow (no mocks): formats, orientation, refusals, draft mode."""

from __future__ import annotations

import io
import threading
from functools import lru_cache

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile, ImageOps

from eca_serve.errors import ConfigError, ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError
from eca_serve.pipelines.images import DecodeLimits
from eca_serve.pipelines.preprocess import boxes_to_original, decode_target, original_scale
from tests.image_samples import (
    RED, GREEN, BLUE, DETECTOR_SPEC, classifier_spec, photo_like, encode, decode, pixel, png_declaring,
)


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
    """The file holds one pixel's data: decoding it at the declared size would fail as truncated, so a size
    refusal can only come from the header."""
    with pytest.raises(ImageTooLargeError):
        decode(png_declaring(width, height))


def test_a_bomb_caught_by_pillow_quotes_the_configured_limit_not_pillows():
    with pytest.raises(ImageTooLargeError) as caught:
        decode(png_declaring(20000, 20000))  # over Pillow's own guard, which fires first
    assert "40000000 pixels" in str(caught.value) and "400000000" in str(caught.value)
    assert str(Image.MAX_IMAGE_PIXELS * 2) not in str(caught.value)


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
