"""Files beside model.onnx: a conv layer's filter grid (PNG), CAM weights, sha256. No torch:
weights arrive as numpy arrays, from a PyTorch module or an ONNX initializer alike."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

FILTER_CELL_PX = 32  # each filter is upscaled (nearest) to at least this many pixels
FILTER_GAP_PX = 2
MAX_GRID_FILTERS = 256


def filter_grid(weight: npt.NDArray[np.floating]) -> Image.Image:
    """PNG-ready grid of conv weights (out, in, kH, kW): RGB when in == 3, else the channel mean.

    Each filter is min-max scaled on its own, so faint and strong filters are equally visible.
    """
    w = np.asarray(weight, dtype=np.float64)[:MAX_GRID_FILTERS]
    w = w if w.shape[1] == 3 else w.mean(axis=1, keepdims=True)
    low = w.min(axis=(1, 2, 3), keepdims=True)
    high = w.max(axis=(1, 2, 3), keepdims=True)
    w = (w - low) / np.maximum(high - low, 1e-12)
    count, channels, k_h, k_w = w.shape
    scale = max(1, math.ceil(FILTER_CELL_PX / max(k_h, k_w)))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell_h, cell_w = k_h * scale + FILTER_GAP_PX, k_w * scale + FILTER_GAP_PX
    grid = np.zeros((rows * cell_h + FILTER_GAP_PX, cols * cell_w + FILTER_GAP_PX, channels))
    for i in range(count):
        r, c = divmod(i, cols)
        tile = w[i].transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
        top, left = r * cell_h + FILTER_GAP_PX, c * cell_w + FILTER_GAP_PX
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    pixels = (grid * 255).round().astype(np.uint8)
    return Image.fromarray(
        pixels[..., 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB"
    )


def write_filters(layer: str, weight: npt.NDArray[np.floating], folder: Path) -> dict[str, object]:
    """Write filters/<layer>.png of conv weights (out, in, kH, kW); returns its metadata entry."""
    relative = f"filters/{layer}.png"
    (folder / "filters").mkdir(parents=True, exist_ok=True)
    filter_grid(weight).save(folder / relative)
    return {"layer": layer, "file": relative, "shape": list(weight.shape)}


def write_cam_weights(weights: npt.NDArray[np.floating], path: Path) -> None:
    """(num_classes, C) float32 `.npy`, no pickle."""
    np.save(path, np.asarray(weights, dtype=np.float32), allow_pickle=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
