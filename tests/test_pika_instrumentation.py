"""otel-eda's pika instrumentation against a real RabbitMQ (``scripts/rabbitmq``): ``BlockingConnection``
(publish, ``basic_consume`` callbacks, the ``consume()`` generator, ``basic_get``, publisher confirms),
``SelectConnection`` (callbacks, confirms arriving later), threads (``add_callback_threadsafe``),
redeliveries and dead-letter exchanges."""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pika
import pika.exceptions
import pytest
from brokers import RabbitBroker, unique_name
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from pika.adapters.blocking_connection import BlockingChannel

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.identity import current_event
from otel_eda.identity.propagation import HEADER_EVENT_ID
from otel_eda.messaging import Messaging
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.pika import instrumentor as pika_instrumentor
from otel_eda.transports.pika.instrumentor import PikaInstrumentor
from otel_eda.transports.rabbitmq import outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WAIT_S = 60.0


class Records:
    """A lifecycle recorder keeping every record."""

    def __init__(self) -> None:
        self.records: list[LifecycleRecord] = []

    def record(self, record: LifecycleRecord) -> None:
        self.records.append(record)

    def of(self, event_id: str) -> list[tuple[Stage, int]]:
        return [(r.stage, r.attempt) for r in self.records if r.event_id == event_id]


def attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


@pytest.fixture
def records() -> Records:
    return Records()


@pytest.fixture
def instrumented(capture: TelemetryCapture, records: Records) -> Iterator[TelemetryCapture]:
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider, recorders=[records]
    )
    try:
        yield capture
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def connection(rabbitmq: RabbitBroker, instrumented: TelemetryCapture) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@pytest.fixture
def channel(connection: pika.BlockingConnection) -> BlockingChannel:
    return connection.channel()


def declare(channel: BlockingChannel, prefix: str, **kwargs: Any) -> str:
    name = unique_name(prefix)
    channel.queue_declare(name, auto_delete=kwargs.pop("auto_delete", True), **kwargs)
    return name


def test_the_node_listens_on_loopback_only(rabbitmq: RabbitBroker) -> None:
    addresses = rabbitmq.listening_addresses()
    assert ("tcp", "127.0.0.1", rabbitmq.port) in addresses
    assert {ip for _, ip, _ in addresses} <= {"127.0.0.1", "::1"}


