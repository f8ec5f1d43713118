"""The transport contract suite (otel_eda.testing.contract) on nats-py with otel-eda's instrumentation,
against the session's real nats-server: core NATS subscriptions (no redelivery) and JetStream push
consumers (which redeliver).

JetStream refuses to store a message whose headers exceed 64 KiB (the publisher gets "header size
exceeds maximum allowed of 64k"): there the hostile 100 KB value is cut to 60 KB, still far over
the 8 KiB otel-eda reads; core NATS carries the contract's hostile set unchanged.

Each JetStream harness makes a memory stream of its own whose subjects are the contract's event types
(``order_placed``, ...: the producer span is ``send order_placed``) and deletes it when it ends;
one durable push consumer per event type, with an ``AckWait`` of 3 s so that a failed handling
(no ack) comes back as attempt 2 (``msg.metadata.num_delivered``). Raw messages are written
on the wire (``HPUB``) with their header bytes exactly as given, past nats-py's own encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from unittest import mock

import nats
import pytest
from brokers import NatsServer, unique_name
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, StorageType, StreamConfig
from nats.protocol.command import hpub_cmd
from opentelemetry.trace import SpanKind

from otel_eda.identity import EventContext, current_event
from otel_eda.testing import TelemetryCapture, contract
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.nats.instrumentor import NATSInstrumentor, outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DRAIN_TIMEOUT_S = 60.0


def raw_headers(headers: Mapping[str, Any]) -> bytes:
    """A NATS header block with each value's bytes as given (``str`` as UTF-8)."""
    block = bytearray(b"NATS/1.0\r\n")
    for name, value in headers.items():
        block += name.encode() + b": " + (value if isinstance(value, bytes) else str(value).encode()) + b"\r\n"
    return bytes(block + b"\r\n")


class NatsHarness:
    """JetStream: one push consumer per event type."""

    system = "nats"
    #: publish passes the application's own headers to the instrumented client
    application_headers = True
    redelivers = True
    counts_redeliveries = True

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.capture = TelemetryCapture()
        self.instrumentor = NATSInstrumentor()
        self.handlers: dict[str, Handler] = {}
        self.nc: Client | None = None
        self.stream = unique_name("CONTRACT").replace("-", "_")
        self.sent = 0
        self.completed = 0
        self.attempts = 0  # every handling, failed ones included
        self.consuming = asyncio.Lock()
        self.streamed = False

    async def __aenter__(self) -> NatsHarness:
        self.instrumentor.instrument(
            tracer_provider=self.capture.tracer_provider, meter_provider=self.capture.meter_provider
        )
        self.nc = await nats.connect(self.server.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.nc is not None:
                with contextlib.suppress(Exception):
                    await self.nc.jetstream().delete_stream(self.stream)
                await self.nc.close()
        finally:
            self.instrumentor.uninstrument()
            self.capture.shutdown()

    def subscribe(self, event_type: str, handler: Handler) -> None:
        assert self.completed == self.sent == 0, "subscribe before the first message"
        self.handlers[event_type] = handler

    async def _consuming(self) -> None:
        async with self.consuming:  # concurrent publishes: one stream, one consumer per subject
            if not self.streamed:
                await self._start_consuming()
                self.streamed = True

    async def _start_consuming(self) -> None:
        assert self.nc is not None
        js = self.nc.jetstream()
        subjects = sorted(self.handlers)
        await js.add_stream(StreamConfig(name=self.stream, subjects=subjects, storage=StorageType.MEMORY))
        for subject in subjects:

            async def handle(msg: Msg, handler: Handler = self.handlers[subject]) -> None:
                self.attempts += 1
                event = current_event()
                assert event is not None
                result = handler(event, json.loads(msg.data) if msg.data else None)
                if asyncio.iscoroutine(result):
                    await result
                self.completed += 1  # a failing handling is not counted: JetStream redelivers it

            await js.subscribe(subject, durable=unique_name("contract"), cb=handle, config=ConsumerConfig(ack_wait=3.0))

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EventContext:
        await self._consuming()
        assert self.nc is not None
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            await self.nc.jetstream().publish(event_type, json.dumps(payload).encode(), headers=dict(headers or {}))
        return out.events[0]

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self._consuming()
        assert self.nc is not None
        self.sent += 1
        await self.nc._send_command(
            hpub_cmd(event_type, "", raw_headers(headers), json.dumps(payload).encode())
        )  # not OpenTelemetry: nats-py's
        await self.nc.flush()

    async def drain(self) -> None:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.completed < self.sent:
            assert time.monotonic() < deadline, f"{self.completed} of {self.sent} messages handled"
            await asyncio.sleep(0.02)
        # a handling's span ends after its handler returned (and, in JetStream, acked)
        while len(self.capture.spans(kind=SpanKind.CONSUMER)) < self.attempts:
            assert time.monotonic() < deadline, "a handling's span did not end"
            await asyncio.sleep(0.02)
        self.capture.tracer_provider.force_flush()


class CoreNatsHarness(NatsHarness):
    """Core NATS: one subscription (with a callback) per event type; nothing is redelivered."""

    redelivers = False
    counts_redeliveries = False

    async def _start_consuming(self) -> None:
        assert self.nc is not None
        for subject in sorted(self.handlers):

            async def handle(msg: Msg, handler: Handler = self.handlers[subject]) -> None:
                self.attempts += 1
                try:
                    event = current_event()
                    assert event is not None
                    result = handler(event, json.loads(msg.data) if msg.data else None)
                    if asyncio.iscoroutine(result):
                        await result
                finally:
                    self.completed += 1

            await self.nc.subscribe(subject, cb=handle)

    async def publish(
        self,
        event_type: str,
        payload: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> EventContext:
        await self._consuming()
        assert self.nc is not None
        self.sent += 1
        with outgoing_event(metadata=metadata) as out:
            await self.nc.publish(event_type, json.dumps(payload).encode(), headers=dict(headers or {}))
        return out.events[0]


#: the contract's hostile headers, with values JetStream stores (headers under 64 KiB)
STORABLE_HOSTILE_HEADERS = tuple(
    {name: value[:60_000] if len(value) > 60_000 else value for name, value in headers.items()}
    for headers in contract.HOSTILE_HEADERS
)


class TestNatsJetStream(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NatsServer) -> None:
        self.server = nats_server

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with NatsHarness(self.server) as h:
            yield h

    async def test_hostile_carriers_never_raise_and_are_counted(self) -> None:
        with mock.patch.object(contract, "HOSTILE_HEADERS", STORABLE_HOSTILE_HEADERS):
            await super().test_hostile_carriers_never_raise_and_are_counted()


class TestCoreNats(TransportContract):
    @pytest.fixture(autouse=True)
    def _server(self, nats_server: NatsServer) -> None:
        self.server = nats_server

    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        async with CoreNatsHarness(self.server) as h:
            yield h
