"""The current event's ids for ``structlog``: a processor.

>>> import structlog  # doctest: +SKIP
>>> from otel_eda.logs.structured import add_event_ids
>>> structlog.configure(processors=[add_event_ids, structlog.processors.JSONRenderer()])  # doctest: +SKIP

While an event is current, :func:`add_event_ids` adds the fields of
:mod:`otel_eda.logs.correlation` (``eda_event_id``, ``eda_correlation_id``,
``eda_causation_id``, ``eda_event_type``, ``eda_business_key``) and, while a span is
current, ``otelTraceID``/``otelSpanID``; a key the event dict already
has is kept. With nothing current it adds nothing. structlog itself is not imported.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from otel_eda.logs import correlation

__all__ = ["add_event_ids"]

_read_context = correlation._context_reader()
_SPAN_FIELDS = frozenset((correlation.TRACE_ID, correlation.SPAN_ID))


def add_event_ids(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: the current event's and span's ids (see the module)."""
    context = _read_context()
    if not context:
        return event_dict
    fields = correlation.current_fields(context)
    has_span = fields[correlation.TRACE_ID] != "0"
    for key, value in fields.items():
        if key in event_dict:
            continue
        if key in _SPAN_FIELDS:
            if has_span:
                event_dict[key] = value
        elif value != "":
            event_dict[key] = value
    return event_dict
