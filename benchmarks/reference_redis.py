"""The fixed hand-written reference of issue 11 (``reference_queue.py``) on Redis Streams.

The same telemetry as ``reference_queue.ReferenceQueue``, written by hand with the
OpenTelemetry API only, on the same client the otel-eda instrumentation is measured with
(``redis.asyncio``, ``decode_responses=True``): a PRODUCER span ``send orders`` around
``XADD``, the trace context and one baggage entry (the correlation id) carried in the entry's
fields by the tracecontext + baggage propagators with a ``message-id`` field, a CONSUMER span
``process orders`` per entry read with ``XREADGROUP`` that is the producer span's child AND
links to it, the messaging semantic-convention attributes, and the two duration histograms
(``messaging.client.operation.duration`` of the send, ``messaging.process.duration`` of the
handler) with the conventions' advisory buckets. The handler's entry is acknowledged with
``XACK`` after the handler returns. With ``telemetry=False`` it makes the same Redis calls
and nothing else.

Its content is fixed, not otel-eda's: this file is pinned by its SHA-256 in
``tests/test_benchmark_redis_smoke.py``. Do not change it to meet a goal.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import Link, SpanKind

SCOPE: Final = "reference.redis"
CORRELATION_KEY: Final = "correlation.id"
MESSAGE_ID_FIELD: Final = "message-id"
DURATION_BUCKETS: Final = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]

Handler = Callable[[dict[str, str]], Awaitable[None]]


class ReferenceRedisStreams:
    """One stream, one consumer group, one consumer."""

    def __init__(
        self,
        client: Any,
        handler: Handler,
        *,
        telemetry: bool,
        stream: str = "orders",
        group: str = "billing",
        consumer: str = "worker",
    ) -> None:
        self.client = client
        self.handler = handler
        self.telemetry = telemetry
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
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
            "messaging.system": "redis",
            "messaging.destination.name": stream,
            "messaging.operation.name": "send",
        }
        self._process_metric_attributes = {
            "messaging.system": "redis",
            "messaging.destination.name": stream,
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group,
        }

    # -- producer ---------------------------------------------------------------------------
    async def publish(self, fields: dict[str, str]) -> None:
        if not self.telemetry:
            await self.client.xadd(self.stream, fields)
            return
        started = time.perf_counter()
        message_id = str(uuid.uuid4())
        token = attach(baggage.set_baggage(CORRELATION_KEY, message_id))  # a new flow: its own id
        try:
            with self._tracer.start_as_current_span(
                f"send {self.stream}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "redis",
                    "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self.stream,
                    "messaging.message.id": message_id,
                },
            ):
                headers = {MESSAGE_ID_FIELD: message_id}
                propagate.inject(headers)
                await self.client.xadd(self.stream, {**fields, **headers})
                self._send_duration.record(time.perf_counter() - started, self._send_metric_attributes)
        finally:
            detach(token)

    # -- consumer ---------------------------------------------------------------------------
    async def consume(self, count: int) -> int:
        """Read up to ``count`` new entries, handle and acknowledge each; how many were read."""
        response = await self.client.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=count)
        read = 0
        for _, entries in response:
            for entry_id, fields in entries:
                read += 1
                try:
                    if self.telemetry:
                        await self._process(fields)
                    else:
                        await self.handler(fields)
                except Exception:
                    continue  # the span recorded it; the entry stays pending
                await self.client.xack(self.stream, self.group, entry_id)
        return read

    async def _process(self, fields: dict[str, str]) -> None:
        ctx = propagate.extract(fields)
        producer = trace.get_current_span(ctx).get_span_context()
        token = attach(ctx)  # the handler sees the producer's baggage
        try:
            with self._tracer.start_as_current_span(
                f"process {self.stream}",
                kind=SpanKind.CONSUMER,
                links=[Link(producer)] if producer.is_valid else None,
                attributes={
                    "messaging.system": "redis",
                    "messaging.operation.name": "process",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self.stream,
                    "messaging.consumer.group.name": self.group,
                    "messaging.message.id": fields.get(MESSAGE_ID_FIELD, ""),
                },
            ):
                started = time.perf_counter()
                try:
                    await self.handler(fields)
                except Exception as exc:
                    attributes = {**self._process_metric_attributes, "error.type": type(exc).__qualname__}
                    self._process_duration.record(time.perf_counter() - started, attributes)
                    raise
                self._process_duration.record(time.perf_counter() - started, self._process_metric_attributes)
        finally:
            detach(token)
