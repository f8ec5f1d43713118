"""aiokafka with otel-eda through a Kafka outage: the client's own errors only, failed sends counted,
and flows that continue with intact ids once the broker is back. A broker of its own (``own_kafka``: it is stopped)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from brokers import KafkaBroker, client_config, send_outcomes, unique_name

from otel_eda import semconv
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


@pytest.fixture
def instrumented(capture: TelemetryCapture) -> Iterator[TelemetryCapture]:
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        yield capture
    finally:
        instrumentor.uninstrument()


async def handle_one(consumer: AIOKafkaConsumer, timeout_s: float = 90.0) -> tuple[Any, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=1000)
        for records in batch.values():
            for record in records:
                event = current_event()
                assert event is not None
                return record, event.event_id
    raise AssertionError(f"no record within {timeout_s}s")


async def test_an_outage_gives_the_clients_errors_counts_failed_sends_and_flows_resume(
    own_kafka: KafkaBroker, instrumented: TelemetryCapture
) -> None:
    capture = instrumented
    topic = unique_name("outage")
    producer = AIOKafkaProducer(**client_config(own_kafka, request_timeout_ms=3000, retry_backoff_ms=200))
    consumer = AIOKafkaConsumer(
        topic,
        **client_config(own_kafka, group_id=unique_name("outage-group"), auto_offset_reset="earliest"),
    )
    await producer.start()
    await consumer.start()
    try:
        await producer.send_and_wait(topic, b"before")
        _, before_id = await handle_one(consumer)

        own_kafka.stop()
        with pytest.raises(Exception) as raised:  # the client's own error, whichever it is
            await producer.send_and_wait(topic, b"during")
        assert type(raised.value).__module__.startswith("aiokafka"), repr(raised.value)
        assert await consumer.getmany(timeout_ms=1000) == {}  # polling during the outage raises nothing
        failed = send_outcomes(capture, topic)
        assert sum(n for error, n in failed.items() if error != "ok") == 1, failed

        own_kafka.start()
        deadline = time.monotonic() + 120
        while True:
            try:
                metadata = await producer.send_and_wait(topic, b"after")
                break
            except Exception as exc:
                assert type(exc).__module__.startswith("aiokafka"), repr(exc)
                assert time.monotonic() < deadline, "the producer did not recover within 120 s"
                await asyncio.sleep(0.5)
        record, after_id = await handle_one(consumer, 120)
    finally:
        await consumer.stop()
        await producer.stop()
    assert record.value == b"after" and record.offset == metadata.offset
    sends = {
        (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID): s
        for s in capture.spans(name=f"send {topic}")
        if s.status.is_ok
    }
    processes = capture.spans(name=f"process {topic}")
    assert [(p.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID) for p in processes] == [before_id, after_id]
    assert after_id in sends  # the id the producer gave is the id the consumer handled
    assert processes[-1].links[0].context.span_id == sends[after_id].context.span_id
