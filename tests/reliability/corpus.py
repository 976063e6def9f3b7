"""Hostile, unusual and valid uploads generated in code; shared by tests/reliability and bench/reliability_report.py.

Every `Upload` states the status the server must answer with under its default decode limits
(`eca_serve.settings.Settings`: 40 M pixels, 16384 px per side, 20 MiB per image, 32 MiB per body).
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from tests.hostile_images import jpeg_bytes, png_bomb, png_header_only

Transport = Literal["raw", "multipart", "v2"]
ORIENTATION_TAG = 0x0112
HTML = b"<!DOCTYPE html><html><body><script>fetch('/pwn?c='+document.cookie)</script></body></html>\n"


@dataclass(frozen=True)
class Upload:
    """One upload and the status the server owes it.

    Attributes:
        name: Short unique description (test id).
        body: The file's bytes.
        content_type: Declared type: the raw body's Content-Type and the multipart part's type.
        status: Expected status as a raw body.
        filename: The multipart part's filename.
        multipart_status: Expected status as a multipart part; None = ``status``.
        bytes_status: Expected status as a v2 ``image`` BYTES element (no declared type there);
            None = the multipart status.
        about_content_type: The case tests the declared type only, so it has no v2 form.
        main: Also sent to detect, attention and v2 infer (not only to classify).
        same_as: A plain image that must get exactly the same answer (trailing bytes, declared
            type, EXIF orientation and animation frames after the first change nothing).
    """

    name: str
    body: bytes
    content_type: str
    status: int
    filename: str = "upload.bin"
    multipart_status: int | None = None
    bytes_status: int | None = None
    about_content_type: bool = False
    main: bool = False
    same_as: bytes | None = None

    def expected(self, transport: Transport) -> int | None:
        """Expected status over ``transport``; None when the case does not apply to it."""
        multipart = self.status if self.multipart_status is None else self.multipart_status
        if transport == "raw":
            return self.status
        if transport == "multipart":
            return multipart
        if self.about_content_type:
            return None
        return multipart if self.bytes_status is None else self.bytes_status


def picture(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    """An asymmetric RGB picture (shapes on noise): rotations and flips of it differ."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((w // 10, h // 8, w // 2, h // 2), fill=(230, 40, 40))
    draw.polygon([(w * 3 // 5, h * 7 // 8), (w * 9 // 10, h * 7 // 8), (w * 9 // 10, h // 3)], fill=(40, 220, 90))
    draw.ellipse((w // 8, h * 5 // 8, w // 3, h * 15 // 16), fill=(250, 250, 60))
    return image


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    """``image`` saved as ``fmt`` with Pillow's ``params``."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def good_png(seed: int = 0) -> bytes:
    """The reference valid upload the tests use to check that the server still answers correctly."""
    return encode(picture(seed=seed), "PNG")


def exif_jpeg(orientation: int, seed: int = 0) -> bytes:
    """A small JPEG (no draft scaling at 64 px input) carrying EXIF orientation ``orientation`` (1..8)."""
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(picture((60, 40), seed), "JPEG", quality=95, exif=exif.tobytes())


def animated(fmt: str, seed: int = 0) -> bytes:
    """A 3-frame animation whose frames differ (GIF or WebP)."""
    frames = [picture((64, 48), seed + i) for i in range(3)]
    if fmt == "GIF":
        frames = [f.quantize(64) for f in frames]
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40, lossless=True)


def frame_png(data: bytes, index: int = 0) -> bytes:
    """Frame ``index`` of an animation, as Pillow decodes it, re-encoded losslessly."""
    with Image.open(io.BytesIO(data)) as im:
        im.seek(index)
        return encode(im.convert("RGB"), "PNG")


def upright_png(data: bytes) -> bytes:
    """The image turned upright by Pillow's own ``ImageOps.exif_transpose``, re-encoded losslessly."""
    with Image.open(io.BytesIO(data)) as im:
        return encode(ImageOps.exif_transpose(im).convert("RGB"), "PNG")


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file."""
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset: offset + 4])
        chunks.append((data[offset + 4: offset + 8], data[offset + 8: offset + 8 + length]))
        offset += 12 + length
    return chunks


def png_with_bad_crc(data: bytes, kind: bytes) -> bytes:
    """``data`` with the CRC of its first ``kind`` chunk inverted."""
    out, done = [data[:8]], False
    for cid, payload in png_chunks(data):
        good = zlib.crc32(cid + payload) & 0xFFFFFFFF
        out.append(_chunk(cid, payload, good ^ 0xFFFFFFFF if cid == kind and not done else good))
        done = done or cid == kind
    return b"".join(out)


def png_with_text(data: bytes) -> bytes:
    """``data`` with a tEXt chunk right after IHDR (ancillary chunks are CRC-checked while the header is read)."""
    chunks = png_chunks(data)
    text = _chunk(b"tEXt", b"Comment\0" + HTML)
    return data[:8] + _chunk(*chunks[0]) + text + b"".join(_chunk(c, p) for c, p in chunks[1:])


def flip_bytes(data: bytes, start: int, end: int, count: int, seed: int) -> bytes:
    """``data`` with ``count`` bytes in ``[start, end)`` XOR-ed with 0x5A, never creating or breaking a JPEG marker."""
    rng = random.Random(seed)
    out = bytearray(data)
    safe = [i for i in range(start, end) if 0xFF not in (data[i - 1], data[i], data[i] ^ 0x5A)]
    for position in rng.sample(safe, count):
        out[position] ^= 0x5A
    return bytes(out)


def jpeg_scan_start(data: bytes) -> int:
    """Offset of the first byte of entropy-coded data (just past the SOS segment)."""
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack(">H", data[sos + 2: sos + 4])
    return sos + 2 + length


def jpeg_with_broken_huffman_table(data: bytes) -> bytes:
    """``data`` with the code counts of its first Huffman table (DHT) overwritten by 0xFF."""
    dht = data.index(b"\xff\xc4")
    return data[: dht + 5] + b"\xff" * 16 + data[dht + 21:]


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its SOF0 frame header declaring ``width`` x ``height``."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]


def gif_with_size(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen and image descriptor declare ``width`` x ``height``."""
    small = encode(Image.new("P", (1, 1)), "GIF")
    out = bytearray(small)
    out[6:10] = struct.pack("<HH", width, height)
    descriptor = out.index(b"\x2c")
    out[descriptor + 5: descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(out)


def zip_bytes() -> bytes:
    """A ZIP archive holding a shell script."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("run.sh", "#!/bin/sh\nrm -rf /\n")
    return buffer.getvalue()


def _truncations() -> list[Upload]:
    jpeg, png = encode(picture((160, 120), 3), "JPEG", quality=90), encode(picture((160, 120), 4), "PNG")
    scan, idat = jpeg_scan_start(jpeg), png.index(b"IDAT")
    jpeg_cuts = {"after SOI": 2, "in APP0": 20, "before the scan": scan - 5, "early in the scan": scan + 40,
                 "at half": len(jpeg) // 2, "40 bytes before EOI": len(jpeg) - 40}
    # The last cut keeps every pixel row but loses the zlib checksum and the CRC of the last IDAT chunk.
    png_cuts = {"in the signature": 4, "after the signature": 8, "after IHDR": 33, "early in IDAT": idat + 100,
                "in the middle of IDAT": (idat + len(png)) // 2, "in the last IDAT checksum": len(png) - 20}
    return [*(Upload(f"jpeg cut {where}", jpeg[:cut], "image/jpeg", 400, "cut.jpg") for where, cut in jpeg_cuts.items()),
            *(Upload(f"png cut {where}", png[:cut], "image/png", 400, "cut.png") for where, cut in png_cuts.items())]


def _corruptions() -> list[Upload]:
    jpeg, png = encode(picture((160, 120), 5), "JPEG", quality=90), encode(picture((160, 120), 6), "PNG")
    idat = png.index(b"IDAT") + 4
    scan = jpeg_scan_start(jpeg)
    return [
        # libjpeg resynchronises after damaged entropy data (as browsers do): a damaged but decodable picture.
        Upload("jpeg flipped entropy bytes", flip_bytes(jpeg, scan + 10, len(jpeg) - 10, 24, seed=1), "image/jpeg", 200, "flip.jpg"),
        Upload("jpeg bad huffman table", jpeg_with_broken_huffman_table(jpeg), "image/jpeg", 400, "dht.jpg"),
        # PNG, unlike JPEG, carries checksums (CRC-32 per chunk, Adler-32 over the pixel data): damage is
        # detectable, and eca_serve.pipelines.images promises InvalidImageError for corrupt images.
        Upload("png flipped idat bytes", flip_bytes(png, idat + 20, idat + 400, 8, seed=2), "image/png", 400, "flip.png"),
        Upload("png bad ihdr crc", png_with_bad_crc(png, b"IHDR"), "image/png", 400, "crc.png"),
        Upload("png bad text crc", png_with_bad_crc(png_with_text(png), b"tEXt"), "image/png", 400, "crc.png"),
        Upload("png zero width", png_header_only(0, 16), "image/png", 400, "zero.png"),
        Upload("jpeg zero height", jpeg_with_size(jpeg, 160, 0), "image/jpeg", 400, "zero.jpg"),
    ]


def _too_large() -> list[Upload]:
    small_jpeg = jpeg_bytes((32, 24))
    return [
        Upload("png bomb 12000x12000", png_bomb(), "image/png", 413, "bomb.png", main=True),
        Upload("gif bomb 7000x6000", encode(Image.new("P", (7000, 6000)), "GIF"), "image/gif", 413, "bomb.gif"),
        Upload("webp bomb 7000x6000", encode(Image.new("RGB", (7000, 6000)), "WEBP", lossless=True), "image/webp", 413, "bomb.webp"),
        Upload("png header 20000x20000", png_header_only(20000, 20000), "image/png", 413, "huge.png"),
        Upload("jpeg header 65500x65500", jpeg_with_size(small_jpeg, 65500, 65500), "image/jpeg", 413, "huge.jpg"),
        Upload("gif header 65535x65535", gif_with_size(65535, 65535), "image/gif", 413, "huge.gif"),
        Upload("png strip 17000x1", encode(Image.new("L", (17000, 1)), "PNG"), "image/png", 413, "strip.png"),
    ]


def _animation(fmt: str, main: bool = False) -> Upload:
    data = animated(fmt)
    return Upload(f"animated {fmt.lower()}", data, f"image/{fmt.lower()}", 200, f"anim.{fmt.lower()}", main=main,
                  same_as=frame_png(data))


def _exif(orientation: int) -> Upload:
    data = exif_jpeg(orientation)
    return Upload(f"exif orientation {orientation}", data, "image/jpeg", 200, f"exif{orientation}.jpg", same_as=upright_png(data))


def _valid_variety() -> list[Upload]:
    base = picture((90, 70), 7)
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    sixteen = Image.fromarray((np.asarray(base.convert("L"), np.uint16) * 257)).convert("I;16")
    return [
        Upload("1x1 png", encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "image/png", 200, "one.png", main=True),
        Upload("1x1 jpeg", encode(Image.new("RGB", (1, 1), (10, 200, 10)), "JPEG"), "image/jpeg", 200, "one.jpg"),
        Upload("1x1 gif", encode(Image.new("P", (1, 1)), "GIF"), "image/gif", 200, "one.gif"),
        _animation("GIF", main=True),
        _animation("WEBP"),
        Upload("cmyk jpeg", encode(base.convert("CMYK"), "JPEG"), "image/jpeg", 200, "cmyk.jpg", main=True),
        Upload("grey jpeg", encode(base.convert("L"), "JPEG"), "image/jpeg", 200, "grey.jpg"),
        Upload("16-bit png", encode(sixteen, "PNG"), "image/png", 200, "sixteen.png", main=True),
        Upload("palette png", encode(base.quantize(16), "PNG"), "image/png", 200, "palette.png"),
        Upload("1-bit png", encode(base.convert("1"), "PNG"), "image/png", 200, "bits.png"),
        Upload("LA png", encode(rgba.convert("LA"), "PNG"), "image/png", 200, "la.png"),
        Upload("RGBA png", encode(rgba, "PNG"), "image/png", 200, "rgba.png", main=True),
        Upload("bmp", encode(base, "BMP"), "image/bmp", 200, "pic.bmp"),
        Upload("tiff", encode(base, "TIFF"), "image/tiff", 200, "pic.tiff"),
        Upload("webp", encode(base, "WEBP", quality=80), "image/webp", 200, "pic.webp"),
        *[_exif(orientation) for orientation in range(1, 9)],
    ]


def _declared_type() -> list[Upload]:
    png, jpeg = good_png(1), encode(picture(seed=2), "JPEG", quality=90)
    cases = [
        Upload("png declared as jpeg", png, "image/jpeg", 200, "actually.jpg", main=True, same_as=png),
        Upload("jpeg declared as png", jpeg, "image/png", 200, "actually.png", same_as=jpeg),
        Upload("png declared as octet-stream", png, "application/octet-stream", 200, "blob", same_as=png),
        Upload("png declared as image/svg+xml", png, "image/svg+xml", 200, "pic.svg", same_as=png),
    ]
    for media in ("text/plain", "text/html", "application/json", "application/pdf", "application/x-www-form-urlencoded", "video/mp4"):
        # A raw body's Content-Type says how to read the body (415); a part's type is a hint the bytes overrule.
        cases.append(Upload(f"jpeg declared as {media}", jpeg, media, 415, "pic.jpg", multipart_status=200, about_content_type=True,
                            main=media == "text/html", same_as=jpeg))
    return cases


def _polyglots() -> list[Upload]:
    png, jpeg = good_png(1), encode(picture(seed=2), "JPEG", quality=90)
    gif = encode(picture(seed=3).quantize(32), "GIF")
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n(/etc/passwd) (r) file\nshowpage\n%%EOF\n"
    return [
        # Bytes after an image's end marker are never interpreted: the image is served, nothing else.
        Upload("png followed by html", png + HTML, "image/png", 200, "page.png", main=True, same_as=png),
        Upload("jpeg followed by zip", jpeg + zip_bytes(), "image/jpeg", 200, "archive.jpg", main=True, same_as=jpeg),
        Upload("gif followed by zip", gif + zip_bytes(), "image/gif", 200, "gifar.gif", same_as=gif),
        Upload("html named .jpg", HTML * 4, "image/jpeg", 400, "photo.jpg", main=True),
        Upload("png signature then html", png[:8] + HTML, "image/png", 400, "page.png"),
        Upload("jpeg markers then html", b"\xff\xd8\xff\xe0" + HTML, "image/jpeg", 400, "page.jpg"),
        Upload("zip named .png", zip_bytes(), "image/png", 400, "archive.png"),
        Upload("svg with script", svg, "image/svg+xml", 400, "icon.svg"),
        Upload("postscript (eps)", eps, "image/x-eps", 400, "doc.eps"),
        Upload("valid ppm (format not accepted)", encode(picture(), "PPM"), "image/x-portable-pixmap", 400, "pic.ppm"),
        Upload("valid ico (format not accepted)", encode(picture((32, 32)), "ICO"), "image/x-icon", 400, "favicon.ico"),
        Upload("random bytes", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
               "application/octet-stream", 400, "noise.bin"),
        # An empty image is 400 however it comes: raw body, file part or BYTES element.
        Upload("0-byte body", b"", "image/jpeg", 400, "empty.jpg", main=True),
    ]


@lru_cache(maxsize=1)
def hostile_corpus() -> tuple[Upload, ...]:
    """Every case, built once per process (about 2 s)."""
    cases = (*_truncations(), *_corruptions(), *_too_large(), *_valid_variety(), *_declared_type(), *_polyglots())
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "corpus names must be unique"
    return cases


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A random damaging edit of ``data``: bit flips, a cut, a spliced run of noise, or a duplicated slice."""
    if not data:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    out = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 16)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del out[rng.randrange(len(out)):]
    elif kind == 2:
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 256)))
    else:
        start = rng.randrange(len(out))
        piece = out[start: start + rng.randint(1, 512)]
        out[start:start] = piece * rng.randint(1, 8)
    return bytes(out)

