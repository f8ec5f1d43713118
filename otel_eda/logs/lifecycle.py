"""Lifecycle logs: each stage of an event's life as one structured log record, by level.

A :class:`LifecycleLogger` is a lifecycle recorder (:class:`otel_eda.flows.records.Recorder`)
that writes one record per event per stage to the logger ``otel_eda.lifecycle``.
``OTEL_EDA_LOG_LIFECYCLE`` chooses the stages:

=================== ========================================= ==========================
stage               level                                      ``failures`` (default)
=================== ========================================= ==========================
retried             WARNING, with the exception type/message   yes
dead_lettered       ERROR, with the exception type/message     yes
failed              ERROR, with the exception type/message     yes
rejected            INFO, with the exception type/message      yes
dropped             WARNING (a subscriber's queue stayed full) yes
completed           INFO                                       ``all`` only
published           INFO                                       ``all`` only
received, keyed, unrouted   DEBUG                              ``all`` only
=================== ========================================= ==========================

Every field is a record attribute, so a JSON formatter (python-json-logger's, structlog's
``ProcessorFormatter``) prints each one: the current-event fields of
:mod:`otel_eda.logs.correlation` (``eda_event_id``, ``eda_correlation_id``,
``eda_causation_id``, ``eda_event_type``, ``eda_business_key``, ``otelTraceID``,
``otelSpanID``: the ids of the record's event and span, wherever the record is written
from) plus ``eda_stage``, ``eda_service``, ``eda_subscriber``, ``eda_attempt``,
``eda_duration_s``, ``eda_error_type`` and ``eda_error_message``. The exception message
follows ``OTEL_EDA_EXCEPTION_DETAIL`` and the redaction patterns (:mod:`otel_eda.redaction`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from otel_eda import semconv
from otel_eda.flows.records import LifecycleRecord, Stage
from otel_eda.logs import correlation
from otel_eda.redaction import Redaction, policy
from otel_eda.settings import ExceptionDetail, LifecycleLogs, Settings

__all__ = [
    "ATTEMPT",
    "DURATION",
    "ERROR_MESSAGE",
    "ERROR_TYPE",
    "SERVICE",
    "STAGE",
    "SUBSCRIBER",
    "LifecycleLogger",
]

STAGE: Final = "eda_stage"
SERVICE: Final = "eda_service"
SUBSCRIBER: Final = "eda_subscriber"
ATTEMPT: Final = "eda_attempt"
DURATION: Final = "eda_duration_s"
ERROR_TYPE: Final = "eda_error_type"
ERROR_MESSAGE: Final = "eda_error_message"

#: Levels of the stages logged under ``failures``.
_FAILURE_LEVELS: Final[Mapping[str, int]] = {
    Stage.RETRIED: logging.WARNING,
    Stage.DEAD_LETTERED: logging.ERROR,
    Stage.FAILED: logging.ERROR,
    Stage.REJECTED: logging.INFO,
    Stage.DROPPED: logging.WARNING,
}
#: Levels of the other stages, logged under ``all``.
_OTHER_LEVELS: Final[Mapping[str, int]] = {
    Stage.PUBLISHED: logging.INFO,
    Stage.COMPLETED: logging.INFO,
    Stage.RECEIVED: logging.DEBUG,
    Stage.KEYED: logging.DEBUG,
    Stage.UNROUTED: logging.DEBUG,
}


class LifecycleLogger:
    """A recorder logging lifecycle stages (see the module). Never raises.

    ``settings`` default to the ``OTEL_EDA_*`` variables; ``logger`` to
    ``logging.getLogger("otel_eda.lifecycle")``.
    """

    def __init__(self, settings: Settings | None = None, *, logger: logging.Logger | None = None) -> None:
        settings = settings if settings is not None else Settings.from_environ()
        self.mode = settings.log_lifecycle
        self._redaction: Redaction = policy(settings)
        self._logger = logger if logger is not None else logging.getLogger(semconv.LIFECYCLE_LOGGER)
        levels = {} if self.mode is LifecycleLogs.OFF else dict(_FAILURE_LEVELS)
        if self.mode is LifecycleLogs.ALL:
            levels.update(_OTHER_LEVELS)
        self._levels: Mapping[str, int] = levels

    def record(self, record: LifecycleRecord) -> None:
        level = self._levels.get(record.stage)
        if level is None or not self._logger.isEnabledFor(level):
            return
        try:
            self._log(level, record)
        except Exception:  # a broken handler or formatter must not reach the transport
            logging.getLogger(__name__).debug("could not log a lifecycle record", exc_info=True)

    def _log(self, level: int, record: LifecycleRecord) -> None:
        message = record.error_message
        if message is not None:
            message = None if self._redaction.detail is ExceptionDetail.TYPE else self._redaction.text(message)
        fields: dict[str, Any] = {
            correlation.EVENT_ID: record.event_id,
            correlation.CORRELATION_ID: record.correlation_id,
            correlation.CAUSATION_ID: record.causation_id or "",
            correlation.EVENT_TYPE: record.event_type,
            correlation.BUSINESS_KEY: record.business_key or "",
            correlation.TRACE_ID: format(record.trace_id, "032x") if record.trace_id else "0",
            correlation.SPAN_ID: format(record.span_id, "016x") if record.span_id else "0",
            STAGE: str(record.stage),
            SERVICE: record.service,
            SUBSCRIBER: record.subscriber or "",
            ATTEMPT: record.attempt,
            DURATION: record.duration_s,
            ERROR_TYPE: record.error_type or "",
            ERROR_MESSAGE: message or "",
        }
        text = "%s %s %s"
        args: tuple[Any, ...] = (record.event_type, record.event_id, record.stage)
        if record.subscriber:
            text += " by %s (attempt %d)"
            args += (record.subscriber, record.attempt)
        if record.error_type:
            text += ": %s"
            args += (f"{record.error_type}: {message}" if message else record.error_type,)
        logger = self._logger
        log_record = logger.makeRecord(logger.name, level, "(otel-eda)", 0, text, args, None)
        log_record.__dict__.update(fields)  # the record's own event, not the one current here
        logger.handle(log_record)

    def __repr__(self) -> str:
        return f"LifecycleLogger({self.mode.value!r})"
