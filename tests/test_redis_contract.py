"""The transport contract suite (otel_eda.testing.contract) on Redis Streams with otel-eda's
instrumentation (the asyncio client), against the session's real redis-server.

One stream per event type (the contract names them: ``order_placed``, ...); each harness reads
in a consumer group of its own created at the streams' current end (``$``), so the entries of
earlier tests are not read again. The handlers run inside ``processing(entry)``, as the README
recommends, and an entry is acknowledged when its handler returns. An entry whose handler
failed stays pending and is claimed again with ``XAUTOCLAIM``: a redelivery, whose attempt
number comes from ``XPENDING``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import redis.asyncio
from brokers import RedisServer, unique_name

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor, outgoing_event, processing
from otel_eda.transports.redis.telemetry import RESERVED_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DRAIN_TIMEOUT_S = 60.0


class RedisHarness:
    system = "redis"
    redelivers = True
    counts_redeliveries = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.capture = TelemetryCapture()
        self.instrumentor = RedisStreamsInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.group = unique_name("contract")
        self.client: redis.asyncio.Redis | None = None
        self.loop_task: asyncio.Task[None] | None = None
        self.started = False
        self.start_lock = asyncio.Lock()
        self.sent = 0
        self.handled = 0
        self.failed = 0

    async def __aenter__(self) -> RedisHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.client = redis.asyncio.Redis(**self.server.client_kwargs)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.loop_task
        if self.client is not None:
            await self.client.aclose()
        self.instrumentor.uninstrument()
        self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert not self.started, "subscribe before the first message"
        self.handlers[event_type] = handler

    async def _consuming(self) -> None:
        """Create the groups (at the streams' current end) once, before anything is sent."""
        async with self.start_lock:  # concurrent publishes wait until the groups exist
            if self.started:
                return
            assert self.client is not None
            for stream in self.handlers:
                await self.client.xgroup_create(stream, self.group, id="$", mkstream=True)
            self.loop_task = asyncio.create_task(self._loop())
            self.started = True

    async def _handle(self, stream: str, entry: Any) -> None:
        assert self.client is not None
        try:
            with processing(entry):
                event = current_event()
                assert event is not None
                raw = entry[1].get(b"payload")
                result = self.handlers[stream](event, json.loads(raw) if raw else None)
                if asyncio.iscoroutine(result):
                    await result
        except Exception:  # recorded on the process span; the entry stays pending
            self.failed += 1
            return
        await self.client.xack(stream, self.group, entry[0])
        self.handled += 1

    async def _loop(self) -> None:
        assert self.client is not None
        streams = dict.fromkeys(self.handlers, ">")
        while True:
            response = await self.client.xreadgroup(self.group, "worker", streams, count=50, block=50)
            for stream, entries in response:
                for entry in entries:
                    await self._handle(stream.decode(), entry)
            if self.failed:  # claim what failed: a redelivery
                for stream in self.handlers:
                    _, claimed, _ = await self.client.xautoclaim(stream, self.group, "worker", min_idle_time=0)
                    for entry in claimed:
                        self.failed -= 1
                        await self._handle(stream, entry)

    async def publish(
        self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None
    ) -> EventContext:
        await self._consuming()
        assert self.client is not None
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            await self.client.xadd(event_type, {"payload": json.dumps(payload)})
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self._consuming()
        assert self.client is not None
        raw_xadd = redis.asyncio.Redis.xadd.__otel_eda_original__[0]  # type: ignore[attr-defined]
        fields: dict[Any, Any] = {RESERVED_PREFIX + k: v for k, v in headers.items()}
        fields["payload"] = json.dumps(payload)
        self.sent += 1
        await raw_xadd(self.client, event_type, fields)

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.handled < self.sent:
            if time.monotonic() > deadline:
                assert self.client is not None
                pending = {s: await self.client.xpending(s, self.group) for s in self.handlers}
                loop = self.loop_task.exception() if self.loop_task and self.loop_task.done() else "running"
                handled = f"{self.handled} of {self.sent} entries handled, {self.failed} failed"
                raise AssertionError(f"{handled}; pending {pending}; loop {loop}")
            await asyncio.sleep(0.02)
        self.capture.tracer_provider.force_flush()


class TestRedisStreams(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, redis_server: RedisServer) -> None:
        self.server = redis_server

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with RedisHarness(self.server) as h:
            yield h
