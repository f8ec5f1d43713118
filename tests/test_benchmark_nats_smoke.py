"""The broker benchmark's NATS line runs end to end against a nats-server it starts itself, and writes
its numbers (it does not judge speed here); the hand-written reference it measures against is pinned."""

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
BENCH = ROOT / "benchmarks" / "bench_kafka.py"
REFERENCE = ROOT / "benchmarks" / "reference_nats.py"
#: a deliberate change of the reference updates this in the same commit and says why
REFERENCE_SHA256 = "31779bd40f8f6f26b2a77b69c9d295365e0859c7d65482ad7952b2b6bef38b34"


def test_the_reference_is_the_pinned_one() -> None:
    assert hashlib.sha256(REFERENCE.read_bytes()).hexdigest() == REFERENCE_SHA256


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_quick_nats_benchmark_writes_the_three_cases_and_the_verdict(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--brokers", "nats", "--quick", "--reps", "1", "--ops", "200", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["cases"]) == {"nats_off", "nats_eda", "nats_reference"}
    for case in data["cases"].values():
        assert case["cpu_us"]["median"] > 0
    # both wrote a send and a process span per record; otel-eda also one fetch span per batch of 100
    assert data["cases"]["nats_reference"]["extra"]["spans_per_event"]["median"] == pytest.approx(2.0, abs=0.001)
    assert data["cases"]["nats_eda"]["extra"]["spans_per_event"]["median"] == pytest.approx(2.01, abs=0.005)
    goal = data["goals"]["nats_eda_vs_reference"]
    verdicts = re.findall(r"\(goal <= [^)]*\): (met|MISSED)", proc.stdout)
    assert verdicts == ["met" if goal["met"] else "MISSED"], proc.stdout
    leftover = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any("bench-nats-" in c for c in p.info["cmdline"] or []) and "nats-server" in (p.info["cmdline"] or [""])[0]
    ]
    assert leftover == []  # the benchmark stopped the nats-server it started
