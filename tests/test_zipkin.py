"""Zipkin, for real (issue 4, section 3): the order-flow demo's spans, read back through Zipkin's query API.

A real OpenZipkin server (``scripts/zipkin``: the 3.6.1 exec jar, in-memory storage, 127.0.0.1
only) receives the spans of the demo (``examples/order_flow.py``: order → payment → inventory
→ notification, one interpreter each) through the SDK's ``zipkin_json`` exporter, configured
only by the standard variables::

    OTEL_TRACES_EXPORTER=zipkin_json,console
    OTEL_EXPORTER_ZIPKIN_ENDPOINT=http://127.0.0.1:<port>/api/v2/spans

The demo runs twice against one server, once per trace mode (``--mode parent`` and
``--mode link``), with the six story orders only (``--traffic 0``). The ``console`` exporter
next to Zipkin's writes every span each service ends to ``<service>.console-exporters.txt``: that is
the exact record of what was emitted, to compare with what Zipkin stored. The launcher's
``--json`` summary (built from the lifecycle records, not from spans) says which events each
flow had, with the trace and span id of each event's PRODUCER span.

Everything asserted here is read from Zipkin's API (``zipkin2-api.yaml``): services, traces
by id, and searches by tag (``annotationQuery``). Zipkin has no span links, so the tests show
how causation stays followable there: by parent ids in ``parent`` mode, by the tags otel-eda
writes in ``link`` mode.

Duration: about 40 s on two cores (Zipkin starts in 10-20 s, each demo run takes about 10 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from console_telemetry import read_json_stream
from zipkin_server import ZipkinServer, zipkin_fixture

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "order_flow.py"
SERVICES = ("order", "payment", "inventory", "notification")
ORDERS = 6

# A module fixture pays for starting Zipkin (up to scripts/zipkin's 120 s on a loaded machine)
# and for the two demo runs in the first tests that use them.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]

zipkin = zipkin_fixture(scope="module")

SpanKey = tuple[str, str]  # (trace id, span id), lower-case hex as Zipkin writes them


# -- running the demo ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """One run of the demo: its summary, and every span its services emitted."""

    mode: str
    summary: dict[str, Any]
    #: every span the four services ended, as their console exporters wrote them
    emitted: list[dict[str, Any]]

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.summary["events"])

    def flow(self, business_key: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["business_key"] == business_key]

    def correlation_ids(self) -> set[str]:
        return {event["correlation_id"] for event in self.events}

    def emitted_keys(self, correlation_id: str | None = None) -> set[SpanKey]:
        """(trace id, span id) of each emitted span (of one flow, given its correlation id)."""
        return {
            (span["context"]["trace_id"].removeprefix("0x"), span["context"]["span_id"].removeprefix("0x"))
            for span in self.emitted
            if correlation_id is None or span["attributes"].get("eda.correlation_id") == correlation_id
        }


def run_demo(zipkin: ZipkinServer, workdir: Path, mode: str, exporter: str = "zipkin_json") -> DemoRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_EXPORTER=f"{exporter},console",  # each exporter has its own BatchSpanProcessor
        OTEL_EXPORTER_ZIPKIN_ENDPOINT=zipkin.spans_endpoint,
        OTEL_METRICS_EXPORTER="none",  # only spans in the console files (the anomaly reader still runs)
        PYTHONUNBUFFERED="1",
    )
    output_dir = workdir / "telemetry"
    summary_file = workdir / "summary.json"
    args = ["--orders", str(ORDERS), "--traffic", "0", "--mode", mode, "--timeout", "60"]
    result = subprocess.run(
        [sys.executable, str(DEMO), *args, "--output-dir", str(output_dir), "--json", str(summary_file)],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert result.returncode == 0, f"demo failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    emitted = []
    for service in SERVICES:
        objects = read_json_stream(output_dir / f"{service}.console-exporters.txt")
        assert all("context" in o and "kind" in o for o in objects), f"{service}'s file has more than spans"
        emitted.extend(objects)
    summary = json.loads(summary_file.read_text())
    assert summary["trace_mode"] == mode
    demo_run = DemoRun(mode, summary, emitted)
    # Each export has had its answer (202) before the services exited; give Zipkin's collector a
    # moment anyway before the tests query (test_a_graceful_shutdown_loses_no_span checks the count).
    deadline = time.monotonic() + 15
    while not demo_run.emitted_keys() <= {key(s) for s in zipkin.spans()} and time.monotonic() < deadline:
        time.sleep(0.2)
    return demo_run


@pytest.fixture(scope="module")
def parent_run(zipkin: ZipkinServer, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo(zipkin, tmp_path_factory.mktemp("parent"), "parent")


@pytest.fixture(scope="module")
def link_run(zipkin: ZipkinServer, tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    return run_demo(zipkin, tmp_path_factory.mktemp("link"), "link")


@pytest.fixture(params=["parent", "link"])
def run(request: pytest.FixtureRequest) -> DemoRun:
    """Each of the two runs in turn."""
    demo_run: DemoRun = request.getfixturevalue(f"{request.param}_run")
    return demo_run


# -- reading Zipkin ------------------------------------------------------------------------------


def key(span: dict[str, Any]) -> SpanKey:
    return span["traceId"], span["id"]


def tag(span: dict[str, Any], name: str) -> str | None:
    value: str | None = span.get("tags", {}).get(name)
    return value


def messaging_spans(spans: Iterable[dict[str, Any]], kind: str, event_id: str) -> list[dict[str, Any]]:
    """The PRODUCER or CONSUMER spans of one event (``messaging.message.id`` is the event id)."""
    return [s for s in spans if s.get("kind") == kind and tag(s, "messaging.message.id") == event_id]


def producer_span(zipkin: ZipkinServer, event: dict[str, Any]) -> dict[str, Any]:
    """The PRODUCER span of an event of the summary, fetched by its trace id."""
    spans = [s for s in zipkin.trace(event["trace_id"]) if s["id"] == event["span_id"]]
    assert len(spans) == 1, f"no producer span {event['trace_id']}/{event['span_id']} in Zipkin"
    return spans[0]


def trace_ids(traces: list[list[dict[str, Any]]]) -> set[str]:
    return {trace[0]["traceId"] for trace in traces}


def zipkin_spans_of(zipkin: ZipkinServer, run: DemoRun) -> dict[SpanKey, dict[str, Any]]:
    """Zipkin's spans of one run: those whose ids the run's services emitted."""
    emitted = run.emitted_keys()
    return {key(s): s for s in zipkin.spans() if key(s) in emitted}


# -- the server ------------------------------------------------------------------------------------


def test_zipkin_listens_on_127_0_0_1_only(zipkin: ZipkinServer, parent_run: DemoRun) -> None:
    """Also once it has received spans and answered queries: scripts/zipkin gives Zipkin 3 its
    address (it binds every interface otherwise) and makes it resolve names with the JDK (Armeria's
    own DNS client would bind a UDP socket on every interface)."""
    assert zipkin.api("/health")["status"] == "UP"
    assert zipkin.span_count() > 0
    assert zipkin.listening_addresses() == {("tcp", "127.0.0.1", zipkin.port)}


# -- every service is its own Zipkin service ------------------------------------------------------


def test_every_service_of_the_demo_appears_in_zipkin(zipkin: ZipkinServer, run: DemoRun) -> None:
    assert set(run.summary["services"]) == set(SERVICES)
    assert set(SERVICES) <= set(zipkin.services())
    # what each service does, as Zipkin lists it: its sends, its handlings and its handlers' own spans
    span_names = {service: set(zipkin.api("/api/v2/spans", serviceName=service)) for service in SERVICES}
    assert span_names == {
        "order": {"send order_placed", "process stock_reserved", "process payment_declined"},
        "payment": {"process order_placed", "charge card", "send payment_authorized", "send payment_declined"},
        "inventory": {"process payment_authorized", "reserve stock", "send stock_reserved"},
        "notification": {"process stock_reserved", "process payment_declined", "send email"},
    }


# -- parent mode: one trace per flow, the consumer span a child of the producer span ----------------


def test_parent_mode_consumer_span_is_the_child_of_its_producer_span(zipkin: ZipkinServer, parent_run: DemoRun) -> None:
    for event in parent_run.events:
        producer = producer_span(zipkin, event)
        assert producer["kind"] == "PRODUCER"
        assert producer["name"] == f"send {event['event_type']}"
        assert producer["localEndpoint"]["serviceName"] == event["publisher"]
        assert tag(producer, "messaging.message.id") == event["event_id"]

        consumers = messaging_spans(zipkin.trace(event["trace_id"]), "CONSUMER", event["event_id"])
        # one CONSUMER span per handling attempt, in the producer's trace, its parent the producer span
        assert len(consumers) == sum(d["attempts"] for d in event["deliveries"])
        for consumer in consumers:
            assert consumer["name"] == f"process {event['event_type']}"
            assert consumer["traceId"] == producer["traceId"]
            assert consumer["parentId"] == producer["id"]
        assert Counter(c["localEndpoint"]["serviceName"] for c in consumers) == {
            d["service"]: d["attempts"] for d in event["deliveries"]
        }


def test_parent_mode_puts_each_flow_in_one_trace(zipkin: ZipkinServer, parent_run: DemoRun) -> None:
    for correlation_id in parent_run.correlation_ids():
        traces = zipkin.traces(annotationQuery=f"eda.correlation_id={correlation_id}")
        assert len(traces) == 1
        services = {s["localEndpoint"]["serviceName"] for s in traces[0]}
        assert {"order", "payment", "notification"} <= services  # every flow reaches notification


# -- link mode: a new trace per consumer; the tags lead back to the producer -----------------------


def test_link_mode_consumer_span_starts_a_trace_and_its_tags_point_at_the_producer_span(
    zipkin: ZipkinServer, link_run: DemoRun
) -> None:
    spans = zipkin_spans_of(zipkin, link_run)
    for event in link_run.events:
        producer = producer_span(zipkin, event)
        consumers = messaging_spans(spans.values(), "CONSUMER", event["event_id"])
        assert len(consumers) == sum(d["attempts"] for d in event["deliveries"])
        for consumer in consumers:
            # Zipkin has no links: the consumer span is the root of its own trace...
            assert consumer["traceId"] != producer["traceId"]
            assert "parentId" not in consumer
            # ...and names its producer span in tags, which lead to it through the API
            assert tag(consumer, "eda.producer.trace_id") == producer["traceId"]
            assert tag(consumer, "eda.producer.span_id") == producer["id"]
            assert tag(consumer, "messaging.message.id") == tag(producer, "messaging.message.id")
            assert tag(consumer, "eda.causation_id") == tag(producer, "eda.causation_id")


def test_link_mode_causation_is_followed_back_to_the_order_with_zipkin_alone(
    zipkin: ZipkinServer, link_run: DemoRun
) -> None:
    """From the mail sent for order-1001 back to the order it was about, span to span, through
    Zipkin's API only: the parent of a producer span is the consumer span handling the cause
    (same trace), and that consumer span's tags name the cause's producer span (other trace)."""
    correlation_id = link_run.flow("order-1001")[0]["correlation_id"]  # (the parent run has an order-1001 too)
    found = zipkin.spans(
        serviceName="notification",
        spanName="process stock_reserved",
        annotationQuery=f"eda.correlation_id={correlation_id}",
    )
    # a query answers with whole traces: here the handling's trace, its "send email" span included
    (notification,) = [s for s in found if s["name"] == "process stock_reserved"]
    path = []
    consumer: dict[str, Any] | None = notification
    while consumer is not None:
        producer_trace = zipkin.trace(tag(consumer, "eda.producer.trace_id") or "")
        (producer,) = [s for s in producer_trace if s["id"] == tag(consumer, "eda.producer.span_id")]
        path.append((producer["localEndpoint"]["serviceName"], producer["name"]))
        if "parentId" not in producer:  # the first event of the flow: nothing caused it
            assert tag(producer, "eda.causation_id") is None
            assert tag(producer, "messaging.message.id") == tag(producer, "eda.correlation_id")
            break
        (consumer,) = [s for s in producer_trace if s["id"] == producer["parentId"]]
        assert consumer["kind"] == "CONSUMER"
        # the producer's causation id is the id of the event its service was handling
        assert tag(producer, "eda.causation_id") == tag(consumer, "messaging.message.id")
    assert path == [
        ("inventory", "send stock_reserved"),
        ("payment", "send payment_authorized"),
        ("order", "send order_placed"),
    ]


# -- search: a correlation id, a business key --------------------------------------------------------


def test_a_correlation_id_finds_every_trace_of_its_flow(zipkin: ZipkinServer, run: DemoRun) -> None:
    for correlation_id in run.correlation_ids():
        found = zipkin.traces(annotationQuery=f"eda.correlation_id={correlation_id}")
        flow_spans = run.emitted_keys(correlation_id)
        # every trace holding a span of the flow, and nothing else: every span found is of the flow
        assert trace_ids(found) == {trace_id for trace_id, _ in flow_spans}
        assert {key(s) for trace in found for s in trace} == flow_spans
        assert {tag(s, "eda.correlation_id") for trace in found for s in trace} == {correlation_id}
    if run.mode == "link":  # one trace per handling attempt, plus the order's
        flow = run.flow("order-1001")
        found = zipkin.traces(annotationQuery=f"eda.correlation_id={flow[0]['correlation_id']}")
        assert len(found) == 1 + sum(d["attempts"] for event in flow for d in event["deliveries"])


def test_a_business_key_finds_its_flows(zipkin: ZipkinServer, parent_run: DemoRun, link_run: DemoRun) -> None:
    """What happened to order-1003? Its business key finds it in Zipkin: two flows here, one per
    demo run, told apart by their correlation ids. In each, the card was declined."""
    found = zipkin.traces(annotationQuery="eda.business_key=order-1003")
    by_flow: dict[str | None, list[dict[str, Any]]] = {}
    for span in (span for trace in found for span in trace):
        by_flow.setdefault(tag(span, "eda.correlation_id"), []).append(span)
    runs = {run.flow("order-1003")[0]["correlation_id"]: run for run in (parent_run, link_run)}
    assert set(by_flow) == set(runs)
    for correlation_id, run in runs.items():
        spans = by_flow[correlation_id]
        # every span of the flow: each of its traces has a messaging span carrying the business
        # key (the handlers' own spans carry only the correlation id)
        assert {key(s) for s in spans} == run.emitted_keys(correlation_id)
        messaging = sorted(
            (s["localEndpoint"]["serviceName"], s["name"]) for s in spans if s.get("kind") in ("PRODUCER", "CONSUMER")
        )
        assert messaging == [
            ("notification", "process payment_declined"),
            ("order", "process payment_declined"),
            ("order", "send order_placed"),
            ("payment", "process order_placed"),
            ("payment", "send payment_declined"),
        ]
        (declined,) = [s for s in spans if s["name"] == "process order_placed"]
        assert tag(declined, "error.type") == "order_services.PaymentDeclined"
        assert tag(declined, "otel.status_code") == "ERROR"


# -- nothing lost ------------------------------------------------------------------------------------


def test_a_graceful_shutdown_loses_no_span(zipkin: ZipkinServer, parent_run: DemoRun, link_run: DemoRun) -> None:
    """Each service shuts its TracerProvider down on exit, which flushes both exporters: Zipkin
    holds exactly the spans the console exporters wrote, of both runs, no more, no fewer."""
    emitted = parent_run.emitted_keys() | link_run.emitted_keys()
    assert len(emitted) == len(parent_run.emitted) + len(link_run.emitted)  # span ids are unique
    assert zipkin.wait_for_span_count(len(emitted)) == len(emitted)
    assert {key(s) for s in zipkin.spans()} == emitted
    # Zipkin's collector received each span once and dropped none
    assert zipkin.received_span_count() == len(emitted)
    assert zipkin.collector_metric("zipkin_collector_spans_dropped_total") == 0
    # and, independently of any exporter, the lifecycle records call for exactly these
    # messaging spans: one PRODUCER span per event, one CONSUMER span per handling attempt
    for run in (parent_run, link_run):
        spans = zipkin_spans_of(zipkin, run).values()
        kinds = Counter(s.get("kind") for s in spans)
        assert kinds["PRODUCER"] == len(run.events)
        assert kinds["CONSUMER"] == sum(d["attempts"] for e in run.events for d in e["deliveries"])


# -- the dependency graph ------------------------------------------------------------------------


def test_zipkin_eda_exporter_gives_zipkin_its_dependency_graph(
    zipkin: ZipkinServer, parent_run: DemoRun, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Zipkin links services only through messaging spans that name a remote service. The SDK's
    ``zipkin_json`` exporter never writes ``remoteEndpoint``, so the runs above draw no graph;
    otel-eda's ``zipkin_eda`` exporter writes ``peer.service`` (the bus) there, so the services
    appear linked through the bus: producers into it, consumers out of it."""
    window_start_ms = int(time.time() * 1000)
    time.sleep(0.01)
    graph_run = run_demo(zipkin, tmp_path_factory.mktemp("graph"), "parent", exporter="zipkin_eda")
    window_end_ms = int(time.time() * 1000) + 1

    def edges(end_ms: int, lookback_ms: int) -> set[tuple[str, str]]:
        links = zipkin.api("/api/v2/dependencies", endTs=end_ms, lookback=lookback_ms)
        return {(link["parent"], link["child"]) for link in links}

    bus = "otel_eda"
    assert edges(window_end_ms, window_end_ms - window_start_ms) == {
        ("order", bus),  # order publishes order_placed ...
        (bus, "order"),  # ... and hears back stock_reserved / payment_declined
        (bus, "payment"),  # payment consumes it ...
        ("payment", bus),  # ... and publishes payment_authorized / payment_declined
        (bus, "inventory"),
        ("inventory", bus),
        (bus, "notification"),
    }
    # the zipkin_json run before it (same services, same spans otherwise) left no edge at all
    parent_start_ms = min(int(s["start_time_unix_ms"]) for s in _start_times(parent_run))
    assert edges(window_start_ms - 1, window_start_ms - 1 - parent_start_ms) == set()
    assert graph_run.emitted_keys() <= {key(s) for s in zipkin.spans()}


def _start_times(run: DemoRun) -> list[dict[str, Any]]:
    from datetime import datetime

    return [
        {"start_time_unix_ms": datetime.fromisoformat(span["start_time"].replace("Z", "+00:00")).timestamp() * 1000}
        for span in run.emitted
    ]
