"""The transport contract suite (otel_eda.testing.contract) on confluent-kafka with otel-eda's
instrumentation, against the session's real Kafka.

One topic per event type (the contract names them: ``order_placed``, ...); each harness
consumes in a consumer group of its own from the topics' high watermarks at assignment, so
the records of earlier tests are not read again. The consumer's ``poll(0)`` loop runs as an
asyncio task (the contract's handlers may be coroutines) and each handling runs inside
``processing(msg)``, as the README recommends. Kafka does not redeliver a record whose
handler failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import confluent_kafka
import pytest
from brokers import KafkaBroker, unique_name
from confluent_kafka import cimpl

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor, outgoing_event, processing

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DRAIN_TIMEOUT_S = 120.0


def header_value(value: Any) -> bytes | None:
    """A contract header value as a Kafka header value (bytes or None; others as their text)."""
    if value is None or isinstance(value, bytes):
        return value
    return (value if isinstance(value, str) else repr(value)).encode("utf-8", "surrogateescape")


class ConfluentHarness:
    system = "kafka"
    #: publish passes the application's own headers to the instrumented client
    application_headers = True
    redelivers = False
    counts_redeliveries = False

    def __init__(self, kafka: KafkaBroker) -> None:
        self.kafka = kafka
        self.capture = TelemetryCapture()
        self.instrumentor = ConfluentKafkaInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.producer: Any = None
        self.raw: Any = None
        self.consumer: Any = None
        self.loop_task: asyncio.Task[None] | None = None
        self.starting: asyncio.Future[None] | None = None
        self.sent = 0
        self.handled = 0

    async def __aenter__(self) -> ConfluentHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.producer = confluent_kafka.Producer({"bootstrap.servers": self.kafka.bootstrap_servers})
        self.raw = cimpl.Producer({"bootstrap.servers": self.kafka.bootstrap_servers})  # past the instrumentation
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        if self.consumer is not None:
            self.consumer.close()
        for producer in (self.producer, self.raw):
            if producer is not None:
                producer.flush(10)
        self.instrumentor.uninstrument()
        self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert self.consumer is None, "subscribe before the first message"
        self.handlers[event_type] = handler

    async def _consuming(self) -> None:
        """Start the consumer on the subscribed topics (from their high watermarks) and its loop,
        once: concurrent publishes all wait until it is assigned its partitions."""
        if self.starting is None:
            self.starting = asyncio.ensure_future(self._start())
        await self.starting

    async def _start(self) -> None:
        topics = sorted(self.handlers)
        for topic in topics:  # the topics exist (created on first use) before the group is assigned them
            self.producer.list_topics(topic, timeout=30)
        assigned: list[Any] = []

        def on_assign(consumer: Any, partitions: list[Any]) -> None:
            for tp in partitions:
                tp.offset = consumer.get_watermark_offsets(tp, timeout=30)[1]
            consumer.assign(partitions)
            assigned.extend(partitions)

        self.consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": self.kafka.bootstrap_servers,
                "group.id": unique_name("contract"),
                "enable.auto.commit": False,
            }
        )
        self.consumer.subscribe(topics, on_assign=on_assign)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len({tp.topic for tp in assigned}) < len(topics):
            assert time.monotonic() < deadline, "the contract consumer got no assignment"
            assert self.consumer.poll(0.05) is None
            await asyncio.sleep(0)
        self.loop_task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            msg = self.consumer.poll(0)
            if msg is None or msg.error() is not None:
                await asyncio.sleep(0.01)
                continue
            try:
                with processing(msg):
                    event = current_event()
                    assert event is not None
                    payload = json.loads(msg.value()) if msg.value() else None
                    result = self.handlers[msg.topic()](event, payload)
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
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            carrier = [(k, v.encode()) for k, v in headers.items()] if headers else None
            self.producer.produce(event_type, json.dumps(payload).encode(), headers=carrier)
        assert self.producer.flush(30) == 0
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self._consuming()
        self.sent += 1
        carrier = [(k, header_value(v)) for k, v in headers.items()]
        self.raw.produce(event_type, json.dumps(payload).encode(), headers=carrier)
        assert self.raw.flush(30) == 0

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.handled < self.sent:
            assert time.monotonic() < deadline, f"{self.handled} of {self.sent} records handled"
            await asyncio.sleep(0.02)
        self.capture.tracer_provider.force_flush()


class TestConfluentKafka(TransportContract):
    @pytest.fixture(autouse=True)
    def _broker(self, kafka: KafkaBroker) -> None:
        self.kafka = kafka

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with ConfluentHarness(self.kafka) as h:
            yield h
