"""The order-flow demo over a real NATS with JetStream: ``order_flow.py --transport nats``.

:class:`NatsTransport` (registered in ``demo_transports.TRANSPORTS``) starts a nats-server of
the demo's own with ``scripts/nats`` on free ports of 127.0.0.1 when the launcher builds it,
creates one memory stream whose subjects are the event types and one durable pull consumer
per service (named after it, filtered on the event types it subscribes to), and stops the
server when the launcher exits. In each service, the bus's outlets publish the events it
publishes to the subject of their type with ``js.publish`` (the bus's PRODUCER span and the
event identity travel in the NATS headers, the bus's own string headers), and
:meth:`NatsTransport.receive` fetches the service's consumer, hands every message to the bus,
which runs the handlers with their retries and dead letters exactly as over the queues, and
acks it. The stream fans each message out to every subscribing service's consumer, so a
message is published once per event, not once per subscriber. nats-py is imported only when
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
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Final

from order_services import SUBSCRIPTIONS

from otel_eda import EventBus
from otel_eda.transports.bus import BusFull, Outlet, WireMessage

__all__ = ["NatsTransport"]

_log = logging.getLogger("order_flow")
NATS_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "nats"
STREAM: Final = "ORDER_FLOW"
#: Seconds the transport waits for the server to start (a first run on a machine builds it).
START_TIMEOUT_S: Final = 1800


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


def start_nats(directory: str) -> str:
    """Start a nats-server in ``directory`` on free ports (``scripts/nats start``); its URL."""
    port, monitor = _free_ports(2)
    env = {**os.environ, "NATS_PORT": str(port), "NATS_MONITOR_PORT": str(monitor)}
    started = subprocess.run(
        [str(NATS_SCRIPT), "start", directory],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if started.returncode != 0:
        raise RuntimeError(f"scripts/nats start failed:\n{started.stdout}{started.stderr}")
    print(started.stdout.strip(), flush=True)
    return f"nats://127.0.0.1:{port}"


def stop_nats(directory: str) -> None:
    """Stop the nats-server of ``directory`` and throw its store away."""
    subprocess.run([str(NATS_SCRIPT), "stop", directory], capture_output=True, timeout=60, check=False)
    shutil.rmtree(directory, ignore_errors=True)


async def _create_stream_and_consumers(url: str) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        subjects = sorted({event_type for types in SUBSCRIPTIONS.values() for event_type in types})
        await js.add_stream(StreamConfig(name=STREAM, subjects=subjects, storage=StorageType.MEMORY))
        for service, types in SUBSCRIPTIONS.items():
            config = ConsumerConfig(
                durable_name=service, filter_subjects=list(types), ack_policy=AckPolicy.EXPLICIT, ack_wait=60
            )
            await js.add_consumer(STREAM, config)
    finally:
        await nc.close()


class _Publisher:
    """The service's one connection, made on first use; remembers the last message it published."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.nc: Any = None
        self.last_sent: WireMessage | None = None

    async def send(self, message: WireMessage) -> None:
        if self.nc is None:
            import nats

            self.nc = await nats.connect(self.url)
        await self.nc.jetstream().publish(
            message.destination, json.dumps(message.payload).encode(), headers=dict(message.headers)
        )
        self.last_sent = message

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()


class _SubjectOutlet:
    """The outlet of one (event type, subscriber): the bus calls each subscriber's outlet with
    the same message, and the first call publishes it to the event type's subject."""

    def __init__(self, publisher: _Publisher, subscriber: str) -> None:
        self._publisher = publisher
        self.name = subscriber

    async def send(self, message: WireMessage) -> bool:
        if message is not self._publisher.last_sent:
            await self._publisher.send(message)
        return True


class NatsTransport:
    """``--transport nats``: the demo's services over a real NATS with JetStream (see the module docstring)."""

    name = "nats"

    def __init__(self, services: list[str], ctx: BaseContext) -> None:
        self._directory = tempfile.mkdtemp(prefix="order-flow-nats-")
        atexit.register(stop_nats, self._directory)  # the launcher's exit stops the server
        self.url = start_nats(self._directory)
        asyncio.run(_create_stream_and_consumers(self.url))
        self._stops = {service: ctx.Event() for service in services}
        self._publisher: _Publisher | None = None  # per service process, made there

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_publisher"] = None
        return state

    def _shared_publisher(self) -> _Publisher:
        if self._publisher is None:
            self._publisher = _Publisher(self.url)
        return self._publisher

    def outlet(self, event_type: str, subscriber: str) -> Outlet:
        return _SubjectOutlet(self._shared_publisher(), subscriber)

    async def _subscription(self, service: str) -> tuple[Any, Any]:
        import nats

        nc = await nats.connect(self.url)
        return nc, await nc.jetstream().pull_subscribe_bind(durable=service, stream=STREAM)

    async def receive(self, service: str, bus: EventBus) -> None:
        stopped = asyncio.create_task(asyncio.to_thread(self._stops[service].wait))
        nc = consuming = None
        try:
            if SUBSCRIPTIONS.get(service):
                nc, psub = await self._subscription(service)
                consuming = asyncio.create_task(self._consume(psub, bus))
            await asyncio.wait([t for t in (stopped, consuming) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if consuming is not None:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
            if nc is not None:
                await nc.close()
            await self._shared_publisher().stop()

    @staticmethod
    async def _consume(psub: Any, bus: EventBus) -> None:
        import nats

        while True:
            try:
                msgs = await psub.fetch(10, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                try:
                    await bus.deliver(
                        WireMessage(msg.subject, dict(msg.headers or {}), json.loads(msg.data), time.time_ns())
                    )
                except BusFull:
                    _log.warning("a %s message was dropped: queue full", msg.subject)
                await msg.ack()

    async def first_inbound(self, service: str) -> None:
        import nats

        nc, psub = await self._subscription(service)
        try:
            while True:
                with contextlib.suppress(nats.errors.TimeoutError):
                    for msg in await psub.fetch(1, timeout=1):
                        await msg.nak()  # left for the service's own loop
                    return
        finally:
            await nc.close()

    def stop(self, service: str) -> None:
        self._stops[service].set()
