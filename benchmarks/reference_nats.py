"""The fixed hand-written reference of issue 11, on nats-py: event tracing over JetStream by hand.

The same telemetry as ``reference_queue.py`` (the hot-path benchmark's reference), written by
a careful engineer with the OpenTelemetry API only around the nats-py calls: a PRODUCER span
``send {destination}`` around ``js.publish`` and a CONSUMER span ``process {destination}``
around the handling of a fetched message that is the producer span's child AND links to it,
the trace context and one baggage entry (the correlation id) carried in the NATS headers by
the tracecontext + baggage propagators (inject on publish, extract on consume), the messaging
semantic-convention attributes, and two duration histograms with the semantic conventions'
advisory buckets: ``messaging.client.operation.duration`` (the publish, until the PubAck) and
``messaging.process.duration`` (the handler).

Its content is fixed, not otel-eda's: this file is pinned by its SHA-256 in
``tests/test_benchmark_nats_smoke.py``. Do not change it to meet a goal; a deliberate change
of the reference updates the hash in the same commit and says why.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

from opentelemetry import baggage, metrics, propagate, trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import Link, SpanKind

SCOPE: Final = "reference.nats"
CORRELATION_KEY: Final = "correlation.id"
MESSAGE_ID_HEADER: Final = "message-id"
# the messaging semantic conventions' advisory buckets for duration histograms (seconds)
DURATION_BUCKETS: Final = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]

Handler = Callable[[Any], Awaitable[None]]


class ReferenceNats:
    """One destination (a subject) and one consumer, traced by hand."""

    def __init__(self, *, destination: str, group: str) -> None:
        self.destination = destination
        self.group = group
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
            "messaging.system": "nats",
            "messaging.destination.name": destination,
            "messaging.operation.name": "send",
        }
        self._process_metric_attributes = {
            "messaging.system": "nats",
            "messaging.destination.name": destination,
            "messaging.operation.name": "process",
            "messaging.consumer.group.name": group,
        }

    # -- producer ---------------------------------------------------------------------------
    async def publish(self, js: Any, payload: bytes) -> Any:
        started = time.perf_counter()
        message_id = str(uuid.uuid4())
        token = attach(baggage.set_baggage(CORRELATION_KEY, message_id))  # a new flow: its own id
        try:
            with self._tracer.start_as_current_span(
                f"send {self.destination}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.name": "send",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": self.destination,
                    "messaging.message.id": message_id,
                },
            ):
                headers = {MESSAGE_ID_HEADER: message_id}
                propagate.inject(headers)
                ack = await js.publish(self.destination, payload, headers=headers)
                self._send_duration.record(time.perf_counter() - started, self._send_metric_attributes)
                return ack
        finally:
            detach(token)

    # -- consumer ---------------------------------------------------------------------------
    async def process(self, msg: Any, handler: Handler) -> None:
        headers = msg.headers or {}
        ctx = propagate.extract(headers)
        producer = trace.get_current_span(ctx).get_span_context()
        token = attach(ctx)  # the handler sees the producer's baggage
        try:
            with self._tracer.start_as_current_span(
                f"process {self.destination}",
                kind=SpanKind.CONSUMER,
                links=[Link(producer)] if producer.is_valid else None,
                attributes={
                    "messaging.system": "nats",
                    "messaging.operation.name": "process",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": self.destination,
                    "messaging.consumer.group.name": self.group,
                    "messaging.message.id": headers.get(MESSAGE_ID_HEADER, ""),
                },
            ):
                started = time.perf_counter()
                try:
                    await handler(msg)
                except Exception as exc:
                    attributes = {**self._process_metric_attributes, "error.type": type(exc).__qualname__}
                    self._process_duration.record(time.perf_counter() - started, attributes)
                    raise
                self._process_duration.record(time.perf_counter() - started, self._process_metric_attributes)
        finally:
            detach(token)
