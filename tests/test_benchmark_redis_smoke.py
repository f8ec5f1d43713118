"""The Redis Streams line of the broker benchmark runs end to end against a redis-server it starts
itself, and writes its numbers (it does not judge speed here); its reference is pinned."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_redis.py"
REFERENCE = ROOT / "benchmarks" / "reference_redis.py"
#: the fixed hand-written reference on Redis Streams: a deliberate change updates this in the same commit
REFERENCE_SHA256 = "3060b23da0a72640e956710faa9a63452bbc147f2cb4034c4e23ed0ef0e901d5"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_the_reference_is_the_pinned_one() -> None:
    assert hashlib.sha256(REFERENCE.read_bytes()).hexdigest() == REFERENCE_SHA256


def test_quick_redis_benchmark_writes_the_three_cases_and_the_verdict(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--reps", "1", "--ops", "200", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["cases"]) == {"redis_off", "redis_eda", "redis_reference"}
    for case in data["cases"].values():
        assert case["cpu_us"]["median"] > 0
    for key in ("redis_eda", "redis_reference"):  # both wrote a send and a process span per event
        assert data["cases"][key]["extra"]["spans_per_event"]["median"] == pytest.approx(2.0, abs=0.05)
    goal = data["goals"]["redis_eda_vs_reference"]
    verdicts = re.findall(r"\(goal <= [^)]*\): (met|MISSED)", proc.stdout)
    assert verdicts == ["met" if goal["met"] else "MISSED"], proc.stdout
    leftover = []
    for process in psutil.process_iter(["name", "cwd"]):
        try:
            if process.info["name"] == "redis-server" and "bench-redis-" in (process.info["cwd"] or ""):
                leftover.append(process.pid)
        except psutil.Error:
            continue
    assert leftover == []
