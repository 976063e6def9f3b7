"""Untrusted image bytes -> one RGB ``PIL.Image``, with limits checked before any pixel is decoded.

Accepted formats: JPEG (and MPO, the multi-picture JPEG many phones write), PNG, WebP, BMP, GIF
and TIFF; animated GIF/WebP and multi-page TIFF give their first frame. The bytes decide the
format: the client's content type is only checked to be ``image/*`` or
``application/octet-stream``.

Pixel modes become 8-bit RGB as follows:

* alpha (RGBA, LA, PA, and P/L/RGB with a transparent colour) is composited onto white, so
  transparent areas read as a white background rather than as whatever colour hides under alpha 0;
* 16-bit grey (I;16*) and 32-bit integer grey (I, assumed to hold 16-bit samples) keep their top
  8 bits (``v >> 8``: scaled, not clipped);
* float grey (F) is read on Pillow's 0..255 scale (rounded, clipped, NaN -> 0);
* CMYK, YCbCr, 1-bit and palette images use Pillow's conversions; ICC profiles are ignored.

EXIF orientation is applied with the transpositions of ``PIL.ImageOps.exif_transpose`` (same
pixels), without its rewrite of the metadata, which is unused here and can fail on broken EXIF.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile

from eca_serve.errors import ConfigError, ImageTooLargeError, InvalidImageError, UnsupportedMediaTypeError

ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_JPEG_FAMILY = frozenset({"JPEG", "MPO"})
_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_TRANSPOSE = {  # as in PIL.ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255)
# What Pillow raises on malformed input (fuzzed: the first four cover every case seen).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
# warnings.catch_warnings edits process-wide state (Python < 3.14), so threads take turns; only
# the header parse runs under it.
_WARNINGS_LOCK = threading.Lock()


@dataclass(frozen=True)
class DecodeLimits:
    """What an upload may be; anything larger is refused before its pixels are decoded.

    Attributes:
        max_bytes: Longest body accepted (default 20 MiB).
        max_pixels: Most pixels (width * height) to decode (default 40 M). A JPEG counts at the
            DCT scale it is decoded at, so a 48-megapixel phone photo sent to a 224 px classifier
            (decoded at 1/8, 0.75 M pixels) passes while a 48-megapixel PNG is refused; Pillow's
            own bomb limit (about 89 M pixels declared) holds for every format.
        max_side: Longest width or height.
        min_side: Shortest width or height.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16384
    min_side: int = 1

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "max_side", "min_side"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DecodeLimits.{name} must be an int >= 1, got {value!r}")
        if self.min_side > self.max_side:
            raise ConfigError(f"DecodeLimits.min_side ({self.min_side}) > max_side ({self.max_side})")


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload.

    Attributes:
        image: RGB image, mode ``"RGB"`` (8 bits per channel), upright (EXIF orientation applied),
            possibly reduced by JPEG draft mode: ``image.size`` may be smaller than ``original_size``.
        original_size: (width, height) of the full-resolution upright image, as the client sees it.
        format: Pillow's format name, e.g. ``"JPEG"``, ``"PNG"``.
        scale: Original pixels per decoded pixel along each axis (1, 2, 4 or 8; 1 = no draft). A
            decoded coordinate ``x`` is ``x * scale`` in the original (clip to ``original_size``:
            the last decoded row/column may cover fewer than ``scale`` original pixels).
    """

    image: Image.Image
    original_size: tuple[int, int]
    format: str
    scale: float = 1.0

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of ``image``."""
        return self.image.size


