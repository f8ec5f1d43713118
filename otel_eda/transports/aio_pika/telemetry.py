"""What otel-eda writes for aio-pika clients: one object per instrumentation.

:class:`RabbitTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only), the dead-letter counter, the window that records a
dead-lettered event once, and the queue depth gauges.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Final

from opentelemetry import metrics, trace

from otel_eda import semconv
from otel_eda.flows.records import Recorder
from otel_eda.messaging import Binding, Messaging, TraceMode
from otel_eda.transports.aio_pika.depth import QueueDepth
from otel_eda.version import VERSION

__all__ = ["DEAD_LETTER_WINDOW", "SCOPE", "RabbitTelemetry"]

#: Instrumentation scope of otel-eda's aio-pika spans and metrics.
SCOPE: Final = "otel_eda.aio_pika"
#: Dead-lettered (event id, x-death count) pairs remembered per process, so that a message
#: redelivered from the dead-letter queue is not recorded as dead-lettered twice.
DEAD_LETTER_WINDOW: Final = 10_000


class RabbitTelemetry:
    """The telemetry of one aio-pika instrumentation (see the module docstring)."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        mode: TraceMode | None = None,
        depth_refresh_s: float | None = None,
    ) -> None:
        # a publish waits for the broker's confirmation (with publisher confirms): the messaging
        # API's send duration covers it
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_RABBITMQ,
            scope=SCOPE,
            mode=mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            binding=Binding.AMQP,
        )
        meter = metrics.get_meter(SCOPE + ".broker", VERSION, meter_provider)
        self.dead_letters = meter.create_counter(
            semconv.METRIC_BROKER_DEAD_LETTERS,
            unit="{message}",
            description="Messages the broker dead-lettered, read from a dead-letter queue",
        )
        refresh = {} if depth_refresh_s is None else {"refresh_s": depth_refresh_s}
        self.depth = QueueDepth(meter_provider, **refresh)
        self._dead_lettered: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        self._attribute_sets: dict[tuple[str, str], Mapping[str, str]] = {}

    def close(self) -> None:
        self.depth.close()

    def first_dead_letter(self, event_id: str, count: int, queue: str) -> bool:
        """Whether this (event, x-death count, queue) is seen for the first time in the window."""
        key = (event_id, count, queue)
        seen = self._dead_lettered
        if key in seen:
            seen.move_to_end(key)
            return False
        seen[key] = None
        if len(seen) > DEAD_LETTER_WINDOW:
            seen.popitem(last=False)
        return True

    def dead_letter_attributes(self, queue: str, reason: str) -> Mapping[str, str]:
        key = (queue, reason)
        attrs = self._attribute_sets.get(key)
        if attrs is None:
            attrs = {
                semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_RABBITMQ,
                semconv.MESSAGING_DESTINATION_NAME: queue,
                semconv.EDA_DEAD_LETTER_REASON: reason,
            }
            if len(self._attribute_sets) < 4096:
                self._attribute_sets[key] = attrs
        return attrs
