"""Pretrained torchvision weights: resolving files and names, what is refused (one ERROR line,
nothing written), and fine-tuning from them. Weights files are made here in torchvision's exact
format (`torch.save(model.state_dict())` of a torchvision model) under their published names."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from pathlib import Path

import httpx
import pytest
import torch
import torchvision
from torchvision.models import ResNet18_Weights

from service import metadata as schema
from service.settings import Settings
from tests.service.server import threaded_server
from training.cli import run_cli
from training.data.photos import photo_views
from training.errors import UserError
from training.export import ExportConfig
from training.export import cli as export_cli
from training.export import main as export_main
from training.pretrained import (
    backbone_blocks,
    build_pretrained,
    freeze,
    head_path,
    hub_path,
    is_published_file,
    load_pretrained,
    normalise_keys,
    published_hash,
)
from training.train import TrainConfig
from training.train import cli as train_cli
from training.train import main as train_main

RESNET18_FILE = Path(ResNet18_Weights.IMAGENET1K_V1.url).name  # resnet18-f37072fd.pth


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / RESNET18_FILE
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def export_args(repo: Path, weights: Path | str, *more: str) -> list[str]:
    return ["--arch", "resnet18", "--weights", str(weights), "--name", "r18",
            "--repository", str(repo), "--parity-samples", "2", "--feature-maps", "none",
            *more]  # fmt: skip


def refused(argv: list[str], caplog: pytest.LogCaptureFixture) -> str:
    """Run the export CLI; it must exit 2 with exactly one ERROR line, which is returned."""
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert run_cli(export_cli, argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    assert "Traceback" not in errors[0]
    return errors[0]


def test_file_matched_by_name_brings_labels_and_preprocessing(resnet18_file: Path) -> None:
    pretrained = load_pretrained("resnet18", str(resnet18_file))
    meta = ResNet18_Weights.IMAGENET1K_V1
    assert pretrained.labels == list(meta.meta["categories"])
    transform = meta.transforms()
    pre = pretrained.preprocessing
    assert (pre.resize, pre.center_crop) == (transform.resize_size[0], transform.crop_size[0])
    assert (list(pre.mean), list(pre.std)) == (transform.mean, transform.std)
    assert pre.interpolation == transform.interpolation.value
    # Random weights under the published name: the entry's metadata, but not its name.
    assert pretrained.source["name"] is None
    assert pretrained.source["file"] == RESNET18_FILE
    model = build_pretrained(pretrained)
    reference = torch.load(resnet18_file, weights_only=True)
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_unmatched_file_name_assumes_the_default_entry(
    resnet18_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    renamed = tmp_path / "my-resnet.pth"
    renamed.write_bytes(resnet18_file.read_bytes())
    caplog.set_level(logging.INFO)
    pretrained = load_pretrained("resnet18", str(renamed))
    assert pretrained.source["name"] is None
    assert len(pretrained.labels) == 1000
    assumed = [r.getMessage() for r in caplog.records if "assuming" in r.getMessage()]
    assert assumed
    assert "ResNet18_Weights.IMAGENET1K_V1" in assumed[0]


def test_weights_name_resolves_through_the_hub_cache(
    resnet18_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    entry = ResNet18_Weights.IMAGENET1K_V1
    target = hub_path(entry)
    assert target == tmp_path / "torch" / "hub" / "checkpoints" / RESNET18_FILE
    with pytest.raises(UserError, match=rf"put {entry.url} at {target} \(or pass --download\)"):
        load_pretrained("resnet18", "IMAGENET1K_V1")
    target.parent.mkdir(parents=True)
    target.write_bytes(resnet18_file.read_bytes())
    for name in ("IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1", "DEFAULT"):
        pretrained = load_pretrained("resnet18", name)
        assert pretrained.source["file"] == RESNET18_FILE
        assert pretrained.labels == list(entry.meta["categories"])
    with pytest.raises(UserError, match="not resnet18's"):
        load_pretrained("resnet18", "ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(UserError, match="not a weights name of resnet18"):
        load_pretrained("resnet18", "IMAGENET9K")


def test_only_the_published_file_is_called_by_the_weights_name(
    resnet18_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry = ResNet18_Weights.IMAGENET1K_V1
    assert published_hash(entry) == "f37072fd"
    assert is_published_file(entry, "f37072fd" + "0" * 56)
    assert not is_published_file(entry, "0" * 64)
    caplog.set_level(logging.WARNING)
    load_pretrained("resnet18", str(resnet18_file))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not the published weights" in w for w in warnings), warnings


def test_export_records_source_and_metadata_validates(resnet18_file: Path, tmp_path: Path) -> None:
    assert run_cli(export_cli, export_args(tmp_path, resnet18_file)) == 0
    folder = tmp_path / "r18" / "1"
    meta = schema.ModelMetadata.model_validate_json((folder / "metadata.json").read_text())
    assert meta.source is not None
    assert meta.source.kind == "weights"
    assert meta.source.name is None  # random weights are not the published file
    assert meta.source.file == RESNET18_FILE
    assert meta.source.sha256 == hashlib.sha256(resnet18_file.read_bytes()).hexdigest()
    assert meta.input.shape == (3, 224, 224)
    assert meta.num_classes == 1000


def test_wrong_architecture_names_the_first_mismatches(
    resnet18_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "repo"
    line = refused(
        ["--arch", "resnet50", "--weights", str(resnet18_file), "--name", "x",
         "--repository", str(repo)], caplog,
    )  # fmt: skip
    assert "do not fit resnet50" in line
    assert "missing: " in line
    assert "shape: " in line
    assert "more)" in line
    assert not repo.exists()
    # An unknown or wrong --arch is said first, before anything about labels.
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(10)))
    unknown = ["--arch", "nosucharch", "--weights", str(resnet18_file), "--name", "x"]
    assert "unknown architecture 'nosucharch'" in refused(unknown, caplog)
    other = ["--arch", "lenet5", "--weights", str(resnet18_file), "--labels", str(labels)]
    assert "do not fit lenet5" in refused(
        [*other, "--name", "x", "--repository", str(repo)], caplog
    )


def test_truncated_file_is_refused(
    resnet18_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    truncated = tmp_path / RESNET18_FILE
    truncated.write_bytes(resnet18_file.read_bytes()[: 1 << 20])
    line = refused(export_args(tmp_path / "repo", truncated), caplog)
    assert "not a readable state-dict file" in line
    assert "If you are seeing this error" not in line  # torch's first sentence, not its advice
    assert line.endswith(")")
    assert not (tmp_path / "repo").exists()
    text = tmp_path / "notes.pth"
    text.write_text("hello weights\n")
    line = refused(export_args(tmp_path / "repo", text), caplog)
    assert "not a readable state-dict file (not a file that torch.save wrote)" in line


class _Marker:
    """Unpickling this would create a file: the weights loader must never run it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "unpickled"))  # type: ignore[return-value]


