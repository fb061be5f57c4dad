"""Class labels for models that did not come from a convserve training run.

`--labels imagenet` is torchvision's ImageNet-1k category list (the `meta["categories"]` of its
weights), shipped with this package as a text file (a test keeps it equal to torchvision's), so
`training.import_onnx` needs no torch. `--labels FILE` is one label per line (UTF-8; blank lines
at the end are ignored). Nothing here imports torch at module level.
"""

from __future__ import annotations

from collections import Counter
from importlib import resources
from pathlib import Path

from training.errors import UserError

IMAGENET = "imagenet"
IMAGENET_CLASSES = 1000
SHIPPED_IMAGENET_FILE = "imagenet_categories.txt"  # in training/data, equal to torchvision's


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (equal to torchvision's
    `meta["categories"]`; read from the shipped copy so that no torch import is needed)."""
    text = resources.files("training.data").joinpath(SHIPPED_IMAGENET_FILE).read_text("utf-8")
    return text.splitlines()


def read_labels_file(path: Path) -> list[str]:
    """One label per line (UTF-8, a byte-order mark as Windows editors write it ignored);
    UserError for a missing, unreadable or malformed file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read labels file {path}: {err}") from err
    labels = [line.strip() for line in text.rstrip("\n").splitlines()]
    if any(not label for label in labels):
        raise UserError(f"labels file {path}: line {labels.index('') + 1} is empty")
    duplicates = sorted(label for label, count in Counter(labels).items() if count > 1)
    if duplicates:
        raise UserError(f"labels file {path}: duplicate labels {duplicates[:5]}")
    return labels


def resolve_labels(choice: str, num_classes: int | None = None) -> list[str]:
    """`imagenet` or a labels file; when `num_classes` is given the count must match it."""
    labels = imagenet_categories() if choice == IMAGENET else read_labels_file(Path(choice))
    if num_classes is not None and len(labels) != num_classes:
        raise UserError(
            f"--labels {choice} has {len(labels)} labels but the model has {num_classes} outputs"
        )
    return labels
