"""The transport integration API, otel_eda.messaging, as a transport author uses it."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import pickle
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import attach, detach, get_current
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import (
    DeadLetter,
    EventContext,
    EventStore,
    LifecycleRecord,
    Stage,
    _selfmetrics,
    current_event,
    flow_ids,
    semconv,
)
from otel_eda.messaging import (
    BYTES_SETTER,
    HEADER_LIST_GETTER,
    HEADER_LIST_SETTER,
    TEXT_GETTER,
    Binding,
    Incoming,
    Messaging,
    Outcome,
    PullTracker,
    Rejected,
    current_processing,
)
from otel_eda.settings import Settings
from otel_eda.testing import TelemetryCapture, record_flow


@pytest.fixture
def capture() -> Iterator[TelemetryCapture]:
    with TelemetryCapture() as c:
        yield c


def kafka_record(messaging: Messaging, event_type: str, **kwargs: Any) -> tuple[list[tuple[str, bytes]], EventContext]:
    headers: list[tuple[str, bytes]] = [("app", b"mine")]
    with messaging.publish(event_type, headers, setter=HEADER_LIST_SETTER, **kwargs) as sent:
        pass
    return headers, sent.event


def test_publish_into_a_kafka_header_list_and_process_from_it(capture: TelemetryCapture) -> None:
    kafka = capture.messaging("kafka", scope="otel_eda.aiokafka")
    headers, event = kafka_record(kafka, "order_placed", business_key="order-1")
    assert headers[0] == ("app", b"mine"), "the application's own headers are kept"
    assert all(isinstance(v, bytes) for _, v in headers)
    headers.append(("eda-business-key", b"order-2"))  # a duplicated key: the last one wins
    seen: list[EventContext | None] = []
    with kafka.process(headers, destination="orders", getter=HEADER_LIST_GETTER, consumer_group="billing") as handling:
        seen.append(current_event())
        assert baggage.get_baggage("eda.correlation_id") == event.correlation_id
        assert current_processing() is handling
    assert seen[0] is not None and seen[0].event_id == event.event_id and seen[0].business_key == "order-2"
    producer, consumer = capture.spans()
    assert producer.instrumentation_scope is not None and producer.instrumentation_scope.name == "otel_eda.aiokafka"
    assert (producer.name, producer.kind, consumer.name, consumer.kind) == (
        "send order_placed",
        SpanKind.PRODUCER,
        "process orders",
        SpanKind.CONSUMER,
    )
    assert consumer.parent is not None and consumer.parent.span_id == producer.context.span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]
    assert consumer.attributes["eda.outcome"] == "completed"  # type: ignore[index]
    assert consumer.attributes["messaging.consumer.group.name"] == "billing"  # type: ignore[index]
    assert capture.counter_total("messaging.client.consumed.messages") == 1
    assert capture.histogram_count("messaging.client.operation.duration", {"messaging.operation.name": "send"}) == 1


def test_bytes_header_values_are_written_and_read(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("rabbitmq")
    headers: dict[str, Any] = {}
    with messaging.publish("order_placed", headers, setter=BYTES_SETTER) as sent:
        pass
    assert all(isinstance(v, bytes) for v in headers.values())
    with messaging.process(headers, destination="orders") as handling:
        pass
    assert handling.event.event_id == sent.event.event_id


def test_exceptions_settle_the_attempt_once(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("test")
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers):
        pass
    with pytest.raises(ValueError), messaging.process(headers, destination="orders") as failed:
        raise ValueError("card 4111 1111 1111 1111 declined")
    with pytest.raises(Rejected), messaging.process(headers, destination="orders") as rejected:
        raise Rejected("no")
    with messaging.process(headers, destination="orders", attempt=3) as retried:
        retried.settle(Outcome.RETRIED, ConnectionError("down"))
        assert retried.settle(Outcome.COMPLETED) == 0.0  # settled once
    assert (failed.outcome, rejected.outcome, retried.outcome) == (Outcome.FAILED, Outcome.REJECTED, Outcome.RETRIED)
    spans = capture.spans(kind=SpanKind.CONSUMER)
    assert [s.attributes["eda.outcome"] for s in spans] == ["failed", "rejected", "retried"]  # type: ignore[index]
    assert all(s.status.status_code is StatusCode.ERROR for s in spans)
    assert spans[2].attributes["eda.delivery.attempt"] == 3  # type: ignore[index]
    assert capture.counter_total("eda.bus.retries") == 1
    # one delivery per process() of a carrier: three deliveries
    assert capture.counter_total("messaging.client.consumed.messages") == 3


def test_an_ambient_span_parents_the_process_span_which_still_links(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("test")
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers):
        pass
    tracer = capture.tracer_provider.get_tracer("http")
    with (
        tracer.start_as_current_span("POST /webhook", kind=SpanKind.SERVER) as server,
        messaging.process(headers, destination="orders", context=trace.set_span_in_context(server)),
    ):
        pass
    producer = capture.spans(kind=SpanKind.PRODUCER)[0]
    (consumer,) = capture.spans(kind=SpanKind.CONSUMER)
    assert consumer.parent is not None and consumer.parent.span_id == server.get_span_context().span_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


def test_link_mode_starts_a_trace_and_links(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("test", mode="link")
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers):
        pass
    with messaging.process(headers, destination="orders"):
        pass
    producer, consumer = capture.spans()
    assert consumer.parent is None and consumer.context.trace_id != producer.context.trace_id
    assert [link.context.span_id for link in consumer.links] == [producer.context.span_id]


def test_a_pull_makes_one_receive_span_with_a_link_per_message_and_none_when_empty(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka")
    records = [kafka_record(messaging, "order_placed")[0] for _ in range(3)]
    start = time.time_ns()
    messaging.received([], start_ns=start, destination="orders", operation_name="poll")
    assert not capture.spans(kind=SpanKind.CLIENT)
    batch = [messaging.extract(r, destination="orders", getter=HEADER_LIST_GETTER) for r in records]
    messaging.received(batch, start_ns=start, destination="orders", operation_name="poll", consumer_group="g")
    (poll,) = capture.spans(kind=SpanKind.CLIENT)
    assert poll.name == "poll orders" and poll.start_time == start
    assert poll.attributes["messaging.operation.type"] == "receive"  # type: ignore[index]
    assert poll.attributes["messaging.batch.message_count"] == 3  # type: ignore[index]
    producers = capture.spans(kind=SpanKind.PRODUCER)
    assert [link.context.span_id for link in poll.links] == [p.context.span_id for p in producers]
    for message in batch:  # processed after the poll: counted once per delivery
        with messaging.process(message, consumer_group="g"):
            pass
    assert capture.counter_total("messaging.client.consumed.messages") == 3


def test_a_batch_process_span_is_never_parented_on_a_creation_context(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka")
    batch = [
        messaging.extract(kafka_record(messaging, "order_placed")[0], destination="orders", getter=HEADER_LIST_GETTER)
        for _ in range(2)
    ]
    with messaging.process_batch(batch, consumer_group="g") as handling:
        assert trace.get_current_span() is handling.span
    (span,) = capture.spans(kind=SpanKind.CONSUMER)
    assert span.parent is None and len(span.links) == 2
    assert span.attributes["messaging.batch.message_count"] == 2  # type: ignore[index]
    store = EventStore()
    messaging.recorders = (store,)
    with pytest.raises(KeyError), messaging.process_batch(batch, consumer_group="g") as failing:
        raise KeyError("x")
    assert failing.outcome is Outcome.FAILED
    assert {store.get(m.event.event_id).status for m in batch} == {"failed"}  # type: ignore[union-attr]


def test_pull_tracker_keeps_each_message_current_until_the_next_is_asked_for(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka")
    records = [kafka_record(messaging, "order_placed") for _ in range(3)]
    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r[0], getter=HEADER_LIST_GETTER)
    seen = []
    for _headers, event in tracker.wrap(records):
        seen.append(current_event() == event)
        with messaging.publish("order_checked", {}) as child:
            pass
        assert child.event.causation_id == event.event_id
    assert seen == [True, True, True]
    assert current_event() is None
    consumers = capture.spans(kind=SpanKind.CONSUMER)
    assert len(consumers) == 3 and all(s.attributes["eda.outcome"] == "completed" for s in consumers)  # type: ignore[index]


async def test_pull_tracker_follows_an_async_iterator(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("nats")
    records = [kafka_record(messaging, "order_placed") for _ in range(2)]

    async def consumer() -> AsyncIterator[tuple[list[tuple[str, bytes]], EventContext]]:
        for record in records:
            await asyncio.sleep(0)
            yield record

    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r[0], getter=HEADER_LIST_GETTER)
    seen = [current_event() == event async for _, event in tracker.awrap(consumer())]
    assert seen == [True, True]
    assert len(capture.spans(kind=SpanKind.CONSUMER)) == 2


def test_pull_tracker_ends_a_forgotten_span_at_its_maximum(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka")
    headers, _ = kafka_record(messaging, "order_placed")
    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r, getter=HEADER_LIST_GETTER, max_s=0.05)
    processing = tracker.start(headers)
    deadline = time.monotonic() + 10
    while not processing.settled and time.monotonic() < deadline:
        time.sleep(0.01)
    (span,) = capture.spans(kind=SpanKind.CONSUMER)
    assert span.attributes["eda.process.truncated"] is True  # type: ignore[index]
    assert span.end_time is not None and span.start_time is not None
    assert 0.04e9 <= span.end_time - span.start_time < 5e9
    tracker.end_current()  # the loop moves on later: nothing more is recorded
    assert len(capture.spans(kind=SpanKind.CONSUMER)) == 1


def test_settle_spans_are_behind_a_switch(capture: TelemetryCapture) -> None:
    assert capture.messaging("rabbitmq").settle_span("orders", "ack") is None
    on = capture.messaging("rabbitmq", settings=Settings.from_environ({"OTEL_EDA_SETTLE_SPANS": "true"}))
    span = on.settle_span("orders", "ack")
    assert span is not None
    span.end()
    (settle,) = capture.spans(kind=SpanKind.CLIENT)
    # named {operation name} {destination}, as the conventions name every messaging span
    assert settle.name == "ack orders" and settle.attributes["messaging.operation.type"] == "settle"  # type: ignore[index]


def test_metadata_crosses_in_headers_and_only_allowed_keys_reach_spans(capture: TelemetryCapture) -> None:
    settings = Settings.from_environ({"OTEL_EDA_METADATA_ATTRIBUTES": "tenant"})
    messaging = capture.messaging("test", settings=settings)
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers, metadata={"tenant": "acme", "secret": "s3"}):
        pass
    assert headers["eda-meta-tenant"] == "acme" and headers["eda-meta-secret"] == "s3"
    assert "acme" not in headers["baggage"] and "s3" not in headers["baggage"], "metadata never travels as baggage"
    headers["eda-meta-Bad Key"] = "x"
    headers["eda-meta-ctl"] = "a\r\nb"
    with messaging.process(headers, destination="orders") as handling:
        pass
    assert dict(handling.event.metadata) == {"tenant": "acme", "secret": "s3"}
    for span in capture.spans():
        assert span.attributes["eda.metadata.tenant"] == "acme"  # type: ignore[index]
        assert "eda.metadata.secret" not in (span.attributes or {})
    with pytest.raises(ValueError):
        EventContext.root("x", metadata={"Upper": "v"})
    with pytest.raises(ValueError):
        EventContext.root("x", metadata={f"k{i}": "v" for i in range(17)})


def test_cloudevents_are_written_only_when_asked_and_read_by_default(capture: TelemetryCapture) -> None:
    kafka = capture.messaging("kafka", binding=Binding.KAFKA)
    headers, event = kafka_record(kafka, "order_placed")
    assert not [k for k, _ in headers if k.startswith("ce_")]
    writer = capture.messaging(
        "kafka", binding=Binding.KAFKA, settings=Settings.from_environ({"OTEL_EDA_CLOUDEVENTS": "write"})
    )
    headers, event = kafka_record(writer, "order_placed", business_key="order-9")
    written = {k: v.decode() for k, v in headers if k.startswith("ce_")}
    assert written["ce_id"] == event.event_id and written["ce_subject"] == "order-9"
    assert written["ce_source"] == "/test-service" and written["ce_time"].endswith("Z")
    only_ce = [(k, v) for k, v in headers if k.startswith("ce_")]
    read = kafka.extract(only_ce, destination="orders", getter=HEADER_LIST_GETTER)
    assert (read.event.event_id, read.event.event_type, read.event.created_ns) == (
        event.event_id,
        "order_placed",
        event.created_ns,
    )
    off = capture.messaging(
        "kafka", binding=Binding.KAFKA, settings=Settings.from_environ({"OTEL_EDA_CLOUDEVENTS": "off"})
    )
    assert off.extract(only_ce, destination="orders", getter=HEADER_LIST_GETTER).event.event_id != event.event_id
    amqp = capture.messaging("rabbitmq", binding=Binding.AMQP)
    legacy = {"cloudEvents_id": "evt-1", "cloudEvents_type": "order_placed"}
    assert amqp.extract(legacy, destination="q").event.event_id == "evt-1"
    bad = {"ce-id": "not valid!", "ce-type": "order_placed"}
    http = capture.messaging("webhook", binding=Binding.HTTP)
    assert http.extract(bad, destination="q").event.event_id != "not valid!"


def test_the_eda_propagator_never_writes_cloudevents_headers() -> None:
    from otel_eda.identity import with_event
    from otel_eda.identity.propagation import EdaPropagator

    carrier: dict[str, str] = {}
    EdaPropagator().inject(carrier, with_event(EventContext.root("order_placed")))
    assert not [k for k in carrier if k.startswith(("ce-", "ce_", "cloudEvents"))]


def test_hostile_carriers_never_raise(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka")
    hostile: list[Any] = [
        None,
        42,
        [("eda-event-id", None), (b"traceparent", b"\xff"), ("x",)],
        [("eda-event-id", {"nested": [1]}), ("baggage", 7)],
        {"eda-event-id": [[b"\xff"]], "traceparent": 3.5, 5: b"x"},
    ]
    counter = capture.meter_provider.get_meter("t").create_counter("eda.propagation.invalid")
    with mock.patch.object(_selfmetrics, "_invalid_counter", lambda: counter):
        for carrier in hostile:
            getter = HEADER_LIST_GETTER if isinstance(carrier, list) else TEXT_GETTER
            message = messaging.extract(carrier, destination="orders", getter=getter)
            assert isinstance(message, Incoming) and message.event.event_type == "orders"
            with messaging.process(message):
                pass
    assert capture.counter_total("eda.propagation.invalid") >= len(hostile) + 1


def test_identity_values_pickle_and_deep_copy() -> None:
    event = EventContext.root("order_placed", business_key="order-1", metadata={"tenant": "acme"})
    for value in (event, DeadLetter(event, {"x": 1}, "billing", 3, "ValueError")):
        assert pickle.loads(pickle.dumps(value)) == value
        assert copy.deepcopy(value) == value
    assert dict(pickle.loads(pickle.dumps(event)).metadata) == {"tenant": "acme"}
    store = EventStore()
    record_flow(store, "order_placed", "payment_authorized", business_key="order-1")
    summaries = store.flow(store.correlation_ids()[0])
    assert pickle.loads(pickle.dumps(summaries)) == summaries and copy.deepcopy(summaries) == summaries
    record = LifecycleRecord(Stage.REJECTED, 1, event.event_id, event.correlation_id, None, "t", "s")
    assert pickle.loads(pickle.dumps(record)) == record


def test_a_processing_context_carries_the_flow_into_another_thread(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("test")
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers) as sent:
        pass
    seen: list[Any] = []
    with messaging.process(headers, destination="orders") as handling:

        def worker() -> None:  # a thread the handler starts with the attempt's context
            token = attach(handling.context)
            try:
                seen.append((flow_ids(), current_event()))
            finally:
                detach(token)

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
    assert seen == [(flow_ids(handling.context), handling.event)]
    assert seen[0][0].correlation_id == sent.event.correlation_id


def test_a_pulled_messages_span_ends_before_the_next_fetch(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER, setter=HEADER_LIST_SETTER)
    records = [kafka_record(messaging, "order_placed")[0] for _ in range(2)]

    def slow_consumer() -> Iterator[list[tuple[str, bytes]]]:
        for record in records:
            time.sleep(0.3)  # the broker poll
            yield record

    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r)
    for _ in tracker.wrap(slow_consumer()):
        pass
    for span in capture.spans(kind=SpanKind.CONSUMER):
        assert span.end_time is not None and span.start_time is not None
        assert span.end_time - span.start_time < 0.25e9, "the next poll is not this message's work"


async def test_an_async_pull_loop_that_breaks_restores_its_context(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("nats", getter=HEADER_LIST_GETTER)
    records = [kafka_record(messaging, "order_placed")[0] for _ in range(3)]

    async def consumer() -> AsyncIterator[list[tuple[str, bytes]]]:
        for record in records:
            yield record

    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r)
    async with contextlib.aclosing(tracker.awrap(consumer())) as pulled:
        async for _ in pulled:
            break
    assert current_event() is None and not trace.get_current_span().get_span_context().is_valid
    (span,) = capture.spans(kind=SpanKind.CONSUMER)
    assert span.attributes["eda.outcome"] == "completed"  # type: ignore[index]


def test_the_reaper_holds_one_entry_per_tracker_not_per_message(capture: TelemetryCapture) -> None:
    from otel_eda.messaging import pull

    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    record = kafka_record(messaging, "order_placed")[0]
    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r)
    for _ in tracker.wrap([record] * 500):
        pass
    assert sum(1 for t in list(pull._reaper._watched) if t is tracker) == 1
    assert len(capture.spans(kind=SpanKind.CONSUMER)) == 500


def test_received_then_pull_tracker_counts_each_delivery_once(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    records = [kafka_record(messaging, "order_placed")[0] for _ in range(3)]
    start = time.time_ns()
    fetched = [messaging.extract(r, destination="orders") for r in records]
    messaging.received(fetched, start_ns=start, destination="orders", operation_name="poll")
    tracker = PullTracker(messaging, destination="orders", carrier=lambda incoming: incoming)
    for _ in tracker.wrap(fetched):
        pass
    assert capture.counter_total("messaging.client.consumed.messages") == 3
    assert capture.counter_total("messaging.client.consumed.messages", {"messaging.operation.name": "poll"}) == 3


def test_a_transports_own_getter_that_raises_never_escapes(capture: TelemetryCapture) -> None:
    from opentelemetry.propagators.textmap import Getter

    class Broken(Getter[Any]):
        def get(self, carrier: Any, key: str) -> list[str] | None:
            raise RuntimeError("broken client")

        def keys(self, carrier: Any) -> list[str]:
            raise RuntimeError("broken client")

    messaging = capture.messaging("custom", getter=Broken())
    message = messaging.extract({"eda-event-id": "x"}, destination="orders")
    assert message.event.event_type == "orders"
    with messaging.process({}, destination="orders", getter=Broken()):
        pass


def test_records_of_a_consumer_without_a_group_reach_the_store(capture: TelemetryCapture) -> None:
    store = EventStore()
    messaging = capture.messaging("webhook", service="billing", recorders=[store])
    headers: dict[str, str] = {}
    with messaging.publish("order_placed", headers) as sent:
        pass
    with messaging.process(headers, destination="order_placed"):
        pass
    summary = store.get(sent.event.event_id)
    assert summary is not None and summary.status == "completed"
    assert [d.subscriber for d in summary.deliveries] == ["billing"]


def test_a_batch_retry_is_counted_per_message(capture: TelemetryCapture) -> None:
    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    batch = [messaging.extract(kafka_record(messaging, "order_placed")[0], destination="orders") for _ in range(2)]
    with messaging.process_batch(batch) as handling:
        handling.settle(Outcome.RETRIED)
    (span,) = capture.spans(kind=SpanKind.CONSUMER)
    assert span.status.status_code is StatusCode.ERROR and span.attributes["eda.outcome"] == "retried"  # type: ignore[index]
    assert capture.counter_total("eda.bus.retries") == 2


# -- the faster baggage codec of the standard propagators (otel_eda.messaging.standard) ------------
_BAGGAGE_HEADERS = [
    "eda.correlation_id=0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11,eda.causation_id=0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c12",
    "a=1",
    "a=",
    "a=1,a=2",
    "a=1,b=2,a=3",
    "a=1, b=2",
    " a=1",
    "a=1,",
    ",a=1",
    "a=1;prop=x",
    "a=x%2Cy,b=%20",
    "a+b=c+d",
    "a=b=c",
    "=1",
    "a",
    "a=é",
    "a=1," * 200 + "b=2",
    "k=" + "v" * 5000,
    "k=" + "v" * 4094,
    "k=" + "v" * 4093,
    ",".join(f"k{i}=v" for i in range(179)),
    ",".join(f"k{i}=v" for i in range(180)),
    ",".join(f"k{i}=v" for i in range(181)),
    "",
]


def _baggage_of(ctx: Any) -> list[tuple[str, object]]:
    return list(baggage.get_all(ctx).items())


@pytest.mark.parametrize("header", _BAGGAGE_HEADERS)
def test_the_standard_baggage_codec_extracts_what_opentelemetry_extracts(header: str) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context import Context

    from otel_eda.messaging.carriers import TEXT_GETTER
    from otel_eda.messaging.standard import StandardBaggage

    sdk = W3CBaggagePropagator()
    fast = StandardBaggage(sdk)
    for carrier in ({"baggage": header}, {"baggage": header.encode()}, {"baggage": [header]}):
        start = baggage.set_baggage("kept", "1", Context())
        expected = sdk.extract(carrier, start, getter=TEXT_GETTER)
        got = fast.extract(carrier, start, getter=TEXT_GETTER)
        assert _baggage_of(got) == _baggage_of(expected)
        assert dict(got).keys() == dict(expected).keys()


def test_the_standard_baggage_codec_reads_a_getters_one_shot_iterator_as_opentelemetry_does() -> None:
    """A getter may answer with any iterable, an iterator too: the codec reads the same first
    header as OpenTelemetry's propagator, whichever path decodes it."""
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import Getter

    from otel_eda.messaging.standard import StandardBaggage

    class IteratingGetter(Getter[list[str]]):
        def get(self, carrier: list[str], key: str) -> Any:
            return iter(carrier) if key == "baggage" else None

        def keys(self, carrier: list[str]) -> list[str]:
            return ["baggage"]

    sdk = W3CBaggagePropagator()
    for headers in (["a=%20x", "b=2"], ["a=1", "b=2"]):  # the first one decoded by each path
        expected = sdk.extract(headers, Context(), getter=IteratingGetter())
        got = StandardBaggage(sdk).extract(headers, Context(), getter=IteratingGetter())
        assert _baggage_of(got) == _baggage_of(expected)


