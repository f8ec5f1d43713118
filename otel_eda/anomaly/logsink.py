"""Deliver alerts as OpenTelemetry log records.

The OpenTelemetry logs API is still unstable in Python: it lives in ``opentelemetry._logs``
(note the underscore) and its signatures have moved between releases. This module is the
only place in otel-eda that touches it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import _logs, metrics
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otel_eda import semconv
from otel_eda.anomaly.alerts import Alert, AlertState, Severity
from otel_eda.anomaly.callbacks import count_send_failure, send_failure_counter
from otel_eda.version import VERSION as __version__

__all__ = ["ALERT_EVENT_NAME", "ALERT_LOGGER_NAME", "ATTR_ALERT_STATE", "LogRecordSink"]

_log = logging.getLogger("otel_eda.alerts")

#: Instrumentation scope (logger) name of the alert log records.
ALERT_LOGGER_NAME = "otel_eda.alerts"
#: Event name of the alert log records (set where the logs API supports event names).
ALERT_EVENT_NAME = semconv.EVENT_ALERT
#: Log record attribute carrying the alert's state, ``firing`` or ``resolved``.
ATTR_ALERT_STATE = semconv.EDA_ALERT_STATE

_SEVERITY: Mapping[Severity, tuple[_logs.SeverityNumber, str]] = {
    Severity.INFO: (_logs.SeverityNumber.INFO, "INFO"),
    Severity.WARNING: (_logs.SeverityNumber.WARN, "WARN"),
    Severity.CRITICAL: (_logs.SeverityNumber.ERROR, "ERROR"),
}
_RESOLVED = (_logs.SeverityNumber.INFO, "INFO")

# Event names on log records arrived in the API after 1.30; older releases lack the argument.
_HAS_EVENT_NAME = "event_name" in inspect.signature(_logs.LogRecord.__init__).parameters


_NO_TRACE = set_span_in_context(INVALID_SPAN, Context())


def _exemplar_context(alert: Alert) -> Context:
    """A context holding the first exemplar's span, so the record links to an example trace.

    Without a (valid) exemplar it holds the invalid span: the record must not pick up whatever
    span happens to be current in the engine's thread (an *empty* context would not do, the
    API replaces a falsy context by the current one).
    """
    for exemplar in alert.exemplars:
        try:
            trace_id, span_id = int(exemplar.trace_id, 16), int(exemplar.span_id, 16)
        except ValueError:
            continue
        span_context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        if span_context.is_valid:
            return set_span_in_context(NonRecordingSpan(span_context), Context())
    return _NO_TRACE


class LogRecordSink:
    """An alert sink emitting each alert change as an OpenTelemetry log record.

    Logger (instrumentation scope) ``otel_eda.alerts``, event name ``eda.alert``. Severity:
    info → INFO, warning → WARN, critical → ERROR, and INFO for every resolved alert. The body
    is the alert's summary; the attributes are its labels, its annotations (value, threshold,
    score, summary, the exemplars' ``trace_ids`` and ``span_ids``) and ``eda.alert.state``
    (a label wins over an annotation of the same name). The record's trace context is the
    first exemplar's, so a log backend can open an example trace from the alert.

    ``logger_provider`` defaults to the global one (records emitted before an SDK provider is
    installed go nowhere, as with any OTel logger). Emitting is synchronous up to the
    provider's processors: use a batching processor in production. Errors are logged and
    counted (:attr:`failures`, and ``eda.alerts.send_failures`` of ``meter_provider``, default
    the global one), never raised.

    >>> from opentelemetry.sdk._logs import LoggerProvider
    >>> from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
    >>> from otel_eda.anomaly.alerts import Alert, AlertState, Severity
    >>> exporter = InMemoryLogRecordExporter()
    >>> provider = LoggerProvider()
    >>> provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    >>> sink = LogRecordSink(logger_provider=provider)
    >>> sink.send(Alert(name="LatencyHigh", rule="latency", severity=Severity.CRITICAL,
    ...                 state=AlertState.FIRING, series_labels={"service": "orders"}, value=2.5,
    ...                 threshold=1.0, score=0.9, started_at=0.0, ended_at=None, summary="p95 2.5 s > 1 s"))
    >>> record = exporter.get_finished_logs()[0].log_record
    >>> record.severity_text, record.body, record.attributes["eda.alert.state"]
    ('ERROR', 'p95 2.5 s > 1 s', 'firing')
    >>> provider.shutdown()
    """

    def __init__(
        self,
        logger_provider: _logs.LoggerProvider | None = None,
        *,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._failures = send_failure_counter(meter_provider)
        self._logger = _logs.get_logger(ALERT_LOGGER_NAME, __version__, logger_provider=logger_provider)
        self._lock = threading.Lock()
        #: number of alerts that could not be emitted
        self.failures = 0

    def send(self, alert: Alert) -> None:
        try:
            self._logger.emit(self._record(alert))
        except Exception as exc:
            with self._lock:
                self.failures += 1
            _log.error("could not emit the log record of alert %s", alert.name, exc_info=True)
            count_send_failure(self._failures, "log", type(exc).__qualname__)

    @staticmethod
    def _record(alert: Alert) -> _logs.LogRecord:
        if alert.state is AlertState.RESOLVED:
            severity_number, severity_text = _RESOLVED
        else:
            severity_number, severity_text = _SEVERITY[alert.severity]
        attributes: dict[str, str] = {**alert.annotations(), **alert.labels, ATTR_ALERT_STATE: alert.state.value}
        now = time.time_ns()
        extra: dict[str, Any] = {"event_name": ALERT_EVENT_NAME} if _HAS_EVENT_NAME else {}
        return _logs.LogRecord(
            timestamp=now,
            observed_timestamp=now,
            context=_exemplar_context(alert),
            severity_number=severity_number,
            severity_text=severity_text,
            body=alert.summary,
            attributes=attributes,
            **extra,
        )

    def __repr__(self) -> str:
        return f"LogRecordSink({ALERT_LOGGER_NAME!r})"
