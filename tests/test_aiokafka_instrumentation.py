"""otel-eda's aiokafka instrumentation against a real Kafka (``scripts/kafka``): spans, context, metrics."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from brokers import KafkaBroker, client_config, unique_name
from opentelemetry import baggage, metrics, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.store import EventStore
from otel_eda.identity import current_event
from otel_eda.identity.propagation import HEADER_EVENT_ID
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


class Instrumented:
    def __init__(self, kafka: KafkaBroker, capture: TelemetryCapture, store: EventStore) -> None:
        self.kafka = kafka
        self.capture = capture
        self.store = store
        self.topic = unique_name("orders")
        self.group = unique_name("billing")

    def spans(self, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        return self.capture.spans(name=name, kind=kind)

    @staticmethod
    def attr(span: ReadableSpan, key: str) -> Any:
        assert span.attributes is not None
        return span.attributes.get(key)

    async def producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(**client_config(self.kafka))
        await producer.start()
        return producer

    async def consumer(self, *topics: str, **extra: Any) -> AIOKafkaConsumer:
        config = {"group_id": self.group, "auto_offset_reset": "earliest", "enable_auto_commit": False, **extra}
        consumer = AIOKafkaConsumer(*(topics or (self.topic,)), **client_config(self.kafka, **config))
        await consumer.start()
        return consumer


@pytest.fixture
def store() -> EventStore:
    return EventStore()


@pytest.fixture
def instrumented(kafka: KafkaBroker, capture: TelemetryCapture, store: EventStore) -> Iterator[Instrumented]:
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[store],
        lag_refresh_s=0.05,
    )
    try:
        yield Instrumented(kafka, capture, store)
    finally:
        instrumentor.uninstrument()


@pytest.fixture
async def producer(instrumented: Instrumented) -> AsyncIterator[AIOKafkaProducer]:
    producer = await instrumented.producer()
    yield producer
    await producer.stop()


def by_event_id(spans: list[ReadableSpan], event_id: str) -> ReadableSpan:
    found = [s for s in spans if (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID) == event_id]
    assert len(found) == 1, f"{len(found)} spans of event {event_id}"
    return found[0]


async def test_send_then_getone_links_the_process_span_and_makes_it_current(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    metadata = await producer.send_and_wait(t.topic, b"order 1", headers=[("app", b"kept"), ("trace", b"x")])
    consumer = await t.consumer()
    try:
        record = await consumer.getone()
        # the handler's code, right after getone: the record's event, span and baggage are current
        event = current_event()
        span = trace.get_current_span()
        correlation = baggage.get_baggage("eda.correlation_id")
        reply = await producer.send_and_wait(t.topic + "-replies", b"charged")
        await consumer.commit()
        after_commit = current_event()
    finally:
        await consumer.stop()

    assert list(record.headers)[:2] == [("app", b"kept"), ("trace", b"x")]  # the application's own, first
    header_ids = [v.decode() for k, v in record.headers if k == HEADER_EVENT_ID]
    assert len(header_ids) == 1
    (send,) = t.spans(name=f"send {t.topic}", kind=SpanKind.PRODUCER)
    (process,) = t.spans(name=f"process {t.topic}", kind=SpanKind.CONSUMER)
    assert t.attr(send, semconv.MESSAGING_MESSAGE_ID) == header_ids[0] == t.attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert t.attr(send, semconv.MESSAGING_SYSTEM) == t.attr(process, semconv.MESSAGING_SYSTEM) == "kafka"
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert t.attr(process, semconv.MESSAGING_DESTINATION_PARTITION_ID) == str(metadata.partition)
    assert t.attr(process, semconv.MESSAGING_KAFKA_OFFSET) == metadata.offset
    assert t.attr(process, semconv.MESSAGING_CONSUMER_GROUP_NAME) == t.group
    assert t.attr(process, semconv.MESSAGING_KAFKA_MESSAGE_KEY) is None
    assert event is not None and event.event_id == header_ids[0]
    assert span.get_span_context().span_id == process.context.span_id
    assert correlation == event.correlation_id
    # a produce inside the handler is a child event: same flow, caused by the handled event
    (reply_span,) = t.spans(name=f"send {t.topic}-replies")
    assert t.attr(reply_span, semconv.EDA_CAUSATION_ID) == event.event_id
    assert t.attr(reply_span, semconv.EDA_CORRELATION_ID) == event.correlation_id
    assert reply_span.parent is not None and reply_span.parent.span_id == process.context.span_id
    assert reply.offset == 0
    # the commit ended the handling: its span ended before the commit, its context is gone
    assert after_commit is None
    assert process.end_time is not None


async def test_async_for_gives_each_record_its_own_context(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    for i in range(3):
        await producer.send_and_wait(t.topic, f"order {i}".encode())
    consumer = await t.consumer()
    seen: list[str] = []
    try:
        async for record in consumer:
            event = current_event()
            assert event is not None
            await producer.send_and_wait(t.topic + "-out", record.value)
            seen.append(event.event_id)
            if len(seen) == 3:
                break
    finally:
        await consumer.stop()
    processes = t.spans(name=f"process {t.topic}")
    assert len(set(seen)) == 3
    assert [t.attr(s, semconv.MESSAGING_MESSAGE_ID) for s in processes] == seen
    outs = t.spans(name=f"send {t.topic}-out")
    assert [t.attr(s, semconv.EDA_CAUSATION_ID) for s in outs] == seen
    # each reply's producer span is a child of the process span current while it was sent
    assert [s.parent.span_id for s in outs if s.parent] == [p.context.span_id for p in processes]


async def test_getmany_poll_span_links_every_record_and_the_loop_moves_the_context(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    for i in range(4):
        await producer.send(t.topic, f"order {i}".encode())
    await producer.flush()
    consumer = await t.consumer()
    handled: list[str] = []
    try:
        batch: dict[TopicPartition, list[Any]] = {}
        while not batch:
            batch = await consumer.getmany(timeout_ms=10_000)
        for records in batch.values():
            for _record in records:
                event = current_event()
                assert event is not None
                handled.append(event.event_id)
                await producer.send_and_wait(t.topic + "-out", b"x")
        outside = current_event()
        empty = await consumer.getmany(timeout_ms=200)
    finally:
        await consumer.stop()
    assert outside is None  # the loop ended: the last record's handling ended with it
    assert empty == {}
    copied = pickle.loads(pickle.dumps(batch))  # the lists stay plain lists to the application
    assert {tp: [r.offset for r in rs] for tp, rs in copied.items()} == {
        tp: [r.offset for r in list.__iter__(rs)] for tp, rs in batch.items()
    }
    assert all(type(rs) is list for rs in copied.values())
    (poll,) = t.spans(name=f"poll {t.topic}")
    assert poll.kind is SpanKind.CLIENT
    assert t.attr(poll, semconv.MESSAGING_OPERATION_TYPE) == "receive"
    count = t.attr(poll, semconv.MESSAGING_BATCH_MESSAGE_COUNT)
    assert count == len(handled) >= 1
    sends = {s.context.span_id: s for s in t.spans(name=f"send {t.topic}")}
    assert len(poll.links) == count and all(link.context.span_id in sends for link in poll.links)
    processes = t.spans(name=f"process {t.topic}")
    assert [t.attr(s, semconv.MESSAGING_MESSAGE_ID) for s in processes] == handled
    outs = t.spans(name=f"send {t.topic}-out")
    assert [t.attr(s, semconv.EDA_CAUSATION_ID) for s in outs] == handled


async def test_processing_gives_exact_bounds_and_records_the_handlers_exception(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    await producer.send_and_wait(t.topic, b"bad order")
    consumer = await t.consumer()
    try:
        record = await consumer.getone()
        with pytest.raises(ValueError, match="refused"), processing(record):
            raise ValueError("refused")
        assert current_event() is None  # the block ended the handling
    finally:
        await consumer.stop()
    (process,) = t.spans(name=f"process {t.topic}")
    assert process.status.status_code is StatusCode.ERROR
    assert t.attr(process, semconv.ERROR_TYPE) == "ValueError"


async def test_a_record_handled_again_is_marked_duplicate(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    await producer.send_and_wait(t.topic, b"order")
    consumer = await t.consumer()
    try:
        first = await consumer.getone()
        consumer.seek(TopicPartition(first.topic, first.partition), first.offset)  # a replay
        ended_by_seek = len(t.spans(name=f"process {t.topic}"))
        second = await consumer.getone()
        await consumer.commit()
    finally:
        await consumer.stop()
    assert second.offset == first.offset
    assert ended_by_seek == 1  # the seek ended the first handling
    one, two = t.spans(name=f"process {t.topic}")
    assert t.attr(one, semconv.MESSAGING_MESSAGE_ID) == t.attr(two, semconv.MESSAGING_MESSAGE_ID)
    assert t.attr(one, semconv.EDA_DELIVERY_DUPLICATE) is None
    assert t.attr(two, semconv.EDA_DELIVERY_DUPLICATE) is True
    assert t.attr(two, semconv.EDA_DELIVERY_ATTEMPT) == 1  # Kafka has no delivery counter
    assert t.capture.counter_total(semconv.METRIC_DUPLICATES, {semconv.MESSAGING_DESTINATION_NAME: t.topic}) == 1


async def test_the_message_key_is_written_only_on_request(kafka: KafkaBroker, capture: TelemetryCapture) -> None:
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, capture_message_key=True
    )
    try:
        t = Instrumented(kafka, capture, EventStore())
        producer = await t.producer()
        try:
            await producer.send_and_wait(t.topic, b"v", key=b"customer-7")
        finally:
            await producer.stop()
        consumer = await t.consumer()
        try:
            await consumer.getone()
        finally:
            await consumer.stop()
    finally:
        instrumentor.uninstrument()
    (send,) = t.spans(name=f"send {t.topic}")
    (process,) = t.spans(name=f"process {t.topic}")
    assert t.attr(send, semconv.MESSAGING_KAFKA_MESSAGE_KEY) == "customer-7"
    assert t.attr(process, semconv.MESSAGING_KAFKA_MESSAGE_KEY) == "customer-7"


async def test_hostile_headers_never_raise_and_are_counted(
    instrumented: Instrumented, producer: AIOKafkaProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = instrumented
    # eda.propagation.invalid comes from the global MeterProvider: count into the capture instead
    counter = metrics.get_meter("otel_eda", meter_provider=t.capture.meter_provider).create_counter(
        semconv.METRIC_INVALID_HEADERS
    )
    monkeypatch.setattr(_selfmetrics, "_invalid_counter", lambda: counter)
    hostile = [
        ("traceparent", b"\xff\xfe not utf-8"),
        (HEADER_EVENT_ID, b"x" * 100_000),
        ("baggage", b"eda.correlation_id=" + b"\xc3\x28"),
        ("eda-event-type", b"one"),
        ("eda-event-type", b"two"),
    ]
    # a raw producer: the hostile headers reach the consumer as they were written
    AIOKafkaInstrumentor().uninstrument()
    raw = await t.producer()
    try:
        await raw.send_and_wait(t.topic, b"v", headers=hostile)
    finally:
        await raw.stop()
    AIOKafkaInstrumentor().instrument(
        tracer_provider=t.capture.tracer_provider, meter_provider=t.capture.meter_provider, recorders=[t.store]
    )
    consumer = await t.consumer()
    try:
        record = await consumer.getone()
        event = current_event()
    finally:
        await consumer.stop()
    assert list(record.headers) == hostile
    assert event is not None and event.event_type == t.topic  # its identity was unusable: a new flow
    invalid = {
        (p.attributes.get("eda.field"), p.attributes.get("eda.reason")): p.value
        for p in t.capture.points(semconv.METRIC_INVALID_HEADERS)
    }
    assert invalid.get(("traceparent", "not_utf8"), 0) >= 1
    assert invalid.get(("baggage", "not_utf8"), 0) >= 1
    assert invalid.get((HEADER_EVENT_ID, "too_long"), 0) >= 1
    (process,) = t.spans(name=f"process {t.topic}")
    assert process.links == ()


async def test_for_a_duplicated_header_key_the_last_value_wins(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    stale = "0190a4c2-5b1e-7c3d-8e4f-0123456789ab"
    app_headers = [(HEADER_EVENT_ID, stale.encode()), ("app", b"1"), ("app", b"2")]
    await producer.send_and_wait(t.topic, b"v", headers=app_headers)
    assert len(app_headers) == 3  # the application's list is not modified
    AIOKafkaInstrumentor().uninstrument()  # a raw producer writes two event ids, as a foreign client might
    raw = await t.producer()
    try:
        await raw.send_and_wait(
            t.topic,
            b"w",
            headers=[
                (HEADER_EVENT_ID, stale.encode()),
                *app_headers[1:],
                (HEADER_EVENT_ID, b"0190a4c2-5b1e-7c3d-8e4f-00000000000b"),
                ("eda-event-type", b"order_placed"),
            ],
        )
    finally:
        await raw.stop()
    AIOKafkaInstrumentor().instrument(
        tracer_provider=t.capture.tracer_provider, meter_provider=t.capture.meter_provider, recorders=[t.store]
    )
    consumer = await t.consumer()
    try:
        first = await consumer.getone()
        first_event = current_event()
        await consumer.getone()
        second_event = current_event()
    finally:
        await consumer.stop()
    (send,) = t.spans(name=f"send {t.topic}")
    sent_id = t.attr(send, semconv.MESSAGING_MESSAGE_ID)
    # on send, otel-eda's value replaces a stale one of the same key; the application's own headers are kept
    assert [(k, v) for k, v in first.headers if k in (HEADER_EVENT_ID, "app")] == [
        ("app", b"1"),
        ("app", b"2"),
        (HEADER_EVENT_ID, sent_id.encode()),
    ]
    assert first_event is not None and first_event.event_id == sent_id
    # on receipt, of two values of one key the last counts (Kafka's lastHeader)
    assert second_event is not None and second_event.event_id == "0190a4c2-5b1e-7c3d-8e4f-00000000000b"


async def test_consumer_lag_of_an_instrumented_consumer(instrumented: Instrumented, producer: AIOKafkaProducer) -> None:
    t = instrumented
    for i in range(5):
        await producer.send_and_wait(t.topic, f"r{i}".encode())
    consumer = await t.consumer(max_poll_records=2)
    try:
        got: dict[Any, list[Any]] = {}
        while not got:
            got = await consumer.getmany(timeout_ms=10_000)
        handed = sum(len(v) for v in got.values())
        want = {(t.topic, "0", t.group): 5 - handed}
        for _ in range(600):
            points = t.capture.points(semconv.METRIC_CONSUMER_LAG)
            lags = {
                (
                    p.attributes[semconv.MESSAGING_DESTINATION_NAME],
                    p.attributes[semconv.MESSAGING_DESTINATION_PARTITION_ID],
                    p.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME],
                ): p.value
                for p in points
            }
            if lags == want:
                break
            await asyncio.sleep(0.05)
        assert lags == want
    finally:
        await consumer.stop()
    assert t.capture.points(semconv.METRIC_CONSUMER_LAG) == []


async def test_a_cloudevents_record_is_handled_with_its_id_type_and_traceparent(instrumented: Instrumented) -> None:
    t = instrumented
    trace_id, span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"A234-1234-1234"),
        ("ce_source", b"/shop/orders"),
        ("ce_type", b"com.example.order.created"),
        ("ce_time", b"2026-12-01T10:00:00Z"),
        ("traceparent", f"00-{trace_id}-{span_id}-01".encode()),
    ]
    AIOKafkaInstrumentor().uninstrument()  # written by a CloudEvents producer, not by otel-eda
    raw = await t.producer()
    try:
        await raw.send_and_wait(t.topic, b'{"order": 1}', headers=headers)
    finally:
        await raw.stop()
    AIOKafkaInstrumentor().instrument(
        tracer_provider=t.capture.tracer_provider, meter_provider=t.capture.meter_provider, recorders=[t.store]
    )
    consumer = await t.consumer()
    try:
        await consumer.getone()
        event = current_event()
    finally:
        await consumer.stop()
    assert event is not None
    assert (event.event_id, event.event_type, event.correlation_id) == (
        "A234-1234-1234",
        "com.example.order.created",
        "A234-1234-1234",
    )
    assert event.created_ns == 1796119200 * 10**9
    (process,) = t.spans(name=f"process {t.topic}")
    assert t.attr(process, semconv.MESSAGING_MESSAGE_ID) == "A234-1234-1234"
    assert [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in process.links] == [
        (trace_id, span_id)
    ]


async def test_a_handling_nothing_ends_ends_at_the_maximum(
    kafka: KafkaBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_PROCESS_SPAN_MAX_S", "0.2")
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    t = Instrumented(kafka, capture, EventStore())
    try:
        producer = await t.producer()
        try:
            await producer.send_and_wait(t.topic, b"order")
        finally:
            await producer.stop()
        consumer = await t.consumer()
        try:
            await consumer.getone()
            for _ in range(1200):  # the handler "hangs": no next fetch, no commit
                if t.spans(name=f"process {t.topic}"):
                    break
                await asyncio.sleep(0.05)
            (process,) = t.spans(name=f"process {t.topic}")
            assert t.attr(process, semconv.EDA_PROCESS_TRUNCATED) is True
        finally:
            await consumer.stop()
    finally:
        instrumentor.uninstrument()
    assert len(t.spans(name=f"process {t.topic}")) == 1  # stop() did not end it twice


async def test_outgoing_event_sets_type_business_key_and_metadata(
    instrumented: Instrumented, producer: AIOKafkaProducer
) -> None:
    t = instrumented
    with outgoing_event(event_type="order_placed", business_key="order-7", metadata={"tenant": "acme"}) as out:
        await producer.send_and_wait(t.topic, b"ok")
    with outgoing_event(business_key="not a key\r\n") as refused:  # invalid: sent anyway, as a kafka event
        await producer.send_and_wait(t.topic, b"still sent")
    consumer = await t.consumer()
    try:
        await consumer.getone()
        first = current_event()
        await consumer.getone()
        second = current_event()
    finally:
        await consumer.stop()
    (sent,) = out.events
    assert first is not None and (first.event_id, first.event_type, first.business_key) == (
        sent.event_id,
        "order_placed",
        "order-7",
    )
    assert dict(first.metadata) == {"tenant": "acme"}
    assert second is not None and second.event_type == "kafka" and second.business_key is None
    assert [e.event_type for e in refused.events] == ["kafka"]
