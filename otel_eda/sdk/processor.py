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
an attribute already set is kept. Only listed keys are copied, and only values that pass
the event-type check (length, characters; others dropped and counted): baggage crosses
trust boundaries and may carry what should not be stored.

Every method guards itself: an internal error is logged and counted
(``eda.internal.errors``), never raised into the application's ``start_span``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import baggage
from opentelemetry.context import Context, get_current
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanKind

from otel_eda import otel_internals, semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.identity import EventContext, flow_ids
from otel_eda.identity.event import EVENT_KEY
from otel_eda.identity.validation import type_problem

__all__ = ["EventSpanProcessor"]

_CORRELATION = semconv.EDA_CORRELATION_ID
_CAUSATION = semconv.EDA_CAUSATION_ID
_MESSAGE_ID = semconv.MESSAGING_MESSAGE_ID
_PRODUCER_TRACE = semconv.EDA_PRODUCER_TRACE_ID
_PRODUCER_SPAN = semconv.EDA_PRODUCER_SPAN_ID
_CONSUMER_KIND = SpanKind.CONSUMER  # a module constant: on Python 3.11 SpanKind.X is a descriptor call


class EventSpanProcessor(SpanProcessor):
    """Adds ``eda.correlation_id`` / ``eda.causation_id`` to every span of a flow.

    >>> EventSpanProcessor(baggage_keys=["tenant.id"]).baggage_keys
    ('tenant.id',)
    """

    def __init__(self, *, baggage_keys: Iterable[str] = ()) -> None:
        self.baggage_keys = tuple(baggage_keys)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            correlation: str | None = None
            causation: str | None = None
            event = (parent_context if parent_context is not None else get_current()).get(EVENT_KEY)
            if type(event) is EventContext:  # the common case: a span inside an event's handling
                correlation, causation = event.correlation_id, event.causation_id
            elif (ids := flow_ids(parent_context)) is not None:
                correlation, causation = ids.correlation_id, ids.causation_id
            consumer_links = span.kind is _CONSUMER_KIND and otel_internals.span_links(span)
            if correlation is None and not consumer_links and not self.baggage_keys:
                return
            if not consumer_links and not self.baggage_keys and correlation is not None:
                # the common case again: two ids at most, straight into the starting span's dict
                live = otel_internals.start_attributes(span, 2)
                if live is not None:
                    if _CORRELATION not in live:
                        live[_CORRELATION] = correlation
                    if causation is not None and _CAUSATION not in live:
                        live[_CAUSATION] = causation
                    return
            # the live attribute dict: BoundedAttributes' own ``in`` raises and catches a KeyError
            present = otel_internals.live_attributes(span)
            stamp = self._baggage(parent_context, present) if self.baggage_keys else {}
            if correlation is not None:
                if _CORRELATION not in present:
                    stamp[_CORRELATION] = correlation
                if causation is not None and _CAUSATION not in present:
                    stamp[_CAUSATION] = causation
            if consumer_links and _PRODUCER_SPAN not in present:
                for link in consumer_links:
                    if link.attributes and _MESSAGE_ID in link.attributes:
                        stamp[_PRODUCER_TRACE] = f"{link.context.trace_id:032x}"
                        stamp[_PRODUCER_SPAN] = f"{link.context.span_id:016x}"
                        break
            if not stamp:
                return
            otel_internals.add_start_attributes(span, stamp)
        except Exception:
            internal_error("span processor", "stamping a span")

    def _baggage(self, parent_context: Context | None, present: Mapping[str, object]) -> dict[str, str]:
        """The listed baggage entries the span does not have yet (validated ids, stamped after, win).

        Each value is validated like an event type (at most 128 characters of
        ``[A-Za-z0-9._:/@-]``): baggage comes from upstream, and a value with CR/LF or
        kilobytes of text must not land on a span. An invalid one is dropped and counted in
        ``eda.propagation.invalid`` (``eda.field`` = the key).
        """
        entries = baggage.get_all(parent_context)
        stamp: dict[str, str] = {}
        for key in self.baggage_keys:
            value = entries.get(key)
            if value is None or key in present:
                continue
            reason = type_problem(value)
            if reason is None:
                stamp[key] = value  # type: ignore[assignment]  # type_problem: a str
            else:
                count_invalid(key, reason)
        return stamp

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
