"""Datasets by name: `fashion-mnist`, `digits`, `cifar10`, `imagefolder:<path>`.

Each comes with its labels, its preprocessing (the service's eval pipeline, mean/std measured on
its training split) and whether horizontal flips suit it. Nothing downloads unless `download`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from training.data.idx import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    IdxFormatError,
    load_fashion_mnist,
)
from training.data.images import load_image
from training.data.transforms import Preprocessing
from training.errors import UserError
from training.imagenet import IMAGENET_MEAN, IMAGENET_STD

DATASETS = ("fashion-mnist", "digits", "cifar10", "imagefolder:<path>")
DIGITS_SIZE = 28
DIGITS_MAX_VALUE = 16
DIGITS_TEST_FRACTION = 0.2
IMAGEFOLDER_TEST_FRACTION = 0.1
SPLIT_SEED = 0
IMAGEFOLDER_PREFIX = "imagefolder:"
DEFAULT_CIFAR10_DIR = Path("data/cifar10")
DEFAULT_DOWNLOAD_DIR = Path("data")
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
Sample = tuple[Any, int]


class ArrayImageDataset(Dataset[Sample]):
    """uint8 images (N, H, W) or (N, H, W, 3) served as PIL images through `transform`."""

    def __init__(
        self, images: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64], transform: Any = None
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image: Any = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Any) -> ArrayImageDataset:
        return ArrayImageDataset(self.images, self.labels, transform)


@dataclass(frozen=True)
class DatasetBundle:
    """Train and test splits without transforms (`with_transforms` adds them)."""

    name: str
    train: ArrayImageDataset | Dataset[Sample]
    test: ArrayImageDataset | Dataset[Sample]
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    allow_flip: bool


def _stats(images: npt.NDArray[np.uint8]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, rounded to 4 places as metadata.json shows."""
    scaled = images.reshape(len(images), -1, 1 if images.ndim == 3 else images.shape[-1]) / 255.0
    mean = scaled.mean(axis=(0, 1))
    std = scaled.std(axis=(0, 1))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _array_bundle(
    name: str,
    train: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    test: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]],
    labels: Sequence[str],
    allow_flip: bool,
) -> DatasetBundle:
    images = train[0]
    mean, std = _stats(images)
    side = images.shape[1]
    pre = Preprocessing("L" if images.ndim == 3 else "RGB", side, side, mean, std)
    return DatasetBundle(
        name,
        ArrayImageDataset(*train),
        ArrayImageDataset(*test),
        tuple(labels),
        pre,
        allow_flip,
    )


def _fashion_mnist(data_dir: Path | None, download: bool) -> DatasetBundle:
    directory = data_dir or DEBIAN_FASHION_MNIST_DIR
    if download and not (directory / "t10k-labels-idx1-ubyte.gz").is_file():
        directory = _download_fashion_mnist(data_dir or DEFAULT_DOWNLOAD_DIR)
    try:
        train = load_fashion_mnist(directory, train=True)
        test = load_fashion_mnist(directory, train=False)
    except FileNotFoundError as err:
        raise UserError(
            f"Fashion-MNIST not found: {err}; apt-get install dataset-fashion-mnist, "
            "or pass --data-dir (or --download)"
        ) from err
    except (IdxFormatError, OSError, EOFError) as err:  # truncated or not gzip/IDX at all
        raise UserError(f"Fashion-MNIST files in {directory} are unreadable: {err}") from err
    return _array_bundle("fashion-mnist", train, test, FASHION_MNIST_LABELS, allow_flip=True)


