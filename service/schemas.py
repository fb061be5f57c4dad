"""Pydantic request and response bodies of the native API (docs/service.md, API)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.metadata import Precision, Source

DEFAULT_TOP_K = 5
DEFAULT_CHANNELS = 16
MapFormat = Literal["png", "float16"]


class ClassifyOptions(BaseModel):
    """Query parameters of the classify routes."""

    model_config = ConfigDict(frozen=True)
    top_k: int = Field(DEFAULT_TOP_K, ge=1, description="Predictions per image (capped).")
    feature_maps: tuple[str, ...] = Field(
        (), description="Layer names, or ('all',): feature maps to return."
    )
    channels: int = Field(DEFAULT_CHANNELS, ge=1, description="Most active channels per layer.")
    map_format: MapFormat = "png"
    cam: bool = False


class JsonImages(BaseModel):
    """JSON classify body: base64-encoded JPEG/PNG/WebP images."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"images": ["iVBORw0KGgoAAAANSUhEUgAA..."]}]},
    )
    images: list[str] = Field(min_length=1, description="Base64 of each encoded image.")


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class FeatureMapResult(BaseModel):
    layer: str
    shape: tuple[int, int, int] = Field(description="(C, H, W) of the whole layer.")
    channels: list[int] = Field(description="Channel indices shown, most active first.")
    format: MapFormat
    data: str = Field(
        description="base64: a PNG contact sheet (png), or little-endian float16 bytes of shape "
        "(len(channels), H, W) in C order (float16)."
    )
    data_shape: tuple[int, int, int] | None = Field(
        None, description="float16 only: (len(channels), H, W), the shape of the decoded bytes."
    )
    grid: tuple[int, int] | None = Field(
        None, description="(rows, cols) of the PNG contact sheet; tiles row-major, 1 px gaps."
    )
    min: float = Field(description="Value drawn black (png) / smallest value of the channels.")
    max: float = Field(description="Value drawn white (png) / largest value of the channels.")


class CamResult(BaseModel):
    label: str
    index: int
    format: Literal["png"] = "png"
    data: str = Field(description="base64 PNG heatmap at the model's input size.")


class ImageResult(BaseModel):
    predictions: list[Prediction]
    feature_maps: list[FeatureMapResult] | None = None
    cam: CamResult | None = None


class Timing(BaseModel):
    decode: float
    queue: float
    compute: float


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "lenet5-fashion",
                    "version": 1,
                    "results": [
                        {
                            "predictions": [
                                {"label": "Ankle boot", "index": 9, "probability": 0.971},
                                {"label": "Sneaker", "index": 7, "probability": 0.02},
                            ]
                        }
                    ],
                    "timing_ms": {"decode": 0.4, "queue": 0.9, "compute": 1.1},
                }
            ]
        }
    )
    model: str
    version: int
    results: list[ImageResult]
    timing_ms: Timing


class FeatureMapInfo(BaseModel):
    layer: str
    output: str
    shape: tuple[int, int, int]


class ModelSummary(BaseModel):
    name: str
    versions: list[int]
    default_version: int


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetail(BaseModel):
    name: str
    version: int = Field(description="The version described (the newest loaded).")
    versions: list[int]
    architecture: str
    labels: list[str]
    input: dict[str, Any]
    preprocessing: dict[str, Any]
    feature_maps: list[FeatureMapInfo]
    filters: list[str] = Field(description="Layers with a weight grid at .../filters/{layer}.")
    cam: bool
    max_batch_size: int
    training: dict[str, Any]
    source: Source = Field(
        description="Where the weights came from (metadata.json `source`); a version whose "
        'metadata has none was exported from a convserve training run: {"kind": "training"}.'
    )
    precision: Precision = Field(
        description="Weights and compute of model.onnx (metadata.json `export.precision`): "
        "float32, float16 or int8; inputs and outputs are float32 either way."
    )


class Health(BaseModel):
    status: Literal["ok", "loading", "not_ready"]
    provider: str | None = None
    models: dict[str, list[int]] = Field(default_factory=dict)
    missing: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
