"""The order-flow demo over a real Kafka with confluent-kafka: ``order_flow.py --transport confluent-kafka``.

The same broker, topics and message flow as :mod:`kafka_transport` (which it extends: a Kafka
of the demo's own, one topic per event type, a consumer group per service, each record produced
once per event), with librdkafka's Python client instead of aiokafka. confluent-kafka's calls
block, so the service's asyncio loop runs them in a worker thread (``asyncio.to_thread``):
``produce`` + ``flush`` per message, ``poll(0.5)`` in the receive loop. confluent-kafka is
imported only when this transport is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from kafka_transport import KafkaTransport
from order_services import SUBSCRIPTIONS

from otel_eda import EventBus
from otel_eda.transports.bus import BusFull, WireMessage

__all__ = ["ConfluentKafkaTransport"]

_log = logging.getLogger("order_flow")
#: Seconds a produce waits for the broker's acknowledgement.
FLUSH_TIMEOUT_S = 30.0


class _Producer:
    """The service's one confluent-kafka producer, made on first use; remembers the last message it sent."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.client: Any = None
        self.last_sent: WireMessage | None = None

    def _send(self, message: WireMessage) -> None:
        if self.client is None:
            from confluent_kafka import Producer

            self.client = Producer({"bootstrap.servers": self.bootstrap})
        headers = [(key, value.encode()) for key, value in message.headers.items()]
        self.client.produce(message.destination, json.dumps(message.payload).encode(), headers=headers)
        if self.client.flush(FLUSH_TIMEOUT_S) != 0:
            raise RuntimeError(f"a {message.destination} record was not acknowledged within {FLUSH_TIMEOUT_S} s")

    async def send(self, message: WireMessage) -> None:
        await asyncio.to_thread(self._send, message)
        self.last_sent = message

    async def stop(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(self.client.flush, FLUSH_TIMEOUT_S)


class ConfluentKafkaTransport(KafkaTransport):
    """``--transport confluent-kafka``: the demo's services over a real Kafka with confluent-kafka."""

    name = "confluent-kafka"

    def _create_topics(self, topics: list[str]) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics(
            [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics]
        ).values():
            future.result(60)

    def _shared_producer(self) -> Any:
        if self._producer is None:
            self._producer = _Producer(self.bootstrap)  # type: ignore[assignment]
        return self._producer

    def _consumer(self, service: str) -> Any:
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": service,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe(list(SUBSCRIPTIONS[service]))
        return consumer

    async def receive(self, service: str, bus: EventBus) -> None:
        consumer = self._consumer(service) if SUBSCRIPTIONS.get(service) else None
        stopped = asyncio.create_task(asyncio.to_thread(self._stops[service].wait))
        consuming = None
        try:
            if consumer is not None:
                consuming = asyncio.create_task(self._consume(consumer, bus))
            await asyncio.wait([t for t in (stopped, consuming) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if consuming is not None:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
            if consumer is not None:
                await asyncio.to_thread(consumer.close)
            await self._shared_producer().stop()

    @staticmethod
    async def _consume(consumer: Any, bus: EventBus) -> None:  # type: ignore[override]
        while True:
            msg = await asyncio.to_thread(consumer.poll, 0.5)
            if msg is None or msg.error() is not None:
                continue
            headers: dict[str, str] = {}
            for key, value in msg.headers() or []:
                if value is not None:
                    with contextlib.suppress(UnicodeDecodeError):
                        headers[key] = value.decode()  # of a key present twice, the last value counts
            try:
                await bus.deliver(WireMessage(msg.topic(), headers, json.loads(msg.value()), time.time_ns()))
            except BusFull:
                _log.warning("a %s record was dropped: queue full", msg.topic())
            await asyncio.to_thread(consumer.commit, msg, asynchronous=False)

    async def first_inbound(self, service: str) -> None:
        consumer = self._consumer(service)
        try:
            while True:
                msg = await asyncio.to_thread(consumer.poll, 0.5)
                if msg is not None and msg.error() is None:
                    return
        finally:
            await asyncio.to_thread(consumer.close)
