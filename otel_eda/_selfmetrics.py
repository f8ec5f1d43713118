"""otel-eda's own health counters (invalid input, internal errors), API only.

Instruments are created on first use from the global MeterProvider (the API's proxy
before one is installed), so importing this module stays cheap and SDK-free.
"""

from __future__ import annotations

import logging
import sys
import traceback
from functools import cache

from opentelemetry import metrics

from otel_eda import semconv
from otel_eda.redaction import exception_type, policy
from otel_eda.settings import ExceptionDetail
from otel_eda.version import VERSION

_log = logging.getLogger("otel_eda")


@cache
def _invalid_counter() -> metrics.Counter:
    return metrics.get_meter(semconv.SCOPE, VERSION).create_counter(
        semconv.METRIC_INVALID_HEADERS,
        unit="{value}",
        description="Incoming otel-eda header or baggage values dropped as invalid",
    )


@cache
def _error_counter() -> metrics.Counter:
    return metrics.get_meter(semconv.SCOPE, VERSION).create_counter(
        semconv.METRIC_INTERNAL_ERRORS,
        unit="{error}",
        description="Internal otel-eda errors caught before they reached the application",
    )


@cache
def _config_error_counter() -> metrics.Counter:
    return metrics.get_meter(semconv.SCOPE, VERSION).create_counter(
        semconv.METRIC_CONFIG_ERRORS,
        unit="{error}",
        description="Invalid OTEL_EDA_* settings and failed SDK configurations (eda.setting: the variable, or sdk)",
    )


def count_config_error(setting: str) -> None:
    try:
        _config_error_counter().add(1, {semconv.EDA_SETTING: setting})
    except Exception:  # pragma: no cover
        _log.debug("could not count a configuration error", exc_info=True)


def count_invalid(field: str, reason: str) -> None:
    """Count one dropped incoming value. Never logs the value itself."""
    try:
        _invalid_counter().add(1, {semconv.EDA_FIELD: field, semconv.EDA_REASON: reason})
    except Exception:  # pragma: no cover - a broken meter must not break extraction
        _log.debug("could not count an invalid value", exc_info=True)


def count_internal_error(component: str) -> None:
    try:
        _error_counter().add(1, {semconv.EDA_COMPONENT: component})
    except Exception:  # pragma: no cover
        _log.debug("could not count an internal error", exc_info=True)


def log_exception(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """Log ``msg % args`` with the exception being handled, under the redaction policy.

    For exceptions raised by application code (a handler, a recorder, an alert callback, a
    detector), which may carry payload values: ``OTEL_EDA_EXCEPTION_DETAIL=type`` writes
    the exception's type only, without traceback; redaction patterns apply to the
    traceback; otherwise it is ``logger.log(level, msg, *args, exc_info=True)``. Call from
    an ``except`` block.
    """
    if not logger.isEnabledFor(level):
        return
    exc = sys.exc_info()[1]
    redaction = policy()
    if exc is None or (redaction.detail is not ExceptionDetail.TYPE and not redaction.patterns):
        logger.log(level, msg, *args, exc_info=True)
    elif redaction.detail is ExceptionDetail.TYPE:
        logger.log(level, msg + " (%s)", *args, exception_type(exc))
    else:
        logger.log(level, msg + "\n%s", *args, redaction.text("".join(traceback.format_exception(exc))).rstrip())


def internal_error(component: str, what: str) -> None:
    """Log (with traceback) and count an internal error. Call from an ``except`` block.

    The exception may come from application code (a handler, a recorder) and carry payload
    values: it is written under the redaction policy (:func:`log_exception`).
    """
    log_exception(_log, logging.ERROR, "otel-eda %s failed while %s; the application continues", component, what)
    count_internal_error(component)
