"""The order-flow demo over a real RabbitMQ with pika: ``order_flow.py --transport pika``.

:class:`PikaTransport` is ``rabbitmq_transport.RabbitTransport`` (the same node of the demo's own,
``order-flow`` topic exchange, one queue per (service, subscribed event type), outlets publishing
once per event with the event type as routing key, the bus's headers in the AMQP headers) with
pika's ``BlockingConnection`` in place of aio-pika. A ``BlockingConnection`` belongs to one thread,
so each service uses two, as a pika application next to asyncio code would:

* publishing: one thread (a single-worker executor) owns the publishing connection, with publisher
  confirms; the bus's outlet awaits it;
* consuming: a thread with its own connection runs ``basic_consume`` callbacks, each handing its
  message to the bus on the service's event loop (``asyncio.run_coroutine_threadsafe``) and
  acknowledging it once the bus has it.

pika is imported only when this transport is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any

from order_services import SUBSCRIPTIONS
from rabbitmq_transport import (
    EXCHANGE,
    Publisher,
    RabbitTransport,
    deliver,
    queue_name,
    subscribed_queues,
    wire_message,
)

from otel_eda import EventBus
from otel_eda.transports.bus import WireMessage

__all__ = ["PikaTransport"]

#: Seconds a consumer thread waits for broker traffic before it looks at its stop flag again.
_POLL_S = 0.1


def _connect(url: str) -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(url))


class _PikaPublisher:
    """The service's publishing connection, owned by one thread, opened on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_sent: WireMessage | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pika-publisher")
        self._connection: Any = None
        self._channel: Any = None

    def _publish(self, message: WireMessage) -> None:
        import pika

        if self._channel is None:
            self._connection = _connect(self.url)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        self._channel.basic_publish(
            EXCHANGE,
            message.destination,
            json.dumps(message.payload).encode(),
            pika.BasicProperties(headers=dict(message.headers), content_type="application/json"),
        )

    async def send(self, message: WireMessage) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._publish, message)
        self.last_sent = message

    def _close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            self._connection.close()

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close)
        self._executor.shutdown()


class PikaTransport(RabbitTransport):
    """``--transport pika``: the demo's services over a real RabbitMQ with pika (see the module docstring)."""

    name = "pika"

    def declare(self) -> None:
        connection = _connect(self.url)
        try:
            channel = connection.channel()
            channel.exchange_declare(EXCHANGE, "topic", durable=True)
            for name, event_type in subscribed_queues():
                channel.queue_declare(name, durable=True)
                channel.queue_bind(name, EXCHANGE, event_type)
        finally:
            connection.close()

    def publisher(self) -> Publisher:
        return _PikaPublisher(self.url)

    async def receive(self, service: str, bus: EventBus) -> None:
        try:
            await asyncio.to_thread(self._consume, service, bus, asyncio.get_running_loop())
        finally:
            await self._shared_publisher().stop()

    def _consume(self, service: str, bus: EventBus, loop: asyncio.AbstractEventLoop) -> None:
        """The consumer thread: its own connection, until the launcher stops the service."""
        connection = _connect(self.url)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=10)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                message = wire_message(method.routing_key, properties.headers, body)
                asyncio.run_coroutine_threadsafe(deliver(bus, message), loop).result()
                ch.basic_ack(method.delivery_tag)

            for event_type in SUBSCRIPTIONS.get(service, ()):
                channel.basic_consume(queue_name(service, event_type), on_message)
            stop = self._stops[service]
            while not stop.is_set():
                connection.process_data_events(time_limit=_POLL_S)
        finally:
            if connection.is_open:
                connection.close()

    async def first_inbound(self, service: str) -> None:
        await asyncio.to_thread(self._first_inbound, service)

    def _first_inbound(self, service: str) -> None:
        connection = _connect(self.url)
        try:
            channel = connection.channel()
            queues = [queue_name(service, t) for t in SUBSCRIPTIONS.get(service, ())]
            while True:
                for queue in queues:
                    method, _, _ = channel.basic_get(queue)
                    if method is not None:
                        channel.basic_nack(method.delivery_tag, requeue=True)  # left for the service's consumer
                        return
                connection.sleep(0.05)
        finally:
            connection.close()