def test_pickle_with_arbitrary_objects_is_never_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pth"
    with hostile.open("wb") as fh:
        pickle.dump({"conv1.weight": _Marker(str(marker))}, fh, protocol=2)
    line = refused(export_args(tmp_path / "repo", hostile), caplog)
    assert "not a readable state-dict file" in line
    assert not marker.exists()
    assert not (tmp_path / "repo").exists()


def test_a_whole_pickled_model_is_refused_saying_what_to_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(torchvision.models.resnet18(), whole)
    line = refused(export_args(tmp_path / "repo", whole), caplog)
    assert "holds a pickled torchvision.models.resnet.ResNet, which is never unpickled" in line
    assert line.endswith("save model.state_dict() alone")


def test_a_state_dict_nested_in_a_checkpoint_is_found(tmp_path: Path) -> None:
    """Training scripts save {"epoch": ..., "state_dict": ..., "optimizer": ...}."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18().eval()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": reference.state_dict(), "optimizer": {"lr": 0.1}}, path)
    model = build_pretrained(load_pretrained("resnet18", str(path), labels="imagenet"))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images))


def test_labels_file_with_the_wrong_count(
    resnet18_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    line = refused(export_args(tmp_path / "repo", resnet18_file, "--labels", str(labels)), caplog)
    assert "has a 1000-class head but 2 labels: pass --labels FILE with 1000 labels" in line
    assert not (tmp_path / "repo").exists()


def test_checkpoint_and_weights_are_alternatives(resnet18_file: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        export_cli(["--checkpoint", "x.pt", *export_args(tmp_path, resnet18_file)])
    assert info.value.code == 2
    config = ExportConfig(name="x", weights=str(resnet18_file), repository=tmp_path)
    with pytest.raises(UserError, match="--weights needs --arch"):
        export_main(config)


def test_legacy_and_aux_keys_are_renamed_as_torchvision_does() -> None:
    legacy = {"features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1)}
    assert list(normalise_keys("densenet121", legacy)) == [
        "features.denseblock1.denselayer1.norm1.weight"
    ]
    aux = {"AuxLogits.fc.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}
    assert list(normalise_keys("inception_v3", aux)) == ["fc.weight"]


@pytest.mark.parametrize("arch", ["mnasnet0_5", "resnet18"])
def test_files_torchvision_loads_are_loaded(arch: str, tmp_path: Path) -> None:
    """MNASNet's builder reads the module versions torch saves beside the keys; an older or
    trimmed file lacks BatchNorm's num_batches_tracked, which torch then starts at 0."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(arch).eval()
    state = reference.state_dict()
    if arch == "resnet18":
        for key in [k for k in state if k.endswith("num_batches_tracked")]:
            del state[key]
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    model = build_pretrained(load_pretrained(arch, str(path), labels="imagenet"))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference(images))


