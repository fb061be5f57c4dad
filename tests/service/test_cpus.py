"""Cores the process may use: a container's CPU limit, from cgroup v2 or v1, rounded up."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cpus import cgroup_cpu_limit


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("150000 100000\n", None, 2),  # docker --cpus 1.5: two threads' worth, rounded up
        ("max 100000\n", None, None),  # no limit
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),  # cgroup v1, no limit
        (None, ("400000", "100000"), 4),
        (None, None, None),  # not in a cgroup we can read
        ("garbage", None, None),
    ],
)
def test_a_containers_cpu_limit_bounds_the_cores(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, expected: int | None
) -> None:
    v2_file, v1_dir = tmp_path / "cpu.max", tmp_path / "cpu"
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    assert cgroup_cpu_limit(v2_file, v1_dir) == expected
