"""The transport contract suite (otel_eda.testing.contract) on otel-eda's own transports:
the embedded bus, the multiprocessing transport, and the webhook example of the README."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import sys
import urllib.request
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from opentelemetry.trace import SpanKind

from otel_eda import Delivery, RetryPolicy
from otel_eda.identity import EventContext
from otel_eda.messaging import Binding
from otel_eda.testing import TelemetryCapture
from otel_eda.testing.contract import Handler, Harness, TransportContract
from otel_eda.transports.bus import WireMessage
from otel_eda.transports.interprocess import QueueOutlet, pump

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from webhook import WebhookReceiver, WebhookSender

RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.001)


def _on_bus(handler: Handler) -> Any:
    async def deliver(delivery: Delivery) -> None:
        result = handler(delivery.event, delivery.payload)
        if asyncio.iscoroutine(result):
            await result

    return deliver


class BusHarness:
    system = "otel_eda"
    redelivers = True
    counts_redeliveries = False  # the bus retries in process

    def __init__(self) -> None:
        self.capture = TelemetryCapture()
        self.bus = self.capture.bus(retry=RETRY)

    async def publish(
        self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None
    ) -> EventContext:
        return await self.bus.publish(event_type, payload, metadata=metadata)

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self.bus.subscribe(event_type, _on_bus(handler), subscriber="contract")

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await self.bus.deliver(WireMessage(event_type, dict(headers), payload))

    async def drain(self) -> None:
        await self.bus.join()


class TestEmbeddedBus(TransportContract):
    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        h = BusHarness()
        async with h.bus:
            yield h
        h.capture.shutdown()


class InterprocessHarness:
    """A sending bus forwards over a real multiprocessing queue (pickled) to a receiving bus."""

    system = "otel_eda"
    redelivers = True
    counts_redeliveries = False

    def __init__(self) -> None:
        self.capture = TelemetryCapture()
        self.sender = self.capture.bus(service="sender", retry=RETRY)
        self.receiver = self.capture.bus(service="receiver", retry=RETRY)
        self.inbox: Any = multiprocessing.get_context("spawn").Queue()
        self.outlet = QueueOutlet(self.inbox, "receiver")
        self.sent = 0

    async def publish(
        self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None
    ) -> EventContext:
        self.sent += 1
        return await self.sender.publish(event_type, payload, metadata=metadata)

    def subscribe(self, event_type: str, handler: Handler) -> None:
        self.sender.add_outlet(event_type, self.outlet)
        self.receiver.subscribe(event_type, _on_bus(handler), subscriber="contract")

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        self.sent += 1
        await asyncio.to_thread(self.inbox.put, WireMessage(event_type, dict(headers), payload))

    async def drain(self) -> None:
        for _ in range(3):  # a handler's own publishes go round once more
            await self.sender.join()
            while not self.inbox.empty():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # the pump's get
            await self.receiver.join()


class TestMultiprocessingTransport(TransportContract):
    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        h = InterprocessHarness()
        async with h.sender, h.receiver:
            pumping = asyncio.create_task(pump(h.inbox, h.receiver, poll_s=0.01))
            yield h
            h.inbox.put(None)
            await pumping
        h.capture.shutdown()


class WebhookHarness:
    system = "webhook"
    redelivers = False
    counts_redeliveries = False

    def __init__(self) -> None:
        self.capture = TelemetryCapture()
        self.receiver = WebhookReceiver(self.capture.messaging("webhook", binding=Binding.HTTP))
        self.sender = WebhookSender(self.receiver.url, self.capture.messaging("webhook", binding=Binding.HTTP))

    async def publish(
        self, event_type: str, payload: Any, *, metadata: Mapping[str, str] | None = None
    ) -> EventContext:
        return await asyncio.to_thread(self.sender.publish, event_type, payload, metadata=metadata)

    def subscribe(self, event_type: str, handler: Handler) -> None:
        def run(event: EventContext, payload: Any) -> None:
            result = handler(event, payload)
            if asyncio.iscoroutine(result):
                asyncio.run(result)  # in this request's thread: the handled event stays current

        self.receiver.subscribe(event_type, run)

    async def send_raw(self, event_type: str, headers: Mapping[str, Any], payload: Any) -> None:
        await asyncio.to_thread(self.receiver.dispatch, event_type, headers, json.dumps(payload).encode())

    async def drain(self) -> None:
        return None  # a POST returns once its handler has


class TestWebhookExample(TransportContract):
    @contextlib.asynccontextmanager
    async def harness(self) -> AsyncIterator[Harness]:
        h = WebhookHarness()
        with h.receiver:
            yield h
        h.capture.shutdown()


def test_the_webhook_example_handles_a_cloudevent_with_only_ce_headers_and_a_traceparent() -> None:
    h = WebhookHarness()
    seen: list[EventContext] = []
    h.receiver.subscribe("com.example.order.placed", lambda event, payload: seen.append(event))
    headers = {
        "content-type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": "A234-1234-1234",
        "ce-type": "com.example.order.placed",
        "ce-source": "/go/orders",
        "ce-time": "2026-12-02T10:00:00.123456789Z",
        "ce-subject": "order-123",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    with h.receiver:
        request = urllib.request.Request(f"{h.receiver.url}/com.example.order.placed", b"{}", headers, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 204
    (event,) = seen
    assert (event.event_id, event.event_type, event.business_key) == (
        "A234-1234-1234",
        "com.example.order.placed",
        "order-123",
    )
    assert event.created_ns == 1796205600_123456789
    assert event.correlation_id == event.event_id and event.causation_id is None
    (consumer,) = h.capture.spans(kind=SpanKind.CONSUMER)
    assert consumer.parent is not None and f"{consumer.parent.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    h.capture.shutdown()
