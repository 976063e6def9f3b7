"""Hostile and unusual image files, generated in code (no fixtures on disk)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(size: tuple[int, int] = (80, 60), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (80, 60), seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` with a tiny (invalid-length) IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16)) + _chunk(b"IEND", b"")


def png_bomb(side: int = 12000) -> bytes:
    """A real PNG of ``side`` x ``side`` black pixels: tiny file, huge decoded size."""
    row = b"\0" + b"\0" * side  # filter byte + one grey byte per pixel
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def corpus() -> dict[str, tuple[bytes, str, int]]:
    """name -> (body, content type, expected status)."""
    jpeg = jpeg_bytes((120, 90))
    return {
        "empty body": (b"", "image/jpeg", 400),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "image/jpeg", 400),
        "truncated png": (png_bytes()[:200], "image/png", 400),
        "text file": (b"hello, this is not an image\n" * 20, "image/png", 400),
        "text content type": (jpeg, "text/plain", 415),
        "png bomb": (png_bomb(), "image/png", 413),
        "20000x20000 header": (png_header_only(20000, 20000), "image/png", 413),
        "random bytes": (np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "application/octet-stream", 400),
    }
