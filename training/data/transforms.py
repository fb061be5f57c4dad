"""Preprocessing (the service's exact eval pipeline) and the training augmentation presets.

Eval: PIL `convert(color_mode)` → `Resize(resize)` (shorter side) → `CenterCrop(center_crop)` →
`ToTensor()` (/255) → `Normalize(mean, std)`; the service implements the same steps from
metadata.json, so accuracy measured here is the accuracy served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from PIL import Image
from torchvision import transforms as T

from training.errors import UserError
from training.imagenet import RESIZE_RATIO

SMALL_IMAGE_MAX = 64
ERASING_PROBABILITY = 0.25
AUGMENT_PRESETS = ("none", "flip", "flip-crop", "flip-crop-erase")
Interpolation = Literal["nearest", "bilinear", "bicubic"]
_INTERPOLATION = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


@dataclass(frozen=True)
class Preprocessing:
    color_mode: Literal["L", "RGB"]
    resize: int
    center_crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation = "bilinear"

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "L" else 3

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (checkpoint and metadata.json)."""
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(
            color_mode=data["color_mode"],
            resize=int(data["resize"]),
            center_crop=int(data["center_crop"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            interpolation=data.get("interpolation", "bilinear"),
        )

    def for_size(self, image_size: int) -> Preprocessing:
        """The same normalisation for another input size (resize keeps the 256/224 ratio)."""
        resize = image_size if image_size < SMALL_IMAGE_MAX else round(image_size * RESIZE_RATIO)
        return Preprocessing(
            self.color_mode, resize, image_size, self.mean, self.std, self.interpolation
        )


class ConvertMode:
    """`PIL.Image.convert(mode)` as a picklable transform (DataLoader workers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert(self.mode)


def _to_normalized_tensor(pre: Preprocessing) -> list[Any]:
    return [T.ToTensor(), T.Normalize(pre.mean, pre.std)]


def eval_transform(pre: Preprocessing) -> T.Compose:
    return T.Compose(
        [
            ConvertMode(pre.color_mode),
            T.Resize(pre.resize, interpolation=_INTERPOLATION[pre.interpolation]),
            T.CenterCrop(pre.center_crop),
            *_to_normalized_tensor(pre),
        ]
    )


def train_transform(pre: Preprocessing, preset: str, allow_flip: bool) -> T.Compose:
    """Augmentation preset on top of the eval geometry; `allow_flip` is False for digits."""
    if preset not in AUGMENT_PRESETS:
        raise UserError(
            f"unknown augmentation {preset!r}; choose from {', '.join(AUGMENT_PRESETS)}"
        )
    if preset == "none":
        return eval_transform(pre)
    size = pre.center_crop
    interpolation = _INTERPOLATION[pre.interpolation]
    steps: list[Any] = [ConvertMode(pre.color_mode)]
    if preset == "flip":
        steps += [T.Resize(pre.resize, interpolation=interpolation), T.CenterCrop(size)]
    elif size < SMALL_IMAGE_MAX:
        # Small images: shift by up to 1/14 of the side (2 px at 28) instead of rescaling.
        steps += [
            T.Resize(pre.resize, interpolation=interpolation),
            T.CenterCrop(size),
            T.RandomCrop(size, padding=max(1, size // 14)),
        ]
    else:
        steps.append(T.RandomResizedCrop(size, interpolation=interpolation))
    if allow_flip:
        steps.append(T.RandomHorizontalFlip())
    steps += _to_normalized_tensor(pre)
    if preset == "flip-crop-erase":
        steps.append(T.RandomErasing(p=ERASING_PROBABILITY))
    return T.Compose(steps)
