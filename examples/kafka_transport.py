"""The order-flow demo over a real Kafka: ``order_flow.py --transport kafka``.

:class:`KafkaTransport` (registered in ``demo_transports.TRANSPORTS``) starts a Kafka of
the demo's own with ``scripts/kafka`` on free ports of 127.0.0.1 when the launcher builds
it, creates one topic per event type, and stops the broker when the launcher exits. In each
service, the bus's outlets produce the events it publishes to the topic of their type (the
bus's PRODUCER span and the event identity travel in the record's headers, the bus's own
string headers), and :meth:`KafkaTransport.receive` consumes the topics of the event types
the service subscribes to, in a consumer group named after the service, handing every
record to the bus, which runs the handlers with their retries and dead letters exactly as
over the queues. Kafka fans each record out to every subscribing service's group, so a
record is produced once per event, not once per subscriber. aiokafka is imported only when
this transport is used.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Final

from order_services import SUBSCRIPTIONS

from otel_eda import EventBus
from otel_eda.transports.bus import BusFull, Outlet, WireMessage

__all__ = ["KafkaTransport"]

_log = logging.getLogger("order_flow")
KAFKA_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "kafka"
#: Seconds the transport waits for the broker to start (``KAFKA_READY_TIMEOUT_S`` of scripts/kafka).
START_TIMEOUT_S: Final = 180


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_kafka(directory: str) -> str:
    """Start a Kafka in ``directory`` on free ports (``scripts/kafka start``); its bootstrap address."""
    port, controller = _free_ports(2)
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)}
    started = subprocess.run(
        [str(KAFKA_SCRIPT), "start", directory],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S + 60,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"scripts/kafka start failed:\n{started.stdout}{started.stderr}")
    print(started.stdout.strip(), flush=True)
    return f"127.0.0.1:{port}"


def stop_kafka(directory: str) -> None:
    """Stop the Kafka of ``directory`` and throw its data away."""
    subprocess.run([str(KAFKA_SCRIPT), "stop", directory], capture_output=True, timeout=90, check=False)
    shutil.rmtree(directory, ignore_errors=True)


async def _create_topics(bootstrap: str, topics: Iterable[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
    from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics])
    finally:
        await admin.close()


class _Producer:
    """The service's one producer, started on first use; remembers the last message it sent."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.client: Any = None
        self.last_sent: WireMessage | None = None

    async def send(self, message: WireMessage) -> None:
        if self.client is None:
            from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

            self.client = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await self.client.start()
        headers = [(key, value.encode()) for key, value in message.headers.items()]
        await self.client.send_and_wait(message.destination, json.dumps(message.payload).encode(), headers=headers)
        self.last_sent = message

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.stop()


class _TopicOutlet:
    """The outlet of one (event type, subscriber): the bus calls each subscriber's outlet with
    the same message, and the first call produces it to the event type's topic."""

    def __init__(self, producer: _Producer, subscriber: str) -> None:
        self._producer = producer
        self.name = subscriber

    async def send(self, message: WireMessage) -> bool:
        if message is not self._producer.last_sent:
            await self._producer.send(message)
        return True


class KafkaTransport:
    """``--transport kafka``: the demo's services over a real Kafka (see the module docstring)."""

    name = "kafka"

    def __init__(self, services: list[str], ctx: BaseContext) -> None:
        self._directory = tempfile.mkdtemp(prefix="order-flow-kafka-")
        atexit.register(stop_kafka, self._directory)  # the launcher's exit stops the broker
        self.bootstrap = start_kafka(self._directory)
        topics = {event_type for types in SUBSCRIPTIONS.values() for event_type in types}
        self._create_topics(sorted(topics))
        self._stops = {service: ctx.Event() for service in services}
        self._producer: _Producer | None = None  # per service process, made there

    def _create_topics(self, topics: list[str]) -> None:
        asyncio.run(_create_topics(self.bootstrap, topics))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None
        return state

    def _shared_producer(self) -> _Producer:
        if self._producer is None:
            self._producer = _Producer(self.bootstrap)
        return self._producer

    def outlet(self, event_type: str, subscriber: str) -> Outlet:
        return _TopicOutlet(self._shared_producer(), subscriber)

    def _consumer(self, service: str) -> Any:
        from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

        return AIOKafkaConsumer(
            *SUBSCRIPTIONS[service],
            bootstrap_servers=self.bootstrap,
            group_id=service,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )

    async def receive(self, service: str, bus: EventBus) -> None:
        consumer = self._consumer(service) if SUBSCRIPTIONS.get(service) else None
        stopped = asyncio.create_task(asyncio.to_thread(self._stops[service].wait))
        consuming = None
        try:
            if consumer is not None:
                await consumer.start()
                consuming = asyncio.create_task(self._consume(consumer, bus))
            await asyncio.wait([t for t in (stopped, consuming) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if consuming is not None:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
            if consumer is not None:
                await consumer.stop()
            await self._shared_producer().stop()

    @staticmethod
    async def _consume(consumer: Any, bus: EventBus) -> None:
        async for record in consumer:
            headers: dict[str, str] = {}
            for key, value in record.headers:
                with contextlib.suppress(UnicodeDecodeError):
                    headers[key] = value.decode()  # of a key present twice, the last value counts
            try:
                await bus.deliver(WireMessage(record.topic, headers, json.loads(record.value), time.time_ns()))
            except BusFull:
                _log.warning("a %s record was dropped: queue full", record.topic)
            await consumer.commit()

    async def first_inbound(self, service: str) -> None:
        consumer = self._consumer(service)
        await consumer.start()
        try:
            await consumer.getone()
        finally:
            await consumer.stop()

    def stop(self, service: str) -> None:
        self._stops[service].set()
