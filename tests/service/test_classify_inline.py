"""Which images are decoded on the event loop: only those small by bytes and by header size."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from service.classify import INLINE_MAX_IMAGES, INLINE_MAX_PIXELS, decodes_inline
from service.preprocess import configure_pillow


def encoded(width: int, height: int, fmt: str = "PNG", mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_small_images_decode_inline() -> None:
    assert decodes_inline([encoded(28, 28)])
    assert decodes_inline([encoded(64, 64, "JPEG", "RGB")] * INLINE_MAX_IMAGES)


def test_small_file_with_a_large_header_goes_to_the_pool() -> None:
    bomb = encoded(1000, 1000)  # a few hundred bytes of zeros, a million pixels
    assert len(bomb) < 4096
    assert INLINE_MAX_PIXELS < 1000 * 1000
    assert not decodes_inline([bomb])


def test_bomb_header_goes_to_the_pool_without_raising() -> None:
    # A PNG header claiming 100,000 x 100,000 pixels: Pillow's bomb guard raises on open.
    header = encoded(28, 28)
    ihdr = header.index(b"IHDR")
    bomb = bytearray(header)
    bomb[ihdr + 4 : ihdr + 12] = (100_000).to_bytes(4, "big") * 2
    bomb[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(bomb[ihdr : ihdr + 17])).to_bytes(4, "big")
    configure_pillow(40_000_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bytes(bomb)))  # the case this test is about
    assert not decodes_inline([bytes(bomb)])


def test_large_files_many_images_and_garbage_go_to_the_pool() -> None:
    assert not decodes_inline([encoded(28, 28)] * (INLINE_MAX_IMAGES + 1))
    assert not decodes_inline([b"\x89PNG\r\n\x1a\n" + b"\x00" * 5000])
    assert not decodes_inline([b"not an image"])
    assert not decodes_inline([encoded(28, 28), encoded(640, 480, "JPEG", "RGB")])
