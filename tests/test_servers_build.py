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
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind

ROOT = Path(__file__).resolve().parent.parent
JAEGER = ROOT / "scripts" / "jaeger"
OTELCOL = ROOT / "scripts" / "otelcol"
COLLECTOR_CONFIG = ROOT / "collector-config.yaml"
START_TIMEOUT_S = 90


# ---------------------------------------------------------------------------------- helpers


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all sockets held open until every port is chosen)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def built_binary(script: Path) -> Path:
    """The cached binary of ``script`` (``scripts/jaeger`` or ``scripts/otelcol``); fail if it is not built."""
    proc = subprocess.run([str(script), "path"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{script.relative_to(ROOT)} has no binary: run 'scripts/{script.name} install' before pytest "
            f"(scripts/test does).\n{proc.stderr}",
            pytrace=False,
        )
    return Path(proc.stdout.strip())


def run_script(args: list[str], env: dict[str, str], what: str) -> float:
    """Run a server script; fail with its output if it fails. Returns the seconds it took."""
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=START_TIMEOUT_S, env=env, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return time.monotonic() - started


def stop(script: Path, directory: Path) -> None:
    subprocess.run([str(script), "stop", str(directory)], capture_output=True, timeout=60, check=False)


def listeners(pid: int) -> list[str]:
    """Local addresses (``ip:port``) of every TCP listener and bound UDP socket of ``pid``, from ``ss``."""
    ss = shutil.which("ss") or "/usr/bin/ss"
    if not Path(ss).exists():
        pytest.fail("'ss' (Debian's iproute2) is needed to check the servers' listeners", pytrace=False)
    out = subprocess.run([ss, "-Hltunp"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OTELCOL_* / JAEGER_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELCOL_", "JAEGER_"))}
    env.update(extra)
    return env


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = predicate()
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last_error!r})")
        time.sleep(0.1)


def id_as_int(value: str) -> int:
    """A trace or span id from Jaeger's APIs (hex in both its v1 and its v3 JSON) as an integer."""
    return int(value, 16)


# --------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Jaeger:
    directory: Path
    otlp_grpc: int
    otlp_http: int
    query: int
    query_grpc: int
    health: int
    metrics: int
    start_s: float

    @property
    def pid(self) -> int:
        return int((self.directory / "jaeger.pid").read_text())


@dataclass(frozen=True)
class Collector:
    directory: Path
    otlp_grpc: int
    otlp_http: int
    health: int
    metrics: int
    start_s: float

    @property
    def pid(self) -> int:
        return int((self.directory / "otelcol.pid").read_text())


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    built_binary(JAEGER)
    directory = tmp_path_factory.mktemp("jaeger")
    ports = free_ports(6)
    names = ("OTLP_GRPC", "OTLP_HTTP", "QUERY", "QUERY_GRPC", "HEALTH", "METRICS")
    env = clean_env(**{f"JAEGER_{name}_PORT": str(port) for name, port in zip(names, ports, strict=True)})
    try:
        start_s = run_script([str(JAEGER), "start", str(directory)], env, "scripts/jaeger start")
        otlp_grpc, otlp_http, query, query_grpc, health, metrics = ports
        yield Jaeger(directory, otlp_grpc, otlp_http, query, query_grpc, health, metrics, start_s=start_s)
    finally:
        stop(JAEGER, directory)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory, jaeger: Jaeger) -> Iterator[Collector]:
    """The Collector with collector-config.yaml, exporting to ``jaeger`` and to a Zipkin that is not there."""
    built_binary(OTELCOL)
    directory = tmp_path_factory.mktemp("otelcol")
    otlp_grpc, otlp_http, health, metrics, no_zipkin = free_ports(5)
    env = clean_env(
        OTELCOL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{otlp_grpc}",
        OTELCOL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{otlp_http}",
        OTELCOL_HEALTH_ENDPOINT=f"127.0.0.1:{health}",
        OTELCOL_METRICS_PORT=str(metrics),
        OTELCOL_ZIPKIN_ENDPOINT=f"http://127.0.0.1:{no_zipkin}/api/v2/spans",
        OTELCOL_JAEGER_OTLP_ENDPOINT=f"127.0.0.1:{jaeger.otlp_grpc}",
    )
    try:
        start_s = run_script(
            [str(OTELCOL), "start", str(directory), str(COLLECTOR_CONFIG)], env, "scripts/otelcol start"
        )
        yield Collector(directory, otlp_grpc, otlp_http, health, metrics, start_s=start_s)
    finally:
        stop(OTELCOL, directory)


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
    assert "exporters: [zipkin, otlp_grpc/jaeger]" in text
    broken.write_text(text.replace("exporters: [zipkin, otlp_grpc/jaeger]", "exporters: [zipkin, kafka]"))
    proc = subprocess.run(
        [str(binary), "validate", f"--config={broken}"], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "kafka" in proc.stderr + proc.stdout


def test_collector_has_the_manifest_components(tmp_path: Path) -> None:
    binary = built_binary(OTELCOL)
    out = subprocess.run([str(binary), "components"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "version: 0.148.0-otel-eda\n" in out
    for name in ("otlp", "memory_limiter", "zipkin", "debug", "health_check"):
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
