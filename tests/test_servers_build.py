"""The self-built servers: otel-eda's Collector (``scripts/otelcol``) and Jaeger v2 (``scripts/jaeger``).

Both are built from the Go module proxy before pytest runs (``scripts/otelcol install`` and
``scripts/jaeger install``: a cold build takes many minutes, far beyond a test's timeout); a test
that finds a binary missing fails and names the install command. The servers run on free ports,
each listener on 127.0.0.1, through the scripts' own ``start`` and ``stop``. If a server does not
start, the tests fail: they are never skipped.

The end-to-end test sends a PRODUCER span and a CONSUMER span linked to it, as otel-eda's
messaging spans are, with the OpenTelemetry SDK's OTLP/HTTP exporter to the Collector started with
the repository's ``collector-config.yaml``, which forwards them to Jaeger over OTLP/gRPC; Jaeger's
query API then shows the link as a ``FOLLOWS_FROM`` reference (``/api/traces``) and with its
attributes (``/api/v3/traces/{trace_id}``).
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind
from otel_servers import (
    COLLECTOR_CONFIG,
    OTELCOL,
    START_TIMEOUT_S,
    Collector,
    Jaeger,
    built_binary,
    clean_env,
    http_json,
    id_as_int,
    listeners,
    running_collector,
    running_jaeger,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    with running_jaeger(tmp_path_factory.mktemp("jaeger")) as server:
        yield server


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[Collector]:
    """The Collector with collector-config.yaml, exporting to ``jaeger`` and to a Zipkin that is not there."""
    with running_collector(tmp_path_factory.mktemp("otelcol"), jaeger) as server:
        yield server


# ------------------------------------------------------------------------------------ tests


def test_collector_validates_the_repository_config_with_no_variable_set() -> None:
    binary = built_binary(OTELCOL)
    proc = subprocess.run(
        [str(binary), "validate", f"--config={COLLECTOR_CONFIG}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert proc.returncode == 0, f"otelcol-eda validate rejected collector-config.yaml:\n{proc.stdout}\n{proc.stderr}"
    # The same through the script, which is what a user runs.
    subprocess.run([str(OTELCOL), "validate", str(COLLECTOR_CONFIG)], timeout=60, env=clean_env(), check=True)


def test_collector_validate_rejects_a_broken_config(tmp_path: Path) -> None:
    binary = built_binary(OTELCOL)
    broken = tmp_path / "broken.yaml"
    text = COLLECTOR_CONFIG.read_text()
    assert "exporters: [otlp_grpc/jaeger, file/traces]" in text
    broken.write_text(text.replace("exporters: [otlp_grpc/jaeger, file/traces]", "exporters: [file/traces, kafka]"))
    proc = subprocess.run(
        [str(binary), "validate", f"--config={broken}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "kafka" in proc.stderr + proc.stdout


def test_collector_has_the_manifest_components(tmp_path: Path) -> None:
    binary = built_binary(OTELCOL)
    out = subprocess.run([str(binary), "components"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "version: 0.148.0-otel-eda\n" in out
    for name in ("otlp", "memory_limiter", "transform", "zipkin", "file", "debug", "health_check"):
        assert f"name: {name}\n" in out, f"component {name} missing from otelcol-eda:\n{out}"
    assert "name: batch\n" not in out  # batching is the exporters' sending_queue.batch
    # `components` of v0.148.0 leaves out every component that has a deprecated type alias, such as the
    # OTLP exporters otlp_grpc (alias otlp) and otlp_http (alias otlphttp): a config that uses them shows
    # that they are built in.
    config = tmp_path / "otlp-exporters.yaml"
    config.write_text(
        "receivers: {otlp: {protocols: {http: {endpoint: '127.0.0.1:0'}}}}\n"
        "exporters:\n"
        "  otlp_grpc: {endpoint: '127.0.0.1:1', tls: {insecure: true}}\n"
        "  otlp_http: {endpoint: 'http://127.0.0.1:1'}\n"
        "service:\n"
        "  telemetry: {metrics: {level: none}}\n"
        "  pipelines: {traces: {receivers: [otlp], exporters: [otlp_grpc, otlp_http]}}\n"
    )
    proc = subprocess.run(
        [str(binary), "validate", f"--config={config}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_jaeger_listens_on_loopback_only(jaeger: Jaeger) -> None:
    addresses = listeners(jaeger.pid)
    assert addresses, f"no listener of Jaeger's PID {jaeger.pid}"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    ports = {int(a.rsplit(":", 1)[1]) for a in addresses}
    wanted = {jaeger.otlp_grpc, jaeger.otlp_http, jaeger.query, jaeger.query_grpc, jaeger.health, jaeger.metrics}
    assert ports == wanted, f"Jaeger listens on {sorted(ports)}, the test gave it {sorted(wanted)}"
    assert jaeger.start_s < START_TIMEOUT_S
    health = http_json(f"http://127.0.0.1:{jaeger.health}/status")
    assert health["status"] == "StatusOK", health
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{jaeger.metrics}/metrics", timeout=5).read().decode()
    assert "otelcol_" in metrics or "jaeger" in metrics


def test_collector_listens_on_loopback_only(collector: Collector) -> None:
    addresses = listeners(collector.pid)
    assert addresses, f"no listener of the Collector's PID {collector.pid}"
    assert all(a.startswith("127.0.0.1:") for a in addresses), addresses
    ports = {int(a.rsplit(":", 1)[1]) for a in addresses}
    wanted = {collector.otlp_grpc, collector.otlp_http, collector.health, collector.metrics}
    assert ports == wanted, f"the Collector listens on {sorted(ports)}, the test gave it {sorted(wanted)}"
    with urllib.request.urlopen(f"http://127.0.0.1:{collector.health}/", timeout=5) as response:
        assert response.status == 200
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{collector.metrics}/metrics", timeout=5).read().decode()
    assert "otelcol_process_uptime" in metrics


def test_a_link_reaches_jaeger_through_the_collector(jaeger: Jaeger, collector: Collector) -> None:
    run_id = uuid.uuid4().hex
    service = f"eda-e2e-{run_id[:8]}"
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test_servers_build")
    event_id = str(uuid.uuid4())
    common = {"messaging.system": "otel_eda", "messaging.destination.name": "order_placed", "e2e.run_id": run_id}
    with tracer.start_as_current_span(
        "send order_placed",
        kind=SpanKind.PRODUCER,
        attributes={**common, "messaging.operation.type": "send", "messaging.message.id": event_id},
    ) as producer:
        producer_context = producer.get_span_context()
    link_attributes = {
        "messaging.message.id": event_id,
        "eda.correlation_id": str(uuid.uuid4()),
        "eda.causation_id": str(uuid.uuid4()),
    }
    # A CONSUMER span in a trace of its own (otel-eda's link mode), linked to the PRODUCER span.
    with tracer.start_as_current_span(
        "process order_placed",
        kind=SpanKind.CONSUMER,
        links=[Link(producer_context, link_attributes)],
        attributes={**common, "messaging.operation.type": "process"},
    ) as consumer:
        consumer_context = consumer.get_span_context()
    assert consumer_context.trace_id != producer_context.trace_id
    spans = memory.get_finished_spans()
    assert len(spans) == 2

    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{collector.otlp_http}/v1/traces", timeout=10)
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS, "the Collector refused the spans"
    finally:
        exporter.shutdown()
        provider.shutdown()

    # Jaeger's v1 API: tag search (it needs service=) finds both traces; the link is a FOLLOWS_FROM reference.
    query = urllib.parse.urlencode(
        {"service": service, "tags": json.dumps({"e2e.run_id": run_id}), "lookback": "1h", "limit": "20"}
    )

    def both_traces() -> list[dict[str, Any]] | None:
        traces: list[dict[str, Any]] = http_json(f"http://127.0.0.1:{jaeger.query}/api/traces?{query}")["data"]
        return traces if len(traces) == 2 else None

    traces = wait_for(both_traces, 30, f"both traces of service {service} in Jaeger")
    by_name = {span["operationName"]: span for trace in traces for span in trace["spans"]}
    assert set(by_name) == {"send order_placed", "process order_placed"}
    consumer_v1 = by_name["process order_placed"]
    assert id_as_int(consumer_v1["traceID"]) == consumer_context.trace_id
    references = [
        (ref["refType"], id_as_int(ref["traceID"]), id_as_int(ref["spanID"])) for ref in consumer_v1["references"]
    ]
    assert references == [("FOLLOWS_FROM", producer_context.trace_id, producer_context.span_id)]
    tags = {tag["key"]: tag["value"] for tag in consumer_v1["tags"]}
    assert tags["span.kind"] == "consumer"
    assert tags["e2e.run_id"] == run_id
    producer_tags = {tag["key"]: tag["value"] for tag in by_name["send order_placed"]["tags"]}
    assert producer_tags["span.kind"] == "producer"

    # Jaeger's v3 API (OTLP JSON): the link keeps its attributes.
    trace_hex = format(consumer_context.trace_id, "032x")
    v3 = http_json(f"http://127.0.0.1:{jaeger.query}/api/v3/traces/{trace_hex}")
    v3_spans = [
        span
        for resource_spans in v3["result"]["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]
    assert [span["name"] for span in v3_spans] == ["process order_placed"]
    assert v3_spans[0]["kind"] == 5  # SPAN_KIND_CONSUMER
    (link,) = v3_spans[0]["links"]
    assert id_as_int(link["traceId"]) == producer_context.trace_id
    assert id_as_int(link["spanId"]) == producer_context.span_id
    attributes = {a["key"]: a["value"].get("stringValue") for a in link["attributes"]}
    assert attributes == link_attributes
