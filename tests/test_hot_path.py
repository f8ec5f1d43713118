"""The hot path's shortcuts give what the long way gives (issue 11).

* the bus hands a message to its local subscribers as ``Publication.local`` makes it,
  with the same event, producer span context and baggage as a round trip through the
  headers; with a propagator of another kind it goes through the headers;
* ``messaging.client.sent.messages`` / ``consumed.messages``, counted in process, reach
  every reader as monotonic sums, bounded in attribute sets;
* the duration and age histograms fed to the anomaly reader directly give the series the
  SDK's own exponential histogram gives, and the SDK no longer aggregates them twice.
"""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_eda import semconv
from otel_eda.anomaly import feed
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.reader import AnomalyMetricReader
from otel_eda.anomaly.reader import attach as attach_reader
from otel_eda.anomaly.rules import default_rule_set
from otel_eda.anomaly.series import SeriesConverter
from otel_eda.flows.records import Stage
from otel_eda.identity import current_event
from otel_eda.identity.propagation import EdaPropagator
from otel_eda.messaging import Messaging, Outcome, current_processing
from otel_eda.messaging.counting import MAX_ATTRIBUTE_SETS, OVERFLOW, tally
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.bus import EventBus


@pytest.fixture
def w3c_propagation() -> Iterator[None]:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
    yield
    propagate.set_global_textmap(before)


def _consumer_view(messaging: Messaging, via_headers: bool) -> tuple[object, ...]:
    token = attach(baggage.set_baggage("tenant.id", "acme"))
    try:
        headers: dict[str, str] = {}
        with messaging.publish("order_placed", headers if via_headers else None, business_key="order-1") as sent:
            incoming = messaging.extract(headers, destination="order_placed") if via_headers else sent.local()
    finally:
        detach(token)
    event = incoming.event
    return (
        (event.event_id, event.correlation_id, event.causation_id, event.event_type, event.business_key),
        event.created_ns == sent.event.created_ns,
        incoming.producer.trace_id,
        incoming.producer.span_id,
        trace.get_current_span(incoming.context).get_span_context().span_id,
        dict(baggage.get_all(incoming.context)),
        dict(incoming.link.attributes or {}) if incoming.link is not None else None,
    )


def test_local_hand_off_gives_what_the_headers_give(capture: TelemetryCapture, w3c_propagation: None) -> None:
    messaging = Messaging("test", service="shop", tracer_provider=capture.tracer_provider)
    assert messaging.in_process()
    via_headers, local = _consumer_view(messaging, True), _consumer_view(messaging, False)
    # the same shape: ids differ per publish, so compare what does not
    assert via_headers[1] and local[1]
    assert via_headers[0][3:] == local[0][3:] == ("order_placed", "order-1")
    assert local[2] != 0 and local[3] == local[4]  # the producer span is the consumer's parent
    assert via_headers[5].keys() == local[5].keys() >= {"tenant.id", semconv.EDA_CORRELATION_ID}
    assert via_headers[6] is not None and local[6] is not None and via_headers[6].keys() == local[6].keys()


def test_another_kind_of_propagator_goes_through_the_headers() -> None:
    before = propagate.get_global_textmap()
    try:
        propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), EdaPropagator()]))
        assert not Messaging("test", service="shop").in_process()  # no baggage propagator
        propagate.set_global_textmap(
            CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator(), EdaPropagator()])
        )
        assert Messaging("test", service="shop").in_process()
    finally:
        propagate.set_global_textmap(before)


def test_bus_handler_sees_the_event_and_baggage_either_way(capture: TelemetryCapture) -> None:
    async def run() -> list[tuple[str, object]]:
        seen: list[tuple[str, object]] = []
        async with EventBus(
            service="shop", tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider
        ) as bus:

            async def handle(delivery: object) -> None:
                event = current_event()
                seen.append((event.event_type if event else "", baggage.get_baggage("tenant.id")))

            bus.subscribe("order_placed", handle, subscriber="billing")
            token = attach(baggage.set_baggage("tenant.id", "acme"))
            try:
                await bus.publish("order_placed", {"n": 1})
            finally:
                detach(token)
            await bus.join()
        return seen

    assert asyncio.run(run()) == [("order_placed", "acme")]
    consumer = next(s for s in capture.spans() if s.kind is trace.SpanKind.CONSUMER)
    producer = next(s for s in capture.spans() if s.kind is trace.SpanKind.PRODUCER)
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert capture.counter_total(semconv.METRIC_SENT_MESSAGES) == 1
    assert capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES, {"messaging.consumer.group.name": "billing"}) == 1


