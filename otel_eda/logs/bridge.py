"""``EventLogRecordProcessor``: the current event's ids on OpenTelemetry log records.

For the SDK's logging bridge (the ``LoggingHandler`` of ``opentelemetry-instrumentation-logging``
or of the SDK) and for records emitted through the logs API directly. It runs before the
export processors (``configure()`` puts it first) and, on every record:

* moves the ``logging`` record fields of :mod:`otel_eda.logs.correlation` and
  :mod:`otel_eda.logs.lifecycle` (``eda_correlation_id``, ``eda_stage``, ...), which the
  bridge copies verbatim, to their OpenTelemetry names: ``eda.correlation_id``,
  ``eda.causation_id``, ``eda.event_type``, ``eda.business_key``, ``messaging.message.id``
  (the event id), ``eda.stage``, ``messaging.consumer.group.name``,
  ``eda.delivery.attempt``, ``eda.stage.duration``, ``error.type``, ``exception.message``;
  empty ones are dropped, and so are ``otelTraceID``/``otelSpanID``/``otelTraceSampled``
  (the record's own trace and span id carry them: a record that has none, such as a
  lifecycle record written after its span ended, gets them from those fields);
* on a record that has none of these fields, sets the ids of the event current in the
  record's context (or the current context).

This module imports the OpenTelemetry SDK; the rest of :mod:`otel_eda.logs` does not.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.trace import TraceFlags

from otel_eda import otel_internals, semconv
from otel_eda.identity.event import current_event, flow_ids
from otel_eda.logs import correlation, lifecycle

__all__ = ["ATTRIBUTE_NAMES", "EventLogRecordProcessor", "add_event_log_processor"]

_log = logging.getLogger(__name__)

#: ``logging`` record field -> OpenTelemetry attribute name.
ATTRIBUTE_NAMES: Final[Mapping[str, str]] = {
    correlation.EVENT_ID: semconv.MESSAGING_MESSAGE_ID,
    correlation.CORRELATION_ID: semconv.EDA_CORRELATION_ID,
    correlation.CAUSATION_ID: semconv.EDA_CAUSATION_ID,
    correlation.EVENT_TYPE: semconv.EDA_EVENT_TYPE,
    correlation.BUSINESS_KEY: semconv.EDA_BUSINESS_KEY,
    lifecycle.STAGE: semconv.EDA_STAGE,
    lifecycle.SUBSCRIBER: semconv.MESSAGING_CONSUMER_GROUP_NAME,
    lifecycle.ATTEMPT: semconv.EDA_DELIVERY_ATTEMPT,
    lifecycle.DURATION: semconv.EDA_STAGE_SECONDS,
    lifecycle.ERROR_TYPE: semconv.ERROR_TYPE,
    lifecycle.ERROR_MESSAGE: semconv.EXCEPTION_MESSAGE,
}
#: Fields dropped: the record's trace context, and the service (the resource names it).
_DROPPED: Final = (correlation.TRACE_ID, correlation.SPAN_ID, correlation.TRACE_SAMPLED, lifecycle.SERVICE)


class EventLogRecordProcessor(LogRecordProcessor):
    """Stamps the event's ids on every log record (see the module). Never raises."""

    def on_emit(self, log_record: Any) -> None:
        record = getattr(log_record, "log_record", log_record)
        try:
            _stamp(record)
        except Exception:
            _log.debug("could not stamp the event ids on a log record", exc_info=True)

    emit = on_emit  # the name before SDK 1.39

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def __repr__(self) -> str:
        return "EventLogRecordProcessor()"


def _stamp(record: Any) -> None:
    attributes = record.attributes
    if attributes is None:
        return
    if correlation.CORRELATION_ID in attributes:
        trace_id = attributes.get(correlation.TRACE_ID)
        span_id = attributes.get(correlation.SPAN_ID)
        if not record.trace_id and isinstance(trace_id, str) and trace_id != "0":
            record.trace_id = int(trace_id, 16)
            record.span_id = int(span_id, 16) if isinstance(span_id, str) else 0
            record.trace_flags = TraceFlags(TraceFlags.DEFAULT)
        for name in _DROPPED:
            attributes.pop(name, None)
        for field, name in ATTRIBUTE_NAMES.items():
            value = attributes.pop(field, None)
            if value is not None and value != "":
                attributes[name] = value
        return
    if semconv.EDA_CORRELATION_ID in attributes:
        return
    context: Context | None = getattr(record, "context", None)
    event = current_event(context)
    if event is not None:
        attributes[semconv.MESSAGING_MESSAGE_ID] = event.event_id
        attributes[semconv.EDA_CORRELATION_ID] = event.correlation_id
        if event.causation_id is not None:
            attributes[semconv.EDA_CAUSATION_ID] = event.causation_id
        attributes[semconv.EDA_EVENT_TYPE] = event.event_type
        if event.business_key is not None:
            attributes[semconv.EDA_BUSINESS_KEY] = event.business_key
        return
    ids = flow_ids(context)
    if ids is not None:
        attributes[semconv.EDA_CORRELATION_ID] = ids.correlation_id
        if ids.causation_id is not None:
            attributes[semconv.EDA_CAUSATION_ID] = ids.causation_id


def add_event_log_processor(provider: object) -> bool:
    """Add an :class:`EventLogRecordProcessor` to an SDK ``LoggerProvider``, before its other
    processors (so that export processors see the stamped record); once per provider.

    Returns whether one was added.
    """
    if not isinstance(provider, LoggerProvider):
        return False
    if any(isinstance(p, EventLogRecordProcessor) for p in otel_internals.log_record_processors(provider)):
        return False
    processor = EventLogRecordProcessor()
    # the SDK appends only: put it first, where it stamps before the export processors
    if not otel_internals.prepend_log_record_processor(provider, processor):
        provider.add_log_record_processor(processor)
    return True
