"""Validation at every door (issue 12, point 4): baggage copied onto spans, carriers of any shape
(through the messaging API's safe getters, ``otel_eda.messaging.carriers``).

Before: ``OTEL_EDA_BAGGAGE_KEYS`` copied an upstream ``tenant.id`` of CR/LF and 1,319
characters verbatim onto spans, and OpenTelemetry's own propagators raised on 20,619 of
100,000 hostile carriers (``bytes``, ``None``, ``int`` values), with nothing an application
could pass to ``propagate.extract`` to avoid it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, metrics
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_eda import _selfmetrics, semconv
from otel_eda.identity import incoming_event
from otel_eda.identity.propagation import EdaPropagator
from otel_eda.identity.validation import id_problem
from otel_eda.messaging.carriers import HEADER_LIST_GETTER, TEXT_GETTER
from otel_eda.sdk.processor import EventSpanProcessor
from otel_eda.testing import TelemetryCapture

INJECTED = "acme\r\nX-Injected: 1" + "x" * 1300
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EVENT_ID = "0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    return caplog


@pytest.fixture
def invalid_points() -> Iterator[TelemetryCapture]:
    capture = TelemetryCapture(service="doors")
    counter = metrics.get_meter("otel_eda", meter_provider=capture.meter_provider).create_counter(
        semconv.METRIC_INVALID_HEADERS
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_selfmetrics, "_invalid_counter", lambda: counter)
        yield capture
    capture.shutdown()


def _invalid_by_field(capture: TelemetryCapture) -> dict[str, float]:
    totals: dict[str, float] = {}
    for point in capture.points(semconv.METRIC_INVALID_HEADERS):
        key = f"{(point.attributes or {}).get('eda.field')}:{(point.attributes or {}).get('eda.reason')}"
        totals[key] = totals.get(key, 0.0) + point.value
    return totals


def test_baggage_values_are_validated_like_ids_before_they_reach_a_span(invalid_points: TelemetryCapture) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(EventSpanProcessor(baggage_keys=["tenant.id", "region", "plan", "team"]))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ctx = baggage.set_baggage("tenant.id", INJECTED)
    ctx = baggage.set_baggage("region", "eu-west-1", ctx)
    ctx = baggage.set_baggage("plan", "x" * 129, ctx)
    ctx = baggage.set_baggage("team", "a b", ctx)
    provider.get_tracer("doors").start_span("upstream baggage", context=ctx).end()
    (span,) = exporter.get_finished_spans()
    assert span.attributes == {"region": "eu-west-1"}  # the valid one is still copied
    assert _invalid_by_field(invalid_points) == {"tenant.id:too_long": 1, "plan:too_long": 1, "team:bad_characters": 1}


def _global_textmap() -> CompositePropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator(), EdaPropagator()])


class _Raising(dict[str, Any]):
    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("a carrier whose get raises")

    def keys(self) -> Any:
        raise RuntimeError("a carrier whose keys raises")


FIELDS = ["traceparent", "tracestate", "baggage", "eda-event-id", "eda-event-type", "eda-event-created", "other"]


def _hostile_value(rng: random.Random) -> Any:
    pick = rng.randrange(14)
    return [
        TRACEPARENT.encode,
        lambda: b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(8)),
        lambda: None,
        lambda: rng.randrange(-(10**6), 10**6),
        rng.random,
        lambda: [TRACEPARENT, 7, None, b"k=v"],
        lambda: {"nested": [1, {"x": b"y"}]},
        lambda: "k=\udcff",
        lambda: "k=v," * rng.randrange(1, 3000),
        lambda: "acme\r\nX-Injected: 1",
        lambda: TRACEPARENT,
        lambda: f"eda.correlation_id={EVENT_ID}",
        lambda: EVENT_ID,
        lambda: bytearray(b"order_placed"),
    ][pick]()


def _hostile_carrier(rng: random.Random) -> Any:
    shape = rng.randrange(8)
    entries = [(rng.choice(FIELDS), _hostile_value(rng)) for _ in range(rng.randrange(1, 6))]
    if shape <= 3:
        return dict(entries)
    if shape == 4:
        return entries  # Kafka-style pairs
    if shape == 5:
        return [(k.encode(), v) for k, v in entries] + [("odd",), 7, None]
    if shape == 6:
        return rng.choice([None, 7, "traceparent", b"baggage", 3.5, object()])
    return _Raising(entries)


N = 100_000


def test_propagate_extract_with_the_safe_getters_never_raises_on_100k_hostile_carriers() -> None:
    """The README's advice: ``propagate.extract(headers, getter=TEXT_GETTER)`` (or
    ``HEADER_LIST_GETTER`` for Kafka's pairs) whatever the carrier holds."""
    rng = random.Random(12)
    textmap = _global_textmap()
    raised_without = 0
    for i in range(N):
        carrier = _hostile_carrier(rng)
        getter = HEADER_LIST_GETTER if isinstance(carrier, list) else TEXT_GETTER
        context = textmap.extract(carrier, context=Context(), getter=getter)
        assert isinstance(context, Context)
        if i < 5_000:  # control: OpenTelemetry's DefaultGetter path raises on a good share
            try:
                textmap.extract(carrier, context=Context())
            except Exception:
                raised_without += 1
    assert raised_without > 500, "the hostile carriers no longer reach OpenTelemetry's raising paths"


def test_eda_propagator_never_raises_whatever_the_carrier_or_getter_gives(logs: pytest.LogCaptureFixture) -> None:
    logs.set_level(logging.DEBUG)
    rng = random.Random(13)
    propagator = EdaPropagator()
    for _ in range(20_000):
        carrier = _hostile_carrier(rng)
        context = propagator.extract(carrier, context=Context())  # the SDK's DefaultGetter
        assert isinstance(context, Context)
        event = incoming_event(context)
        assert event is None or id_problem(event.event_id) is None
    assert not [r for r in logs.records if r.levelno >= logging.WARNING]  # no internal error, no echo


def test_bytes_headers_in_kafka_pairs_extract_the_trace_and_the_event() -> None:
    headers = [
        ("traceparent", TRACEPARENT.encode()),
        ("baggage", f"eda.correlation_id={EVENT_ID}".encode()),
        ("eda-event-id", EVENT_ID.encode()),
        ("eda-event-type", b"order_placed"),
        ("eda-event-created", b"1700000000000000000"),
    ]
    context = _global_textmap().extract(headers, context=Context(), getter=HEADER_LIST_GETTER)
    span_context = get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACEPARENT.split("-")[1]
    assert baggage.get_baggage("eda.correlation_id", context) == EVENT_ID
    event = incoming_event(context)
    assert event is not None and event.event_id == EVENT_ID and event.event_type == "order_placed"