def test_blocking_publish_and_basic_consume_callback(instrumented: TelemetryCapture, channel: BlockingChannel) -> None:
    queue = declare(channel, "orders")
    exchange = unique_name("shop")
    channel.exchange_declare(exchange, "topic", auto_delete=True)
    channel.queue_bind(queue, exchange, "orders.created")
    replies = declare(channel, "payments")
    seen: list[Any] = []

    def handle(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        seen.append(
            (current_event(), trace.get_current_span(), baggage.get_baggage(semconv.EDA_CORRELATION_ID), properties)
        )
        ch.basic_publish("", replies, b"charged")
        ch.basic_ack(method.delivery_tag)
        ch.stop_consuming()

    channel.basic_consume(queue, handle)
    app_properties = pika.BasicProperties(headers={"app": "kept", "n": 7})
    channel.basic_publish(exchange, "orders.created", b"order 1", app_properties)
    channel.start_consuming()

    assert app_properties.headers == {"app": "kept", "n": 7}, "the application's properties are not modified"
    event, span, correlation, properties = seen[0]
    assert properties.headers["app"] == "kept" and properties.headers["n"] == 7
    assert properties.headers[HEADER_EVENT_ID] == event.event_id
    (send,) = instrumented.spans(name=f"send {exchange}:orders.created", kind=SpanKind.PRODUCER)
    (process,) = instrumented.spans(name=f"process {exchange}:orders.created:{queue}", kind=SpanKind.CONSUMER)
    assert attr(send, semconv.MESSAGING_SYSTEM) == attr(process, semconv.MESSAGING_SYSTEM) == "rabbitmq"
    assert attr(send, semconv.MESSAGING_RABBITMQ_ROUTING_KEY) == "orders.created"
    assert attr(process, semconv.MESSAGING_RABBITMQ_DELIVERY_TAG) == 1
    assert attr(send, semconv.MESSAGING_MESSAGE_ID) == event.event_id == attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert span.get_span_context().span_id == process.context.span_id
    assert correlation == event.correlation_id
    assert attr(process, semconv.EDA_OUTCOME) == "completed"
    assert attr(process, semconv.EDA_DELIVERY_ATTEMPT) == 1
    # exactly one producer span per publish: the order and the reply
    producers = instrumented.spans(kind=SpanKind.PRODUCER)
    assert len(producers) == 2
    (reply,) = [s for s in producers if s is not send]
    assert reply.name == f"send {replies}"
    assert attr(reply, semconv.EDA_CAUSATION_ID) == event.event_id
    assert reply.parent is not None and reply.parent.span_id == process.context.span_id
    destination = {semconv.MESSAGING_DESTINATION_NAME: f"{exchange}:orders.created:{queue}"}
    assert instrumented.counter_total(semconv.METRIC_CONSUMED_MESSAGES, destination) == 1
    assert instrumented.histogram_count(semconv.METRIC_PROCESS_DURATION, destination) == 1
    sent = {semconv.MESSAGING_DESTINATION_NAME: f"{exchange}:orders.created"}
    assert instrumented.counter_total(semconv.METRIC_SENT_MESSAGES, sent) == 1
    assert current_event() is None


def test_consume_generator_gives_each_message_its_own_context(
    instrumented: TelemetryCapture, channel: BlockingChannel, records: Records
) -> None:
    queue = declare(channel, "orders")
    sent = []
    for i in range(3):
        with outgoing_event(event_type="order_placed", business_key=f"order-{i}") as out:
            channel.basic_publish("", queue, str(i).encode())
        sent.append(out.events[0])
    seen = []
    for method, _properties, body in channel.consume(queue, inactivity_timeout=WAIT_S):
        assert method is not None
        event = current_event()
        assert event is not None
        seen.append(event)
        assert baggage.get_baggage(semconv.EDA_CORRELATION_ID) == event.correlation_id
        if int(body) == 1:
            channel.basic_nack(method.delivery_tag, requeue=False)  # refused: rejected
        else:
            channel.basic_ack(method.delivery_tag)
        assert current_event() == event, "still current in the loop body after the ack"
        if len(seen) == 3:
            break
    channel.cancel()
    assert [e.event_id for e in seen] == [e.event_id for e in sent]
    assert seen[0].event_type == "order_placed" and seen[2].business_key == "order-2"
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [attr(s, semconv.EDA_OUTCOME) for s in processes] == ["completed", "rejected", "completed"]
    assert processes[1].status.status_code is StatusCode.ERROR
    assert all(s.end_time is not None for s in processes)
    assert records.of(sent[1].event_id)[-1] == (Stage.REJECTED, 1)
    assert current_event() is None


def test_a_consume_generator_message_ends_when_the_next_is_requested_or_on_cancel(
    instrumented: TelemetryCapture, channel: BlockingChannel
) -> None:
    queue = declare(channel, "orders")
    for i in range(2):
        channel.basic_publish("", queue, str(i).encode())
    messages = channel.consume(queue, inactivity_timeout=WAIT_S)
    first = next(messages)
    assert current_event() is not None
    assert instrumented.spans(kind=SpanKind.CONSUMER) == []  # still open: the handling goes on
    channel.basic_ack(first[0].delivery_tag)  # settled: ended at once
    assert [attr(s, semconv.EDA_OUTCOME) for s in instrumented.spans(kind=SpanKind.CONSUMER)] == ["completed"]
    second = next(messages)
    assert second[0] is not None and current_event() is not None
    channel.cancel()  # never acked: ended by the cancel, the broker requeues it
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert len(processes) == 2 and all(s.end_time is not None for s in processes)
    assert current_event() is None
    messages.close()


def test_basic_get_makes_the_message_current_until_the_next_get(
    instrumented: TelemetryCapture, channel: BlockingChannel
) -> None:
    queue = declare(channel, "orders")
    for i in range(2):
        channel.basic_publish("", queue, str(i).encode())
    method, properties, _ = channel.basic_get(queue)
    event = current_event()
    assert event is not None and event.event_id == properties.headers[HEADER_EVENT_ID]
    second, _, _ = channel.basic_get(queue)  # ends the first handling (never acked: completed at the next get)
    assert current_event() is not None and current_event() != event
    channel.basic_ack(second.delivery_tag)
    channel.basic_ack(method.delivery_tag)
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [s.name for s in processes] == [f"process {queue}"] * 2
    assert all(s.end_time is not None for s in processes)
    assert channel.basic_get(queue) == (None, None, None)


def test_a_broker_nack_under_confirms_is_recorded_on_the_send_span(
    instrumented: TelemetryCapture, channel: BlockingChannel
) -> None:
    queue = declare(channel, "full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    channel.basic_publish("", queue, b"fits")
    with pytest.raises(pika.exceptions.NackError):  # the client's own error, unchanged
        channel.basic_publish("", queue, b"refused")
    ok, nacked = instrumented.spans(kind=SpanKind.PRODUCER)
    assert ok.status.status_code is StatusCode.UNSET
    assert nacked.status.status_code is StatusCode.ERROR
    assert attr(nacked, semconv.ERROR_TYPE) == "pika.exceptions.NackError"
    failed = {semconv.ERROR_TYPE: "pika.exceptions.NackError", semconv.MESSAGING_DESTINATION_NAME: queue}
    assert instrumented.counter_total(semconv.METRIC_SENT_MESSAGES, failed) == 1
    assert instrumented.histogram_count(semconv.METRIC_OPERATION_DURATION, failed) == 1


def test_an_unroutable_message_under_confirms_is_recorded_and_counted(
    instrumented: TelemetryCapture, channel: BlockingChannel, records: Records
) -> None:
    exchange = unique_name("nowhere")
    channel.exchange_declare(exchange, auto_delete=True)
    channel.confirm_delivery()
    with outgoing_event() as out, pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange, "nobody", b"x", mandatory=True)
    (send,) = instrumented.spans(kind=SpanKind.PRODUCER)
    assert send.status.status_code is StatusCode.ERROR
    assert attr(send, semconv.ERROR_TYPE) == "pika.exceptions.UnroutableError"
    assert instrumented.counter_total(semconv.METRIC_UNROUTED) == 1
    (unrouted,) = [r for r in records.records if r.stage is Stage.UNROUTED]
    assert unrouted.event_id == out.events[0].event_id
    assert unrouted.span_id == send.context.span_id  # the send span's, for the flow page


def test_requeued_message_is_attempt_two_and_a_dead_letter_keeps_its_event(
    instrumented: TelemetryCapture, channel: BlockingChannel, records: Records
) -> None:
    dlx = unique_name("dlx")
    channel.exchange_declare(dlx, "fanout", auto_delete=True)
    dead = declare(channel, "dead")
    channel.queue_bind(dead, dlx)
    work = declare(channel, "work", arguments={"x-dead-letter-exchange": dlx})
    with outgoing_event(event_type="order_placed") as out:
        channel.basic_publish("", work, b"x")
    event_id = out.events[0].event_id
    attempts: list[int] = []

    def handle(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            ch.basic_nack(method.delivery_tag, requeue=True)  # fails once: tried again
        else:
            ch.basic_reject(method.delivery_tag, requeue=False)  # gives up: dead-lettered
            ch.stop_consuming()

    channel.basic_consume(work, handle)
    channel.start_consuming()
    method, _, _ = channel.basic_get(dead)
    seen = current_event()
    channel.basic_ack(method.delivery_tag)
    assert seen is not None and seen.event_id == event_id
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [attr(s, semconv.EDA_DELIVERY_ATTEMPT) for s in processes] == [1, 2, 1]
    assert [attr(s, semconv.EDA_OUTCOME) for s in processes] == ["retried", "rejected", "completed"]
    dead_span = processes[2]
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_REASON) == "rejected"
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_QUEUE) == work
    (send,) = instrumented.spans(kind=SpanKind.PRODUCER)
    assert [link.context.span_id for link in dead_span.links] == [send.context.span_id]
    stages = [stage for stage, _ in records.of(event_id)]
    assert stages.count(Stage.DEAD_LETTERED) == 1
    assert stages.index(Stage.REJECTED) < stages.index(Stage.DEAD_LETTERED)
    reason = {semconv.EDA_DEAD_LETTER_REASON: "rejected"}
    assert instrumented.counter_total(semconv.METRIC_BROKER_DEAD_LETTERS, reason) == 1


