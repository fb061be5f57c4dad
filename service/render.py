"""PNG rendering of feature maps (contact sheets) and CAM heatmaps; numpy and Pillow only."""

from __future__ import annotations

import io
import math

import numpy as np
import numpy.typing as npt
from PIL import Image

TILE_GAP_PX = 1
# Colour stops of the heatmap, low to high (dark blue -> cyan -> yellow -> red), like "jet".
HEATMAP_STOPS = np.array(
    [[0, 0, 128], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0]],
    dtype=np.float64,
)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scale_to_uint8(
    values: npt.NDArray[np.float32], low: float, high: float
) -> npt.NDArray[np.uint8]:
    """Map [low, high] linearly onto 0..255 (a flat map becomes 0)."""
    span = high - low
    if span <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) / span * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid holding `count` tiles."""
    cols = math.ceil(math.sqrt(count))
    return math.ceil(count / cols), cols


def contact_sheet(maps: npt.NDArray[np.float32], low: float, high: float) -> bytes:
    """(n, H, W) maps as one greyscale PNG: tiles row-major, 1 px gaps, one colour scale."""
    count, height, width = maps.shape
    rows, cols = grid_shape(count)
    sheet = np.zeros(
        (rows * height + (rows - 1) * TILE_GAP_PX, cols * width + (cols - 1) * TILE_GAP_PX),
        dtype=np.uint8,
    )
    tiles = scale_to_uint8(maps, low, high)
    for index in range(count):
        row, col = divmod(index, cols)
        top, left = row * (height + TILE_GAP_PX), col * (width + TILE_GAP_PX)
        sheet[top : top + height, left : left + width] = tiles[index]
    return png_bytes(Image.fromarray(sheet, mode="L"))


def heatmap(values: npt.NDArray[np.float32], size: tuple[int, int]) -> bytes:
    """(h, W) non-negative map upsampled (bilinear) to `size` (W, H), as an RGB heatmap PNG."""
    upsampled = np.asarray(
        Image.fromarray(values.astype(np.float32), mode="F").resize(
            size, Image.Resampling.BILINEAR
        ),
        dtype=np.float64,
    )
    peak = float(upsampled.max())
    unit = upsampled / peak if peak > 0 else np.zeros_like(upsampled)
    position = np.clip(unit, 0.0, 1.0) * (len(HEATMAP_STOPS) - 1)
    lower = np.floor(position).astype(np.int64).clip(0, len(HEATMAP_STOPS) - 2)
    fraction = (position - lower)[..., None]
    rgb = HEATMAP_STOPS[lower] * (1 - fraction) + HEATMAP_STOPS[lower + 1] * fraction
    return png_bytes(Image.fromarray(np.rint(rgb).astype(np.uint8), mode="RGB"))