_BAGGAGE_ENTRIES: list[dict[str, Any]] = [
    {"eda.correlation_id": "0190f0c2-7a3e-7d51-9b1c-2f0e8a6d4c11", "eda.causation_id": "x"},
    {"a": ""},
    {"a b": "c d", "e": "f,g;h"},
    {"a": "é"},
    {"a": 7},
    {"k": "v" * 4094},
    {"k": "v" * 4200},
    {f"k{i}": "v" for i in range(181)},
    {f"k{i}": "v" * 30 for i in range(170)},
    {"": "v"},
    {"~._-": "~._-"},
]


@pytest.mark.parametrize("entries", _BAGGAGE_ENTRIES)
def test_the_standard_baggage_codec_injects_what_opentelemetry_injects(entries: dict[str, Any]) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.context import Context

    from otel_eda.messaging.carriers import HEADER_LIST_SETTER, TEXT_SETTER
    from otel_eda.messaging.standard import StandardBaggage

    ctx = Context()
    for key, value in entries.items():
        ctx = baggage.set_baggage(key, value, ctx)
    sdk = W3CBaggagePropagator()
    fast = StandardBaggage(sdk)
    expected: dict[str, str] = {}
    got: dict[str, str] = {}
    sdk.inject(expected, ctx, TEXT_SETTER)
    fast.inject(got, ctx, TEXT_SETTER)
    assert got == expected
    expected_list: list[tuple[str, bytes]] = [("app", b"1")]
    got_list: list[tuple[str, bytes]] = [("app", b"1")]
    sdk.inject(expected_list, ctx, HEADER_LIST_SETTER)
    fast.inject(got_list, ctx, HEADER_LIST_SETTER)
    assert got_list == expected_list


