from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.errors import RepositoryError
from service.repository import VersionRef, fingerprint, load_version, scan
from tests.service.tiny_model import build_onnx, write_tiny_model


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write_tiny_model(root, "good")
    return root


def ref(root: Path, name: str, version: int = 1) -> VersionRef:
    return VersionRef(name, version, root / name / str(version))


def test_scan_finds_versions_and_reports_bad_names(repo: Path) -> None:
    (repo / "Bad Name" / "1").mkdir(parents=True)
    (repo / "good" / "latest").mkdir()
    (repo / ".hidden").mkdir()
    refs, problems = scan(repo)
    assert [(r.model, r.version) for r in refs] == [("good", 1)]
    assert any("Bad Name" in p for p in problems)
    assert any("latest" in p for p in problems)
    assert scan(repo, ["other"])[0] == []


def test_valid_version_loads(repo: Path) -> None:
    files = load_version(repo, ref(repo, "good"))
    assert files.metadata.name == "good"
    assert files.cam_weights is not None
    assert files.cam_weights.shape == (10, 8)


def test_external_data_is_refused(repo: Path) -> None:
    model, _ = build_onnx(1, gap_head=True, seed=0)
    folder = repo / "good" / "1"
    onnx.save_model(
        model,
        folder / "model.onnx",
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    meta_path = folder / "metadata.json"  # the file as recorded: refused for what it is
    metadata = json.loads(meta_path.read_text())
    metadata["export"]["sha256"] = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    meta_path.write_text(json.dumps(metadata))
    with pytest.raises(RepositoryError, match="external data"):
        load_version(repo, ref(repo, "good"))


def test_symlink_escaping_the_repository_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.npy"
    np.save(outside, np.zeros((10, 8), dtype=np.float32))
    target = repo / "good" / "1" / "cam_weights.npy"
    target.unlink()
    os.symlink(outside, target)
    with pytest.raises(RepositoryError, match="outside the repository"):
        load_version(repo, ref(repo, "good"))


def test_pickled_cam_weights_are_refused(repo: Path) -> None:
    path = repo / "good" / "1" / "cam_weights.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(RepositoryError, match="cam weights"):
        load_version(repo, ref(repo, "good"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(name="other"), "not its folder"),
        (lambda m: m.update(labels=["one"]), "invalid metadata"),
        (lambda m: m["cam"].update(weights="../../x.npy"), "invalid metadata"),
        (lambda m: m["export"].update(sha256="0" * 64), "sha256"),
        (lambda m: m["preprocessing"].update(resize=100_000), "more than 4 x center_crop"),
    ],
)
def test_bad_metadata_is_refused(repo: Path, change: object, message: str) -> None:
    path = repo / "good" / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    change(metadata)  # type: ignore[operator]
    path.write_text(json.dumps(metadata))
    with pytest.raises(RepositoryError, match=message):
        load_version(repo, ref(repo, "good"))


def test_missing_or_garbage_onnx_is_refused(repo: Path) -> None:
    model = repo / "good" / "1" / "model.onnx"
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2])  # half copied: named as such, never parsed
    with pytest.raises(RepositoryError, match="model.onnx does not match metadata sha256"):
        load_version(repo, ref(repo, "good"))
    model.write_bytes(b"garbage")
    with pytest.raises(RepositoryError):
        load_version(repo, ref(repo, "good"))
    shutil.rmtree(repo / "good" / "1")
    (repo / "good" / "1").mkdir()
    with pytest.raises(RepositoryError, match="missing"):
        load_version(repo, ref(repo, "good"))


def test_fingerprint_changes_with_files(repo: Path) -> None:
    before = fingerprint(ref(repo, "good"))
    path = repo / "good" / "1" / "metadata.json"
    path.write_text(path.read_text() + "\n")
    assert fingerprint(ref(repo, "good")) != before


def test_forced_cuda_without_a_gpu_refuses_the_model(repo: Path) -> None:
    from service.runtime import CUDA, Runtime, gpu_present

    if gpu_present():
        pytest.skip("a GPU is present: CUDA would work")
    files = load_version(repo, ref(repo, "good"))
    with pytest.raises(RepositoryError, match="CUDA"):
        Runtime(
            files.onnx_bytes,
            files.metadata,
            providers=[CUDA, "CPUExecutionProvider"],
            instances=1,
            intra_op_threads=1,
            require_gpu=True,
        )


def test_onnx_files_outside_a_version_folder_are_reported(repo: Path) -> None:
    flat = write_tiny_model(repo, "flat")
    shutil.move(flat.path / "model.onnx", repo / "flat" / "model.onnx")
    shutil.rmtree(flat.path)
    (repo / "resnet50.onnx").write_bytes(b"onnx")
    refs, problems = scan(repo)
    assert [(r.model, r.version) for r in refs] == [("good", 1)]
    assert len(problems) == 2
    in_model, at_root = sorted(problems)
    assert in_model.startswith("flat/model.onnx: ")
    assert "move it to flat/1/model.onnx with a metadata.json" in in_model
    assert "docs/repository.md" in in_model
    assert at_root.startswith("resnet50.onnx: ")
    assert "move it to resnet50/1/model.onnx" in at_root
    # Only the named models are scanned: a file at the root belongs to none of them.
    assert scan(repo, ["flat"])[1] == [in_model]


def test_missing_metadata_says_what_a_version_needs(repo: Path) -> None:
    (repo / "good" / "1" / "metadata.json").unlink()
    with pytest.raises(RepositoryError) as caught:
        load_version(repo, ref(repo, "good"))
    assert str(caught.value) == (
        "good/1: metadata.json is missing beside model.onnx: a version folder needs model.onnx "
        "and metadata.json (docs/repository.md)"
    )


def test_invalid_metadata_names_each_field_once_without_values(repo: Path) -> None:
    path = repo / "good" / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["input"]["shape"] = [1, "sixteen", 16]
    metadata["labels"] = ["secret-label"]
    metadata["extra_field"] = "secret-value"
    path.write_text(json.dumps(metadata))
    with pytest.raises(RepositoryError) as caught:
        load_version(repo, ref(repo, "good"))
    message = str(caught.value)
    assert message.startswith("good/1: invalid metadata.json: input.shape.1: ")
    assert message.count("good/1") == 1
    assert "labels: List should have at least 2 items" in message
    assert "extra_field: Extra inputs are not permitted" in message
    for echo in ("sixteen", "secret-label", "secret-value", "input_value", "errors.pydantic.dev"):
        assert echo not in message
    assert "\n" not in message


def test_a_whole_document_problem_reads_as_one(repo: Path) -> None:
    path = repo / "good" / "1" / "metadata.json"
    metadata = json.loads(path.read_text())
    metadata["labels"][1] = metadata["labels"][0]
    path.write_text(json.dumps(metadata))
    with pytest.raises(RepositoryError, match=r"^good/1: invalid metadata\.json: \(top level\): "):
        load_version(repo, ref(repo, "good"))
    path.write_text("{not json")
    with pytest.raises(RepositoryError, match=r"^good/1: invalid metadata\.json: .*Invalid JSON"):
        load_version(repo, ref(repo, "good"))
