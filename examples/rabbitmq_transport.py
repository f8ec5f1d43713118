"""The order-flow demo over a real RabbitMQ: ``order_flow.py --transport rabbitmq``.

:class:`RabbitTransport` (registered in ``demo_transports.TRANSPORTS``) starts a RabbitMQ node of
the demo's own with ``scripts/rabbitmq`` on free ports of 127.0.0.1 when the launcher builds it,
declares a topic exchange ``order-flow`` and one queue per (service, subscribed event type)
bound to it by the event type, and stops the node when the launcher exits. In each service, the
bus's outlets publish the events it publishes to the exchange with the event type as the routing
key (the bus's PRODUCER span and the event identity travel in the AMQP headers, the bus's own
string headers), and :meth:`RabbitTransport.receive` consumes the service's queues, handing
every message to the bus, which runs the handlers with their retries and dead letters exactly as
over the queues, then acknowledges it. The exchange fans each message out to every subscribing
service's queue, so a message is published once per event, not once per subscriber. aio-pika is
imported only when this transport is used.

The node, the topology, the outlets and turning a message into the bus's ``WireMessage`` are the
same for every AMQP client: ``pika_transport.PikaTransport`` (``--transport pika``) is this class
with pika's blocking client in place of aio-pika's (:meth:`RabbitTransport.declare`,
:meth:`~RabbitTransport.publisher`, :meth:`~RabbitTransport.receive`,
:meth:`~RabbitTransport.first_inbound`).
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
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Final, Protocol

from order_services import SUBSCRIPTIONS

from otel_eda import EventBus
from otel_eda.transports.bus import BusFull, Outlet, WireMessage

__all__ = ["EXCHANGE", "Publisher", "RabbitTransport", "deliver", "queue_name", "subscribed_queues", "wire_message"]

_log = logging.getLogger("order_flow")
RABBITMQ_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "rabbitmq"
#: Seconds the transport waits for the node to start (``RABBITMQ_READY_TIMEOUT_S`` of scripts/rabbitmq).
START_TIMEOUT_S: Final = 180
EXCHANGE: Final = "order-flow"


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


def _env(ports: list[int]) -> dict[str, str]:
    names = ("RABBITMQ_PORT", "RABBITMQ_DIST_PORT", "RABBITMQ_EPMD_PORT", "RABBITMQ_CTL_PORT")
    return {**os.environ, **{name: str(port) for name, port in zip(names, ports, strict=True)}}


def start_rabbitmq(directory: str, ports: list[int]) -> str:
    """Start a RabbitMQ node in ``directory`` on ``ports`` (``scripts/rabbitmq start``); its URL."""
    started = subprocess.run(
        [str(RABBITMQ_SCRIPT), "start", directory],
        env={**_env(ports), "RABBITMQ_READY_TIMEOUT_S": str(START_TIMEOUT_S)},
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S * 2 + 60,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"scripts/rabbitmq start failed:\n{started.stdout}{started.stderr}")
    print(started.stdout.strip(), flush=True)
    return f"amqp://guest:guest@127.0.0.1:{ports[0]}/"


def stop_rabbitmq(directory: str, ports: list[int]) -> None:
    """Stop the node of ``directory`` and throw its data away."""
    subprocess.run(
        [str(RABBITMQ_SCRIPT), "stop", directory], env=_env(ports), capture_output=True, timeout=120, check=False
    )
    shutil.rmtree(directory, ignore_errors=True)


def queue_name(service: str, event_type: str) -> str:
    return f"{service}.{event_type}"


def subscribed_queues() -> list[tuple[str, str]]:
    """``(queue, event type)`` of every subscription: the queues to declare and bind."""
    return [(queue_name(service, t), t) for service, event_types in SUBSCRIPTIONS.items() for t in event_types]


def wire_message(routing_key: str, headers: Any, body: bytes) -> WireMessage:
    """What the bus delivers for an AMQP message (the bus's own headers are strings)."""
    strings = {k: v for k, v in (headers or {}).items() if isinstance(v, str)}
    return WireMessage(routing_key, strings, json.loads(body), time.time_ns())


async def deliver(bus: EventBus, message: WireMessage) -> None:
    """Hand ``message`` to the bus (which runs its handlers with their retries); a full queue is logged."""
    try:
        await bus.deliver(message)
    except BusFull:
        _log.warning("a %s message was dropped: queue full", message.destination)


async def _declare(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        for name, event_type in subscribed_queues():
            queue = await channel.declare_queue(name, durable=True)
            await queue.bind(exchange, event_type)


class Publisher(Protocol):
    """A service's publisher: sends a message to the exchange, remembers the last one sent."""

    last_sent: WireMessage | None

    async def send(self, message: WireMessage) -> None: ...

    async def stop(self) -> None: ...


class _Publisher:
    """The service's one aio-pika channel, opened on first use; remembers the last message it sent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: Any = None
        self.exchange: Any = None
        self.last_sent: WireMessage | None = None

    async def send(self, message: WireMessage) -> None:
        import aio_pika

        if self.exchange is None:
            self.connection = await aio_pika.connect_robust(self.url)
            channel = await self.connection.channel()
            self.exchange = await channel.get_exchange(EXCHANGE)
        body = json.dumps(message.payload).encode()
        await self.exchange.publish(
            aio_pika.Message(body, headers=dict(message.headers), content_type="application/json"),
            routing_key=message.destination,
        )
        self.last_sent = message

    async def stop(self) -> None:
        if self.connection is not None:
            await self.connection.close()


class _ExchangeOutlet:
    """The outlet of one (event type, subscriber): the bus calls each subscriber's outlet with
    the same message, and the first call publishes it to the exchange."""

    def __init__(self, publisher: Publisher, subscriber: str) -> None:
        self._publisher = publisher
        self.name = subscriber

    async def send(self, message: WireMessage) -> bool:
        if message is not self._publisher.last_sent:
            await self._publisher.send(message)
        return True


class RabbitTransport:
    """``--transport rabbitmq``: the demo's services over a real RabbitMQ (see the module docstring)."""

    name = "rabbitmq"

    def __init__(self, services: list[str], ctx: BaseContext) -> None:
        self._directory = tempfile.mkdtemp(prefix="order-flow-rabbitmq-")
        self._ports = _free_ports(4)
        atexit.register(stop_rabbitmq, self._directory, self._ports)  # the launcher's exit stops the node
        self.url = start_rabbitmq(self._directory, self._ports)
        self.declare()
        self._stops = {service: ctx.Event() for service in services}
        self._publisher: Publisher | None = None  # per service process, made there

    def declare(self) -> None:
        """Declare the exchange and the services' queues (in the launcher)."""
        asyncio.run(_declare(self.url))

    def publisher(self) -> Publisher:
        """A new publisher (one per service process)."""
        return _Publisher(self.url)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_publisher"] = None
        return state

    def _shared_publisher(self) -> Publisher:
        if self._publisher is None:
            self._publisher = self.publisher()
        return self._publisher

    def outlet(self, event_type: str, subscriber: str) -> Outlet:
        return _ExchangeOutlet(self._shared_publisher(), subscriber)

    async def receive(self, service: str, bus: EventBus) -> None:
        import aio_pika

        stopped = asyncio.create_task(asyncio.to_thread(self._stops[service].wait))
        connection = await aio_pika.connect_robust(self.url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=10)
            for event_type in SUBSCRIPTIONS.get(service, ()):
                queue = await channel.get_queue(queue_name(service, event_type))
                await queue.consume(lambda message, bus=bus: self._deliver(message, bus))
            await stopped
        finally:
            await connection.close()
            await self._shared_publisher().stop()

    @staticmethod
    async def _deliver(message: Any, bus: EventBus) -> None:
        await deliver(bus, wire_message(message.routing_key, message.headers, message.body))
        with contextlib.suppress(Exception):  # the channel is gone: the broker redelivers it
            await message.ack()

    async def first_inbound(self, service: str) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queues = [await channel.get_queue(queue_name(service, t)) for t in SUBSCRIPTIONS.get(service, ())]
            while True:
                for queue in queues:
                    message = await queue.get(fail=False)
                    if message is not None:
                        await message.nack(requeue=True)  # left for the service's consumer
                        return
                await asyncio.sleep(0.05)

    def stop(self, service: str) -> None:
        self._stops[service].set()
