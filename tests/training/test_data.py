from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Subset
from torchvision import transforms as T

from service.preprocess import decode
from training.data.datasets import load_dataset, stratified_holdout, with_transform
from training.data.images import load_image
from training.data.transforms import Preprocessing, eval_transform, train_transform
from training.errors import UserError


def test_fashion_mnist_stats_and_labels(fashion_dir: Path) -> None:
    data = load_dataset("fashion-mnist", fashion_dir)
    assert len(data.train) == 60000  # type: ignore[arg-type]
    assert len(data.test) == 10000  # type: ignore[arg-type]
    assert data.labels[9] == "Ankle boot"
    assert data.preprocessing == Preprocessing("L", 28, 28, (0.286,), (0.353,))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path)


def test_unknown_dataset_lists_choices() -> None:
    with pytest.raises(UserError, match="fashion-mnist.*digits.*cifar10.*imagefolder"):
        load_dataset("mnist")


def test_cifar10_without_files_does_not_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--download"):
        load_dataset("cifar10", tmp_path)
    assert not any(tmp_path.iterdir())


def test_digits_upscaled_no_flip() -> None:
    data = load_dataset("digits")
    image, label = with_transform(data.test, eval_transform(data.preprocessing))[0]
    assert image.shape == (1, 28, 28)
    assert 0 <= label <= 9
    assert not data.allow_flip


def test_imagefolder_split_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=32)
    assert data.labels == ("cat", "dog")
    assert len(data.train) + len(data.test) == 20  # type: ignore[arg-type]
    image, _ = with_transform(data.train, train_transform(data.preprocessing, "flip-crop", True))[0]
    assert image.shape == (3, 32, 32)


def test_imagefolder_holdout_keeps_every_class(tmp_path: Path) -> None:
    """A small, uneven folder: each class with two or more images is both trained and held out,
    a one-image class is trained on, and the two parts never share a file."""
    rng = np.random.default_rng(0)
    counts = {"common": 40, "rare": 3, "single": 1, "two": 2}
    for cls, count in counts.items():
        (tmp_path / cls).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=16)
    test, train = data.test, data.train
    assert isinstance(test, Subset)
    assert isinstance(train, Subset)
    targets = test.dataset.targets
    held = collections.Counter(data.labels[targets[i]] for i in test.indices)
    kept = collections.Counter(data.labels[targets[i]] for i in train.indices)
    assert held == {"common": 4, "rare": 1, "two": 1}
    assert kept == {"common": 36, "rare": 2, "single": 1, "two": 1}
    assert not set(test.indices) & set(train.indices)


def test_stratified_holdout_is_fixed_and_never_empty() -> None:
    targets = [0] * 30 + [1] * 10
    first = stratified_holdout(targets, 0.1)
    assert first == stratified_holdout(targets, 0.1)
    assert first != stratified_holdout(targets, 0.1, seed=1)
    assert len(first[0]) == 4
    assert sorted(first[0] + first[1]) == list(range(40))
    held, kept = stratified_holdout([0, 1, 2], 0.1)  # one image per class
    assert len(held) == 1
    assert len(kept) == 2


def _odd_images(folder: Path) -> dict[str, Path]:
    """Files whose pixels depend on how they are read: EXIF orientation, 16-bit grey, a palette
    with transparency, CMYK."""
    rng = np.random.default_rng(3)
    photo = Image.fromarray(rng.integers(0, 255, (18, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    files = {name: folder / name for name in ("exif.jpg", "grey16.png", "palette.png", "cmyk.jpg")}
    photo.save(files["exif.jpg"], exif=exif, quality=95)
    wide = rng.integers(2000, 60000, (18, 30), dtype=np.uint16)
    Image.fromarray(wide).save(files["grey16.png"])
    palette = photo.convert("P")
    palette.info["transparency"] = 0
    palette.save(files["palette.png"])
    photo.convert("CMYK").save(files["cmyk.jpg"])
    return files


def test_image_files_are_read_as_the_service_reads_them(tmp_path: Path) -> None:
    """Training, evaluation and calibration see the pixels the service classifies: a phone
    photo upright, a 16-bit grey scaled (not clipped to white)."""
    for name, path in _odd_images(tmp_path).items():
        served = decode(path.read_bytes(), color_mode="RGB", max_pixels=10**8)
        trained = load_image(path)
        assert trained.size == served.size, name
        np.testing.assert_array_equal(np.asarray(trained), np.asarray(served), err_msg=name)
    assert load_image(tmp_path / "exif.jpg").size == (18, 30)
    assert len(np.unique(np.asarray(load_image(tmp_path / "grey16.png")))) > 100
    folder = tmp_path / "tree"
    (folder / "odd").mkdir(parents=True)
    (tmp_path / "exif.jpg").rename(folder / "odd" / "exif.jpg")
    (folder / "odd" / "also.png").write_bytes((tmp_path / "grey16.png").read_bytes())
    data = load_dataset(f"imagefolder:{folder}", image_size=16)
    sizes = {data.train[0][0].size, data.test[0][0].size}  # type: ignore[index]
    assert sizes == {(18, 30), (30, 18)}


def test_eval_transform_is_the_service_pipeline() -> None:
    """convert → Resize(shorter side) → CenterCrop → ToTensor → Normalize, as the service does."""
    pre = Preprocessing("RGB", 36, 32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bicubic")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60, 80), dtype=np.uint8))
    rgb = image.convert("RGB")
    resized = rgb.resize((48, 36), Image.Resampling.BICUBIC)
    left, top = (48 - 32) // 2, (36 - 32) // 2
    cropped = resized.crop((left, top, left + 32, top + 32))
    expected = (T.ToTensor()(cropped) - torch.tensor(pre.mean)[:, None, None]) / torch.tensor(
        pre.std
    )[:, None, None]
    assert torch.allclose(eval_transform(pre)(image), expected, atol=1e-6)


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(UserError, match="flip-crop"):
        train_transform(Preprocessing("L", 28, 28, (0.5,), (0.5,)), "heavy", True)
