from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service import postprocess
from service.errors import CamUnavailable, InvalidOption, LayerNotFound
from service.metadata import FeatureMap
from service.postprocess import (
    MAX_MAP_VALUES,
    build_result,
    class_activation_map,
    encode_feature_map,
    most_active,
    required_outputs,
    softmax,
    top1,
    top_k,
)
from service.render import grid_shape
from service.schemas import ClassifyOptions
from tests.service.tiny_model import TinyModel

LABELS = ["a", "b", "c", "d"]


def test_softmax_sums_to_one_and_is_stable() -> None:
    p = softmax(np.array([1000.0, 1001.0, 999.0], dtype=np.float32))
    assert np.isfinite(p).all()
    assert p.sum() == pytest.approx(1.0)
    assert p[1] > p[0] > p[2]


def test_top_k_sorted_labelled_and_capped() -> None:
    logits = np.array([0.1, 3.0, -1.0, 2.0], dtype=np.float32)
    preds = top_k(logits, LABELS, 3)
    assert [p.index for p in preds] == [1, 3, 0]
    assert [p.label for p in preds] == ["b", "d", "a"]
    probs = [p.probability for p in preds]
    assert probs == sorted(probs, reverse=True)
    expected = np.exp(3.0) / np.exp(logits.astype(np.float64)).sum()
    assert preds[0].probability == pytest.approx(expected)
    assert len(top_k(logits, LABELS, 50)) == len(LABELS)


