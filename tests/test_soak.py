"""The soak benchmark's short form (issue 12, point 6): about 60 s through the bus, and
through the session's real Kafka with otel-eda's aiokafka instrumentation, with a failing
handler, the anomaly reader on and spans to a real Collector; the counts must add up.

Speed and memory slope are the benchmark's to print (``benchmarks/soak.py``, 10 minutes), not
this test's to assert: on a busy machine they are noise. What must hold whatever the load:
every published event is handled or dead-lettered, every failed attempt is retried or is the
last one, and every ended span is exported or counted lost.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from otel_servers import ROOT, built_binary, clean_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(params=["bus", "kafka"])
def transport_args(request: pytest.FixtureRequest) -> list[str]:
    if request.param == "bus":
        return ["--transport=bus"]
    pytest.importorskip("aiokafka")
    broker = request.getfixturevalue("kafka")
    return ["--transport=kafka", f"--kafka-bootstrap={broker.bootstrap_servers}"]


def test_a_one_minute_soak_accounts_for_every_event_and_span(tmp_path: Path, transport_args: list[str]) -> None:
    built_binary(ROOT / "scripts" / "otelcol")
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--duration=60",
            "--rate=100",
            "--sample-interval=5",
            "--check",
            f"--json={out}",
            *transport_args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={k: v for k, v in clean_env().items() if not k.startswith("OTEL_")},
        cwd=ROOT,
        check=False,
    )
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    numbers = json.loads(out.read_text())
    assert all(numbers["identities"].values()), numbers["identities"]
    assert numbers["published"] > 1000
    assert numbers["dead_lettered"] > 0 and numbers["retried"] > numbers["dead_lettered"]
    assert numbers["spans_exported"] > 0
    assert len(numbers["rss_samples"]) >= 10