def test_counts_are_monotonic_sums_for_every_reader() -> None:
    first, second = InMemoryMetricReader(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[first, second])
    sent = tally(provider, "otel_eda.test", "test.sent", "{message}", "sent")
    assert tally(provider, "otel_eda.test", "test.sent", "{message}", "sent") is sent  # one per name
    cell = sent.cell({"messaging.destination.name": "orders"})
    for _ in range(5):
        sent.add(cell)
    for reader in (first, second):
        metric = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0]
        assert metric.name == "test.sent" and metric.data.is_monotonic
        assert [p.value for p in metric.data.data_points] == [5]
    provider.shutdown()


def test_attribute_sets_past_the_bound_overflow_into_one() -> None:
    provider = MeterProvider(metric_readers=[reader := InMemoryMetricReader()])
    counted = tally(provider, "otel_eda.test", "test.bounded", "{message}", "bounded")
    for i in range(MAX_ATTRIBUTE_SETS + 5):
        counted.add(counted.cell({"messaging.destination.name": f"d{i}"}))
    points = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
    assert len(points) == MAX_ATTRIBUTE_SETS + 1
    assert [p.value for p in points if dict(p.attributes) == dict(OVERFLOW)] == [5]
    provider.shutdown()


def test_fed_histograms_give_the_series_of_the_sdk_aggregation() -> None:
    """The anomaly reader's series of otel-eda's duration histogram, fed directly, match
    those of the SDK's exponential histogram of the same values (the scale differs)."""
    values = [0.001 * (1 + (i * 7919) % 997) for i in range(2000)]
    # the SDK's way: an exponential histogram, as the anomaly reader aggregated it before
    sdk_reader = InMemoryMetricReader(preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()})
    sdk_provider = MeterProvider(metric_readers=[sdk_reader])
    histogram = sdk_provider.get_meter("otel_eda.sdk").create_histogram(semconv.METRIC_PROCESS_DURATION)
    attrs = {semconv.MESSAGING_DESTINATION_NAME: "orders"}
    for v in values:
        histogram.record(v, attrs)
    sdk_metric = sdk_reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics[0]
    sdk_out: list = []
    SeriesConverter().convert(sdk_metric.name, sdk_metric.data, sdk_out)
    sdk_series = {p.signal: p.value for p in sdk_out}
    # the fed way
    subscription = feed.Subscription(feed.FED_METRICS)
    for v in values:
        subscription.add(semconv.METRIC_PROCESS_DURATION, attrs, v, None)
    out: list = []
    for name, data in subscription.drain():
        SeriesConverter().convert(name, data, out)
    fed_series = {p.signal: p.value for p in out}
    assert fed_series.keys() == sdk_series.keys() >= {"count", "mean", "p95", "p99", "error_ratio"}
    assert fed_series["mean"] == pytest.approx(sum(values) / len(values))
    for signal in ("p95", "p99"):
        assert fed_series[signal] == pytest.approx(sdk_series[signal], rel=0.03), signal
    sdk_provider.shutdown()


def test_the_anomaly_reader_takes_them_from_the_feed_and_the_sdk_skips_them() -> None:
    exporting = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[exporting])
    reader = attach_reader(
        provider, AnomalyMetricReader(AnomalyEngine(default_rule_set().rules), interval_s=3600, start=False)
    )
    reader._narrow_to_rules = True  # as for the engine configure() builds
    reader._narrowed = False
    reader._narrow()
    assert reader._feed is not None
    evaluated: list = []
    reader.engine.evaluate = lambda points, now: evaluated.extend(points)  # type: ignore[method-assign]
    messaging = Messaging("test", service="shop", meter_provider=provider)
    for _ in range(3):
        with messaging.process({}, destination="orders", consumer_group="billing") as handling:
            pass
        assert handling.outcome is Outcome.COMPLETED
    reader.force_flush()
    durations = [p for p in evaluated if p.metric == semconv.METRIC_PROCESS_DURATION and p.signal == "count"]
    assert len(durations) == 1  # once: from the feed, not a second time from the SDK
    ages = [p for p in evaluated if p.metric == semconv.METRIC_EVENT_AGE and p.signal == "mean"]
    assert len(ages) == 1 and math.isfinite(ages[0].value)
    # the exporting reader still gets the histograms from the SDK
    names = {
        m.name for rm in exporting.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }
    assert {semconv.METRIC_PROCESS_DURATION, semconv.METRIC_EVENT_AGE} <= names
    reader.shutdown()
    assert reader._feed is None
    provider.shutdown()


