"""The broker benchmark's pika line runs end to end against a RabbitMQ it starts itself, and writes
its numbers (it does not judge speed here)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_kafka.py"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def test_quick_pika_benchmark_writes_the_three_cases_and_the_verdict(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--brokers", "pika", "--reps", "1", "--ops", "200", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["cases"]) == {"pika_off", "pika_eda", "pika_contrib"}
    for case in data["cases"].values():
        assert case["cpu_us"]["median"] > 0
    # otel-eda: one send and one process span per message; the contrib: two nested sends and a process span
    assert data["cases"]["pika_eda"]["extra"]["spans_per_event"]["median"] == pytest.approx(2.0, abs=0.05)
    assert data["cases"]["pika_contrib"]["extra"]["spans_per_event"]["median"] == pytest.approx(3.0, abs=0.05)
    goal = data["goals"]["pika_eda_vs_contrib"]
    verdicts = re.findall(r"\(goal <= [^)]*\): (met|MISSED)", proc.stdout)
    assert verdicts == ["met" if goal["met"] else "MISSED"], proc.stdout
    # the benchmark stopped the node it started
    leftover = [  # of this checkout: other sessions on the machine run benchmarks of their own
        p.pid
        for p in psutil.process_iter(["cmdline", "cwd"])
        if p.info["cwd"] == str(ROOT) and any("bench-rabbitmq-" in c for c in p.info["cmdline"] or [])
    ]
    assert leftover == []
