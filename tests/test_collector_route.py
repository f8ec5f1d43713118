"""The Collector route (issue 5, section 3): app → OpenTelemetry Collector → Zipkin and Jaeger, all real.

The order-flow demo (``examples/order_flow.py``: four services, one interpreter each, ``--mode
link`` so that every consumer span starts its own trace and links to its producer) exports over
OTLP/HTTP, configured only by the standard variables::

    OTEL_TRACES_EXPORTER=otlp,console
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<collector>

to otel-eda's Collector (``scripts/otelcol``) running the repository's own
``collector-config.yaml`` on free ports, which forwards to a real Zipkin (``scripts/zipkin``) and
a real Jaeger v2 (``scripts/jaeger``). The ``console`` exporter beside OTLP records every span each
service emitted. Then, through each backend's own query API:

- Zipkin and Jaeger both list every service and find every flow by ``eda.correlation_id``, with
  every span the services emitted;
- the links survive: Jaeger shows them as ``FOLLOWS_FROM`` references (``/api/traces``) and with
  their attributes (``/api/v3/traces``); Zipkin, which has no links, gets them as the
  ``otlp.link.<i>`` tags of the Collector's translator;
- Zipkin's dependency graph shows the services linked through the bus: the translator maps
  ``peer.service`` to ``remoteEndpoint``, and the Zipkin pipeline's ``transform/zipkin_peer``
  processor sets it from ``messaging.system`` on messaging spans that lack it.

Duration: Zipkin's start (10-20 s on two cores) and one demo run (about 10 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from console_telemetry import read_json_stream
from otel_servers import Collector, Jaeger, http_json, id_as_int, wait_for
from zipkin_server import ZipkinServer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "order_flow.py"
SERVICES = ("order", "payment", "inventory", "notification")
BUS = "otel_eda"

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(480)]

# zipkin, jaeger and collector: the session's Collector route (conftest.py).


@dataclass(frozen=True)
class Run:
    summary: dict[str, Any]
    #: every span the services ended, as their console exporters wrote them
    emitted: list[dict[str, Any]]

    def flows(self) -> set[str]:
        return {event["correlation_id"] for event in self.summary["events"]}

    def span_ids(self, correlation_id: str | None = None) -> set[str]:
        return {
            span["context"]["span_id"].removeprefix("0x")
            for span in self.emitted
            if correlation_id is None or span["attributes"].get("eda.correlation_id") == correlation_id
        }

    def consumers(self) -> list[dict[str, Any]]:
        return [span for span in self.emitted if span["kind"] == "SpanKind.CONSUMER"]


@pytest.fixture(scope="module")
def run(collector: Collector, zipkin: ZipkinServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER="otlp,console",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.otlp_http}",
        OTEL_METRICS_EXPORTER="none",
        PYTHONUNBUFFERED="1",
    )
    args = ["--orders", "6", "--traffic", "0", "--mode", "link", "--timeout", "60"]
    summary = workdir / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            str(DEMO),
            *args,
            "--output-dir",
            str(workdir / "telemetry"),
            "--json",
            str(summary),
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    for failure in ("Failed to export", "Transient error", "OTLPSpanExporter"):
        assert failure not in result.stderr, result.stderr  # no export error logged
    emitted = [
        span for s in SERVICES for span in read_json_stream(workdir / "telemetry" / f"{s}.console-exporters.txt")
    ]
    demo_run = Run(json.loads(summary.read_text()), emitted)
    # The Collector batches and retries: let every span reach Zipkin before any test reads it
    # (each Jaeger test waits for what it reads itself).
    wait_for(
        lambda: demo_run.span_ids() <= {span["id"] for span in zipkin.spans()},
        60,
        "every emitted span in Zipkin",
    )
    return demo_run


# -- reading the backends ------------------------------------------------------------------------


def zipkin_flow(zipkin: ZipkinServer, correlation_id: str) -> list[dict[str, Any]]:
    traces = zipkin.traces(annotationQuery=f"eda.correlation_id={correlation_id}", limit=1000)
    return [span for trace in traces for span in trace]


def jaeger_flow(jaeger: Jaeger, service: str, correlation_id: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        {
            "service": service,
            "tags": json.dumps({"eda.correlation_id": correlation_id}),
            "lookback": "1h",
            "limit": 1000,
        }
    )
    traces = http_json(f"http://127.0.0.1:{jaeger.query}/api/traces?{query}")["data"]
    return [span for trace in traces for span in trace["spans"]]


def settled(probe: Callable[[], set[str]], expected: set[str], what: str) -> set[str]:
    """The Collector batches (200 ms) and retries: wait until a backend holds every expected span id."""

    def complete() -> set[str] | None:
        found = probe()
        return found if found >= expected else None

    found: set[str] = wait_for(complete, 30, what)
    return found


# -- the tests -------------------------------------------------------------------------------------


def test_every_service_and_every_flow_reaches_zipkin_through_the_collector(run: Run, zipkin: ZipkinServer) -> None:
    assert wait_for(lambda: set(SERVICES) <= set(zipkin.services()), 30, "the demo's services in Zipkin")
    for correlation_id in run.flows():
        expected = run.span_ids(correlation_id)
        found = settled(
            lambda c=correlation_id: {span["id"] for span in zipkin_flow(zipkin, c)},  # type: ignore[misc]
            expected,
            f"flow {correlation_id} in Zipkin",
        )
        assert found == expected  # and nothing more


def test_every_service_and_every_flow_reaches_jaeger_through_the_collector(run: Run, jaeger: Jaeger) -> None:
    services = wait_for(
        lambda: set(SERVICES) <= set(http_json(f"http://127.0.0.1:{jaeger.query}/api/services")["data"] or []),
        30,
        "the demo's services in Jaeger",
    )
    assert services

    def jaeger_ids(correlation_id: str) -> set[str]:
        # Jaeger's tag search needs service=
        return {span["spanID"] for s in SERVICES for span in jaeger_flow(jaeger, s, correlation_id)}

    for correlation_id in run.flows():
        expected = run.span_ids(correlation_id)
        found = settled(lambda c=correlation_id: jaeger_ids(c), expected, f"flow {correlation_id} in Jaeger")  # type: ignore[misc]
        assert found == expected, correlation_id


def test_jaeger_keeps_every_link_as_a_follows_from_reference_with_its_attributes(run: Run, jaeger: Jaeger) -> None:
    consumers = run.consumers()
    assert consumers
    for consumer in consumers:
        (link,) = consumer["links"]
        trace_hex = consumer["context"]["trace_id"].removeprefix("0x")
        span_hex = consumer["context"]["span_id"].removeprefix("0x")

        def consumer_in_jaeger(trace_hex: str = trace_hex, span_hex: str = span_hex) -> list[dict[str, Any]]:
            traces = http_json(f"http://127.0.0.1:{jaeger.query}/api/traces/{trace_hex}")["data"] or []
            return [s for t in traces for s in t["spans"] if s["spanID"] == span_hex]

        (span,) = wait_for(consumer_in_jaeger, 30, f"consumer span {span_hex} in Jaeger")
        references = [(r["refType"], id_as_int(r["traceID"]), id_as_int(r["spanID"])) for r in span["references"]]
        producer = (int(link["context"]["trace_id"], 16), int(link["context"]["span_id"], 16))
        assert ("FOLLOWS_FROM", *producer) in references
        v3 = http_json(f"http://127.0.0.1:{jaeger.query}/api/v3/traces/{trace_hex}")["result"]["resourceSpans"]
        (v3_span,) = [
            s
            for rs in v3
            for ss in rs["scopeSpans"]
            for s in ss["spans"]
            if id_as_int(s["spanId"]) == int(consumer["context"]["span_id"], 16)
        ]
        (v3_link,) = v3_span["links"]
        attributes = {a["key"]: a["value"].get("stringValue") for a in v3_link["attributes"]}
        assert attributes == link["attributes"]
        assert attributes["messaging.message.id"]  # the event the consumer handled


def test_zipkin_gets_the_links_as_otlp_link_tags(run: Run, zipkin: ZipkinServer) -> None:
    for consumer in run.consumers():
        (link,) = consumer["links"]
        (span,) = [
            s
            for s in zipkin.trace(consumer["context"]["trace_id"].removeprefix("0x"))
            if s["id"] == consumer["context"]["span_id"].removeprefix("0x")
        ]
        tag = span["tags"]["otlp.link.0"]
        producer_trace = link["context"]["trace_id"].removeprefix("0x")
        producer_span = link["context"]["span_id"].removeprefix("0x")
        assert tag.startswith(f"{producer_trace}|{producer_span}|"), tag
        assert link["attributes"]["messaging.message.id"] in tag


def test_zipkin_draws_the_service_graph_through_the_bus(run: Run, zipkin: ZipkinServer) -> None:
    now_ms = int(time.time() * 1000)
    links = zipkin.api("/api/v2/dependencies", endTs=now_ms, lookback=3_600_000)
    edges = {(link["parent"], link["child"]) for link in links}
    assert edges == {
        ("order", BUS),
        (BUS, "order"),
        (BUS, "payment"),
        ("payment", BUS),
        (BUS, "inventory"),
        ("inventory", BUS),
        (BUS, "notification"),
    }
