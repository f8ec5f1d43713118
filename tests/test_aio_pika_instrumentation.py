"""otel-eda's aio-pika instrumentation against a real RabbitMQ (``scripts/rabbitmq``): names, context in
every consumer style, settling, publisher confirms, redeliveries, dead-letter exchanges, queue depth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from brokers import RabbitBroker, unique_name
from opentelemetry import baggage, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.explorer import Outcome as ExplorerOutcome
from otel_eda.flows.explorer import build_flows
from otel_eda.flows.explorer.decoding import from_console
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.identity import EventContext, current_event
from otel_eda.identity.propagation import HEADER_EVENT_ID
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor, outgoing_event

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
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[records],
        depth_refresh_s=0.1,
    )
    try:
        yield capture
    finally:
        instrumentor.uninstrument()


@pytest.fixture
async def channel(rabbitmq: RabbitBroker, instrumented: TelemetryCapture) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect_robust(rabbitmq.url)
    async with connection:
        yield await connection.channel()


async def until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_the_node_listens_on_loopback_only(rabbitmq: RabbitBroker) -> None:
    addresses = rabbitmq.listening_addresses()
    assert ("tcp", "127.0.0.1", rabbitmq.port) in addresses
    assert ("tcp", "127.0.0.1", rabbitmq.epmd_port) in addresses
    assert {ip for _, ip, _ in addresses} <= {"127.0.0.1", "::1"}


async def test_publish_and_consume_callback(instrumented: TelemetryCapture, channel: AbstractChannel) -> None:
    queue = await channel.declare_queue(unique_name("orders"), auto_delete=True)
    exchange = await channel.declare_exchange(unique_name("shop"), aio_pika.ExchangeType.TOPIC, auto_delete=True)
    await queue.bind(exchange, "orders.created")
    seen: list[Any] = []
    done = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process():
            event = current_event()
            seen.append((event, trace.get_current_span(), baggage.get_baggage(semconv.EDA_CORRELATION_ID), message))
            await channel.default_exchange.publish(aio_pika.Message(b"charged"), routing_key=unique_name("payments"))
        done.set()

    await queue.consume(handle)
    app_message = aio_pika.Message(b"order 1", headers={"app": "kept", "n": 7})
    await exchange.publish(app_message, routing_key="orders.created")
    await asyncio.wait_for(done.wait(), WAIT_S)

    assert app_message.headers == {"app": "kept", "n": 7}, "the application's message is not modified"
    event, span, correlation, message = seen[0]
    assert message.headers["app"] == "kept" and message.headers["n"] == 7
    assert message.headers[HEADER_EVENT_ID] == event.event_id
    (send,) = instrumented.spans(name=f"send {exchange.name}:orders.created", kind=SpanKind.PRODUCER)
    (process,) = instrumented.spans(name=f"process {exchange.name}:orders.created:{queue.name}", kind=SpanKind.CONSUMER)
    assert attr(send, semconv.MESSAGING_SYSTEM) == attr(process, semconv.MESSAGING_SYSTEM) == "rabbitmq"
    assert attr(send, semconv.MESSAGING_RABBITMQ_ROUTING_KEY) == "orders.created"
    assert attr(process, semconv.MESSAGING_RABBITMQ_ROUTING_KEY) == "orders.created"
    assert attr(process, semconv.MESSAGING_RABBITMQ_DELIVERY_TAG) == message.delivery_tag
    assert attr(send, semconv.MESSAGING_MESSAGE_ID) == event.event_id == attr(process, semconv.MESSAGING_MESSAGE_ID)
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert span.get_span_context().span_id == process.context.span_id
    assert correlation == event.correlation_id
    assert attr(process, semconv.EDA_OUTCOME) == "completed"
    assert attr(process, semconv.EDA_DELIVERY_ATTEMPT) == 1
    destination = {semconv.MESSAGING_DESTINATION_NAME: f"{exchange.name}:orders.created:{queue.name}"}
    assert instrumented.counter_total(semconv.METRIC_CONSUMED_MESSAGES, destination) == 1
    assert instrumented.histogram_count(semconv.METRIC_EVENT_AGE, destination) == 1
    assert instrumented.histogram_count(semconv.METRIC_PROCESS_DURATION, destination) == 1
    sent = {semconv.MESSAGING_DESTINATION_NAME: f"{exchange.name}:orders.created"}
    assert instrumented.counter_total(semconv.METRIC_SENT_MESSAGES, sent) == 1
    assert instrumented.histogram_count(semconv.METRIC_OPERATION_DURATION, sent) == 1
    # a publish inside the handler is a child event, on the default exchange: named by its routing key
    (reply,) = [s for s in instrumented.spans(kind=SpanKind.PRODUCER) if s is not send]
    assert reply.name.startswith("send payments-")
    assert attr(reply, semconv.EDA_CAUSATION_ID) == event.event_id
    assert reply.parent is not None and reply.parent.span_id == process.context.span_id


async def test_default_exchange_names(instrumented: TelemetryCapture, channel: AbstractChannel) -> None:
    queue = await channel.declare_queue(unique_name("q"), auto_delete=True)
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    message = await queue.get(timeout=WAIT_S)
    await message.ack()
    assert [s.name for s in instrumented.spans(kind=SpanKind.PRODUCER)] == [f"send {queue.name}"]
    assert [s.name for s in instrumented.spans(kind=SpanKind.CONSUMER)] == [f"process {queue.name}"]


async def test_iterator_gives_each_message_its_own_context(
    instrumented: TelemetryCapture, channel: AbstractChannel, records: Records
) -> None:
    queue = await channel.declare_queue(unique_name("orders"), auto_delete=True)
    sent = []
    for i in range(3):
        with outgoing_event(event_type="order_placed", business_key=f"order-{i}") as out:
            await channel.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=queue.name)
        sent.append(out.events[0])
    seen = []
    async with queue.iterator() as messages:
        async for message in messages:
            event = current_event()
            assert event is not None
            seen.append(event)
            if int(message.body) == 1:
                await message.nack(requeue=False)  # refused: rejected
            else:
                await message.ack()
            assert current_event() == event, "still current in the loop body after the ack"
            if len(seen) == 3:
                break
    assert [e.event_id for e in seen] == [e.event_id for e in sent]
    assert seen[0].event_type == "order_placed" and seen[2].business_key == "order-2"
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [attr(s, semconv.EDA_OUTCOME) for s in processes] == ["completed", "rejected", "completed"]
    assert processes[1].status.status_code is StatusCode.ERROR
    assert all(s.end_time is not None for s in processes)
    assert records.of(sent[1].event_id)[-1] == (Stage.REJECTED, 1)
    assert current_event() is None


async def test_get_makes_the_message_current_until_the_next_get(
    instrumented: TelemetryCapture, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(unique_name("orders"), auto_delete=True)
    for i in range(2):
        await channel.default_exchange.publish(aio_pika.Message(f"{i}".encode()), routing_key=queue.name)
    first = await queue.get(timeout=WAIT_S)
    event = current_event()
    assert event is not None and event.event_id == first.headers[HEADER_EVENT_ID]
    second = await queue.get(timeout=WAIT_S)  # ends the first handling (never acked: completed at the next get)
    assert current_event() is not None and current_event() != event
    await second.ack()
    await first.ack()
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert len(processes) == 2 and all(s.end_time is not None for s in processes)
    assert await queue.get(fail=False, timeout=WAIT_S) is None


async def test_process_rejects_with_the_exception_and_requeue_is_a_retry(
    instrumented: TelemetryCapture, channel: AbstractChannel, records: Records
) -> None:
    queue = await channel.declare_queue(unique_name("orders"), auto_delete=True)
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=True):
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("payment service down")
        done.set()

    await queue.consume(handle)
    with outgoing_event() as out:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
    await asyncio.wait_for(done.wait(), WAIT_S)
    await until(lambda: len(instrumented.spans(kind=SpanKind.CONSUMER)) == 2, "two process spans")
    first, second = instrumented.spans(kind=SpanKind.CONSUMER)
    assert attr(first, semconv.EDA_OUTCOME) == "retried"
    assert attr(first, semconv.ERROR_TYPE) == "ConnectionError"
    assert [attr(s, semconv.EDA_DELIVERY_ATTEMPT) for s in (first, second)] == [1, 2]  # the redelivered flag
    assert attr(second, semconv.EDA_OUTCOME) == "completed"
    event_id = out.events[0].event_id
    assert (Stage.RETRIED, 1) in records.of(event_id) and records.of(event_id)[-1] == (Stage.COMPLETED, 2)
    assert instrumented.counter_total(semconv.METRIC_CONSUMED_MESSAGES) == 2


async def test_a_returned_unroutable_message_is_recorded_on_the_send_span(
    instrumented: TelemetryCapture, rabbitmq: RabbitBroker, records: Records
) -> None:
    connection = await aio_pika.connect_robust(rabbitmq.url)
    async with connection:
        channel = await connection.channel(on_return_raises=False)
        exchange = await channel.declare_exchange(unique_name("nowhere"), auto_delete=True)
        result = await exchange.publish(aio_pika.Message(b"x"), routing_key="nobody", mandatory=True)
        raising = await connection.channel(on_return_raises=True)
        exchange2 = await raising.get_exchange(exchange.name)
        with pytest.raises(aio_pika.exceptions.PublishError):
            await exchange2.publish(aio_pika.Message(b"y"), routing_key="nobody", mandatory=True)
    assert isinstance(result, aiormq.abc.DeliveredMessage)  # returned to the application, unchanged
    sends = instrumented.spans(kind=SpanKind.PRODUCER)
    assert len(sends) == 2
    assert all(s.status.status_code is StatusCode.ERROR for s in sends)
    assert attr(sends[0], semconv.ERROR_TYPE) == "otel_eda.transports.rabbitmq.MessageReturned"
    assert attr(sends[1], semconv.ERROR_TYPE) == "aiormq.exceptions.PublishError"
    assert instrumented.counter_total(semconv.METRIC_UNROUTED) == 1
    assert (
        instrumented.counter_total(
            semconv.METRIC_SENT_MESSAGES, {semconv.ERROR_TYPE: sends[1].attributes[semconv.ERROR_TYPE]}
        )
        == 1
    )  # type: ignore[index]
    (unrouted,) = [r for r in records.records if r.stage is Stage.UNROUTED]
    assert unrouted.span_id == sends[0].context.span_id  # the send span's, for the flow page


async def test_quorum_queue_delivery_limit_and_dead_letter_exchange(
    instrumented: TelemetryCapture, channel: AbstractChannel, records: Records
) -> None:
    dlx = await channel.declare_exchange(unique_name("dlx"), aio_pika.ExchangeType.FANOUT, auto_delete=True)
    dead = await channel.declare_queue(unique_name("dead"), auto_delete=True)
    await dead.bind(dlx)
    work = await channel.declare_queue(
        unique_name("work"),
        durable=True,
        arguments={"x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx.name},
    )
    try:
        with outgoing_event(event_type="order_placed") as out:
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=work.name)
        event: EventContext = out.events[0]
        attempts: list[int] = []
        async with work.iterator() as messages:
            async for message in messages:
                attempts.append(len(attempts) + 1)
                await message.nack(requeue=True)  # fails every time: the broker gives up after the limit
                if len(attempts) == 3:
                    break
        dead_message = await dead.get(timeout=WAIT_S)
        seen = current_event()
        await dead_message.ack()
    finally:
        await work.delete(if_unused=False, if_empty=False)
    assert seen is not None and seen.event_id == event.event_id, "the dead letter keeps its event"
    processes = [
        s for s in instrumented.spans(kind=SpanKind.CONSUMER) if attr(s, semconv.MESSAGING_MESSAGE_ID) == event.event_id
    ]
    assert [attr(s, semconv.EDA_DELIVERY_ATTEMPT) for s in processes[:3]] == [1, 2, 3]  # x-delivery-count + 1
    assert [attr(s, semconv.EDA_OUTCOME) for s in processes[:3]] == ["retried"] * 3
    dead_span = processes[3]
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_REASON) == "delivery_limit"
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_QUEUE) == work.name
    (send,) = [
        s for s in instrumented.spans(kind=SpanKind.PRODUCER) if attr(s, semconv.MESSAGING_MESSAGE_ID) == event.event_id
    ]
    assert [link.context.span_id for link in dead_span.links] == [send.context.span_id]
    stages = records.of(event.event_id)
    assert (Stage.DEAD_LETTERED, 1) in stages
    assert stages.index((Stage.DEAD_LETTERED, 1)) > stages.index((Stage.RETRIED, 3))
    assert (
        instrumented.counter_total(
            semconv.METRIC_BROKER_DEAD_LETTERS, {semconv.EDA_DEAD_LETTER_REASON: "delivery_limit"}
        )
        == 1
    )
    # the explorer, from the spans alone: the last attempt was dead-lettered, the dead letter handled apart
    (flow,) = build_flows(from_console(json.loads(s.to_json())) for s in instrumented.spans()).values()
    (flow_event,) = [e for e in flow.events if e.event_id == event.event_id]
    statuses = {name: handling.status for name, handling in flow_event.handlings.items()}
    dead_destination = f"{dlx.name}:{work.name}:{dead.name}"  # the dead letter keeps its routing key
    assert statuses == {"shop": ExplorerOutcome.DEAD_LETTERED, f"shop ({dead_destination})": ExplorerOutcome.COMPLETED}


async def test_classic_queue_with_a_dead_letter_exchange(
    instrumented: TelemetryCapture, channel: AbstractChannel, records: Records
) -> None:
    dlx = await channel.declare_exchange(unique_name("dlx"), aio_pika.ExchangeType.FANOUT, auto_delete=True)
    dead = await channel.declare_queue(unique_name("dead"), auto_delete=True)
    await dead.bind(dlx)
    work = await channel.declare_queue(
        unique_name("work"), auto_delete=True, arguments={"x-dead-letter-exchange": dlx.name}
    )
    with outgoing_event() as out:
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=work.name)
    message = await work.get(timeout=WAIT_S)
    await message.reject()
    dead_handled = asyncio.Event()
    seen: list[Any] = []

    async def handle_dead(message: AbstractIncomingMessage) -> None:
        async with message.process():
            seen.append(current_event())
            dead_handled.set()

    await dead.consume(handle_dead)
    await asyncio.wait_for(dead_handled.wait(), WAIT_S)
    event_id = out.events[0].event_id
    assert seen[0].event_id == event_id
    await until(lambda: (Stage.COMPLETED, 1) in records.of(event_id), "the dead letter's handling")
    stages = [stage for stage, _ in records.of(event_id)]
    assert stages.count(Stage.DEAD_LETTERED) == 1 and Stage.REJECTED in stages
    assert stages.index(Stage.REJECTED) < stages.index(Stage.DEAD_LETTERED)
    dead_span = instrumented.spans(kind=SpanKind.CONSUMER)[-1]
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_REASON) == "rejected"
    assert attr(dead_span, semconv.EDA_DEAD_LETTER_COUNT) == 1


async def test_queue_depth_and_consumers_are_gauges_refreshed_in_the_background(
    instrumented: TelemetryCapture, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(unique_name("depth"), auto_delete=True)
    assert await queue.get(fail=False, timeout=WAIT_S) is None  # tracks the queue
    for _ in range(3):
        await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)

    def depth() -> list[Any]:
        return [
            p.value
            for p in instrumented.points(semconv.METRIC_BROKER_QUEUE_DEPTH)
            if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == queue.name
        ]

    await until(lambda: depth() == [3], "a depth of 3")
    tag = await queue.consume(lambda message: None, no_ack=False)

    def consumers() -> list[Any]:
        return [
            p.value
            for p in instrumented.points(semconv.METRIC_BROKER_QUEUE_CONSUMERS)
            if p.attributes.get(semconv.MESSAGING_DESTINATION_NAME) == queue.name
        ]

    await until(lambda: consumers() == [1], "one consumer")
    await queue.cancel(tag)


async def test_cloudevents_headers_are_read(instrumented: TelemetryCapture, channel: AbstractChannel) -> None:
    queue = await channel.declare_queue(unique_name("ce"), auto_delete=True)
    headers = {
        "cloudEvents:specversion": "1.0",
        "cloudEvents:id": "ce-42",
        "cloudEvents:type": "com.example.order_placed",
        "cloudEvents:source": "/java-shop",
        "cloudEvents:time": "2026-12-03T02:00:00.5Z",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    raw = aio_pika.Exchange.publish.__otel_eda_original__  # type: ignore[attr-defined]
    await raw(channel.default_exchange, aio_pika.Message(b"{}", headers=headers), routing_key=queue.name)
    message = await queue.get(timeout=WAIT_S)
    event = current_event()
    await message.ack()
    assert event is not None and (event.event_id, event.event_type) == ("ce-42", "com.example.order_placed")
    (process,) = instrumented.spans(kind=SpanKind.CONSUMER)
    assert [f"{link.context.trace_id:032x}" for link in process.links] == ["0af7651916cd43dd8448eb211c80319c"]


async def test_hostile_broker_headers_never_raise_and_are_counted(
    instrumented: TelemetryCapture, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(unique_name("hostile"), auto_delete=True)
    raw = aio_pika.Exchange.publish.__otel_eda_original__  # type: ignore[attr-defined]
    hostile = [
        {"x-delivery-count": "many", "x-death": "nonsense"},
        {"x-delivery-count": -4, "x-death": [{"count": "x", "reason": {"nested": 1}, "queue": bytearray(b"\xff")}]},
        {"x-death": [[1, 2]], "eda-event-id": {"table": [1, 2, {"deep": True}]}},
        {"x-death": [{"count": 2**40, "reason": "r" * 100_000, "queue": None}], "baggage": 12},
    ]
    counter = instrumented.meter_provider.get_meter("test").create_counter(semconv.METRIC_INVALID_HEADERS)
    before = instrumented.counter_total(semconv.METRIC_INVALID_HEADERS)
    for headers in hostile:
        await raw(channel.default_exchange, aio_pika.Message(b"x", headers=headers), routing_key=queue.name)
    with mock.patch.object(_selfmetrics, "_invalid_counter", lambda: counter):
        for _ in hostile:
            message = await queue.get(timeout=WAIT_S)
            assert current_event() is not None
            await message.ack()
    processes = instrumented.spans(kind=SpanKind.CONSUMER)
    assert len(processes) == len(hostile)
    assert [attr(s, semconv.EDA_DELIVERY_ATTEMPT) for s in processes] == [1, 1, 1, 1]
    assert instrumented.counter_total(semconv.METRIC_INVALID_HEADERS) - before >= len(hostile)


async def test_a_broker_nack_is_recorded_on_the_send_span_and_counted(
    instrumented: TelemetryCapture, channel: AbstractChannel
) -> None:
    queue = await channel.declare_queue(
        unique_name("full"), auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await channel.default_exchange.publish(aio_pika.Message(b"fits"), routing_key=queue.name)
    with pytest.raises(aio_pika.exceptions.DeliveryError):  # the client's own error, unchanged
        await channel.default_exchange.publish(aio_pika.Message(b"refused"), routing_key=queue.name)
    ok, nacked = instrumented.spans(kind=SpanKind.PRODUCER)
    assert ok.status.status_code is StatusCode.UNSET
    assert nacked.status.status_code is StatusCode.ERROR
    assert attr(nacked, semconv.ERROR_TYPE) == "aiormq.exceptions.DeliveryError"
    failed = {semconv.ERROR_TYPE: "aiormq.exceptions.DeliveryError", semconv.MESSAGING_DESTINATION_NAME: queue.name}
    assert instrumented.counter_total(semconv.METRIC_SENT_MESSAGES, failed) == 1
    assert instrumented.histogram_count(semconv.METRIC_OPERATION_DURATION, failed) == 1


async def test_settle_spans_when_asked(
    rabbitmq: RabbitBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EDA_SETTLE_SPANS", "true")
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        connection = await aio_pika.connect(rabbitmq.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique_name("settle"), auto_delete=True)
            for _ in range(2):
                await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue.name)
            first = await queue.get(timeout=WAIT_S)
            await first.nack(requeue=False)
            second = await queue.get(timeout=WAIT_S)
            await second.ack()
    finally:
        instrumentor.uninstrument()
    settles = capture.spans(kind=SpanKind.CLIENT)
    assert [s.name for s in settles] == [f"nack {queue.name}", f"ack {queue.name}"]
    assert all(attr(s, semconv.MESSAGING_OPERATION_TYPE) == "settle" for s in settles)
    processes = capture.spans(kind=SpanKind.CONSUMER)
    assert [s.parent.span_id for s in settles if s.parent] == [p.context.span_id for p in processes]