def test_an_empty_context_is_not_a_no_op_tracer_by_mistake(capture: TelemetryCapture) -> None:
    messaging = Messaging("test", service="shop", tracer_provider=capture.tracer_provider)
    with messaging.publish("order_placed", {}, context=Context()):
        pass
    assert [s.name for s in capture.spans()] == ["send order_placed"]


def _telemetry_off_bus() -> EventBus:
    from opentelemetry.metrics import NoOpMeterProvider

    return EventBus(service="shop", tracer_provider=trace.NoOpTracerProvider(), meter_provider=NoOpMeterProvider())


def test_telemetry_off_hand_off_gives_what_publish_and_local_give(w3c_propagation: None) -> None:
    messaging = _telemetry_off_bus().messaging
    token = attach(baggage.set_baggage("tenant.id", "acme"))
    try:
        handed = messaging.hand_off("order_placed", "order-1")
        with messaging.publish("order_placed", None, business_key="order-1") as sent:
            local = sent.local()
    finally:
        detach(token)
    assert handed is not None
    for incoming in (handed, local):
        assert incoming.event.event_type == "order_placed" and incoming.event.business_key == "order-1"
        assert incoming.event.correlation_id == incoming.event.event_id  # a new flow
    assert dict(baggage.get_all(handed.context)) == {
        **{k: v for k, v in baggage.get_all(local.context).items() if k != semconv.EDA_CORRELATION_ID},
        semconv.EDA_CORRELATION_ID: handed.event.event_id,
    }
    assert next(iter(baggage.get_all(handed.context))) == semconv.EDA_CORRELATION_ID  # otel-eda's entry first
    assert handed.producer == local.producer and handed.link is None and local.link is None
    with pytest.raises(ValueError, match="event_type"):
        messaging.hand_off("")


def test_telemetry_off_bus_handlers_see_ids_and_baggage_and_records_stay() -> None:
    async def run() -> tuple[list[tuple[str, str | None, object, object]], EventBus]:
        seen: list[tuple[str, str | None, object, object]] = []
        bus = _telemetry_off_bus()
        async with bus:

            async def charge(delivery: Any) -> None:
                event = current_event()
                assert event is not None and current_processing() is not None
                seen.append(
                    (event.event_type, event.causation_id, baggage.get_baggage("tenant.id"), delivery.event is event)
                )
                await delivery.emit("payment_authorized")

            async def ship(delivery: Any) -> None:
                event = current_event()
                assert event is not None
                seen.append((event.event_type, event.causation_id, baggage.get_baggage("tenant.id"), True))

            bus.subscribe("order_placed", charge, subscriber="payment")
            bus.subscribe("payment_authorized", ship, subscriber="shipping")
            token = attach(baggage.set_baggage("tenant.id", "acme"))
            try:
                placed = await bus.publish("order_placed", {"n": 1}, business_key="order-1")
            finally:
                detach(token)
            await bus.join()
            seen.append(("placed", placed.event_id, None, None))
        return seen, bus

    seen, bus = asyncio.run(run())
    placed_id = seen[-1][1]
    assert seen[:2] == [("order_placed", None, "acme", True), ("payment_authorized", placed_id, "acme", True)]
    flow = bus.store.flow(bus.store.find("order-1")[0])
    assert [(e.event_type, e.status, [d.status for d in e.deliveries]) for e in flow] == [
        ("order_placed", "completed", [Stage.COMPLETED]),
        ("payment_authorized", "completed", [Stage.COMPLETED]),
    ]


