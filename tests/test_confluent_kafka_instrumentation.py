"""otel-eda's confluent-kafka instrumentation against a real Kafka (``scripts/kafka``): spans,
context, delivery reports, metrics, the instrumented classes."""

from __future__ import annotations

import time
import typing
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import pytest
from brokers import KafkaBroker, unique_name
from confluent_kafka import TopicPartition, cimpl
from opentelemetry import baggage, metrics, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.store import EventStore
from otel_eda.identity import current_event
from otel_eda.identity.propagation import HEADER_EVENT_ID
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: How long a test waits for a record or a delivery report (a generous bound, not a timing).
WAIT_S = 60.0


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

    def producer(self, **extra: Any) -> confluent_kafka.Producer:
        return confluent_kafka.Producer({"bootstrap.servers": self.kafka.bootstrap_servers, **extra})

    def consumer(self, *topics: str, **extra: Any) -> confluent_kafka.Consumer:
        consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "group.id": self.group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                **extra,
            }
        )
        consumer.subscribe(list(topics or (self.topic,)))
        return consumer


def poll_record(consumer: confluent_kafka.Consumer) -> Any:
    """The next record (polling in short steps: the empty polls must leave no span)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            return msg
    raise AssertionError(f"no record within {WAIT_S} s")


def sends_timed(t: Instrumented) -> int:
    """Delivery reports recorded in ``messaging.client.operation.duration`` of ``send`` to the test's topic."""
    return t.capture.histogram_count(
        semconv.METRIC_OPERATION_DURATION,
        {semconv.MESSAGING_DESTINATION_NAME: t.topic, semconv.MESSAGING_OPERATION_NAME: "send"},
    )


def flushed(producer: confluent_kafka.Producer) -> None:
    assert producer.flush(WAIT_S) == 0, "records left undelivered"


@pytest.fixture
def store() -> EventStore:
    return EventStore()


@pytest.fixture
def instrumented(kafka: KafkaBroker, capture: TelemetryCapture, store: EventStore) -> Iterator[Instrumented]:
    instrumentor = ConfluentKafkaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, recorders=[store]
    )
    try:
        yield Instrumented(kafka, capture, store)
    finally:
        instrumentor.uninstrument()


def by_event_id(spans: list[ReadableSpan], event_id: str) -> ReadableSpan:
    found = [s for s in spans if (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID) == event_id]
    assert len(found) == 1, f"{len(found)} spans of event {event_id}"
    return found[0]


