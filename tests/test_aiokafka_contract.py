"""The transport contract suite (otel_eda.testing.contract) on aiokafka with otel-eda's
instrumentation, against the session's real Kafka.

One topic per event type (the contract names them: ``order_placed``, ...); each harness
consumes in a consumer group of its own from the topics' current end, so the records of
earlier tests are not read again. The handlers run inside ``processing(record)``, as the
README recommends. Kafka does not redeliver a record whose handler failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from brokers import KafkaBroker, client_config, unique_name

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DRAIN_TIMEOUT_S = 120.0


class KafkaHarness:
    system = "kafka"
    #: publish passes the application's own headers to the instrumented client
    application_headers = True
    redelivers = False

    def __init__(self, kafka: KafkaBroker) -> None:
        self.kafka = kafka
        self.capture = TelemetryCapture()
        self.instrumentor = AIOKafkaInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.sent = 0
        self.handled = 0

    async def __aenter__(self) -> KafkaHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.producer = AIOKafkaProducer(**client_config(self.kafka))
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        if self.consumer is not None:
            await self.consumer.stop()
        if self.producer is not None:
            await self.producer.stop()
        self.instrumentor.uninstrument()
        self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert self.consumer is None, "subscribe before the first message"
        self.handlers[event_type] = handler

    async def _consuming(self) -> None:
        """Start the consumer on the subscribed topics (from their current end) and its loop."""
        if self.consumer is not None:
            return
        topics = sorted(self.handlers)
        assert self.producer is not None
        for topic in topics:  # the topics exist (created on first use) before the group is assigned them
            await self.producer.partitions_for(topic)
        self.consumer = AIOKafkaConsumer(
            *topics,
            **client_config(self.kafka, group_id=unique_name("contract"), auto_offset_reset="latest"),
        )
        await self.consumer.start()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len(self.consumer.assignment()) < len(topics):
            assert time.monotonic() < deadline, "the contract consumer got no assignment"
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)  # the offset reset to the end is done
        self.loop_task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        assert self.consumer is not None
        async for record in self.consumer:
            try:
                with processing(record):
                    event = current_event()
                    assert event is not None
                    payload = json.loads(record.value) if record.value else None
                    result = self.handlers[record.topic](event, payload)
                    if asyncio.iscoroutine(result):
                        await result
            except Exception:  # recorded on the process span; the loop goes on (no redelivery)
                pass
            finally:
                self.handled += 1

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EventContext:
        await self._consuming()
        assert self.producer is not None
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            carrier = [(k, v.encode()) for k, v in headers.items()] if headers else None
            await self.producer.send_and_wait(event_type, json.dumps(payload).encode(), headers=carrier)
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self._consuming()
        assert self.producer is not None
        raw_send = AIOKafkaProducer.send.__otel_eda_original__  # type: ignore[attr-defined]
        carrier = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers.items()]
        self.sent += 1
        future = await raw_send(self.producer, event_type, json.dumps(payload).encode(), None, None, None, carrier)
        await future

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.handled < self.sent:
            assert time.monotonic() < deadline, f"{self.handled} of {self.sent} records handled"
            await asyncio.sleep(0.02)
        self.capture.tracer_provider.force_flush()


class TestAIOKafka(TransportContract):
    @pytest.fixture(autouse=True)
    def _broker(self, kafka: KafkaBroker) -> None:
        self.kafka = kafka

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with KafkaHarness(self.kafka) as h:
            yield h