def test_an_attempt_and_its_context_are_freed_without_the_garbage_collector() -> None:
    async def run() -> None:
        async with _telemetry_off_bus() as bus:

            async def handle(_: object) -> None:
                return None

            bus.subscribe("order_placed", handle, subscriber="billing")
            for _ in range(200):
                await bus.publish("order_placed", None)
                await bus.join()

    gc.collect()
    gc.disable()
    try:
        asyncio.run(run())
        garbage = [o for o in gc.get_objects() if type(o).__name__ in ("Processing", "Incoming")]
    finally:
        gc.enable()
    # a cycle per message left 400 here; what remains is the last message's, held by the
    # worker task cancelled at close
    assert len(garbage) < 10


def test_a_settled_attempt_is_current_while_something_holds_it() -> None:
    messaging = _telemetry_off_bus().messaging
    incoming = messaging.hand_off("order_placed")
    assert incoming is not None
    processing = messaging.process(incoming, consumer_group="billing")
    with processing:
        assert current_processing() is processing
    assert processing.outcome is Outcome.COMPLETED
    assert current_processing(processing.context) is processing  # settled, still held


def test_a_handler_reading_the_store_sees_its_delivery_in_progress_then_completed() -> None:
    async def run() -> tuple[list[object], EventBus, str]:
        seen: list[object] = []
        bus = _telemetry_off_bus()
        async with bus:

            async def handle(delivery: Any) -> None:
                (summary,) = bus.store.flow(delivery.event.correlation_id)
                seen.append((summary.status, [d.status for d in summary.deliveries]))

            bus.subscribe("order_placed", handle, subscriber="billing")
            event = await bus.publish("order_placed", None)
            await bus.join()
            second = await bus.publish("order_placed", None)
            await bus.join()
        seen.append([(e.status, [d.status for d in e.deliveries]) for e in bus.store.flow(second.correlation_id)])
        return seen, bus, event.correlation_id

    seen, bus, correlation = asyncio.run(run())
    assert seen[0] == ("in_progress", [Stage.RECEIVED])
    (summary,) = bus.store.flow(correlation)
    assert summary.status == "completed" and summary.deliveries[0].attempts == 1
    assert summary.deliveries[0].duration_s is not None
    assert seen[-1] == [("completed", [Stage.COMPLETED])]


def test_telemetry_off_store_stays_bounded_with_events_kept_as_their_steps() -> None:
    import tracemalloc

    from opentelemetry.metrics import NoOpMeterProvider

    from otel_eda.flows.store import EventStore

    store = EventStore(max_events=200)

    async def run() -> tuple[int, int]:
        bus = EventBus(
            service="shop", store=store, tracer_provider=trace.NoOpTracerProvider(), meter_provider=NoOpMeterProvider()
        )
        async with bus:

            async def handle(_: object) -> None:
                return None

            bus.subscribe("order_placed", handle, subscriber="billing")
            for _ in range(1_000):
                await bus.publish("order_placed", None)
                await bus.join()
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(4_000):
                await bus.publish("order_placed", None)
                await bus.join()
            return before, tracemalloc.get_traced_memory()[0]

    tracemalloc.start()
    try:
        before, after = asyncio.run(run())
    finally:
        tracemalloc.stop()
    assert len(store) == 200 and store.evicted == 4_800
    assert after - before < 50_000, f"the store grew by {after - before} bytes while holding 200 events"
    assert all(e.status == "completed" for c in store.correlation_ids() for e in store.flow(c))


def test_a_business_key_one_subscriber_sets_is_not_seen_by_another() -> None:
    async def run() -> list[tuple[str, str | None]]:
        seen: list[tuple[str, str | None]] = []
        async with _telemetry_off_bus() as bus:

            async def billing(delivery: Any) -> None:
                delivery.set_business_key("order-9")
                seen.append(("billing", delivery.event.business_key))

            async def audit(delivery: Any) -> None:
                seen.append(("audit", delivery.event.business_key))

            bus.subscribe("order_placed", billing, subscriber="billing")
            bus.subscribe("order_placed", audit, subscriber="audit")
            await bus.publish("order_placed", None)
            await bus.join()
        return seen

    assert sorted(asyncio.run(run())) == [("audit", None), ("billing", "order-9")]
