"""Reader for the IDX format of (Fashion-)MNIST, gzipped or plain; numpy only, no torch.

Tests on the service side read Fashion-MNIST through this module too, so it must stay free of torch.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_IDX_DTYPES: dict[int, type[np.generic]] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.int16,
    0x0C: np.int32,
    0x0D: np.float32,
    0x0E: np.float64,
}


class IdxFormatError(ValueError):
    """The file is not a well-formed IDX file."""


def read_idx(path: Path) -> npt.NDArray[np.generic]:
    """Read one IDX file (`.gz` or plain) into an array of its declared shape and dtype."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: bad IDX magic number")
    dtype = np.dtype(_IDX_DTYPES[data[2]]).newbyteorder(">")
    ndim = data[3]
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise IdxFormatError(f"{path}: truncated header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header_end != expected:
        raise IdxFormatError(f"{path}: expected {expected} data bytes for shape {shape}")
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load_fashion_mnist(
    data_dir: Path = DEBIAN_FASHION_MNIST_DIR, *, train: bool
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the train or test split."""
    prefix = "train" if train else "t10k"
    images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise IdxFormatError(
            f"{data_dir}: images {images.shape} do not match labels {labels.shape}"
        )
    return images.astype(np.uint8), labels.astype(np.int64)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    # Callers say how to get the files (training.data.datasets: apt-get, --data-dir, --download).
    raise FileNotFoundError(f"{stem}[.gz] not found in {data_dir}")
