"""The order-flow demo over Redis Streams: ``order_flow.py --transport redis``.

:class:`RedisTransport` (registered in ``demo_transports.TRANSPORTS``) starts a redis-server
of the demo's own with ``scripts/redis`` on a free port of 127.0.0.1 when the launcher builds
it, creates one stream per event type and, on it, one consumer group per subscribing service,
and stops the server when the launcher exits. In each service, the bus's outlets add the
events it publishes to the stream of their type (the bus's PRODUCER span and the event
identity travel as the entry's ``hdr:<name>`` fields, the bus's own string headers), and
:meth:`RedisTransport.receive` reads the streams of the event types the service subscribes
to with ``XREADGROUP`` in the service's group, hands every entry to the bus (which runs the
handlers with their retries and dead letters exactly as over the queues) and acknowledges
it. Each group gets every entry, so an entry is added once per event, not once per
subscriber. redis-py is imported only when this transport is used.
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

__all__ = ["RedisTransport"]

_log = logging.getLogger("order_flow")
REDIS_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "redis"
HEADER_PREFIX: Final = "hdr:"
PAYLOAD: Final = "payload"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: str) -> int:
    """Start a redis-server in ``directory`` on a free port (``scripts/redis start``); its port."""
    port = _free_port()
    for command in (["install"], ["start", directory]):
        done = subprocess.run(
            [str(REDIS_SCRIPT), *command],
            env={**os.environ, "REDIS_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"scripts/redis {command[0]} failed:\n{done.stdout}{done.stderr}")
    print(done.stdout.strip(), flush=True)
    return port


def stop_redis(directory: str) -> None:
    """Stop the redis-server of ``directory`` and throw its data away."""
    subprocess.run([str(REDIS_SCRIPT), "stop", directory], capture_output=True, timeout=60, check=False)
    shutil.rmtree(directory, ignore_errors=True)


def _create_groups(port: int) -> None:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for service, event_types in SUBSCRIPTIONS.items():
            for event_type in event_types:
                with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: made already
                    client.xgroup_create(event_type, service, id="0", mkstream=True)
    finally:
        client.close()


class _Producer:
    """The service's one client, made on first use; remembers the last message it added."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.client: Any = None
        self.last_sent: WireMessage | None = None

    async def send(self, message: WireMessage) -> None:
        if self.client is None:
            import redis.asyncio

            self.client = redis.asyncio.Redis(host="127.0.0.1", port=self.port)
        fields = {HEADER_PREFIX + key: value for key, value in message.headers.items()}
        fields[PAYLOAD] = json.dumps(message.payload)
        await self.client.xadd(message.destination, fields)
        self.last_sent = message

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class _StreamOutlet:
    """The outlet of one (event type, subscriber): the bus calls each subscriber's outlet with
    the same message, and the first call adds it to the event type's stream."""

    def __init__(self, producer: _Producer, subscriber: str) -> None:
        self._producer = producer
        self.name = subscriber

    async def send(self, message: WireMessage) -> bool:
        if message is not self._producer.last_sent:
            await self._producer.send(message)
        return True


def _wire_message(stream: bytes, fields: dict[bytes, bytes]) -> WireMessage:
    headers: dict[str, str] = {}
    for key, value in fields.items():
        name = key.decode("utf-8", "replace")
        if name.startswith(HEADER_PREFIX):
            with contextlib.suppress(UnicodeDecodeError):
                headers[name[len(HEADER_PREFIX) :]] = value.decode()
    return WireMessage(stream.decode(), headers, json.loads(fields.get(PAYLOAD.encode(), b"null")), time.time_ns())


class RedisTransport:
    """``--transport redis``: the demo's services over Redis Streams (see the module docstring)."""

    name = "redis"

    def __init__(self, services: list[str], ctx: BaseContext) -> None:
        self._directory = tempfile.mkdtemp(prefix="order-flow-redis-")
        atexit.register(stop_redis, self._directory)  # the launcher's exit stops the server
        self.port = start_redis(self._directory)
        _create_groups(self.port)
        self._stops = {service: ctx.Event() for service in services}
        self._producer: _Producer | None = None  # per service process, made there

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_producer"] = None
        return state

    def _shared_producer(self) -> _Producer:
        if self._producer is None:
            self._producer = _Producer(self.port)
        return self._producer

    def outlet(self, event_type: str, subscriber: str) -> Outlet:
        return _StreamOutlet(self._shared_producer(), subscriber)

    async def receive(self, service: str, bus: EventBus) -> None:
        stopped = asyncio.create_task(asyncio.to_thread(self._stops[service].wait))
        consuming = asyncio.create_task(self._consume(service, bus)) if SUBSCRIPTIONS.get(service) else None
        try:
            await asyncio.wait([t for t in (stopped, consuming) if t is not None], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if consuming is not None:
                consuming.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await consuming
            await self._shared_producer().stop()

    async def _consume(self, service: str, bus: EventBus) -> None:
        import redis.asyncio

        client = redis.asyncio.Redis(host="127.0.0.1", port=self.port)
        streams = dict.fromkeys(SUBSCRIPTIONS[service], ">")
        try:
            while True:
                response = await client.xreadgroup(service, service, streams, count=100, block=200)
                for stream, entries in response:
                    for entry_id, fields in entries:
                        try:
                            await bus.deliver(_wire_message(stream, fields))
                        except BusFull:
                            _log.warning("a %s entry was dropped: queue full", stream.decode())
                        await client.xack(stream, service, entry_id)
        finally:
            await client.aclose()

    async def first_inbound(self, service: str) -> None:
        import redis.asyncio

        client = redis.asyncio.Redis(host="127.0.0.1", port=self.port)
        try:  # XREAD outside the group: the entry stays for the service's own XREADGROUP
            while not await client.xread(dict.fromkeys(SUBSCRIPTIONS[service], "0"), count=1, block=1000):
                pass
        finally:
            await client.aclose()

    def stop(self, service: str) -> None:
        self._stops[service].set()