def test_produce_then_poll_links_the_process_span_and_makes_it_current(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    app_headers = [("app", b"kept"), ("empty", None)]
    producer.produce(t.topic, b"order 1", headers=app_headers)
    flushed(producer)
    assert app_headers == [("app", b"kept"), ("empty", None)]  # the application's list is not modified
    consumer = t.consumer()
    try:
        msg = poll_record(consumer)
        # the handler's code, right after poll: the record's event, span and baggage are current
        event = current_event()
        span = trace.get_current_span()
        correlation = baggage.get_baggage("eda.correlation_id")
        producer.produce(t.topic + "-replies", b"charged")
        flushed(producer)
        consumer.commit(msg, asynchronous=False)
        after_commit = current_event()
        empty = consumer.poll(0.2)
    finally:
        consumer.close()

    headers = msg.headers()
    assert headers[:2] == [("app", b"kept"), ("empty", None)]  # the application's own, first
    header_ids = [v.decode() for k, v in headers if k == HEADER_EVENT_ID]
    assert len(header_ids) == 1
    (send,) = t.spans(name=f"send {t.topic}", kind=SpanKind.PRODUCER)
    (poll,) = t.spans(name=f"poll {t.topic}")  # one poll span: the empty polls made none
    (process,) = t.spans(name=f"process {t.topic}", kind=SpanKind.CONSUMER)
    assert t.attr(send, semconv.MESSAGING_MESSAGE_ID) == header_ids[0] == t.attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert t.attr(send, semconv.MESSAGING_SYSTEM) == t.attr(process, semconv.MESSAGING_SYSTEM) == "kafka"
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert poll.kind is SpanKind.CLIENT and t.attr(poll, semconv.MESSAGING_OPERATION_TYPE) == "receive"
    assert [link.context.span_id for link in poll.links] == [send.context.span_id]
    assert t.attr(process, semconv.MESSAGING_DESTINATION_PARTITION_ID) == str(msg.partition())
    assert t.attr(process, semconv.MESSAGING_KAFKA_OFFSET) == msg.offset() == 0
    assert t.attr(process, semconv.MESSAGING_CONSUMER_GROUP_NAME) == t.group
    assert t.attr(process, semconv.MESSAGING_KAFKA_MESSAGE_KEY) is None
    assert event is not None and event.event_id == header_ids[0]
    assert span.get_span_context().span_id == process.context.span_id
    assert correlation == event.correlation_id
    # a produce inside the handling is a child event: same flow, caused by the handled event
    (reply,) = t.spans(name=f"send {t.topic}-replies")
    assert t.attr(reply, semconv.EDA_CAUSATION_ID) == event.event_id
    assert t.attr(reply, semconv.EDA_CORRELATION_ID) == event.correlation_id
    assert reply.parent is not None and reply.parent.span_id == process.context.span_id
    # the commit ended the handling
    assert after_commit is None
    assert empty is None
    # the delivery reports: one send duration per record, no error
    assert sends_timed(t) == 1
    assert not [
        p for p in t.capture.points(semconv.METRIC_OPERATION_DURATION) if semconv.ERROR_TYPE in (p.attributes or {})
    ]


def test_dict_headers_and_positional_arguments_are_kept(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    producer.produce(t.topic, b"v1", b"k1", headers={"app": "text", "none": None})
    producer.produce(t.topic, b"v2", b"k2", 0, None, None, 0, [("app", b"positional")])
    flushed(producer)
    consumer = t.consumer()
    try:
        first, second = poll_record(consumer), poll_record(consumer)
    finally:
        consumer.close()
    assert first.key() == b"k1" and second.key() == b"k2" and second.partition() == 0
    assert first.headers()[:2] == [("app", b"text"), ("none", None)]
    assert second.headers()[0] == ("app", b"positional")
    sends = t.spans(name=f"send {t.topic}")
    processes = t.spans(name=f"process {t.topic}")
    assert len(sends) == len(processes) == 2
    for send, process in zip(sends, processes, strict=True):
        assert [link.context.span_id for link in process.links] == [send.context.span_id]


def test_the_applications_delivery_callback_runs_with_the_event_current(instrumented: Instrumented) -> None:
    t = instrumented
    seen: list[tuple[Any, str | None, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        event = current_event()
        seen.append((err, event.event_id if event else None, trace.get_current_span().get_span_context().span_id))

    configured: list[str | None] = []
    producer = t.producer()
    with outgoing_event(event_type="order_placed") as out:
        producer.produce(t.topic, b"a", on_delivery=on_delivery)
        producer.produce(t.topic, b"b", callback=on_delivery)
    # the callback of the producer's configuration, which librdkafka skips for a record with its own
    configured_producer = t.producer(
        on_delivery=lambda err, msg: configured.append(getattr(current_event(), "event_id", None))
    )
    configured_producer.produce(t.topic, b"c")
    flushed(producer)
    flushed(configured_producer)
    assert current_event() is None  # the callbacks' context does not leak into the caller
    sends = {t.attr(s, semconv.MESSAGING_MESSAGE_ID): s for s in t.spans(name=f"send {t.topic}")}
    assert [(err, event_id) for err, event_id, _ in seen] == [(None, e.event_id) for e in out.events]
    assert [span_id for _, _, span_id in seen] == [sends[e.event_id].context.span_id for e in out.events]
    assert len(configured) == 1 and configured[0] in sends and configured[0] not in {e.event_id for e in out.events}
    assert sends_timed(t) == 3


def test_a_failed_delivery_is_counted_with_the_brokers_error_and_logged_with_the_event_id(
    instrumented: Instrumented, caplog: pytest.LogCaptureFixture
) -> None:
    t = instrumented
    errors: list[Any] = []
    # the client accepts 2 MB, the broker (message.max.bytes 1 MB by default) refuses it
    producer = t.producer(**{"message.max.bytes": 3_000_000, "linger.ms": 0})
    with outgoing_event() as out:
        producer.produce(t.topic, b"x" * 2_000_000, on_delivery=lambda err, msg: errors.append(err))
    producer.flush(WAIT_S)
    assert len(errors) == 1 and errors[0] is not None
    name = errors[0].name()
    assert name == "MSG_SIZE_TOO_LARGE"
    failed = {
        p.attributes.get(semconv.ERROR_TYPE): p.count
        for p in t.capture.points(semconv.METRIC_OPERATION_DURATION)
        if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == t.topic
        and p.attributes.get(semconv.MESSAGING_OPERATION_NAME) == "send"
    }
    assert failed == {name: 1}
    assert any(out.events[0].event_id in r.getMessage() and name in r.getMessage() for r in caplog.records)
    (send,) = t.spans(name=f"send {t.topic}")  # the send span ended when produce() returned
    assert send.end_time is not None


def test_a_full_queue_fails_the_send_span_and_raises_as_before(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer(**{"queue.buffering.max.messages": 1, "linger.ms": 10_000})
    producer.produce(t.topic, b"first")
    with pytest.raises(BufferError):
        producer.produce(t.topic, b"second")
    flushed(producer)
    first, second = t.spans(name=f"send {t.topic}")
    assert first.status.status_code is StatusCode.UNSET
    assert second.status.status_code is StatusCode.ERROR
    assert t.attr(second, semconv.ERROR_TYPE) == "BufferError"


def test_consume_poll_span_links_every_record_and_the_loop_moves_the_context(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    for i in range(4):
        producer.produce(t.topic, f"order {i}".encode())
    flushed(producer)
    consumer = t.consumer()
    handled: list[str] = []
    try:
        batch: list[Any] = []
        deadline = time.monotonic() + WAIT_S
        while not batch and time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10, timeout=0.5)
        for _msg in batch:
            event = current_event()
            assert event is not None
            handled.append(event.event_id)
            producer.produce(t.topic + "-out", b"x")
        outside = current_event()
        empty = consumer.consume(num_messages=10, timeout=0.2)
        flushed(producer)
    finally:
        consumer.close()
    assert outside is None  # the loop ended: the last record's handling ended with it
    assert empty == []
    assert isinstance(batch, list)
    assert [m.offset() for m in list.__iter__(batch)] == list(range(len(handled)))  # (no new handling)
    (poll,) = t.spans(name=f"poll {t.topic}")
    count = t.attr(poll, semconv.MESSAGING_BATCH_MESSAGE_COUNT) or 1
    assert count == len(handled) >= 1
    sends = {s.context.span_id for s in t.spans(name=f"send {t.topic}")}
    assert len(poll.links) == count and all(link.context.span_id in sends for link in poll.links)
    processes = t.spans(name=f"process {t.topic}")
    assert [t.attr(s, semconv.MESSAGING_MESSAGE_ID) for s in processes] == handled
    outs = t.spans(name=f"send {t.topic}-out")
    assert [t.attr(s, semconv.EDA_CAUSATION_ID) for s in outs] == handled
    assert [s.parent.span_id for s in outs if s.parent] == [p.context.span_id for p in processes]


def test_processing_gives_exact_bounds_and_records_the_handlers_exception(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    producer.produce(t.topic, b"bad order")
    producer.produce(t.topic, b"good order")
    flushed(producer)
    consumer = t.consumer()
    try:
        msg = poll_record(consumer)
        with pytest.raises(ValueError, match="refused"), processing(msg):
            raise ValueError("refused")
        assert current_event() is None  # the block ended the handling
        msg = poll_record(consumer)
        with processing(msg):
            inside = current_event()
        assert inside is not None and current_event() is None
    finally:
        consumer.close()
    bad, good = t.spans(name=f"process {t.topic}")
    assert bad.status.status_code is StatusCode.ERROR
    assert t.attr(bad, semconv.ERROR_TYPE) == "ValueError"
    assert good.status.status_code is StatusCode.UNSET
    assert t.attr(good, semconv.MESSAGING_MESSAGE_ID) == inside.event_id


def test_close_ends_the_handling(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    producer.produce(t.topic, b"order")
    flushed(producer)
    consumer = t.consumer()
    poll_record(consumer)
    assert t.spans(name=f"process {t.topic}") == []
    consumer.close()
    (process,) = t.spans(name=f"process {t.topic}")
    assert current_event() is None and process.end_time is not None


def test_a_record_handled_again_is_marked_duplicate(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    producer.produce(t.topic, b"order")
    flushed(producer)
    consumer = t.consumer()
    try:
        first = poll_record(consumer)
        consumer.seek(TopicPartition(first.topic(), first.partition(), first.offset()))  # a replay
        ended_by_seek = len(t.spans(name=f"process {t.topic}"))
        second = poll_record(consumer)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert second.offset() == first.offset()
    assert ended_by_seek == 1  # the seek ended the first handling
    one, two = t.spans(name=f"process {t.topic}")
    assert t.attr(one, semconv.MESSAGING_MESSAGE_ID) == t.attr(two, semconv.MESSAGING_MESSAGE_ID)
    assert t.attr(one, semconv.EDA_DELIVERY_DUPLICATE) is None
    assert t.attr(two, semconv.EDA_DELIVERY_DUPLICATE) is True
    assert t.capture.counter_total(semconv.METRIC_DUPLICATES, {semconv.MESSAGING_DESTINATION_NAME: t.topic}) == 1


def test_the_message_key_is_written_only_on_request(kafka: KafkaBroker, capture: TelemetryCapture) -> None:
    instrumentor = ConfluentKafkaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, capture_message_key=True
    )
    try:
        t = Instrumented(kafka, capture, EventStore())
        producer = t.producer()
        producer.produce(t.topic, b"v", key=b"customer-7")
        producer.produce(t.topic, None, key="customer-8")  # a tombstone
        flushed(producer)
        consumer = t.consumer()
        try:
            poll_record(consumer)
            poll_record(consumer)
        finally:
            consumer.close()
    finally:
        instrumentor.uninstrument()
    sends = t.spans(name=f"send {t.topic}")
    processes = t.spans(name=f"process {t.topic}")
    assert [t.attr(s, semconv.MESSAGING_KAFKA_MESSAGE_KEY) for s in sends] == ["customer-7", "customer-8"]
    assert [t.attr(s, semconv.MESSAGING_KAFKA_MESSAGE_KEY) for s in processes] == ["customer-7", "customer-8"]
    assert [t.attr(s, semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE) for s in [*sends, *processes]] == [None, True] * 2


def test_hostile_and_none_headers_never_raise_and_are_counted(
    instrumented: Instrumented, monkeypatch: pytest.MonkeyPatch
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
        ("eda-event-type", None),
        ("tracestate", None),
    ]
    # a raw producer (the C class): the hostile headers reach the consumer as they were written
    raw = cimpl.Producer({"bootstrap.servers": t.kafka.bootstrap_servers})
    raw.produce(t.topic, b"v", headers=hostile)
    flushed(raw)
    consumer = t.consumer()
    try:
        msg = poll_record(consumer)
        event = current_event()
    finally:
        consumer.close()
    assert msg.headers() == hostile
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


def test_consumer_lag_of_an_instrumented_consumer(instrumented: Instrumented) -> None:
    t = instrumented
    producer = t.producer()
    for i in range(5):
        producer.produce(t.topic, f"r{i}".encode())
    flushed(producer)
    consumer = t.consumer()
    try:
        poll_record(consumer)
        poll_record(consumer)
        want = {(t.topic, "0", t.group): 3}
        lags: dict[Any, Any] = {}
        deadline = time.monotonic() + WAIT_S
        while lags != want and time.monotonic() < deadline:  # the high watermark comes with a fetch
            lags = {
                (
                    p.attributes[semconv.MESSAGING_DESTINATION_NAME],
                    p.attributes[semconv.MESSAGING_DESTINATION_PARTITION_ID],
                    p.attributes[semconv.MESSAGING_CONSUMER_GROUP_NAME],
                ): p.value
                for p in t.capture.points(semconv.METRIC_CONSUMER_LAG)
            }
            time.sleep(0.05)
        assert lags == want
    finally:
        consumer.close()
    assert t.capture.points(semconv.METRIC_CONSUMER_LAG) == []


def test_isinstance_and_type_hints_keep_working(instrumented: Instrumented) -> None:
    t = instrumented
    ConfluentKafkaInstrumentor().uninstrument()
    before = confluent_kafka.Producer({"bootstrap.servers": t.kafka.bootstrap_servers})
    ConfluentKafkaInstrumentor().instrument(
        tracer_provider=t.capture.tracer_provider, meter_provider=t.capture.meter_provider
    )
    producer = t.producer()
    consumer = t.consumer()
    try:
        assert type(before) is cimpl.Producer and type(producer) is not cimpl.Producer
        for client in (before, producer):
            assert isinstance(client, confluent_kafka.Producer)
            assert isinstance(client, cimpl.Producer)
            assert not isinstance(client, confluent_kafka.Consumer)
        assert isinstance(consumer, confluent_kafka.Consumer) and isinstance(consumer, cimpl.Consumer)
        assert issubclass(cimpl.Producer, confluent_kafka.Producer)
        assert issubclass(confluent_kafka.Producer, cimpl.Producer)

        class Mine(confluent_kafka.Producer):  # an application's own subclass checks as usual
            pass

        assert not isinstance(producer, Mine) and isinstance(Mine({"bootstrap.servers": "127.0.0.1:9"}), Mine)

        def send(p: confluent_kafka.Producer, c: confluent_kafka.Consumer) -> None:
            pass

        hints = typing.get_type_hints(send)
        assert isinstance(producer, hints["p"]) and isinstance(before, hints["p"])
        assert isinstance(consumer, hints["c"])
    finally:
        consumer.close()
    ConfluentKafkaInstrumentor().uninstrument()
    # uninstrumented: the C classes are back, and the instrumented clients pass calls straight through
    assert confluent_kafka.Producer is cimpl.Producer and confluent_kafka.Consumer is cimpl.Consumer
    assert isinstance(producer, confluent_kafka.Producer)
    producer.produce(t.topic, b"after")
    flushed(producer)
    assert t.spans(name=f"send {t.topic}") == []
    ConfluentKafkaInstrumentor().instrument(
        tracer_provider=t.capture.tracer_provider, meter_provider=t.capture.meter_provider
    )


def test_serializing_producer_and_deserializing_consumer_are_instrumented(instrumented: Instrumented) -> None:
    from confluent_kafka.serialization import StringDeserializer, StringSerializer

    t = instrumented
    seen_by_serializer: list[list[str]] = []

    def serialize(value: str, ctx: Any) -> bytes:  # a serializer sees the headers, otel-eda's included
        seen_by_serializer.append([k for k, _ in ctx.headers or []])
        return value.encode()

    producer = confluent_kafka.SerializingProducer(
        {
            "bootstrap.servers": t.kafka.bootstrap_servers,
            "key.serializer": StringSerializer(),
            "value.serializer": serialize,
        }
    )
    assert isinstance(producer, confluent_kafka.SerializingProducer) and isinstance(producer, confluent_kafka.Producer)
    delivered: list[str | None] = []
    producer.produce(
        t.topic,
        key="k",
        value="order 1",
        on_delivery=lambda err, msg: delivered.append(getattr(current_event(), "event_id", None)),
    )
    flushed(producer)
    consumer = confluent_kafka.DeserializingConsumer(
        {
            "bootstrap.servers": t.kafka.bootstrap_servers,
            "group.id": t.group,
            "auto.offset.reset": "earliest",
            "key.deserializer": StringDeserializer(),
            "value.deserializer": StringDeserializer(),
        }
    )
    assert isinstance(consumer, confluent_kafka.DeserializingConsumer) and isinstance(
        consumer, confluent_kafka.Consumer
    )
    consumer.subscribe([t.topic])
    try:
        msg = poll_record(consumer)
        event = current_event()
    finally:
        consumer.close()
    assert msg.value() == "order 1" and msg.key() == "k"  # deserialized, as without otel-eda
    (send,) = t.spans(name=f"send {t.topic}")
    (process,) = t.spans(name=f"process {t.topic}")
    sent_id = t.attr(send, semconv.MESSAGING_MESSAGE_ID)
    assert HEADER_EVENT_ID in seen_by_serializer[0] and "traceparent" in seen_by_serializer[0]
    assert delivered == [sent_id]
    assert event is not None and event.event_id == sent_id == t.attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert sends_timed(t) == 1


def test_a_handling_nothing_ends_ends_at_the_maximum(
    kafka: KafkaBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_PROCESS_SPAN_MAX_S", "0.2")
    instrumentor = ConfluentKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    t = Instrumented(kafka, capture, EventStore())
    try:
        producer = t.producer()
        producer.produce(t.topic, b"order")
        flushed(producer)
        consumer = t.consumer()
        try:
            poll_record(consumer)
            deadline = time.monotonic() + WAIT_S
            while not t.spans(name=f"process {t.topic}") and time.monotonic() < deadline:
                time.sleep(0.05)  # the handler "hangs": no next poll, no commit
            (process,) = t.spans(name=f"process {t.topic}")
            assert t.attr(process, semconv.EDA_PROCESS_TRUNCATED) is True
        finally:
            consumer.close()
    finally:
        instrumentor.uninstrument()
    assert len(t.spans(name=f"process {t.topic}")) == 1  # close() did not end it twice
