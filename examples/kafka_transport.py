"""The order-flow demo's Kafka transport (``order_flow.py --transport kafka``).

Each service's bus forwards the events it publishes to Kafka, one topic per event type
(:class:`KafkaOutlet`: the bus's PRODUCER span and the event identity travel in the
record's headers, as the bus's own string headers); each service consumes the topics of the
event types it subscribes to, in a consumer group named after it, and hands every record
to its bus (:func:`consume`), which runs the handlers with their retries and dead letters
exactly as over the in-process queues. Kafka fans each event out to every subscribing
service's group, so one outlet per event type is enough.

The launcher starts a Kafka of its own with ``scripts/kafka`` on free ports of 127.0.0.1
(:func:`kafka_broker`), creates the topics, and stops it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

from otel_eda.transports.bus import BusFull, EventBus, WireMessage

__all__ = ["KafkaOutlet", "consume", "consumer_for", "create_topics", "kafka_broker", "producer_for"]

_log = logging.getLogger("order_flow")
KAFKA_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "kafka"


class KafkaOutlet:
    """Forwards the bus's messages of one event type to the Kafka topic of that name."""

    def __init__(self, producer: AIOKafkaProducer, name: str) -> None:
        self._producer = producer
        self.name = name

    async def send(self, message: WireMessage) -> bool:
        headers = [(key, value.encode()) for key, value in message.headers.items()]
        await self._producer.send_and_wait(message.destination, json.dumps(message.payload).encode(), headers=headers)
        return True


async def consume(consumer: AIOKafkaConsumer, bus: EventBus) -> None:
    """Hand every record of ``consumer`` to ``bus`` (until cancelled), then commit it."""
    async for record in consumer:
        headers: dict[str, str] = {}
        for key, value in record.headers:
            with contextlib.suppress(UnicodeDecodeError):
                headers[key] = value.decode()  # the last value of a key wins
        message = WireMessage(record.topic, headers, json.loads(record.value), time.time_ns())
        try:
            await bus.deliver(message)
        except BusFull:
            _log.warning("a %s record was dropped: queue full", record.topic)
        await consumer.commit()


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


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """A Kafka of the demo's own (``scripts/kafka``) on free ports; yields its bootstrap address."""
    port, controller = _free_ports(2)
    with tempfile.TemporaryDirectory(prefix="order-flow-kafka-") as directory:
        env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_CONTROLLER_PORT": str(controller)}
        started = subprocess.run(
            [str(KAFKA_SCRIPT), "start", directory], env=env, capture_output=True, text=True, check=False
        )
        try:
            if started.returncode != 0:
                raise RuntimeError(f"scripts/kafka start failed:\n{started.stdout}{started.stderr}")
            print(started.stdout.strip(), flush=True)
            yield f"127.0.0.1:{port}"
        finally:
            subprocess.run([str(KAFKA_SCRIPT), "stop", directory], capture_output=True, check=False)


async def _create_topics(bootstrap: str, topics: Iterable[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in topics])
    finally:
        await admin.close()


def create_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """One topic (one partition) per event type, before any service subscribes."""
    asyncio.run(_create_topics(bootstrap, sorted(set(topics))))


def consumer_for(bootstrap: str, service: str, topics: Iterable[str]) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=service,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


def producer_for(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap)
