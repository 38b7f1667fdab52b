"""Image encoding for workers: PNG and JPEG with pillow when it is there,
else PNG with a small zlib encoder (numpy or plain bytes), so that a worker
runs where only the Debian packages are installed.

Pixels are rows of RGB bytes: a numpy array of shape (height, width, 3) and
dtype uint8, or ``bytes`` of length height*width*3.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Optional, Tuple

try:
    from PIL import Image as _PILImage
except ImportError:  # Debian's packages for CI do not include pillow
    _PILImage = None

PNG = "image/png"
JPEG = "image/jpeg"
JPEG_QUALITY = 90  # what the public API documents
PREVIEW_MAX_SIDE = 256


class UnsupportedFormat(Exception):
    """The encoding needs a library this machine lacks (JPEG without pillow)."""


def have_pillow() -> bool:
    return _PILImage is not None


def _as_bytes(pixels, width: int, height: int) -> bytes:
    data = pixels.tobytes() if hasattr(pixels, "tobytes") else bytes(pixels)
    if len(data) != width * height * 3:
        raise ValueError("pixels: want %d bytes (%dx%d RGB), got %d" % (width * height * 3, width, height, len(data)))
    return data


def encode_png_zlib(pixels, width: int, height: int, level: int = 6) -> bytes:
    """A minimal PNG encoder: 8-bit RGB, filter type 0 on every row."""
    data = _as_bytes(pixels, width, height)
    stride = width * 3
    raw = bytearray((stride + 1) * height)
    for y in range(height):  # a zero filter byte before each row
        raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)] = data[y * stride:(y + 1) * stride]

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), level)) + chunk(b"IEND", b"")


def encode(pixels, width: int, height: int, fmt: str = "png") -> Tuple[bytes, str]:
    """Encodes RGB pixels as "png" or "jpeg"; returns (data, mime type).
    JPEG needs pillow: without it UnsupportedFormat is raised."""
    fmt = fmt.lower()
    if fmt not in ("png", "jpeg"):
        raise UnsupportedFormat("unknown image format %r" % fmt)
    if _PILImage is None:
        if fmt == "jpeg":
            raise UnsupportedFormat("JPEG output needs pillow, which this worker's Python lacks")
        return encode_png_zlib(pixels, width, height), PNG
    img = _PILImage.frombytes("RGB", (width, height), _as_bytes(pixels, width, height))
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
        return buf.getvalue(), JPEG
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue(), PNG


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> Tuple[int, int]:
    """The size of a preview: the long side at most max_side, aspect kept."""
    scale = min(1.0, max_side / float(max(width, height)))
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def encode_preview(pixels, width: int, height: int) -> Optional[Tuple[bytes, int, int]]:
    """A preview JPEG (long side at most 256) as (data, width, height), or
    None without pillow: previews are optional."""
    if _PILImage is None:
        return None
    img = _PILImage.frombytes("RGB", (width, height), _as_bytes(pixels, width, height))
    w, h = preview_size(width, height)
    if (w, h) != (width, height):
        img = img.resize((w, h), _PILImage.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return buf.getvalue(), w, h


def decode_png_zlib(data: bytes) -> Tuple[int, int, bytes]:
    """Decodes what encode_png_zlib writes (8-bit RGB, filter 0); for tests."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * 3
    rows = []
    for y in range(height):
        row = raw[y * (stride + 1):(y + 1) * (stride + 1)]
        if row[0] != 0:
            raise ValueError("filter %d not supported" % row[0])
        rows.append(row[1:])
    return width, height, b"".join(rows)
