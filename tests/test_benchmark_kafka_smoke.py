"""The broker benchmark runs end to end against a Kafka it starts itself, and writes its numbers
(it does not judge speed here)."""

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


def test_quick_broker_benchmark_writes_the_cases_of_both_clients_and_the_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--quick", "--brokers", "kafka", "--reps", "1", "--ops", "200", "--json", str(out)]
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
    assert set(data["cases"]) == {
        "aiokafka_off",
        "aiokafka_eda",
        "aiokafka_contrib",
        "confluent_off",
        "confluent_eda",
        "confluent_contrib",
    }
    for case in data["cases"].values():
        assert case["cpu_us"]["median"] > 0
    for key in ("aiokafka_eda", "aiokafka_contrib"):  # both instrumentations wrote a send and a process span
        assert data["cases"][key]["extra"]["spans_per_event"]["median"] == pytest.approx(2.0, abs=0.05)
    # confluent-kafka: a send, a poll and a process span per record from both (the contrib's poll span is `recv`)
    for key in ("confluent_eda", "confluent_contrib"):
        assert data["cases"][key]["extra"]["spans_per_event"]["median"] == pytest.approx(3.0, abs=0.05)
    goals = [data["goals"][g] for g in ("aiokafka_eda_vs_contrib", "confluent_eda_vs_contrib")]
    verdicts = re.findall(r"\(goal <= [^)]*\): (met|MISSED)", proc.stdout)
    assert verdicts == ["met" if goal["met"] else "MISSED" for goal in goals], proc.stdout
    # the benchmark stopped the Kafka it started (the one in the directory it printed: other
    # sessions on the machine may run a benchmark of their own at the same time)
    (directory,) = re.findall(r"Kafka ready on .* dir (/\S*bench-kafka-[^)\s]+)\)", proc.stdout)
    leftover = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "kafka.Kafka" in (p.info["cmdline"] or []) and any(directory in c for c in p.info["cmdline"] or [])
    ]
    assert leftover == []
