"""What otel-eda writes for aio-pika clients: one object per instrumentation.

:class:`AioPikaTelemetry` is the shared :class:`~otel_eda.transports.rabbitmq.RabbitTelemetry`
(messaging, dead letters) plus the queue depth gauges refreshed on the application's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from opentelemetry import metrics, trace

from otel_eda.flows.records import Recorder
from otel_eda.messaging import TraceMode
from otel_eda.transports.aio_pika.depth import QueueDepth
from otel_eda.transports.rabbitmq import DEAD_LETTER_WINDOW, RabbitTelemetry

__all__ = ["DEAD_LETTER_WINDOW", "SCOPE", "AioPikaTelemetry", "RabbitTelemetry"]

#: Instrumentation scope of otel-eda's aio-pika spans and metrics.
SCOPE: Final = "otel_eda.aio_pika"


class AioPikaTelemetry(RabbitTelemetry):
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
        super().__init__(
            SCOPE, tracer_provider=tracer_provider, meter_provider=meter_provider, recorders=recorders, mode=mode
        )
        refresh = {} if depth_refresh_s is None else {"refresh_s": depth_refresh_s}
        self.depth = QueueDepth(meter_provider, **refresh)

    def close(self) -> None:
        self.depth.close()
