"""The transport contract suite (otel_eda.testing.contract) on aio-pika with otel-eda's
instrumentation, against the session's real RabbitMQ.

One queue per event type (the contract names them: ``order_placed``, ...), published to on the
default exchange with the event type as the routing key; the queues are exclusive to the
harness's connection, so they go with it. The handlers run inside ``message.process(requeue=True)``:
a failing handler's message is requeued, and the broker's redelivery is attempt 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from brokers import RabbitBroker

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor, outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DRAIN_TIMEOUT_S = 120.0


class RabbitHarness:
    system = "rabbitmq"
    #: publish passes the application's own headers to the instrumented client
    application_headers = True
    redelivers = True
    counts_redeliveries = True

    def __init__(self, rabbitmq: RabbitBroker) -> None:
        self.rabbitmq = rabbitmq
        self.capture = TelemetryCapture()
        self.instrumentor = AioPikaInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.connection: AbstractRobustConnection | None = None
        self.channel: AbstractChannel | None = None
        self.consuming = False
        self.setting_up = asyncio.Lock()
        self.sent = 0
        self.handled = 0

    async def __aenter__(self) -> RabbitHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.connection = await aio_pika.connect_robust(self.rabbitmq.url)
        self.channel = await self.connection.channel()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.connection is not None:
            await self.connection.close()
        self.instrumentor.uninstrument()
        self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert not self.consuming, "subscribe before the first message"
        self.handlers[event_type] = handler

    async def _consuming(self) -> None:
        async with self.setting_up:  # concurrent publishes wait until the queues exist
            if self.consuming:
                return
            assert self.channel is not None
            for name, handler in self.handlers.items():
                queue = await self.channel.declare_queue(name, exclusive=True)
                await queue.consume(self._handler(handler))
            self.consuming = True

    def _handler(self, handler: Handler) -> Any:
        async def on_message(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(Exception):  # recorded on the process span; requeued
                async with message.process(requeue=True):
                    event = current_event()
                    assert event is not None
                    payload = json.loads(message.body) if message.body else None
                    result = handler(event, payload)
                    if asyncio.iscoroutine(result):
                        await result
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
        await self._consuming()
        assert self.channel is not None
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            await self.channel.default_exchange.publish(
                aio_pika.Message(json.dumps(payload).encode(), headers=dict(headers or {})), routing_key=event_type
            )
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self._consuming()
        assert self.channel is not None
        raw_publish = aio_pika.Exchange.publish.__otel_eda_original__  # type: ignore[attr-defined]
        # AMQP tables carry text as str and binary as a byte array
        table = {k: bytearray(v) if isinstance(v, bytes) else v for k, v in headers.items()}
        self.sent += 1
        await raw_publish(
            self.channel.default_exchange,
            aio_pika.Message(json.dumps(payload).encode(), headers=table),
            routing_key=event_type,
        )

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.handled < self.sent:
            assert time.monotonic() < deadline, f"{self.handled} of {self.sent} messages handled"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the last ack's settling, after the handler returned
        self.capture.tracer_provider.force_flush()


class TestAioPika(TransportContract):
    @pytest.fixture(autouse=True)
    def _broker(self, rabbitmq: RabbitBroker) -> None:
        self.rabbitmq = rabbitmq

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with RabbitHarness(self.rabbitmq) as h:
            yield h
