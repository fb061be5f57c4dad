"""Turn raw ORT outputs into results: softmax top-k, feature maps, CAM heatmaps."""

from __future__ import annotations

import base64

import numpy as np
import numpy.typing as npt

from service import render
from service.errors import CamUnavailable, InvalidOption, LayerNotFound
from service.metadata import FeatureMap, ModelMetadata
from service.runtime import Outputs
from service.schemas import (
    CamResult,
    ClassifyOptions,
    FeatureMapResult,
    ImageResult,
    Prediction,
)

ALL_LAYERS = "all"


def softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - float(np.max(logits))
    exp = np.exp(shifted)
    return exp / exp.sum()  # type: ignore[no-any-return]


def top_k(logits: npt.NDArray[np.float32], labels: list[str], k: int) -> list[Prediction]:
    """The k most probable classes (k capped at the class count), most probable first; a tie
    goes to the lower index."""
    probabilities = softmax(logits)
    order = np.argsort(-probabilities, kind="stable")[: min(k, len(labels))].tolist()
    return [
        Prediction(label=labels[i], index=i, probability=float(probabilities[i])) for i in order
    ]


# Feature-map values one answer may carry (~43 MB as base64 float16): e.g. every map of a
# ResNet-18 at the default 16 channels for 62 images, or at all channels for 14.
MAX_MAP_VALUES = 16 * 2**20


def top1(logits: npt.NDArray[np.float32]) -> tuple[int, float]:
    """The most probable class and its probability: the first of `top_k`, the same values."""
    probabilities = softmax(logits)
    index = int(np.argmax(probabilities))
    return index, float(probabilities[index])


def requested_maps(metadata: ModelMetadata, options: ClassifyOptions) -> list[FeatureMap]:
    """Feature maps named in the options (validated before any work is done), each once
    however often it is named: a repeated name must not multiply the response's size.
    InvalidOption when maps are asked of a model that exports none (an empty answer would read
    as if the layers had nothing to show); LayerNotFound for a layer it does not export."""
    if not options.feature_maps:
        return []
    if not metadata.feature_maps:
        raise InvalidOption(
            f"{metadata.name}/{metadata.version} exports no feature maps (its metadata.json "
            f"lists none), so feature_maps={','.join(options.feature_maps)} cannot be answered",
            model=metadata.name,
        )
    if ALL_LAYERS in options.feature_maps:
        return list(metadata.feature_maps)
    maps: list[FeatureMap] = []
    for layer in options.feature_maps:
        fm = metadata.feature_map(layer)
        if fm is None:
            known = ", ".join(m.layer for m in metadata.feature_maps) or "none"
            raise LayerNotFound(
                f"{metadata.name} has no feature-map layer {layer!r} (known: {known})",
                model=metadata.name,
            )
        if fm not in maps:
            maps.append(fm)
    return maps


def required_outputs(
    metadata: ModelMetadata, options: ClassifyOptions, images: int
) -> frozenset[str]:
    """ORT outputs an image needs beyond the logits; CamUnavailable when the metadata has no
    `cam` entry; InvalidOption when the maps asked for `images` images would hold more than
    MAX_MAP_VALUES values (a request of small images must not ask for hundreds of megabytes)."""
    maps = requested_maps(metadata, options)
    values = images * sum(min(options.channels, c) * h * w for c, h, w in (m.shape for m in maps))
    if values > MAX_MAP_VALUES:
        raise InvalidOption(
            f"the feature maps asked for hold {values} values for {images} image(s), more than "
            f"{MAX_MAP_VALUES}: ask for fewer images, layers or channels",
            model=metadata.name,
        )
    outputs = {fm.output for fm in maps}
    if options.cam:
        if metadata.cam is None:
            raise CamUnavailable(
                f"{metadata.name}/{metadata.version} has no class activation map: its "
                "metadata.json has no cam entry (only models with a global-average-pool + "
                "linear head can have one)",
                model=metadata.name,
            )
        outputs.add(metadata.cam.feature_map)
    return frozenset(outputs)


def most_active(maps: npt.NDArray[np.float32], count: int) -> list[int]:
    """Indices of the `count` channels with the largest mean activation, most active first."""
    means = maps.reshape(maps.shape[0], -1).mean(axis=1)
    return [int(i) for i in np.argsort(-means, kind="stable")[:count]]


def encode_feature_map(
    fm: FeatureMap, maps: npt.NDArray[np.float32], channels: int, map_format: str
) -> FeatureMapResult:
    """One layer's maps (C, H, W): the most active channels as a PNG sheet or raw float16."""
    chosen = most_active(maps, channels)
    selected = np.ascontiguousarray(maps[chosen])
    low, high = float(selected.min()), float(selected.max())
    data_shape: tuple[int, int, int] | None = None
    grid: tuple[int, int] | None = None
    if map_format == "float16":
        data = selected.astype("<f2").tobytes()
        data_shape = (len(chosen), fm.shape[1], fm.shape[2])
    else:
        data, grid = render.contact_sheet(selected, low, high), render.grid_shape(len(chosen))
    return FeatureMapResult(
        layer=fm.layer,
        shape=fm.shape,
        channels=chosen,
        format="float16" if map_format == "float16" else "png",
        data=base64.b64encode(data).decode("ascii"),
        data_shape=data_shape,
        grid=grid,
        min=low,
        max=high,
    )


def class_activation_map(
    weights: npt.NDArray[np.float32], maps: npt.NDArray[np.float32], index: int
) -> npt.NDArray[np.float32]:
    """ReLU(sum_k w[index, k] * maps[k]) of shape (H, W); weights (classes, C), maps (C, H, W)."""
    cam = np.tensordot(weights[index], maps, axes=1)
    return np.maximum(cam, 0).astype(np.float32)


def build_result(
    metadata: ModelMetadata,
    outputs: Outputs,
    options: ClassifyOptions,
    cam_weights: npt.NDArray[np.float32] | None,
) -> ImageResult:
    predictions = top_k(outputs[metadata.output.name], metadata.labels, options.top_k)
    result = ImageResult(predictions=predictions)
    maps = requested_maps(metadata, options)
    if maps:
        result.feature_maps = [
            encode_feature_map(fm, outputs[fm.output], options.channels, options.map_format)
            for fm in maps
        ]
    if options.cam and metadata.cam is not None and cam_weights is not None:
        best = predictions[0]
        cam = class_activation_map(cam_weights, outputs[metadata.cam.feature_map], best.index)
        _, height, width = metadata.input.shape
        png = render.heatmap(cam, (width, height))
        result.cam = CamResult(
            label=best.label, index=best.index, data=base64.b64encode(png).decode("ascii")
        )
    return result