def _download_fashion_mnist(root: Path) -> Path:
    """Fetch the IDX files with torchvision (only with --download); returns their folder."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"downloading Fashion-MNIST into {root} failed: {err}") from err
    return root / "FashionMNIST" / "raw"


def _digits() -> DatasetBundle:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    digits = load_digits()
    scaled = np.clip(digits.images * (255 / DIGITS_MAX_VALUE), 0, 255).astype(np.uint8)
    upscaled = np.stack(
        [
            np.asarray(
                Image.fromarray(img).resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BILINEAR)
            )
            for img in scaled
        ]
    )
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_test = int(len(labels) * DIGITS_TEST_FRACTION)
    test_idx, train_idx = order[:n_test], order[n_test:]
    return _array_bundle(
        "digits",
        (upscaled[train_idx], labels[train_idx]),
        (upscaled[test_idx], labels[test_idx]),
        [str(d) for d in range(10)],
        allow_flip=False,  # a flipped 2 or 7 is not a digit
    )


def _cifar10(data_dir: Path | None, download: bool) -> DatasetBundle:
    from torchvision.datasets import CIFAR10

    root = data_dir or DEFAULT_CIFAR10_DIR
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:
        folder = root / CIFAR10.base_folder
        if not folder.is_dir():
            raise UserError(
                f"CIFAR-10 not found under {root} ({CIFAR10.base_folder}): "
                "pass --data-dir or --download"
            ) from err
        raise UserError(
            f"CIFAR-10 files in {folder} are missing or unreadable "
            f"({', '.join(_bad_cifar10_files(folder)) or err}): "
            "replace the folder, or delete it and pass --download"
        ) from err

    def arrays(ds: Any) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)

    return _array_bundle("cifar10", arrays(train), arrays(test), CIFAR10_LABELS, allow_flip=True)


def _bad_cifar10_files(folder: Path) -> list[str]:
    """The files of `cifar-10-batches-py` that are absent or fail torchvision's md5 check."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    expected = [
        *CIFAR10.train_list,
        *CIFAR10.test_list,
        [CIFAR10.meta["filename"], CIFAR10.meta["md5"]],
    ]
    bad = []
    for name, md5 in expected:
        path = folder / name
        if not path.is_file():
            bad.append(f"{name} missing")
        elif not check_integrity(str(path), md5):
            bad.append(f"{name} corrupt")
    return bad


class _ImageFolder(ImageFolder):  # type: ignore[misc]  # torchvision is untyped
    """`ImageFolder` reading through `load_image`; with `class_to_idx` (the train split's), its
    class folders take those indices, so a val split lacking a train class keeps the labels."""

    def __init__(self, root: Path, class_to_idx: dict[str, int] | None = None) -> None:
        self._train_class_to_idx = class_to_idx
        super().__init__(str(root), loader=load_image)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes, found = super().find_classes(directory)
        train = self._train_class_to_idx
        if train is None:
            return classes, found
        unknown = [c for c in classes if c not in train]
        if unknown:
            raise UserError(
                f"imagefolder: {directory} has class folder(s) {', '.join(unknown)} that the "
                f"train split lacks (train classes: {', '.join(sorted(train))})"
            )
        return sorted(train, key=train.__getitem__), {c: train[c] for c in classes}


