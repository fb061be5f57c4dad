"""Image files read as the service reads the images it classifies: EXIF orientation applied,
16-bit greys scaled to 8 bits, palettes through their alpha (`service.preprocess.upright`), in
any format Pillow opens. Training, evaluation and int8 calibration all read files here, so a
model learns and is measured on the pixels it is later served. Nothing here needs torch."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from service.errors import UnsupportedImage
from service.preprocess import upright
from training.errors import UserError


class UnreadableImage(UserError):
    """An image file of an imagefolder tree that PIL cannot read.

    A DataLoader worker's exception is re-raised in the main process as `type(err)(text)`, the
    text holding the worker's traceback; only its last line, the original message, is kept, so
    `--workers N` still ends in one ERROR line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "\nOriginal Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def load_image(path: str | Path, what: str = "imagefolder") -> Image.Image:
    """An image file as RGB pixels, read as the service reads what it classifies (EXIF
    orientation, 16-bit greys scaled to 8 bits: `service.preprocess.upright`), in any format
    Pillow opens; an unreadable file is a `UserError` naming it (`what` says where from)."""
    try:
        with Image.open(path) as opened:
            return upright(opened, "RGB")
    except (OSError, ValueError, Image.DecompressionBombError, UnsupportedImage) as err:
        raise UnreadableImage(f"{what}: cannot read image {path}: {err}") from err