def test_freezing_leaves_the_head_and_last_blocks_trainable() -> None:
    model = torchvision.models.resnet18(num_classes=3)
    head = head_path(model)
    assert head == "fc"
    assert backbone_blocks(model, head) == [
        ["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]
    ]  # fmt: skip
    freeze(model, head, 1)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc", "layer4"}
    convnext = torchvision.models.convnext_tiny(num_classes=3)
    assert head_path(convnext) == "classifier.2"
    assert backbone_blocks(convnext, "classifier.2")[-1] == ["features.7", "classifier.0"]
    # A norm-only last part trains with the block before it, not alone.
    densenet = torchvision.models.densenet121(num_classes=3)
    assert backbone_blocks(densenet, "classifier")[-1] == ["features.denseblock4", "features.norm5"]
    regnet = torchvision.models.regnet_y_400mf(num_classes=3)
    assert [b[0] for b in backbone_blocks(regnet, "fc")][-4:] == [
        f"trunk_output.block{i}" for i in range(1, 5)
    ]
    freeze(regnet, "fc", 1)
    trainable = {n.rsplit(".", 3)[0] for n, p in regnet.named_parameters() if p.requires_grad}
    assert {t.split(".")[0] for t in trainable} == {"fc", "trunk_output"}
    assert all(
        n.startswith(("fc.", "trunk_output.block4."))
        for n, p in regnet.named_parameters()
        if p.requires_grad
    )


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real-photo image folder: crops of the two sample photos, one class per photo."""
    root = tmp_path_factory.mktemp("photos")
    for i, view in enumerate(photo_views(16)):
        folder = root / ("china" if i % 2 == 0 else "flower")
        folder.mkdir(exist_ok=True)
        view.save(folder / f"{i:02d}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_fine_tune_starts_from_the_weights_and_exports(
    resnet18_file: Path, photo_tree: Path, tmp_path: Path
) -> None:
    run = train_main(
        TrainConfig(
            arch="resnet18", dataset=f"imagefolder:{photo_tree}", out=tmp_path / "run",
            epochs=1, batch_size=8, weights=str(resnet18_file), freeze_backbone=True,
            threads=2, augment="flip", lr=1e-3,
        )
    )  # fmt: skip
    content = torch.load(run.last_checkpoint, weights_only=True)
    reference = torch.load(resnet18_file, weights_only=True)
    # Frozen backbone: every non-head weight is the file's, bit for bit; the head is new.
    convs = [k for k in reference if k.endswith("weight") and not k.startswith("fc.")]
    assert all(torch.equal(content["model"][k], reference[k]) for k in convs)
    assert content["model"]["fc.weight"].shape == (2, 512)
    assert content["preprocessing"]["resize"] == 256
    assert content["pretrained"]["file"] == RESNET18_FILE
    assert run_cli(
        export_cli,
        ["--checkpoint", str(run.best_checkpoint), "--name", "photos",
         "--repository", str(tmp_path / "repo"), "--threads", "2"],
    ) == 0  # fmt: skip
    meta = json.loads((tmp_path / "repo" / "photos" / "1" / "metadata.json").read_text())
    assert meta["labels"] == ["china", "flower"]
    assert meta["training"]["pretrained"]["file"] == RESNET18_FILE
    assert meta["cam"]["feature_map"] == "fm.layer4"
    # Served: a photo is answered with the folder's classes, the weights' source shown.
    settings = Settings(model_repository=tmp_path / "repo", default_model="photos")
    photo = io.BytesIO()
    photo_views(1)[0].save(photo, format="JPEG")
    with threaded_server(settings) as base_url:
        answer = httpx.post(
            f"{base_url}/v1/classify",
            content=photo.getvalue(),
            headers={"Content-Type": "image/jpeg"},
            params={"cam": "true"},
            timeout=60,
        )
        detail = httpx.get(f"{base_url}/v1/models/photos", timeout=10).json()
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    assert {p["label"] for p in result["predictions"]} == {"china", "flower"}
    assert result["cam"] is not None
    assert detail["source"]["kind"] == "training"


def test_a_fine_tuned_run_keeps_its_input_size_and_colour_mode(
    resnet18_file: Path, photo_tree: Path, tmp_path: Path
) -> None:
    """The input size and colour mode shape the weights: a resumed fine-tuned run refuses
    others (they come from its checkpoint, not the weights), and --color-mode, for image
    folders trained from scratch, is refused beside --weights rather than ignored."""
    out = tmp_path / "run"
    tune = ["--arch", "resnet18", "--dataset", f"imagefolder:{photo_tree}", "--threads", "2",
            "--weights", str(resnet18_file), "--freeze-backbone", "--batch-size", "8"]  # fmt: skip
    train_cli(
        [*tune, "--image-size", "96", "--epochs", "2", "--stop-after", "1", "--out", str(out)]
    )
    last = str(out / "last.pt")
    refusals = (
        (["--image-size", "128"], "cannot resume .*image_size 128"),
        (["--color-mode", "L"], "--color-mode L: the weights take RGB"),
    )
    for other, message in refusals:
        with pytest.raises(UserError, match=message):
            train_cli(["--resume", last, *other])
    assert torch.load(last, weights_only=True)["epoch"] == 1  # untouched
    with pytest.raises(UserError, match="--color-mode L: the weights take RGB"):
        train_cli([*tune, "--color-mode", "L", "--out", str(tmp_path / "other")])
    # Below 64 px the stem is rebuilt: the size is named as the cause, not the weights file.
    with pytest.raises(UserError, match="--image-size 32 is below 64: resnet18's stem is rebuilt"):
        train_cli([*tune, "--image-size", "32", "--out", str(tmp_path / "small")])
