"""Export the web page's sample images to service/static/samples/ with a manifest.

The first Fashion-MNIST test image of each class (28×28 greyscale PNG, as in the dataset) and two
small photos from scikit-learn's sample images (resized JPEG). Entries of the manifest it does
not make (hand-made crops of the photos) are kept as they are. Run once, commit the output:

    .venv/bin/python -m tests.web.make_samples
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.idx import DEBIAN_FASHION_MNIST_DIR, FASHION_MNIST_LABELS, load_fashion_mnist

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = REPO_ROOT / "service" / "static" / "samples"
MANIFEST = "samples.json"
PHOTOS = ("china.jpg", "flower.jpg")
PHOTO_WIDTH_PX = 224
PHOTO_QUALITY = 82


def export_fashion(out_dir: Path, data_dir: Path) -> list[dict[str, object]]:
    images, labels = load_fashion_mnist(data_dir, train=False)
    entries: list[dict[str, object]] = []
    for cls, label in enumerate(FASHION_MNIST_LABELS):
        index = int(np.flatnonzero(labels == cls)[0])
        name = f"fashion-{index:05d}.png"
        Image.fromarray(images[index], mode="L").save(out_dir / name, optimize=True)
        entries.append(
            {
                "file": name,
                "title": label,
                "label": label,
                "source": f"Fashion-MNIST test image {index}",
                "color_mode": "L",
                "size": [images.shape[2], images.shape[1]],
                "dataset": "fashion-mnist",
            }
        )
    return entries


def export_photos(out_dir: Path) -> list[dict[str, object]]:
    import sklearn.datasets

    images_dir = Path(sklearn.datasets.__file__).parent / "images"
    entries: list[dict[str, object]] = []
    for photo in PHOTOS:
        with Image.open(images_dir / photo) as image:
            height = round(image.height * PHOTO_WIDTH_PX / image.width)
            small = image.convert("RGB").resize((PHOTO_WIDTH_PX, height), Image.Resampling.LANCZOS)
        name = f"photo-{Path(photo).stem}.jpg"
        small.save(out_dir / name, quality=PHOTO_QUALITY, optimize=True)
        entries.append(
            {
                "file": name,
                "title": f"Photo: {Path(photo).stem}",
                "label": None,
                "source": f"scikit-learn sample image {photo}",
                "color_mode": "RGB",
                "size": [small.width, small.height],
                "dataset": None,
            }
        )
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--data-dir", type=Path, default=DEBIAN_FASHION_MNIST_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    entries = export_fashion(args.out, args.data_dir) + export_photos(args.out)
    made = {entry["file"] for entry in entries}
    manifest = args.out / MANIFEST
    if manifest.is_file():
        kept = json.loads(manifest.read_text())["samples"]
        entries += [entry for entry in kept if entry["file"] not in made]
    (args.out / MANIFEST).write_text(json.dumps({"samples": entries}, indent=2) + "\n")
    logger.info("wrote %d samples to %s", len(entries), args.out)


if __name__ == "__main__":
    main()
