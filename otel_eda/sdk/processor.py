"""``EventSpanProcessor``: stamps the flow's event identity on every span.

Any span started while an event is being published or handled — by otel-eda, by another
instrumentation (HTTP client, database driver) or by hand — gets ``eda.correlation_id``
and ``eda.causation_id`` from its parent context, read through
:func:`otel_eda.identity.flow_ids` (so only validated ids are stamped). A value already
set on the span is never overwritten: ``eda.*`` describes the span's own event.

Zipkin drops span links, so for a CONSUMER span whose link points at a message's creation
context (a link carrying ``messaging.message.id``) the processor also records the linked
span's trace and span id as ``eda.producer.trace_id`` and ``eda.producer.span_id`` (the
bus sets them itself on its own consumer spans; this covers other instrumentations').

With ``baggage_keys`` (``OTEL_EDA_BAGGAGE_KEYS``), the listed W3C baggage entries of the
parent context are also copied onto every span, under their own names (a tenant id, say);
an attribute already set is kept. Only listed keys are copied: baggage crosses trust
boundaries and may carry what should not be stored.

Every method guards itself: an internal error is logged and counted
(``eda.internal.errors``), never raised into the application's ``start_span``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_eda import otel_internals, semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.identity import flow_ids

__all__ = ["EventSpanProcessor"]

_CORRELATION = semconv.EDA_CORRELATION_ID
_CAUSATION = semconv.EDA_CAUSATION_ID
_MESSAGE_ID = semconv.MESSAGING_MESSAGE_ID
_PRODUCER_TRACE = semconv.EDA_PRODUCER_TRACE_ID
_PRODUCER_SPAN = semconv.EDA_PRODUCER_SPAN_ID


class EventSpanProcessor(SpanProcessor):
    """Adds ``eda.correlation_id`` / ``eda.causation_id`` to every span of a flow.

    >>> EventSpanProcessor(baggage_keys=["tenant.id"]).baggage_keys
    ('tenant.id',)
    """

    def __init__(self, *, baggage_keys: Iterable[str] = ()) -> None:
        self.baggage_keys = tuple(baggage_keys)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            ids = flow_ids(parent_context)
            consumer_links = span.kind is SpanKind.CONSUMER and span.links
            if ids is None and not consumer_links and not self.baggage_keys:
                return
            # the live attribute dict: BoundedAttributes' own ``in`` raises and catches a KeyError
            present = otel_internals.live_attributes(span)
            stamp = self._baggage(parent_context, present) if self.baggage_keys else {}
            if ids is not None:
                if _CORRELATION not in present:
                    stamp[_CORRELATION] = ids.correlation_id
                if ids.causation_id is not None and _CAUSATION not in present:
                    stamp[_CAUSATION] = ids.causation_id
            if consumer_links and _PRODUCER_SPAN not in present:
                for link in consumer_links:
                    if link.attributes and _MESSAGE_ID in link.attributes:
                        stamp[_PRODUCER_TRACE] = f"{link.context.trace_id:032x}"
                        stamp[_PRODUCER_SPAN] = f"{link.context.span_id:016x}"
                        break
            if stamp:
                span.set_attributes(stamp)
        except Exception:
            internal_error("span processor", "stamping a span")

    def _baggage(self, parent_context: Context | None, present: Mapping[str, object]) -> dict[str, str]:
        """The listed baggage entries the span does not have yet (validated ids, stamped after, win)."""
        entries = baggage.get_all(parent_context)
        return {
            key: value for key in self.baggage_keys if isinstance(value := entries.get(key), str) and key not in present
        }

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
