"""training/publish.py: the next version number follows the service's rule for version folders."""

from __future__ import annotations

from pathlib import Path

from training.publish import next_version


def test_next_version_counts_only_version_folders(tmp_path: Path) -> None:
    assert next_version(tmp_path / "new-model") == 1
    for name in ("1", "7", "¹²", "0", "007x", "notes"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    assert next_version(tmp_path) == 8
