"""The order-flow demo over Redis Streams (``--transport redis``): the demo starts a redis-server
with ``scripts/redis``, runs the four services across its streams and consumer groups, and stops
it; the causation trees are those of the demo over queues."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from test_demo import assert_flows_as_expected, run_demo

from otel_eda import semconv

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def redis_pids() -> set[int]:
    found = set()
    for process in psutil.process_iter(["name", "cwd"]):
        try:
            if process.info["name"] == "redis-server" and "order-flow-redis-" in (process.info["cwd"] or ""):
                found.add(process.pid)
        except psutil.Error:
            continue
    return found


def test_the_demo_over_redis_streams_has_the_same_causation_trees(tmp_path: Path) -> None:
    before = redis_pids()
    run = run_demo(tmp_path, "--traffic", "0", "--transport", "redis")
    assert "Redis ready on 127.0.0.1:" in run.result.stdout  # the demo started its own
    assert_flows_as_expected(run, 6)
    # every consumer span links to a producer span written in another service's process
    producers = {s["context"]["span_id"]: service for service, s in run.all_spans() if s["kind"] == "SpanKind.PRODUCER"}
    consumers = [(service, s) for service, s in run.all_spans() if s["kind"] == "SpanKind.CONSUMER"]
    assert consumers
    for service, span in consumers:
        (link,) = span["links"]
        assert producers[link["context"]["span_id"]] != service
        assert span["attributes"][semconv.EDA_CORRELATION_ID]
    assert redis_pids() <= before  # the demo stopped the redis-server it started