def test_messaging_uses_the_standard_codec_only_for_the_standard_propagators() -> None:
    from opentelemetry import propagate
    from opentelemetry.baggage.propagation import W3CBaggagePropagator
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from otel_eda.identity.propagation import EdaPropagator
    from otel_eda.messaging.standard import StandardBaggage, StandardPropagation

    previous = propagate.get_global_textmap()
    try:
        messaging = Messaging("test")
        propagate.set_global_textmap(
            CompositePropagator([TraceContextTextMapPropagator(), CompositePropagator([W3CBaggagePropagator()])])
        )
        fast = messaging._propagator()
        assert isinstance(fast, StandardPropagation)
        assert [type(p) for p in fast.propagators] == [TraceContextTextMapPropagator, StandardBaggage, EdaPropagator]

        class Custom(W3CBaggagePropagator):
            pass

        propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), Custom()]))
        assert not isinstance(messaging._propagator(), StandardPropagation)
    finally:
        propagate.set_global_textmap(previous)


def test_a_published_and_extracted_message_round_trips_through_the_standard_codec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.baggage.propagation import W3CBaggagePropagator

    def not_expected(*_: Any, **__: Any) -> None:
        raise AssertionError("plain baggage went through OpenTelemetry's propagator, not the direct codec")

    monkeypatch.setattr(W3CBaggagePropagator, "extract", not_expected)
    monkeypatch.setattr(W3CBaggagePropagator, "inject", not_expected)
    with TelemetryCapture() as capture:
        messaging = Messaging("test", tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
        headers: dict[str, str] = {}
        with messaging.publish("order_placed", headers, destination="orders") as pub:
            pass
        assert headers["baggage"] == f"eda.correlation_id={pub.event.correlation_id}"
        incoming = messaging.extract(headers, destination="orders")
        assert incoming.event.event_id == pub.event.event_id
        assert baggage.get_all(incoming.context) == {"eda.correlation_id": pub.event.correlation_id}
        assert incoming.producer.span_id == pub.span.get_span_context().span_id


def test_a_handling_attempt_is_freed_without_the_cyclic_garbage_collector(capture: TelemetryCapture) -> None:
    import gc
    import weakref

    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    headers, _ = kafka_record(messaging, "order_placed")
    gc.disable()
    try:
        with messaging.process(headers, destination="orders") as handling:
            assert current_processing() is handling
        gone = weakref.ref(handling)
        del handling
        assert gone() is None, "the attempt and its context form no reference cycle"
        # attached and referred to by nothing else: still the current attempt until detached
        messaging.process(headers, destination="orders").attach()
        attached = current_processing()
        assert attached is not None and not attached.settled
        attached.detach()
        attached.settle(Outcome.COMPLETED)
        assert current_processing() is None
    finally:
        gc.enable()


def test_a_detach_from_another_thread_leaves_the_owners_context_for_the_owner(capture: TelemetryCapture) -> None:
    """A consumer's thread hands a record out (attaches its handling); a worker settles it
    (``processing(msg)`` detaches from the worker). The consumer's thread still finds its own
    attachment to undo: its context afterwards is what it was before the record."""
    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    headers, _ = kafka_record(messaging, "order_placed")
    before = get_current()
    handling = messaging.process(headers, destination="orders")
    handling.attach()  # the consumer's thread
    worker = threading.Thread(target=lambda: (handling.detach(), handling.settle(Outcome.COMPLETED)))
    worker.start()
    worker.join()
    assert current_processing() is handling  # the worker could not undo the consumer's attachment
    handling.detach()  # the consumer's next poll
    assert get_current() is before
    assert current_event() is None


def test_a_reaper_thread_that_cannot_start_is_counted_and_started_by_the_next_watch(
    capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from otel_eda.messaging import pull

    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    messaging = capture.messaging("kafka", getter=HEADER_LIST_GETTER)
    reaper = pull._Reaper()  # a reaper of the test's own
    tracker = PullTracker(messaging, destination="orders", carrier=lambda r: r)
    with messaging.process(kafka_record(messaging, "order_placed")[0], destination="orders") as handling:
        with mock.patch.object(threading.Thread, "start", side_effect=RuntimeError("can't start new thread")):
            reaper.watch(tracker, handling, 0.05)  # no thread to be had: counted, nothing raised
        assert reaper._thread is None
        assert capture.counter_total(semconv.METRIC_INTERNAL_ERRORS) == 1
        reaper.watch(tracker, handling, 0.05)  # the same tracker again: this time it starts
        assert reaper._thread is not None and reaper._thread.is_alive()
        deadline = time.monotonic() + 10.0
        while not handling.settled:
            assert time.monotonic() < deadline, "the overdue span was never ended"
            time.sleep(0.01)
    (span,) = capture.spans(kind=SpanKind.CONSUMER)
    assert span.attributes["eda.process.truncated"] is True  # type: ignore[index]
