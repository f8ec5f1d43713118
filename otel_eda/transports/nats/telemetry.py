"""What otel-eda writes for nats-py clients: one object per instrumentation.

:class:`NatsTelemetry` holds the :class:`~otel_eda.messaging.Messaging` of the
instrumentation (spans, metrics and lifecycle records of publishing and handling events,
through the public messaging API only; ``messaging.system=nats``, CloudEvents NATS binding
``ce-``) and the JetStream consumers' pending gauges.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from opentelemetry import metrics, trace

from otel_eda import semconv
from otel_eda.flows.records import Recorder
from otel_eda.messaging import Binding, Messaging, TraceMode
from otel_eda.transports.nats.lag import ConsumerPending

__all__ = ["SCOPE", "NatsTelemetry"]

#: Instrumentation scope of otel-eda's nats-py spans and metrics.
SCOPE: Final = "otel_eda.nats"


class NatsTelemetry:
    """The telemetry of one nats-py instrumentation (see the module docstring).

    ``msg_id`` (default ``OTEL_EDA_NATS_MSG_ID``, false): set JetStream's ``Nats-Msg-Id``
    header to the event id on every JetStream publish that has none of the application's, so
    that the stream de-duplicates a republished event (within the stream's duplicate window).
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        recorders: Sequence[Recorder] = (),
        mode: TraceMode | None = None,
        msg_id: bool | None = None,
        pending_refresh_s: float | None = None,
    ) -> None:
        self.messaging = Messaging(
            semconv.MESSAGING_SYSTEM_NATS,
            scope=SCOPE,
            mode=mode,
            recorders=recorders,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            binding=Binding.NATS,
        )
        #: default: ``OTEL_EDA_NATS_MSG_ID``
        self.msg_id = self.messaging.settings.nats_msg_id if msg_id is None else bool(msg_id)
        self.pending = (
            ConsumerPending(meter_provider)
            if pending_refresh_s is None
            else ConsumerPending(meter_provider, refresh_s=pending_refresh_s)
        )

    def close(self) -> None:
        self.pending.close()
