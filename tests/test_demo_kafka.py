"""The order-flow demo over a real Kafka (``--transport kafka``: aiokafka; ``--transport
confluent-kafka``: confluent-kafka): the demo starts Kafka with ``scripts/kafka``, runs the four
services across its topics, and stops it; the causation trees are those of the demo over queues."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from test_demo import assert_flows_as_expected, run_demo

from otel_eda import semconv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def kafka_pids() -> set[int]:
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "kafka.Kafka" in cmdline and any("order-flow-kafka-" in part for part in cmdline):
            found.add(process.pid)
    return found


@pytest.mark.parametrize("transport", ["kafka", "confluent-kafka"])
def test_the_demo_over_kafka_has_the_same_causation_trees(tmp_path: Path, transport: str) -> None:
    before = kafka_pids()
    run = run_demo(tmp_path, "--traffic", "0", "--transport", transport)
    assert "Kafka ready on 127.0.0.1:" in run.result.stdout  # the demo started its own
    assert_flows_as_expected(run, 6)
    # every consumer span links to a producer span written in another service's process
    producers = {s["context"]["span_id"]: service for service, s in run.all_spans() if s["kind"] == "SpanKind.PRODUCER"}
    consumers = [(service, s) for service, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert consumers
    for service, span in consumers:
        (link,) = span["links"]
        assert producers[link["context"]["span_id"]] != service
        assert span["attributes"][semconv.EDA_CORRELATION_ID]
    assert kafka_pids() <= before  # the demo stopped the Kafka it started
