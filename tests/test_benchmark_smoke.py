"""The benchmark runs end to end and writes its numbers (it does not judge speed here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_core.py"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_quick_benchmark_writes_both_cases_with_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))

    goals = data["goals"]
    assert set(goals) == {"abstraction", "processor"}
    for goal in goals.values():
        for key in (goal["case"], goal["baseline"]):
            case = data["cases"][key]
            assert case["median_us"] > 0
            assert case["min_us"] <= case["median_us"] <= case["max_us"]
            assert len(case["samples_us"]) >= 5
        assert goal["ratio"] > 0
        assert isinstance(goal["met"], bool)
    assert data["cases"]["a.otel_eda_no_recorders"]["median_us"] > 0
    assert goals["processor"]["added_us"] == pytest.approx(
        data["cases"]["b.with_processor"]["median_us"] - data["cases"]["b.without_processor"]["median_us"]
    )

    # The comparison is only meaningful if both sides wrote the same telemetry and
    # nothing was dropped; that is correctness, not speed.
    assert goals["abstraction"]["telemetry_identical"], proc.stdout
    assert data["spans"]["dropped"] == 0
    assert data["spans"]["exported"] == data["spans"]["ended"]

    # The printed report gives each verdict, met or MISSED, as the JSON says.
    verdicts = re.findall(r"\(goal <= [^)]*\): (met|MISSED)", proc.stdout)
    expected = ["met" if goals[name]["met"] else "MISSED" for name in ("abstraction", "processor")]
    assert verdicts == expected, proc.stdout
