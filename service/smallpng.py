"""Small plain PNGs decoded by libspng (pyspng) instead of Pillow.

A 28x28 greyscale PNG costs Pillow ~50 us of Python (open, plugin, decoder set-up, EXIF), and
libspng ~6 us; on the tiny model that is a fifth of the event loop's time per request
(docs/benchmarks.md). PNG is lossless, so both give the same pixels; this path takes
only the files where nothing else can differ, and leaves every other one to Pillow:

- 8-bit greyscale or RGB, already in the model's colour mode (no conversion), not interlaced;
- at most SMALL_MAX_PIXELS: pyspng holds the GIL while it decodes, so only images that decode in
  microseconds (those the service decodes on the event loop anyway, service/classify.py);
- only chunks that change no pixel Pillow gives (PLAIN_CHUNKS): no transparency (tRNS), no EXIF
  orientation (eXIf), no animation (acTL), no compressed text (Pillow limits its size);
- every chunk's CRC checked here (pyspng skips CRCs), IEND present, and the image data one
  complete zlib stream of exactly the image's size with a valid Adler-32 (libspng stops reading
  once it has every row, so it would decode a stream whose checksum Pillow refuses; found by
  tests/service/test_smallpng.py's fuzzing): a damaged file goes to Pillow, which then refuses or
  accepts it as it always did. So does anything pyspng rejects.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt
import pyspng

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IHDR_END = 24  # signature (8), chunk length (4), "IHDR" (4), width (4), height (4)
SMALL_MAX_PIXELS = 64 * 64
COLOR_TYPES = {"L": 0, "RGB": 2}  # PNG colour type per model colour mode, at 8 bits
CHANNELS = {0: 1, 2: 3}
PLAIN_CHUNKS = frozenset(
    {b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"tEXt", b"tIME", b"sBIT"}
)
_CHUNK_HEAD = struct.Struct(">I4s")
_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, compression, filter,
# interlace


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (the first chunk), without Pillow."""
    if len(data) < PNG_IHDR_END or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:PNG_IHDR_END])
    return int(width), int(height)


def decode_plain(data: bytes, color_mode: str) -> npt.NDArray[np.uint8] | None:
    """The pixels of a small plain PNG in `color_mode`, (H, W) for "L", (H, W, 3) for "RGB";
    None for anything else (Pillow decodes it)."""
    color_type = COLOR_TYPES.get(color_mode)
    if color_type is None or not data.startswith(PNG_SIGNATURE) or not _plain(data, color_type):
        return None
    try:
        pixels: npt.NDArray[np.uint8] = pyspng.load(data)
    except (RuntimeError, ValueError, MemoryError):  # libspng's refusals, as pybind11 raises them
        return None
    return pixels


def _plain(data: bytes, color_type: int) -> bool:
    view = memoryview(data)
    offset = len(PNG_SIGNATURE)
    stream = zlib.decompressobj()
    raw = 0  # bytes the image data must inflate to, from IHDR
    inflated = 0
    while offset + _CHUNK_HEAD.size <= len(data):
        length, kind = _CHUNK_HEAD.unpack_from(data, offset)
        body = offset + _CHUNK_HEAD.size
        end = body + length
        if kind not in PLAIN_CHUNKS or end + 4 > len(data):
            return False
        if (offset == len(PNG_SIGNATURE)) != (kind == b"IHDR"):
            return False  # IHDR first, and once
        if zlib.crc32(view[offset + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return False
        if kind == b"IHDR":
            raw = _plain_header(data, body, length, color_type)
            if not raw:
                return False
        elif kind == b"IDAT":
            try:
                inflated += len(stream.decompress(view[body:end], raw + 1 - inflated))
            except zlib.error:
                return False
            if inflated > raw or stream.unconsumed_tail:
                return False
        elif kind == b"IEND":
            return inflated == raw and stream.eof and not stream.unused_data
        offset = end + 4
    return False  # no IEND


def _plain_header(data: bytes, body: int, length: int, color_type: int) -> int:
    """The size of the image's raw (filtered) rows, or 0 when it is not plain."""
    if length != _IHDR.size:
        return 0
    width, height, depth, kind, compression, filtering, interlace = _IHDR.unpack_from(data, body)
    plain = (
        0 < width * height <= SMALL_MAX_PIXELS
        and depth == 8
        and kind == color_type
        and compression == filtering == interlace == 0
    )
    return height * (1 + width * CHANNELS[kind]) if plain else 0
