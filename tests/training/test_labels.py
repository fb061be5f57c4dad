"""`--labels imagenet|FILE`: the shipped ImageNet list and labels files."""

from __future__ import annotations

from pathlib import Path

import pytest
from torchvision.models import get_model_weights

from training.errors import UserError
from training.labels import imagenet_categories, resolve_labels


def test_shipped_imagenet_list_is_torchvisions() -> None:
    for arch in ("resnet50", "efficientnet_b0", "convnext_tiny", "vgg16"):
        assert imagenet_categories() == list(get_model_weights(arch).DEFAULT.meta["categories"])


def test_labels_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\nbird\n\n", encoding="utf-8")
    assert resolve_labels(str(path), 3) == ["cat", "dog", "bird"]
    with pytest.raises(UserError, match="has 3 labels but the model has 4 outputs"):
        resolve_labels(str(path), 4)
    path.write_text("cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is empty"):
        resolve_labels(str(path))
    path.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"duplicate labels \['cat'\]"):
        resolve_labels(str(path))
    with pytest.raises(UserError, match="does not exist"):
        resolve_labels(str(tmp_path / "missing.txt"))


def test_labels_file_from_a_windows_editor(tmp_path: Path) -> None:
    """A byte-order mark and CRLF line ends, as Notepad writes UTF-8, are not part of a label."""
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\r\ndog\r\nbird\r\n".encode())
    assert resolve_labels(str(path), 3) == ["cat", "dog", "bird"]
