"""``EventSpanProcessor``: stamps the flow's event identity on every span.

Any span started while an event is being published or handled — by otel-eda, by another
instrumentation (HTTP client, database driver) or by hand — gets ``eda.correlation_id``
and ``eda.causation_id`` from its parent context, read through
:func:`otel_eda.identity.flow_ids` (so only validated ids are stamped). A value already
set on the span is never overwritten: ``eda.*`` describes the span's own event.

Zipkin drops span links, so for a span whose link points at a message's creation context
(a link carrying ``messaging.message.id``) the processor also records the linked span's
trace and span id as ``eda.producer.trace_id`` and ``eda.producer.span_id``.

Every method guards itself: an internal error is logged and counted
(``eda.internal.errors``), never raised into the application's ``start_span``.
"""

from __future__ import annotations

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import format_span_id, format_trace_id

from otel_eda import semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.identity import flow_ids

__all__ = ["EventSpanProcessor"]

_CORRELATION = semconv.EDA_CORRELATION_ID
_CAUSATION = semconv.EDA_CAUSATION_ID
_MESSAGE_ID = semconv.MESSAGING_MESSAGE_ID


class EventSpanProcessor(SpanProcessor):
    """Adds ``eda.correlation_id`` / ``eda.causation_id`` to every span of a flow."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            ids = flow_ids(parent_context)
            links = span._links  # the live list; ``span.links`` copies it
            if ids is None and not links:
                return
            attributes = span._attributes
            if ids is not None:
                if attributes is None or _CORRELATION not in attributes:
                    span.set_attribute(_CORRELATION, ids.correlation_id)
                if ids.causation_id is not None and (attributes is None or _CAUSATION not in attributes):
                    span.set_attribute(_CAUSATION, ids.causation_id)
            if links and (attributes is None or semconv.EDA_PRODUCER_SPAN_ID not in attributes):
                for link in links:
                    if link.attributes and _MESSAGE_ID in link.attributes:
                        span.set_attribute(semconv.EDA_PRODUCER_TRACE_ID, format_trace_id(link.context.trace_id))
                        span.set_attribute(semconv.EDA_PRODUCER_SPAN_ID, format_span_id(link.context.span_id))
                        break
        except Exception:
            internal_error("span processor", "stamping a span")

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