def stratified_holdout(
    targets: Sequence[int], fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """Held-out and kept indices: `fraction` of each class (rounded, at least one image of every
    class that has two or more, so each such class is both trained and evaluated), at least one
    image in all; a fixed shuffle per class, both lists in index order."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(targets):
        by_class.setdefault(int(target), []).append(index)
    held: list[int] = []
    for members in by_class.values():
        count = max(1, round(len(members) * fraction)) if len(members) >= 2 else 0
        held += [members[i] for i in rng.permutation(len(members))[:count]]
    if not held and len(targets) > 0:
        held = [int(rng.integers(len(targets)))]
    chosen = set(held)
    return sorted(held), [i for i in range(len(targets)) if i not in chosen]


def _imagefolder(path: Path, image_size: int, color_mode: str) -> DatasetBundle:
    if not path.is_dir():
        raise UserError(f"imagefolder: {path} is not a directory of class folders")
    splits = [path / s for s in ("train", "val", "test")]
    try:
        if splits[0].is_dir() and (splits[1].is_dir() or splits[2].is_dir()):
            train_folder = _ImageFolder(splits[0])
            classes = train_folder.classes
            train: Dataset[Sample] = train_folder
            test: Dataset[Sample] = _ImageFolder(
                splits[1] if splits[1].is_dir() else splits[2], train_folder.class_to_idx
            )
        else:
            full = _ImageFolder(path)
            classes = full.classes
            held, kept = stratified_holdout(full.targets, IMAGEFOLDER_TEST_FRACTION)
            test, train = Subset(full, held), Subset(full, kept)
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"imagefolder: {err}") from err
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if color_mode == "RGB" else ((0.5,), (0.5,))
    pre = Preprocessing("RGB" if color_mode == "RGB" else "L", image_size, image_size, mean, std)
    return DatasetBundle(
        "imagefolder", train, test, tuple(classes), pre.for_size(image_size), allow_flip=True
    )


def image_paths(dataset: Dataset[Sample]) -> frozenset[Path]:
    """The image files (resolved) an ImageFolder split reads; empty for in-memory datasets."""
    if isinstance(dataset, Subset):
        inner = dataset.dataset
        if isinstance(inner, ImageFolder):
            return frozenset(Path(inner.samples[i][0]).resolve() for i in dataset.indices)
        return frozenset()
    if isinstance(dataset, ImageFolder):
        return frozenset(Path(path).resolve() for path, _ in dataset.samples)
    return frozenset()


def absolute_spec(spec: str) -> str:
    """`imagefolder:<path>` with the path made absolute, so that a checkpoint (and export,
    evaluate, a resume) finds the tree from any working directory; other specs as they are."""
    folder = spec.removeprefix(IMAGEFOLDER_PREFIX)
    if not spec.startswith(IMAGEFOLDER_PREFIX) or not folder:
        return spec
    return f"{IMAGEFOLDER_PREFIX}{Path(folder).expanduser().resolve()}"


def load_dataset(
    spec: str,
    data_dir: Path | None = None,
    *,
    download: bool = False,
    image_size: int | None = None,
    color_mode: str = "RGB",
) -> DatasetBundle:
    """The dataset named `spec`; `image_size` rescales (e.g. 224 for the ImageNet-style archs)."""
    if spec == "fashion-mnist":
        bundle = _fashion_mnist(data_dir, download)
    elif spec == "digits":
        bundle = _digits()
    elif spec == "cifar10":
        bundle = _cifar10(data_dir, download)
    elif spec.startswith(IMAGEFOLDER_PREFIX):
        folder = spec.removeprefix(IMAGEFOLDER_PREFIX)
        if not folder.strip():
            raise UserError("imagefolder: needs a path (imagefolder:<directory of class folders>)")
        return _imagefolder(Path(folder), image_size or 224, color_mode)
    else:
        raise UserError(f"unknown dataset {spec!r}; choose from {', '.join(DATASETS)}")
    if image_size is not None and image_size != bundle.preprocessing.center_crop:
        bundle = DatasetBundle(
            bundle.name,
            bundle.train,
            bundle.test,
            bundle.labels,
            bundle.preprocessing.for_size(image_size),
            bundle.allow_flip,
        )
    return bundle


def with_transform(dataset: Dataset[Sample], transform: Any) -> Dataset[Sample]:
    """The same samples through `transform` (array datasets, ImageFolder, or a Subset of one)."""
    if isinstance(dataset, ArrayImageDataset):
        return dataset.with_transform(transform)
    if isinstance(dataset, Subset):
        return Subset(with_transform(dataset.dataset, transform), dataset.indices)
    import copy

    clone = copy.copy(dataset)
    clone.transform = transform  # type: ignore[attr-defined]
    return clone


def subset(dataset: Dataset[Sample], size: int | None, seed: int = SPLIT_SEED) -> Dataset[Sample]:
    """A fixed random `size`-sample subset (all samples when `size` is None or too large)."""
    total = len(dataset)  # type: ignore[arg-type]
    if size is None or size >= total:
        return dataset
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:size].tolist())
