"""bench/v2_perf.py's `read_report` on a real perf_analyzer `-f` report (2.41, this service)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

# perf_analyzer orders its CSV by throughput, not by concurrency.
HEADER = "Concurrency,Inferences/Second,Client Send,Client Recv,"
HEADER += "p50 latency,p90 latency,p95 latency,p99 latency\n"
PERF_ANALYZER_CSV = (
    HEADER
    + """\
1,521.57,55,3,1829,2402,2596,3464
2,563.917,52,4,3483,4359,4732,5784
3,569.333,50,5,5215,6603,7115,8633
5,604.715,49,6,7915,10845,11899,14632
4,622.23,46,5,6276,8355,9139,11280
8,625.59,51,6,12130,17440,19354,23802
6,805.456,41,5,7023,9604,10675,13444
7,818.778,43,6,8007,11104,12286,15260
"""
)


@pytest.fixture
def read_report() -> Iterator[Callable[[Path], list[dict[str, float]]]]:
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        from v2_perf import read_report

        yield read_report
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))


def test_perf_analyzer_report_is_parsed(read_report: Any, tmp_path: Path) -> None:
    report = tmp_path / "perf.csv"
    report.write_text(PERF_ANALYZER_CSV)
    rows = sorted(read_report(report), key=lambda row: row["concurrency"])
    assert [row["concurrency"] for row in rows] == list(range(1, 9))
    assert rows[0] == {"concurrency": 1, "inferences_per_s": 521.57, "p50_us": 1829, "p99_us": 3464}
    assert all(row["p99_us"] >= row["p50_us"] for row in rows)
