"""The model-repository metadata schema (docs/repository.md): the one definition in code.

`training.export` writes `metadata.json`; the service reads it through `ModelMetadata`. This is
the one module of the service that training imports (for the name rule, `NAME_PATTERN`); tests on
the training side validate what export writes against this model. Nothing here imports torch,
ONNX Runtime or the rest of the service.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION: Final = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
NAME_RE = re.compile(NAME_PATTERN)
MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"
COLOR_MODE_CHANNELS = {"L": 1, "RGB": 3}
Precision = Literal["float32", "float16", "int8"]


# The shorter side is resized to at most this many times the crop (ImageNet's is 256/224).
MAX_RESIZE_RATIO = 4
MAX_INT_DIGITS = 18  # below 2**63: every integer a request or folder name may hold


def is_valid_name(name: str) -> bool:
    """True for a model name allowed in the repository (also the rule for path parts)."""
    return bool(NAME_RE.fullmatch(name)) and name not in {".", ".."}


def ascii_int(text: str | bytes) -> int | None:
    """A non-negative integer written in at most MAX_INT_DIGITS ASCII digits ("¹".isdigit() is
    True; Python refuses to convert more than 4,300 digits, and no count, length or version
    this service handles needs more than 18); None for anything else."""
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_INT_DIGITS:
        return None
    return int(text)


def parse_version(text: str) -> int | None:
    """A version as a folder or URL writes it: an integer >= 1 (`ascii_int`); None for anything
    else."""
    version = ascii_int(text)
    return version if version is not None and version >= 1 else None


def check_relative_file(path: str) -> str:
    """Refuse anything but a plain relative path below the version folder."""
    parts = PurePosixPath(path).parts
    if (
        not parts
        or path.startswith("/")
        or "\\" in path
        or any(p in {"", ".", ".."} for p in parts)
    ):
        raise ValueError(f"{path!r} must be a relative path inside the version folder")
    return path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    name: str = Field(description="ONNX input name.")
    shape: tuple[int, int, int] = Field(description="(C, H, W); the batch axis is dynamic.")
    dtype: Literal["float32"] = "float32"
    color_mode: Literal["L", "RGB"] = Field(description="PIL mode images are converted to.")

    @model_validator(mode="after")
    def _channels_match_mode(self) -> InputSpec:
        if self.shape[0] != COLOR_MODE_CHANNELS[self.color_mode]:
            raise ValueError(f"color_mode {self.color_mode} needs {self.shape[0]} channels")
        if min(self.shape) < 1:
            raise ValueError("input shape must be positive")
        return self


class Preprocessing(_Strict):
    resize: int = Field(
        ge=1, description="Shorter image side is resized to this (torchvision Resize(int))."
    )
    center_crop: int = Field(ge=1, description="Square centre crop after resize.")
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bilinear"
    mean: list[float] = Field(min_length=1, description="Per-channel mean on the 0..1 scale.")
    std: list[float] = Field(min_length=1, description="Per-channel std on the 0..1 scale.")

    @field_validator("std")
    @classmethod
    def _positive_std(cls, std: list[float]) -> list[float]:
        if any(s <= 0 for s in std):
            raise ValueError("std must be positive")
        return std

    @model_validator(mode="after")
    def _resize_near_the_crop(self) -> Preprocessing:
        if self.resize > MAX_RESIZE_RATIO * self.center_crop:
            raise ValueError(
                f"resize {self.resize} is more than {MAX_RESIZE_RATIO} x center_crop "
                f"{self.center_crop}: every image would be enlarged to be mostly cut away"
            )
        return self


class OutputSpec(_Strict):
    name: str = Field(description="ONNX output holding the logits, shape (N, num_classes).")


class FeatureMap(_Strict):
    layer: str = Field(description="Module path in the PyTorch model, e.g. features.conv1.")
    output: str = Field(description="ONNX output name, fm.<layer>.")
    shape: tuple[int, int, int] = Field(description="(C, H, W) per image.")


class FilterImage(_Strict):
    layer: str = Field(description="Conv layer whose weights the PNG shows.")
    file: str = Field(description="PNG path relative to the version folder.")
    shape: tuple[int, int, int, int] = Field(description="Weight shape (out, in, kH, kW).")

    @field_validator("file")
    @classmethod
    def _file_inside(cls, file: str) -> str:
        return check_relative_file(file)


class CamSpec(_Strict):
    feature_map: str = Field(description="ONNX output name of the last conv feature map.")
    weights: str = Field(description=".npy file (num_classes, C) float32, relative path.")

    @field_validator("weights")
    @classmethod
    def _weights_inside(cls, weights: str) -> str:
        return check_relative_file(weights)


class Source(_Strict):
    kind: Literal["training", "weights", "onnx"] = Field(
        description="training: a convserve training run's checkpoint; weights: a torchvision "
        "state dict (pretrained weights); onnx: an ONNX classifier made elsewhere."
    )
    name: str | None = Field(
        None, description="torchvision weights name, e.g. ResNet50_Weights.IMAGENET1K_V2."
    )
    file: str | None = Field(None, description="File name the weights or graph were read from.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of that file.")


class ExportInfo(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    opset: int
    torch: str | None = Field(None, description="torch version of the export; None: imported.")
    parity_max_abs_diff: float = Field(
        description="Largest per-output error max|onnx-torch|/max(1,max|torch|) on real samples."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of model.onnx.")
    precision: Precision = Field(
        "float32",
        description="Weights and compute of the graph (its inputs and outputs are float32 "
        "either way); float16 from `training.export --fp16`, int8 (statically quantized, "
        "details in `quantization`) from `--int8`. Absent in older versions: float32.",
    )


class ModelMetadata(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    architecture: str
    input: InputSpec
    preprocessing: Preprocessing
    output: OutputSpec
    feature_maps: list[FeatureMap] = Field(default_factory=list)
    cam: CamSpec | None = None
    filters: list[FilterImage] = Field(default_factory=list)
    labels: list[str] = Field(min_length=2)
    max_batch_size: int = Field(ge=1)
    training: dict[str, Any] = Field(default_factory=dict)
    source: Source | None = Field(
        None, description="Where the weights came from; absent in older versions (training)."
    )
    export: ExportInfo

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        channels = self.input.shape[0]
        if len(self.preprocessing.mean) != channels or len(self.preprocessing.std) != channels:
            raise ValueError(f"mean/std need {channels} values for {self.input.color_mode}")
        _, height, width = self.input.shape
        if not self.preprocessing.center_crop == height == width:
            raise ValueError("center_crop must equal the square input height and width")
        if self.preprocessing.resize < self.preprocessing.center_crop:
            raise ValueError("resize must be at least center_crop")
        layers = [fm.layer for fm in self.feature_maps]
        outputs = [fm.output for fm in self.feature_maps]
        if len(set(layers)) != len(layers) or len(set(outputs)) != len(outputs):
            raise ValueError("feature map layers and outputs must be unique")
        if self.output.name in outputs:
            raise ValueError("logits output cannot also be a feature map")
        if self.cam is not None and self.cam.feature_map not in outputs:
            raise ValueError(f"cam.feature_map {self.cam.feature_map!r} is not a feature map")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def feature_map(self, layer: str) -> FeatureMap | None:
        """The feature map of `layer`, by full name or unique last part (see `by_layer`)."""
        return by_layer(self.feature_maps, layer)

    def filter_image(self, layer: str) -> FilterImage | None:
        """The filter image of `layer`, named as a feature map is (see `by_layer`)."""
        return by_layer(self.filters, layer)


Layered = TypeVar("Layered", FeatureMap, FilterImage)


def by_layer(items: list[Layered], name: str) -> Layered | None:
    """The item of layer `name`, else of the one layer whose last part is `name` (`conv1` for
    `features.conv1`); None when there is none or several."""
    exact = next((item for item in items if item.layer == name), None)
    if exact is not None:
        return exact
    found = [item for item in items if item.layer.rsplit(".", 1)[-1] == name]
    return found[0] if len(found) == 1 else None
