"""The fixed hand-written reference of issue 11: event tracing on an ``asyncio.Queue``.

What a careful engineer writes by hand, with the OpenTelemetry API only, to trace events
through an in-process queue: a PRODUCER span ``send orders`` and a CONSUMER span
``process orders`` that is the producer span's child AND links to it, the trace context
and one baggage entry (the correlation id) carried in the message headers by the
tracecontext + baggage propagators (inject on publish, extract on consume), the messaging
semantic-convention attributes, and two duration histograms with the semantic
conventions' advisory buckets: ``messaging.client.operation.duration`` (the send) and
``messaging.process.duration`` (the handler). With ``telemetry=False`` the same class is a
bare ``asyncio.Queue``: put a message, get it, call the handler.

Its content is fixed, not otel-eda's: this file is pinned by its SHA-256 in
``tests/test_benchmark_smoke.py``. Do not change it to meet a goal; a deliberate change
of the reference updates the hash in the same commit and says why.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import Link, SpanKind

SCOPE: Final = "reference.queue"
CORRELATION_KEY: Final = "correlation.id"
MESSAGE_ID_HEADER: Final = "message-id"
# the messaging semantic conventions' advisory buckets for duration histograms (seconds)
DURATION_BUCKETS: Final = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]


@dataclasses.dataclass(slots=True)
class Message:
    headers: dict[str, str]
    payload: Any


Handler = Callable[[Any], Awaitable[None]]


class ReferenceQueue:
    """One destination, one consumer group, one worker task draining an ``asyncio.Queue``."""

    def __init__(
        self,
        handler: Handler,
        *,
        telemetry: bool,
        destination: str = "orders",
        group: str = "billing",
        maxsize: int = 0,
    ) -> None:
        self.handler = handler
        self.telemetry = telemetry
        self.destination = destination
        self.group = group
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize)
        self.task: asyncio.Task[None] | None = None
        tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
        self._tracer = tracer
        self._send_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Duration of messaging operation initiated by a producer or consumer client.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._send_metric_attributes = {
            "messaging.system": "reference",
            "messaging.destination.name": destination,
            "messaging.operation.name": "send",
        }
        self._process_metric_attributes = {
            "messaging.system": "reference",
            "messaging.destination.name": destination,
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group,
        }

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def close(self) -> None:
        await self.queue.join()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def join(self) -> None:
        await self.queue.join()

    # -- producer ---------------------------------------------------------------------------
    async def publish(self, payload: Any) -> None:
        if not self.telemetry:
            await self.queue.put(Message({}, payload))
            return
        started = time.perf_counter()
        message_id = str(uuid.uuid4())
        token = attach(baggage.set_baggage(CORRELATION_KEY, message_id))  # a new flow: its own id
        try:
            with self._tracer.start_as_current_span(
                f"send {self.destination}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "reference",
                    "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self.destination,
                    "messaging.message.id": message_id,
                },
            ):
                headers = {MESSAGE_ID_HEADER: message_id}
                propagate.inject(headers)
                await self.queue.put(Message(headers, payload))
                self._send_duration.record(time.perf_counter() - started, self._send_metric_attributes)
        finally:
            detach(token)

    # -- consumer ---------------------------------------------------------------------------
    async def _worker(self) -> None:
        while True:
            message = await self.queue.get()
            try:
                if self.telemetry:
                    await self._process(message)
                else:
                    await self.handler(message.payload)
            except Exception:
                pass  # the span recorded it; a worker outlives a failing handler
            finally:
                self.queue.task_done()

    async def _process(self, message: Message) -> None:
        ctx = propagate.extract(message.headers)
        producer = trace.get_current_span(ctx).get_span_context()
        token = attach(ctx)  # the handler sees the producer's baggage
        try:
            with self._tracer.start_as_current_span(
                f"process {self.destination}",
                kind=SpanKind.CONSUMER,
                links=[Link(producer)] if producer.is_valid else None,
                attributes={
                    "messaging.system": "reference",
                    "messaging.operation.name": "process",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self.destination,
                    "messaging.consumer.group.name": self.group,
                    "messaging.message.id": message.headers.get(MESSAGE_ID_HEADER, ""),
                },
            ):
                started = time.perf_counter()
                try:
                    await self.handler(message.payload)
                except Exception as exc:
                    attributes = {**self._process_metric_attributes, "error.type": type(exc).__qualname__}
                    self._process_duration.record(time.perf_counter() - started, attributes)
                    raise
                self._process_duration.record(time.perf_counter() - started, self._process_metric_attributes)
        finally:
            detach(token)