def test_a_failing_callback_ends_its_handling_failed(instrumented: TelemetryCapture, channel: BlockingChannel) -> None:
    queue = declare(channel, "orders")
    channel.basic_publish("", queue, b"x")

    def handle(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        raise ConnectionError("payment service down")

    channel.basic_consume(queue, handle)
    with pytest.raises(ConnectionError):
        channel.start_consuming()
    (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
    assert attr(process, semconv.EDA_OUTCOME) == "failed"
    assert attr(process, semconv.ERROR_TYPE) == "ConnectionError"


def test_work_handed_to_a_thread_keeps_its_event_through_add_callback_threadsafe(
    instrumented: TelemetryCapture, connection: pika.BlockingConnection, channel: BlockingChannel
) -> None:
    queue = declare(channel, "orders")
    replies = declare(channel, "replies")
    channel.basic_publish("", queue, b"order")
    in_thread: list[Any] = []
    in_callback: list[Any] = []
    workers: list[threading.Thread] = []

    def reply_and_ack(ch: BlockingChannel, tag: int) -> None:
        in_callback.append(current_event())
        ch.basic_publish("", replies, b"done")  # channels are not thread-safe: on the connection's thread
        ch.basic_ack(tag)
        ch.stop_consuming()

    def work(ch: BlockingChannel, tag: int) -> None:
        in_thread.append(current_event())
        connection.add_callback_threadsafe(functools.partial(reply_and_ack, ch, tag))

    def handle(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
        context = contextvars.copy_context()  # what opentelemetry-instrumentation-threading does for a thread
        worker = threading.Thread(target=context.run, args=(work, ch, method.delivery_tag))
        workers.append(worker)
        worker.start()

    channel.basic_consume(queue, handle)
    channel.start_consuming()
    workers[0].join(WAIT_S)
    (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
    handled = process.attributes[semconv.MESSAGING_MESSAGE_ID]  # type: ignore[index]
    assert in_thread[0] is not None and in_thread[0].event_id == handled
    assert in_callback[0] is not None and in_callback[0].event_id == handled
    # the reply sent from the threadsafe callback is a child of the handled event, and the
    # handling stayed open until the worker's ack settled it
    (reply,) = instrumented.spans(name=f"send {replies}")
    assert attr(reply, semconv.EDA_CAUSATION_ID) == handled
    assert attr(process, semconv.EDA_OUTCOME) == "completed"
    assert process.end_time is not None and reply.end_time is not None and process.end_time >= reply.end_time


def test_an_unsettled_handling_ends_failed_when_its_channel_closes(
    instrumented: TelemetryCapture, connection: pika.BlockingConnection, records: Records
) -> None:
    channel = connection.channel()
    queue = declare(channel, "orders", auto_delete=False)
    try:
        channel.basic_publish("", queue, b"x")

        def handle(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
            ch.stop_consuming()  # hands the message on and forgets it: never acknowledged

        channel.basic_consume(queue, handle)
        channel.start_consuming()
        assert instrumented.spans(kind=SpanKind.CONSUMER) == []
        channel.close()
        (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
        assert attr(process, semconv.EDA_OUTCOME) == "failed"
    finally:
        cleanup = connection.channel()
        cleanup.queue_delete(queue)


def test_hostile_broker_headers_never_raise_and_are_counted(
    instrumented: TelemetryCapture, channel: BlockingChannel
) -> None:
    queue = declare(channel, "hostile")
    raw = BlockingChannel.basic_publish.__otel_eda_original__  # type: ignore[attr-defined]
    hostile = [
        {"x-delivery-count": "many", "x-death": "nonsense"},
        {"x-delivery-count": -4, "x-death": [{"count": "x", "reason": {"nested": 1}, "queue": b"\xff"}]},
        {"x-death": [[1, 2]], "eda-event-id": {"table": [1, 2, {"deep": True}]}},
        {"x-death": [{"count": 2**40, "reason": "r" * 100_000, "queue": None}], "baggage": 12},
        {"traceparent": b"\xff\xfe", "baggage": "k=" + "v" * 20_000, "eda-event-id": None},
    ]
    counter = instrumented.meter_provider.get_meter("test").create_counter(semconv.METRIC_INVALID_HEADERS)
    before = instrumented.counter_total(semconv.METRIC_INVALID_HEADERS)
    for headers in hostile:
        raw(channel, "", queue, b"x", pika.BasicProperties(headers=headers))
    with mock.patch.object(_selfmetrics, "_invalid_counter", lambda: counter):
        for _ in hostile:
            method, _, _ = channel.basic_get(queue)
            assert method is not None and current_event() is not None
            channel.basic_ack(method.delivery_tag)
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert len(processes) == len(hostile)
    assert [attr(s, semconv.EDA_DELIVERY_ATTEMPT) for s in processes] == [1] * len(hostile)
    assert instrumented.counter_total(semconv.METRIC_INVALID_HEADERS) - before >= len(hostile)


# -- SelectConnection ------------------------------------------------------------------------
class SelectApp:
    """A SelectConnection application driven by its ioloop in the test's thread; ``run`` returns
    when ``done()`` is called or after :data:`WAIT_S` (a failure)."""

    def __init__(self, url: str, on_channel: Any) -> None:
        self.finished = False
        self.connection = pika.SelectConnection(
            pika.URLParameters(url),
            on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            on_open_error_callback=lambda conn, err: self._fail(err),
        )
        self.error: Any = None

    def _fail(self, err: Any) -> None:
        self.error = err
        self.connection.ioloop.stop()

    def done(self) -> None:
        self.finished = True
        self.connection.close()

    def run(self) -> None:
        ioloop = self.connection.ioloop
        timer = ioloop.call_later(WAIT_S, ioloop.stop)
        self.connection.add_on_close_callback(lambda conn, reason: ioloop.stop())
        ioloop.start()
        ioloop.remove_timeout(timer)
        assert self.error is None, self.error
        assert self.finished, "the select application timed out"


def test_select_connection_consume_callback_runs_with_the_event_current(
    instrumented: TelemetryCapture, rabbitmq: RabbitBroker
) -> None:
    queue = unique_name("orders")
    seen: list[Any] = []

    def on_channel(channel: Any) -> None:
        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            seen.append((current_event(), trace.get_current_span(), properties.headers[HEADER_EVENT_ID]))
            ch.basic_ack(method.delivery_tag)
            if len(seen) == 2:
                app.done()

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(queue, on_message)
            for i in range(2):
                with outgoing_event(event_type="order_placed"):
                    channel.basic_publish("", queue, str(i).encode())

        channel.queue_declare(queue, auto_delete=True, callback=on_declared)

    app = SelectApp(rabbitmq.url, on_channel)
    app.run()
    assert [event.event_id for event, _, _ in seen] == [header for _, _, header in seen]
    sends = instrumented.spans(kind=SpanKind.PRODUCER)
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [s.name for s in sends] == [f"send {queue}"] * 2, "one producer span per publish"
    assert [s.name for s in processes] == [f"process {queue}"] * 2
    assert [s.links[0].context.span_id for s in processes] == [s.context.span_id for s in sends]
    assert [span.get_span_context().span_id for _, span, _ in seen] == [s.context.span_id for s in processes]
    assert [attr(s, semconv.EDA_OUTCOME) for s in processes] == ["completed", "completed"]


def test_select_connection_confirms_nacks_and_returns_are_counted_and_logged_with_the_event_id(
    instrumented: TelemetryCapture, rabbitmq: RabbitBroker, records: Records, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="otel_eda.transports.pika.instrumentor")
    queue = unique_name("full")
    confirms: list[str] = []
    events: list[Any] = []

    def on_channel(channel: Any) -> None:
        def on_confirm(frame: Any) -> None:
            confirms.append(type(frame.method).__name__)
            if len(confirms) == 3:
                app.done()

        def on_declared(_frame: Any) -> None:
            channel.confirm_delivery(on_confirm, callback=lambda _frame: publish())

        def publish() -> None:
            with outgoing_event() as out:
                channel.basic_publish("", queue, b"fits")
                channel.basic_publish("", queue, b"refused")  # the queue is full: nacked
                channel.basic_publish("", unique_name("nobody"), b"lost", mandatory=True)  # returned
            events.extend(out.events)

        channel.queue_declare(
            queue, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}, callback=on_declared
        )

    app = SelectApp(rabbitmq.url, on_channel)
    app.run()
    assert sorted(confirms) == ["Ack", "Ack", "Nack"]  # the broker confirms each queue's messages on its own
    sends = instrumented.spans(kind=SpanKind.PRODUCER)
    assert len(sends) == 3 and all(s.end_time is not None for s in sends)
    nacked = {semconv.MESSAGING_DESTINATION_NAME: queue}
    assert instrumented.counter_total(semconv.METRIC_BROKER_NACKS, nacked) == 1
    assert instrumented.counter_total(semconv.METRIC_UNROUTED) == 1
    (unrouted,) = [r for r in records.records if r.stage is Stage.UNROUTED]
    assert unrouted.event_id == events[2].event_id
    assert unrouted.span_id == sends[2].context.span_id  # returned later: still the send span's
    messages = [r.getMessage() for r in caplog.records]
    assert any(events[1].event_id in m and "nack" in m for m in messages), messages
    assert any(events[2].event_id in m and "unroutable" in m for m in messages), messages
    assert not any(events[0].event_id in m for m in messages)


def test_select_ioloop_add_callback_threadsafe_carries_the_context(
    instrumented: TelemetryCapture, rabbitmq: RabbitBroker
) -> None:
    queue = unique_name("orders")
    replies = unique_name("replies")
    in_callback: list[Any] = []

    def on_channel(channel: Any) -> None:
        def reply(tag: int) -> None:
            in_callback.append(current_event())
            channel.basic_publish("", replies, b"done")
            channel.basic_ack(tag)
            app.done()

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            context = contextvars.copy_context()
            threading.Thread(
                target=context.run,
                args=(app.connection.ioloop.add_callback_threadsafe, functools.partial(reply, method.delivery_tag)),
            ).start()

        def on_declared(_frame: Any) -> None:
            channel.basic_consume(queue, on_message)
            channel.basic_publish("", queue, b"order")

        channel.queue_declare(queue, auto_delete=True, callback=on_declared)

    app = SelectApp(rabbitmq.url, on_channel)
    app.run()
    (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
    handled = attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert in_callback[0] is not None and in_callback[0].event_id == handled
    (reply_span,) = instrumented.spans(name=f"send {replies}")
    assert attr(reply_span, semconv.EDA_CAUSATION_ID) == handled


@pytest.mark.parametrize("pull", ["consume", "basic_get"])
def test_an_unacked_pulled_message_ends_failed_when_its_channel_closes(
    instrumented: TelemetryCapture, connection: pika.BlockingConnection, pull: str
) -> None:
    channel = connection.channel()
    queue = declare(channel, "orders", auto_delete=False)
    try:
        channel.basic_publish("", queue, b"x")
        messages = channel.consume(queue, inactivity_timeout=WAIT_S) if pull == "consume" else None
        if messages is not None:
            method, _, _ = next(messages)
        else:
            method, _, _ = channel.basic_get(queue)
        assert method is not None
        channel.close()  # never acked: the broker redelivers it
        (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
        assert attr(process, semconv.EDA_OUTCOME) == "failed"
    finally:
        connection.channel().queue_delete(queue)


def test_ack_multiple_settles_every_lower_tag_when_consume_and_callbacks_are_mixed(
    instrumented: TelemetryCapture, connection: pika.BlockingConnection, channel: BlockingChannel
) -> None:
    pulled, pushed = declare(channel, "pulled"), declare(channel, "pushed")
    messages = channel.consume(pulled, inactivity_timeout=0.2)
    assert next(messages) == (None, None, None)  # the generator's consumer is registered
    handled: list[int] = []
    channel.basic_consume(pushed, lambda ch, method, props, body: handled.append(method.delivery_tag))
    channel.basic_publish("", pulled, b"pulled")
    connection.process_data_events(time_limit=0.5)  # delivered, buffered by the generator
    channel.basic_publish("", pushed, b"pushed")
    while not handled:
        connection.process_data_events(time_limit=0.1)  # the callback's handling is followed first
    method, _, _ = next(messages)
    assert method is not None and method.delivery_tag < handled[0]
    channel.basic_nack(method.delivery_tag, multiple=True, requeue=False)
    (process,) = instrumented.spans(name=f"process {pulled}")
    assert attr(process, semconv.EDA_OUTCOME) == "rejected"
    channel.basic_ack(handled[0])
    (other,) = instrumented.spans(name=f"process {pushed}")
    assert attr(other, semconv.EDA_OUTCOME) == "completed"
    channel.cancel()


def internal_errors(capture: TelemetryCapture, component: str) -> int:
    return sum(
        p.value
        for p in capture.points(semconv.METRIC_INTERNAL_ERRORS)
        if p.attributes.get(semconv.EDA_COMPONENT) == component
    )


def test_unacked_handlings_are_capped_per_channel_the_oldest_ending_failed(
    instrumented: TelemetryCapture,
    connection: pika.BlockingConnection,
    channel: BlockingChannel,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = instrumented.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    monkeypatch.setattr(pika_instrumentor, "MAX_OPEN_HANDLINGS", 3)
    monkeypatch.setattr(pika_instrumentor, "_over_cap_logged", False)
    queue = declare(channel, "never_acked")
    for i in range(5):
        channel.basic_publish("", queue, str(i).encode())
    handled: list[int] = []
    channel.basic_consume(queue, lambda ch, method, props, body: handled.append(method.delivery_tag))
    while len(handled) < 5:
        connection.process_data_events(time_limit=0.1)
    ended = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [attr(s, semconv.EDA_OUTCOME) for s in ended] == ["failed", "failed"]
    assert all(attr(s, semconv.EDA_PROCESS_TRUNCATED) for s in ended)
    assert internal_errors(instrumented, "pika_handlings") == 2
    assert sum("unacknowledged messages on a pika channel" in r.getMessage() for r in caplog.records) == 1
    channel.basic_ack(0, multiple=True)
    assert [attr(s, semconv.EDA_OUTCOME) for s in instrumented.spans(kind=SpanKind.CONSUMER)][2:] == ["completed"] * 3


def test_handlings_ended_at_the_maximum_duration_are_dropped(
    capture: TelemetryCapture, rabbitmq: RabbitBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_PROCESS_SPAN_MAX_S", "0.2")
    instrumentor = PikaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    try:
        channel = connection.channel()
        queue = declare(channel, "slow")
        handled: list[int] = []
        channel.basic_consume(queue, lambda ch, method, props, body: handled.append(method.delivery_tag))
        for i in range(3):
            channel.basic_publish("", queue, str(i).encode())
            while len(handled) <= i:
                connection.process_data_events(time_limit=0.1)
            deadline = time.monotonic() + WAIT_S
            while len(capture.spans(kind=SpanKind.CONSUMER)) <= i:  # ended by the reaper, truncated
                assert time.monotonic() < deadline
                time.sleep(0.05)
        channel.basic_publish("", queue, b"last")
        while len(handled) < 4:
            connection.process_data_events(time_limit=0.1)
        state = channel._impl.__dict__["_otel_eda_state"]
        assert list(state.handlings) == [handled[-1]]  # the three ended ones are not kept
        channel.basic_ack(0, multiple=True)
    finally:
        connection.close()
        instrumentor.uninstrument()


def test_an_internal_failure_recording_an_unroutable_message_leaves_the_clients_error(
    instrumented: TelemetryCapture, channel: BlockingChannel, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = instrumented.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    exchange = unique_name("nowhere")
    channel.exchange_declare(exchange, auto_delete=True)
    channel.confirm_delivery()
    with (
        mock.patch.object(Messaging, "unrouted", side_effect=RuntimeError("recorder down")),
        pytest.raises(pika.exceptions.UnroutableError),
    ):
        channel.basic_publish(exchange, "nobody", b"x", mandatory=True)
    assert internal_errors(instrumented, "pika") == 1
