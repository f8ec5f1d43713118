"""Event identity: what an event is and how it travels. Imports only the OpenTelemetry API.

* :mod:`~otel_eda.identity.event`: the immutable :class:`EventContext` (event id,
  correlation id, causation id, type, creation time, business key, metadata) and where it
  lives in an OpenTelemetry ``Context``;
* :mod:`~otel_eda.identity.ids`: UUIDv7 event ids;
* :mod:`~otel_eda.identity.validation`: the checks every incoming value passes;
* :mod:`~otel_eda.identity.propagation`: the ``eda`` ``TextMapPropagator``.
"""

from otel_eda.identity.event import (
    BAGGAGE_CAUSATION_ID,
    BAGGAGE_CORRELATION_ID,
    EventContext,
    FlowIds,
    current_event,
    flow_ids,
    incoming_event,
    with_event,
)

__all__ = [
    "BAGGAGE_CAUSATION_ID",
    "BAGGAGE_CORRELATION_ID",
    "EventContext",
    "FlowIds",
    "current_event",
    "flow_ids",
    "incoming_event",
    "with_event",
]
