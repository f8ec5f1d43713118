"""The order-flow demo over a real RabbitMQ, with aio-pika (``--transport rabbitmq``) and with pika
(``--transport pika``): the demo starts RabbitMQ with ``scripts/rabbitmq``, runs the four services
across its exchange and queues, and stops it; the causation trees are those of the demo over queues."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from test_demo import assert_flows_as_expected, run_demo

from otel_eda import semconv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def rabbitmq_pids(workdir: Path) -> set[int]:
    """The demo's RabbitMQ processes started from ``workdir`` (other sessions on the machine run
    demos of their own at the same time)."""
    found = set()
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if process.info["cwd"] == str(workdir) and any("order-flow-rabbitmq-" in part for part in cmdline):
            found.add(process.pid)
    return found


@pytest.mark.parametrize("transport", ["rabbitmq", "pika"])
def test_the_demo_over_rabbitmq_has_the_same_causation_trees(tmp_path: Path, transport: str) -> None:
    run = run_demo(tmp_path, "--traffic", "0", "--transport", transport)
    assert "RabbitMQ ready on amqp:" in run.result.stdout  # the demo started its own
    assert_flows_as_expected(run, 6)
    # every consumer span links to a producer span written in another service's process
    producers = {s["context"]["span_id"]: service for service, s in run.all_spans() if s["kind"] == "SpanKind.PRODUCER"}
    consumers = [(service, s) for service, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert consumers
    for service, span in consumers:
        (link,) = span["links"]
        assert producers[link["context"]["span_id"]] != service
        assert span["attributes"][semconv.EDA_CORRELATION_ID]
    assert rabbitmq_pids(tmp_path) == set()  # the demo stopped the node (and its epmd) it started
