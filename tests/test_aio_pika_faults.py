"""aio-pika with otel-eda through a RabbitMQ restart mid-flow (``connect_robust``): the application
sees the client's reconnect, otel-eda keeps working after it, no span stays open, and every message
the application acknowledged is in the lifecycle records exactly once per acknowledgement.
A node of its own (it is restarted)."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from brokers import RabbitBroker, RabbitStartError
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_eda import _selfmetrics, semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor, outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

WAIT_S = 120.0


class OpenSpans(SpanProcessor):
    """Counts the process spans started and not yet ended."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind is SpanKind.CONSUMER:
            self.open.add(span.context.span_id)

    def on_end(self, span: ReadableSpan) -> None:
        self.open.discard(span.context.span_id if span.context else 0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RabbitBroker]:
    broker = RabbitBroker(tmp_path / "rabbitmq")
    try:
        broker.start()
    except RabbitStartError as exc:
        broker.stop()
        pytest.fail(str(exc), pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


async def test_a_broker_restart_mid_flow(
    broker: RabbitBroker, capture: TelemetryCapture, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "otel_eda.transports.aio_pika.depth")
    errors = capture.meter_provider.get_meter("t").create_counter(semconv.METRIC_INTERNAL_ERRORS)
    monkeypatch.setattr(_selfmetrics, "_error_counter", lambda: errors)
    records: list[LifecycleRecord] = []
    open_spans = OpenSpans()
    capture.tracer_provider.add_span_processor(open_spans)
    instrumentor = AioPikaInstrumentor()
    instrumentor.instrument(
        tracer_provider=capture.tracer_provider,
        meter_provider=capture.meter_provider,
        recorders=[type("R", (), {"record": staticmethod(records.append)})()],
        depth_refresh_s=0.2,
    )

    def depth() -> list[Any]:
        return [p.value for p in capture.points(semconv.METRIC_BROKER_QUEUE_DEPTH)]

    def depth_errors() -> int:
        return sum(
            p.value
            for p in capture.points(semconv.METRIC_INTERNAL_ERRORS)
            if p.attributes.get(semconv.EDA_COMPONENT) == "queue_depth"
        )

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, what
            await asyncio.sleep(0.05)

    async def outage() -> None:
        await asyncio.to_thread(broker.stop)
        await until(lambda: depth_errors() >= 2, "the depth refresh's failures counted")
        assert depth() == [], "no stale depth while the broker is away"
        await asyncio.to_thread(broker.start)

    acked: list[str] = []
    sent: list[str] = []
    reconnected = asyncio.Event()
    try:
        connection = await aio_pika.connect_robust(broker.url, reconnect_interval=0.5)
        connection.reconnect_callbacks.add(lambda *args: reconnected.set())
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=5)
        queue = await channel.declare_queue("orders", durable=True)

        async def handle(message: AbstractIncomingMessage) -> None:
            event = current_event()
            assert event is not None
            await asyncio.sleep(0.3)  # the work: messages are in flight when the broker goes
            try:
                await message.ack()
            except Exception:  # the client's own error: the channel is gone; the broker redelivers
                return
            acked.append(event.event_id)

        await queue.consume(handle)

        async def publish(i: int) -> None:
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while True:
                try:
                    with outgoing_event(event_type="order_placed") as out:
                        await channel.default_exchange.publish(
                            aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                            routing_key="orders",
                        )
                    sent.append(out.events[0].event_id)
                    return
                except Exception:  # the client's own error during the restart: the application retries
                    assert asyncio.get_running_loop().time() < deadline, "publishing did not recover"
                    await asyncio.sleep(0.2)

        for i in range(30):
            await publish(i)
        await until(lambda: len(depth()) == 1, "the depth read")
        restart = asyncio.create_task(outage())
        for i in range(30, 40):  # publishing while the broker goes away and comes back
            await publish(i)
        await restart
        await asyncio.wait_for(reconnected.wait(), WAIT_S)
        for i in range(40, 60):
            await publish(i)
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not set(sent) <= set(acked):
            assert asyncio.get_running_loop().time() < deadline, f"{len(set(sent) - set(acked))} never acknowledged"
            await asyncio.sleep(0.05)
        await until(lambda: len(depth()) == 1, "the depth read again after the outage")
        await asyncio.sleep(0.1)
        await connection.close()
    finally:
        instrumentor.uninstrument()
    assert reconnected.is_set()
    # the restart hit messages in flight: their acks failed (recorded as failed), the broker redelivered them
    assert any(r.stage is Stage.FAILED for r in records)
    assert any(r.stage is Stage.COMPLETED and r.attempt == 2 for r in records)
    assert not open_spans.open, f"{len(open_spans.open)} process spans never ended"
    completed = collections.Counter(r.event_id for r in records if r.stage is Stage.COMPLETED)
    assert completed == collections.Counter(acked), "one completed record per acknowledgement"
    # after the restart: ids intact, consumer spans linked to their producers
    sends: dict[Any, ReadableSpan] = {
        (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID): s for s in capture.spans(kind=SpanKind.PRODUCER)
    }
    for span in capture.spans(kind=SpanKind.CONSUMER):
        event_id = (span.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID)
        if event_id in sent[40:]:
            assert span.links[0].context.span_id == sends[event_id].context.span_id
    # the depth refresh's outage: one WARNING, later failures at DEBUG, the recovery at INFO
    depth_logs = [r for r in caplog.records if r.name == "otel_eda.transports.aio_pika.depth"]
    assert [r.levelno for r in depth_logs if r.levelno >= logging.WARNING] == [logging.WARNING]
    assert any(r.levelno == logging.INFO and "read again" in r.getMessage() for r in depth_logs)
