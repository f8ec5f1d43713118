"""How the order-flow demo's services reach each other: one class per ``--transport``.

A transport gives the launcher what each service's bus needs: an outlet per (event type,
subscribing service) that carries the bus's messages out of the process, and a loop that
delivers what arrives to the local bus until the launcher stops it. A broker integration
adds one class here (and one entry in :data:`TRANSPORTS`) instead of copying the demo.
"""

from __future__ import annotations

import asyncio
from multiprocessing.context import BaseContext
from typing import Any, Protocol

from confluent_kafka_transport import ConfluentKafkaTransport
from kafka_transport import KafkaTransport
from nats_transport import NatsTransport
from pika_transport import PikaTransport
from rabbitmq_transport import RabbitTransport
from redis_transport import RedisTransport

from otel_eda import EventBus
from otel_eda.transports.bus import Outlet
from otel_eda.transports.interprocess import QueueOutlet, pump


class DemoTransport(Protocol):
    """Picklable: built by the launcher, handed to each spawned service."""

    name: str

    def outlet(self, event_type: str, subscriber: str) -> Outlet: ...

    async def receive(self, service: str, bus: EventBus) -> None:
        """Deliver ``service``'s inbound messages to ``bus`` until :meth:`stop`."""
        ...

    async def first_inbound(self, service: str) -> None:
        """Wait for ``service``'s first inbound message (the demo's ``--crash``)."""
        ...

    def stop(self, service: str) -> None:
        """Called by the launcher once every flow has settled."""
        ...


class EmbeddedTransport:
    """``multiprocessing`` queues, one inbox per service (:mod:`otel_eda.transports.interprocess`)."""

    name = "embedded"

    def __init__(self, services: list[str], ctx: BaseContext) -> None:
        self.inboxes: dict[str, Any] = {service: ctx.Queue() for service in services}

    def outlet(self, event_type: str, subscriber: str) -> Outlet:
        return QueueOutlet(self.inboxes[subscriber], subscriber)

    async def receive(self, service: str, bus: EventBus) -> None:
        await pump(self.inboxes[service], bus)

    async def first_inbound(self, service: str) -> None:
        await asyncio.to_thread(self.inboxes[service].get)

    def stop(self, service: str) -> None:
        self.inboxes[service].put(None)


#: ``--transport`` name -> the class the launcher builds with (service names, spawn context).
TRANSPORTS: dict[str, type[Any]] = {
    "embedded": EmbeddedTransport,
    "kafka": KafkaTransport,
    "confluent-kafka": ConfluentKafkaTransport,
    "nats": NatsTransport,
    "pika": PikaTransport,
    "rabbitmq": RabbitTransport,
    "redis": RedisTransport,
}
