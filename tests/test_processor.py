"""EventSpanProcessor: every span of a flow carries its ids, foreign spans included."""

from __future__ import annotations

import http.server
import logging
import threading
import urllib.request
from collections.abc import Iterator
from typing import ClassVar

import pytest
from opentelemetry import context, trace
from opentelemetry.instrumentation.urllib import URLLibInstrumentor
from opentelemetry.trace import Link, SpanKind

from otel_eda.identity import EventContext, with_event
from otel_eda.sdk import processor as processor_module
from otel_eda.testing import TelemetryCapture


@pytest.fixture
def flow() -> Iterator[EventContext]:
    event = EventContext.root("order_placed").child("payment_authorized")
    token = context.attach(with_event(event))
    yield event
    context.detach(token)


def test_hand_made_span_of_a_foreign_tracer_gets_the_flow_ids(capture: TelemetryCapture, flow: EventContext) -> None:
    tracer = capture.tracer_provider.get_tracer("some.other.library")
    with tracer.start_as_current_span("SELECT orders"), tracer.start_as_current_span("nested"):
        pass
    spans = capture.spans()
    assert [s.name for s in spans] == ["nested", "SELECT orders"]
    for span in spans:
        assert span.attributes["eda.correlation_id"] == flow.correlation_id
        assert span.attributes["eda.causation_id"] == flow.causation_id


def test_span_outside_a_flow_is_left_alone(capture: TelemetryCapture) -> None:
    with capture.tracer_provider.get_tracer("x").start_as_current_span("idle"):
        pass
    (span,) = capture.spans()
    assert not any(k.startswith("eda.") for k in span.attributes or {})


def test_explicit_context_argument_wins_over_the_current_one(capture: TelemetryCapture, flow: EventContext) -> None:
    other = EventContext.root("refund_requested")
    tracer = capture.tracer_provider.get_tracer("x")
    tracer.start_span("explicit", context=with_event(other)).end()
    (span,) = capture.spans()
    assert span.attributes["eda.correlation_id"] == other.correlation_id
    assert "eda.causation_id" not in span.attributes


def test_values_already_on_the_span_are_never_overwritten(capture: TelemetryCapture, flow: EventContext) -> None:
    tracer = capture.tracer_provider.get_tracer("x")
    own = {"eda.correlation_id": "own-flow", "eda.causation_id": "own-cause"}
    tracer.start_span("own", attributes=own).end()
    (span,) = capture.spans()
    assert span.attributes["eda.correlation_id"] == "own-flow"
    assert span.attributes["eda.causation_id"] == "own-cause"


def test_message_link_is_kept_as_attributes_for_zipkin(capture: TelemetryCapture) -> None:
    tracer = capture.tracer_provider.get_tracer("x")
    with tracer.start_as_current_span("send orders", kind=SpanKind.PRODUCER) as producer:
        producer_ctx = producer.get_span_context()
    unrelated = tracer.start_span("other")
    unrelated.end()
    links = [
        Link(unrelated.get_span_context()),  # not a message link: skipped
        Link(producer_ctx, {"messaging.message.id": "m-1"}),
    ]
    tracer.start_span("process orders", context=context.Context(), kind=SpanKind.CONSUMER, links=links).end()
    consumer = capture.spans(name="process orders")[0]
    assert consumer.attributes["eda.producer.trace_id"] == trace.format_trace_id(producer_ctx.trace_id)
    assert consumer.attributes["eda.producer.span_id"] == trace.format_span_id(producer_ctx.span_id)


def test_an_internal_error_is_logged_and_counted_never_raised(
    capture: TelemetryCapture, flow: EventContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("boom")

    from otel_eda import _selfmetrics

    monkeypatch.setattr(processor_module, "flow_ids", broken)
    monkeypatch.setattr(processor_module.otel_internals, "start_attributes", lambda *_: broken(_))
    monkeypatch.setattr(processor_module.otel_internals, "live_attributes", broken)
    errors = capture.meter_provider.get_meter("otel_eda").create_counter("eda.internal.errors")
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)  # counted where we can read it
    with caplog.at_level(logging.ERROR, logger="otel_eda"):
        capture.tracer_provider.get_tracer("x").start_span("still works").end()
    assert [s.name for s in capture.spans()] == ["still works"]
    assert any("span processor" in r.getMessage() for r in caplog.records)
    assert capture.counter_total("eda.internal.errors", {"eda.component": "span processor"}) == 1


class _Echo(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        _Echo.received.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        return None


def test_instrumented_http_client_span_carries_ids_and_sends_them_downstream(
    capture: TelemetryCapture, flow: EventContext
) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    instrumentor = URLLibInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/stock", timeout=5) as response:
            assert response.read() == b"ok"
    finally:
        instrumentor.uninstrument()
        server.shutdown()
    (client,) = capture.spans(kind=SpanKind.CLIENT)
    assert client.attributes["eda.correlation_id"] == flow.correlation_id
    assert client.attributes["eda.causation_id"] == flow.causation_id
    # the ids reach the downstream service as W3C baggage
    headers = {k.lower(): v for k, v in _Echo.received[-1].items()}
    assert f"eda.correlation_id={flow.correlation_id}" in headers["baggage"]
    assert f"eda.causation_id={flow.causation_id}" in headers["baggage"]


def test_listed_baggage_keys_are_copied_onto_every_span_and_nothing_else() -> None:
    from opentelemetry import baggage
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_eda.sdk.processor import EventSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(EventSpanProcessor(baggage_keys=["tenant.id", "region"]))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ctx = baggage.set_baggage("tenant.id", "acme")
    ctx = baggage.set_baggage("session.secret", "do-not-copy", ctx)
    tracer = provider.get_tracer("x")
    tracer.start_span("with baggage", context=ctx).end()
    tracer.start_span("own value kept", context=ctx, attributes={"tenant.id": "own"}).end()
    tracer.start_span("no baggage").end()
    first, second, third = exporter.get_finished_spans()
    assert first.attributes == {"tenant.id": "acme"}
    assert second.attributes == {"tenant.id": "own"}
    assert not third.attributes


@pytest.mark.parametrize(
    ("limits", "own_attributes"),
    [
        ({}, 0),  # no limit applies: the ids go into the span's attribute dict directly
        ({"max_span_attribute_length": 8}, 0),  # a value-length limit: through the SDK, truncated
        ({"max_span_attributes": 3}, 2),  # no room for both ids: through the SDK, oldest evicted
    ],
)
def test_stamped_ids_honour_the_sdk_attribute_limits(limits: dict[str, int], own_attributes: int) -> None:
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_eda.sdk.processor import EventSpanProcessor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(**limits))  # type: ignore[arg-type]
    provider.add_span_processor(EventSpanProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    event = EventContext.root("order_placed").child("payment_authorized")
    own = {f"own.{i}": i for i in range(own_attributes)}
    provider.get_tracer("x").start_span("limited", context=with_event(event), attributes=own).end()
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    expected = {**own, "eda.correlation_id": event.correlation_id, "eda.causation_id": event.causation_id}
    if "max_span_attribute_length" in limits:
        expected = {k: v[: limits["max_span_attribute_length"]] for k, v in expected.items()}
    if "max_span_attributes" in limits:
        expected = dict(list(expected.items())[-limits["max_span_attributes"] :])
        assert span.dropped_attributes == 1
    assert attributes == expected