def decode_image(
    data: bytes,
    *,
    limits: DecodeLimits,
    content_type: str | None = None,
    target: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into an upright RGB image.

    Args:
        data: The request body.
        limits: Size limits, checked on the body and on the header before decoding.
        content_type: The client's Content-Type, if any: only a hint, the bytes decide the format (an
            image of an accepted format passes whatever its declared type).
        target: (width, height), in upright orientation, the caller needs at least; JPEGs are then
            decoded at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides >= target
            (e.g. ``(256, 256)`` keeps the shorter side >= 256). None = full resolution.

    Returns:
        The decoded image, its original upright size, format and draft scale.

    Raises:
        UnsupportedMediaTypeError: ``content_type`` is given and is neither ``image/*`` nor
            ``application/octet-stream``, and the bytes are not an accepted image format.
        ImageTooLargeError: too many bytes, pixels, or too long a side (decompression bombs).
        InvalidImageError: empty, not an accepted image format, corrupt or truncated.
        ConfigError: ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` was set to True in this process.
    """
    if sniff_format(data) is None:
        check_content_type(content_type)
    _check_body(data, limits)
    im = _open(data, limits)
    _check_sides(im.size, limits)
    fmt, orientation = str(im.format), _orientation(im)
    if fmt == "PNG":
        check_png_chunks(data)
    original = _upright(im.size, orientation)
    scale = _request_draft(im, target, orientation) if target is not None else 1.0
    _check_pixels(im.size, scale, limits)  # the size after the draft: what will be decoded
    _load(im, limits)
    upright = im.transpose(_TRANSPOSE[orientation]) if orientation != 1 else im
    return DecodedImage(image=to_rgb(upright), original_size=original, format=fmt, scale=scale)


# Leading bytes of each accepted format (WEBP: RIFF, a 4-byte size, then WEBP).
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)


def sniff_format(data: bytes) -> str | None:
    """The accepted format ``data`` starts like (``"PNG"``, ...), or None; the signature only, no decoding."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)


def check_content_type(content_type: str | None) -> None:
    """Raise `UnsupportedMediaTypeError` unless ``content_type`` is None, ``image/*`` or octet-stream."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("image/") or media == "application/octet-stream":
        return
    raise UnsupportedMediaTypeError(
        f"unsupported content type {content_type!r}: send image/* or application/octet-stream"
    )


def _check_body(data: bytes, limits: DecodeLimits) -> None:
    if not data:
        raise InvalidImageError("empty body: expected image bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image body of {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ConfigError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process; eca-serve refuses to decode "
            "uploads that way because truncated images would be accepted silently"
        )


def _open(data: bytes, limits: DecodeLimits) -> ImageFile.ImageFile:
    """Parse only the header (``Image.open`` is lazy); PIL's bomb warning becomes an error."""
    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(exc, limits) from None
    except Image.UnidentifiedImageError:
        raise InvalidImageError(
            f"not a recognised image: accepted formats are {', '.join(ACCEPTED_FORMATS)}"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"corrupt image header: {exc}") from None


def check_png_chunks(data: bytes) -> None:
    """Raise `InvalidImageError` unless every PNG chunk up to IEND is complete with a matching CRC.

    Pillow skips the CRC of pixel-data (IDAT) chunks and stops reading before the zlib checksum,
    so a PNG with flipped pixel bytes or cut inside its last chunk would otherwise decode to
    damaged pixels with a 200. Bytes after IEND are ignored, as by every PNG reader.
    """
    offset = 8  # signature
    while offset + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 8 + length
        if end + 4 > len(data):
            break
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[offset + 4:end]) != crc:
            raise InvalidImageError(f"corrupt PNG: bad CRC in the {kind.decode('latin-1')!r} chunk at byte {offset}")
        if kind == b"IEND":
            return
        offset = end + 4
    raise InvalidImageError("truncated PNG: the file ends before its IEND chunk")


def _check_sides(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if min(width, height) < limits.min_side:
        raise InvalidImageError(f"image of {width}x{height} is smaller than {limits.min_side} pixel(s) per side")
    if max(width, height) > limits.max_side:
        raise ImageTooLargeError(f"image of {width}x{height} has a side longer than {limits.max_side} pixels")


def _check_pixels(decoded: tuple[int, int], scale: float, limits: DecodeLimits) -> None:
    width, height = decoded
    if width * height > limits.max_pixels:
        drafted = f" (at 1/{scale:g} scale)" if scale > 1 else ""
        raise ImageTooLargeError(f"image decodes to {width}x{height} pixels{drafted}, over the limit of {limits.max_pixels} pixels")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8); a missing or malformed tag counts as 1 (upright), as browsers do."""
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - broken EXIF must not reject an otherwise valid image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _request_draft(im: ImageFile.ImageFile, target: tuple[int, int], orientation: int) -> float:
    """Ask libjpeg for a reduced DCT scale; returns the scale (1.0 when not a JPEG or no gain)."""
    if im.format not in _JPEG_FAMILY:
        return 1.0
    width, height = target
    if width < 1 or height < 1:
        raise ConfigError(f"decode target must be positive, got {target!r}")
    if orientation in _SWAPPING_ORIENTATIONS:  # the target is upright, the JPEG is stored sideways
        width, height = height, width
    full_width = im.size[0]
    result = im.draft("RGB", (width, height))
    if result is None:
        return 1.0
    return float(round(full_width / result[1][2]))  # the box is the full image in drafted pixels


def _load(im: ImageFile.ImageFile, limits: DecodeLimits) -> None:
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, limits) from None
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"corrupt or truncated {im.format} image: {exc}") from None


def _bomb(exc: Exception, limits: DecodeLimits) -> ImageTooLargeError:
    """Pillow's bomb guard (its own, higher limit) reworded with the configured limit, the one a client can meet."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f" of {int(found[1])} pixels" if found else ""
    return ImageTooLargeError(f"image too large: it declares a size{pixels}, over the limit of {limits.max_pixels} pixels")


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) once EXIF orientation ``orientation`` is applied."""
    return (size[1], size[0]) if orientation in _SWAPPING_ORIENTATIONS else size


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit ``"RGB"`` (see the module docstring for the rules)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _on_white(im.convert("RGBA"))
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16") or im.mode == "I":
        return _gray_to_rgb(_top_byte(np.asarray(im)))
    if im.mode == "F":
        return _gray_to_rgb(np.clip(np.rint(np.nan_to_num(np.asarray(im))), 0, 255).astype(np.uint8))
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise InvalidImageError(f"unsupported pixel mode {im.mode!r}: {exc}") from None


def _top_byte(samples: np.ndarray) -> np.ndarray:
    """16-bit samples (any integer dtype/endianness) -> uint8 by ``v >> 8`` (scaled, not clipped)."""
    return (np.clip(samples.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray)).convert("RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background
