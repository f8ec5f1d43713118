"""The order-flow demo over a real NATS with JetStream (``--transport nats``): the demo starts
nats-server with ``scripts/nats``, runs the four services across one stream (a durable pull
consumer per service), and stops it; the causation trees are those of the demo over queues."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from test_demo import assert_flows_as_expected, run_demo

from otel_eda import semconv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def nats_pids() -> set[int]:
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].endswith("nats-server") and any("order-flow-nats-" in part for part in cmdline):
            found.add(process.pid)
    return found


def test_the_demo_over_nats_has_the_same_causation_trees(tmp_path: Path) -> None:
    before = nats_pids()
    run = run_demo(tmp_path, "--traffic", "0", "--transport", "nats")
    assert "nats-server ready on nats://127.0.0.1:" in run.result.stdout  # the demo started its own
    assert_flows_as_expected(run, 6)
    # every consumer span links to a producer span written in another service's process
    producers = {s["context"]["span_id"]: service for service, s in run.all_spans() if s["kind"] == "SpanKind.PRODUCER"}
    consumers = [(service, s) for service, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert consumers
    for service, span in consumers:
        (link,) = span["links"]
        assert producers[link["context"]["span_id"]] != service
        assert span["attributes"][semconv.EDA_CORRELATION_ID]
    assert nats_pids() <= before  # the demo stopped the server it started
