"""The transport contract suite (otel_eda.testing.contract) on pika with otel-eda's instrumentation,
against the session's real RabbitMQ.

pika is synchronous and its connections are not thread-safe, so the harness has two: the test's own
``BlockingConnection`` publishes, and a consumer thread with a ``BlockingConnection`` of its own
declares one queue per event type (the contract names them: ``order_placed``, ...), consumes them
with ``basic_consume`` callbacks and runs the handlers there (an ``async`` handler with
``asyncio.run``, so it keeps the callback's context); a handler's own publish goes through the
consumer thread's channel. A failing handler's message is nacked with ``requeue=True`` inside the
``except`` block: the broker's redelivery is attempt 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pika
import pytest
from brokers import RabbitBroker
from pika.adapters.blocking_connection import BlockingChannel

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.pika.instrumentor import PikaInstrumentor
from otel_eda.transports.rabbitmq import outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DRAIN_TIMEOUT_S = 120.0


class PikaHarness:
    system = "rabbitmq"
    #: publish passes the application's own headers to the instrumented client
    application_headers = True
    redelivers = True
    counts_redeliveries = True

    def __init__(self, rabbitmq: RabbitBroker) -> None:
        self.rabbitmq = rabbitmq
        self.capture = TelemetryCapture()
        self.instrumentor = PikaInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.connection: pika.BlockingConnection | None = None
        self.channels = threading.local()  # each thread publishes on a channel of its own connection
        self.consumer: threading.Thread | None = None
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.failure: BaseException | None = None
        self.sent = 0
        self.handled = 0

    async def __aenter__(self) -> PikaHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
        self.channels.channel = self.connection.channel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stopping.set()
        if self.consumer is not None:
            self.consumer.join(30)
        if self.connection is not None:
            self.connection.close()
        self.instrumentor.uninstrument()
        self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert self.consumer is None, "subscribe before the first message"
        self.handlers[event_type] = handler

    def _consuming(self) -> None:
        if self.consumer is None:
            self.consumer = threading.Thread(target=self._consume, name="pika-consumer", daemon=True)
            self.consumer.start()
        assert self.ready.wait(60), f"the consumer did not start: {self.failure!r}"

    def _consume(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.rabbitmq.url))
            channel = connection.channel()
            self.channels.channel = channel
            for name, handler in self.handlers.items():
                channel.queue_declare(name, exclusive=True)
                channel.basic_consume(name, self._callback(handler))
            self.ready.set()
            while not self.stopping.is_set():
                connection.process_data_events(time_limit=0.02)
            connection.close()
        except BaseException as exc:
            self.failure = exc
            self.ready.set()
            raise

    def _callback(self, handler: Handler) -> Any:
        def on_message(ch: BlockingChannel, method: Any, properties: Any, body: bytes) -> None:
            try:
                event = current_event()
                assert event is not None
                result = handler(event, json.loads(body) if body else None)
                if asyncio.iscoroutine(result):
                    asyncio.run(result)
            except Exception:  # recorded on the process span; requeued
                ch.basic_nack(method.delivery_tag, requeue=True)
                return
            ch.basic_ack(method.delivery_tag)
            self.handled += 1

        return on_message

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EventContext:
        self._consuming()
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            self.channels.channel.basic_publish(
                "", event_type, json.dumps(payload).encode(), pika.BasicProperties(headers=dict(headers or {}))
            )
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        self._consuming()
        raw_publish = BlockingChannel.basic_publish.__otel_eda_original__  # type: ignore[attr-defined]
        self.sent += 1
        raw_publish(
            self.channels.channel,
            "",
            event_type,
            json.dumps(payload).encode(),
            pika.BasicProperties(headers=dict(headers)),
        )

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.handled < self.sent:
            assert self.failure is None, f"the consumer failed: {self.failure!r}"
            assert time.monotonic() < deadline, f"{self.handled} of {self.sent} messages handled"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last ack's settling, after the counter moved
        self.capture.tracer_provider.force_flush()


class TestPika(TransportContract):
    @pytest.fixture(autouse=True)
    def _broker(self, rabbitmq: RabbitBroker) -> None:
        self.rabbitmq = rabbitmq

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with PikaHarness(self.rabbitmq) as h:
            yield h