@pytest.mark.parametrize("classes", [4, 10, 1000])
def test_top1_is_the_first_of_top_k(classes: int) -> None:
    """What the v2 classification path records is what a native request answers first, a tie
    at the top going to the lower index."""
    rng = np.random.default_rng(classes + 1)
    logits = rng.standard_normal(classes).astype(np.float32) * 4
    logits[classes // 2] = logits[classes // 3] = logits.max() + 1  # a tie at the top
    (first,) = top_k(logits, [str(i) for i in range(classes)], 1)
    assert top1(logits) == (first.index, first.probability)
    assert first.index == classes // 3


def test_most_active_channels_first() -> None:
    maps = np.zeros((4, 2, 2), dtype=np.float32)
    maps[2] += 5
    maps[0] += 3
    maps[3] -= 1
    assert most_active(maps, 3) == [2, 0, 1]


FM = FeatureMap(layer="l", output="fm.l", shape=(6, 5, 3))


def test_png_contact_sheet_decodes() -> None:
    maps = np.random.default_rng(0).standard_normal((6, 5, 3)).astype(np.float32)
    result = encode_feature_map(FM, maps, 4, "png")
    assert result.format == "png"
    assert len(result.channels) == 4
    assert result.grid == grid_shape(4) == (2, 2)
    sheet = Image.open(io.BytesIO(base64.b64decode(result.data)))
    assert sheet.size == (2 * 3 + 1, 2 * 5 + 1)  # (cols*W + gaps, rows*H + gaps)
    chosen = maps[result.channels]
    assert result.min == pytest.approx(float(chosen.min()))
    assert result.max == pytest.approx(float(chosen.max()))
    pixels = np.asarray(sheet)
    first_tile = pixels[:5, :3]
    expected = np.rint((chosen[0] - result.min) / (result.max - result.min) * 255)
    np.testing.assert_array_equal(first_tile, expected.astype(np.uint8))


def test_float16_roundtrip() -> None:
    maps = np.random.default_rng(1).standard_normal((6, 5, 3)).astype(np.float32)
    result = encode_feature_map(FM, maps, 16, "float16")
    assert result.channels == most_active(maps, 6)
    assert result.data_shape == (6, 5, 3)
    raw = np.frombuffer(base64.b64decode(result.data), dtype="<f2").reshape(result.data_shape)
    np.testing.assert_allclose(raw, maps[result.channels], rtol=1e-3, atol=1e-3)


def test_cam_is_relu_of_weighted_sum() -> None:
    weights = np.array([[1.0, -1.0], [0.5, 0.5]], dtype=np.float32)
    maps = np.stack([np.full((2, 2), 2.0), np.eye(2) * 4]).astype(np.float32)
    cam = class_activation_map(weights, maps, 0)
    np.testing.assert_allclose(cam, [[0, 2], [2, 0]])


def test_option_validation(tiny_cnn: TinyModel) -> None:
    meta = tiny_cnn.metadata
    assert required_outputs(meta, ClassifyOptions(), 1) == frozenset()
    outs = required_outputs(meta, ClassifyOptions(feature_maps=("all",), cam=True), 1)
    assert outs == {fm.output for fm in meta.feature_maps}
    with pytest.raises(LayerNotFound):
        required_outputs(meta, ClassifyOptions(feature_maps=("nope",)), 1)
    short = required_outputs(meta, ClassifyOptions(feature_maps=("conv1", "features.pool1")), 1)
    assert short == {"fm.features.conv1", "fm.features.pool1"}
    flat = meta.model_copy(update={"cam": None})
    with pytest.raises(CamUnavailable, match="tiny-cnn/1 has no class .* no cam entry"):
        required_outputs(flat, ClassifyOptions(cam=True), 1)


def test_feature_map_values_are_bounded_before_any_work(tiny_cnn: TinyModel) -> None:
    """Counted as the answer would carry them: at most `channels` of each map's channels."""
    meta = tiny_cnn.metadata
    options = ClassifyOptions(feature_maps=("all",), channels=2)
    per_image = sum(min(2, fm.shape[0]) * fm.shape[1] * fm.shape[2] for fm in meta.feature_maps)
    images = MAX_MAP_VALUES // per_image
    assert required_outputs(meta, options, images)
    with pytest.raises(InvalidOption, match=f"hold {(images + 1) * per_image} values for"):
        required_outputs(meta, options, images + 1)


@pytest.mark.parametrize("layers", [("all",), ("features.conv1",), ("conv1", "pool1")])
def test_feature_maps_of_a_model_without_any_are_refused(
    tiny_cnn: TinyModel, layers: tuple[str, ...]
) -> None:
    bare = tiny_cnn.metadata.model_copy(update={"feature_maps": [], "cam": None})
    assert required_outputs(bare, ClassifyOptions(), 1) == frozenset()
    with pytest.raises(InvalidOption) as caught:
        required_outputs(bare, ClassifyOptions(feature_maps=layers), 1)
    assert caught.value.message == (
        f"tiny-cnn/1 exports no feature maps (its metadata.json lists none), so "
        f"feature_maps={','.join(layers)} cannot be answered"
    )


def test_a_layer_named_twice_is_answered_once(tiny_cnn: TinyModel) -> None:
    """Short and full names of one layer, repeated: one map each, in first-named order (a
    thousand repeats must not make a thousand-fold response)."""
    named = ("conv1", "features.pool1", "features.conv1", "conv1") * 1000
    maps = postprocess.requested_maps(tiny_cnn.metadata, ClassifyOptions(feature_maps=named))
    assert [fm.layer for fm in maps] == ["features.conv1", "features.pool1"]


def test_build_result_with_cam(tiny_cnn: TinyModel) -> None:
    meta = tiny_cnn.metadata
    rng = np.random.default_rng(2)
    outputs = {"logits": rng.standard_normal(10).astype(np.float32)}
    for fm in meta.feature_maps:
        outputs[fm.output] = rng.random(fm.shape).astype(np.float32)
    weights = rng.standard_normal((10, 8)).astype(np.float32)
    options = ClassifyOptions(top_k=3, feature_maps=("features.conv1",), cam=True)
    result = build_result(meta, outputs, options, weights)
    assert len(result.predictions) == 3
    assert result.feature_maps is not None
    assert [m.layer for m in result.feature_maps] == ["features.conv1"]
    assert result.cam is not None
    assert result.cam.index == result.predictions[0].index
    heat = Image.open(io.BytesIO(base64.b64decode(result.cam.data)))
    assert heat.size == (16, 16)
    assert heat.mode == "RGB"
