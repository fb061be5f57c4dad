"""docs/repository.md against the code: its metadata examples validate against `ModelMetadata`,
and its minimal example, beside a graph of the shape it describes, is served."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.metadata import (
    CamSpec,
    ExportInfo,
    FeatureMap,
    FilterImage,
    InputSpec,
    ModelMetadata,
    Preprocessing,
    Source,
)
from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.tiny_model import build_onnx, random_png

DOC = Path(__file__).resolve().parents[2] / "docs" / "repository.md"
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def doc_examples() -> list[dict[str, Any]]:
    """Every ```json block of the page that is a metadata.json (has `schema_version`)."""
    blocks = [json.loads(block) for block in JSON_BLOCK.findall(DOC.read_text(encoding="utf-8"))]
    return [block for block in blocks if "schema_version" in block]


def test_the_page_has_a_minimal_and_a_full_example() -> None:
    examples = doc_examples()
    assert len(examples) == 2
    minimal, full = examples
    assert "feature_maps" not in minimal
    assert "cam" not in minimal
    assert all(full.get(key) for key in ("feature_maps", "cam", "filters", "source"))


@pytest.mark.parametrize("index", [0, 1])
def test_doc_example_validates(index: int) -> None:
    example = doc_examples()[index]
    metadata = ModelMetadata.model_validate(example)
    # Nothing the page writes is dropped or defaulted away: the schema reads every field.
    dumped = metadata.model_dump(mode="json", exclude_unset=True)
    assert dumped == example


def test_every_metadata_field_is_documented() -> None:
    """A row per field of every object (`output` has one field, `name`, said in its row)."""
    text = DOC.read_text(encoding="utf-8")
    for schema in (
        ModelMetadata,
        InputSpec,
        Preprocessing,
        FeatureMap,
        CamSpec,
        FilterImage,
        Source,
        ExportInfo,
    ):
        for field in schema.model_fields:
            assert f"| `{field}` |" in text, f"{schema.__name__}.{field}"


def test_minimal_example_is_served(tmp_path: Path) -> None:
    """The page's minimal example, with its sha256 filled in as the page says, beside a graph
    of the input and output it names: loaded, ready, and answering with its labels."""
    example = doc_examples()[0]
    channels, size, _ = example["input"]["shape"]
    model, _ = build_onnx(channels, gap_head=False, seed=0, size=size)
    assert len(model.graph.output[0].type.tensor_type.shape.dim) == 2  # logits (N, 10)
    folder = tmp_path / "models" / example["name"] / str(example["version"])
    folder.mkdir(parents=True)
    onnx_bytes = model.SerializeToString()
    (folder / "model.onnx").write_bytes(onnx_bytes)
    example["export"]["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    (folder / "metadata.json").write_text(json.dumps(example))
    settings = Settings(
        model_repository=tmp_path / "models", default_model=example["name"], providers="cpu"
    )
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        response = client.post(
            "/v1/classify",
            content=random_png(3, size=(40, 36)),
            headers={"content-type": "image/png"},
        )
        assert response.status_code == 200, response.text
        labels = [p["label"] for p in response.json()["results"][0]["predictions"]]
        assert len(labels) == 5
        assert set(labels) <= set(example["labels"])
