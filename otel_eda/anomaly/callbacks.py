"""Deliver alerts to Python callables, and the failure counter shared by every alert sink."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from opentelemetry import metrics

from otel_eda import semconv
from otel_eda._selfmetrics import log_exception
from otel_eda.anomaly.alerts import Alert
from otel_eda.version import VERSION as __version__

__all__ = ["METRIC_ALERT_SEND_FAILURES", "CallbackSink", "count_send_failure", "send_failure_counter"]

_log = logging.getLogger("otel_eda.alerts")

#: Counter of alert deliveries that failed, attributes ``eda.alert.sink`` and ``error.type``.
METRIC_ALERT_SEND_FAILURES = semconv.METRIC_ALERT_SEND_FAILURES


def send_failure_counter(meter_provider: metrics.MeterProvider | None = None) -> metrics.Counter:
    """The ``eda.alerts.send_failures`` counter (attributes ``eda.alert.sink``, ``error.type``).

    From ``meter_provider``, or the global one (the API's proxy until an SDK provider is set).
    """
    return metrics.get_meter("otel_eda", __version__, meter_provider=meter_provider).create_counter(
        METRIC_ALERT_SEND_FAILURES,
        unit="{failure}",
        description="Alert deliveries that failed (a post, a log record or a callback)",
    )


def count_send_failure(counter: metrics.Counter, sink: str, error_type: str) -> None:
    """Count one failed delivery of alerts to ``sink`` (``alertmanager``, ``log``, ``callback``)."""
    try:
        counter.add(1, {semconv.EDA_ALERT_SINK: sink, semconv.ERROR_TYPE: error_type})
    except Exception:  # pragma: no cover - a broken meter must not break delivery
        _log.debug("could not count a failed alert delivery", exc_info=True)


class CallbackSink:
    """An alert sink calling ``fn(alert)`` for every alert change (firing, escalated, resolved).

    The callable runs in the thread that sends the alert (the anomaly engine's), so it must
    be quick: hand slow work to a queue of your own. An exception it raises is logged (with
    its traceback) and counted in :attr:`errors` and in the ``eda.alerts.send_failures``
    counter (of ``meter_provider``, default the global one); it never reaches the engine.

    >>> from otel_eda.anomaly.alerts import Alert, AlertState, Severity
    >>> alert = Alert(name="LatencyHigh", rule="latency", severity=Severity.WARNING,
    ...               state=AlertState.FIRING, series_labels={"service": "orders"}, value=2.5,
    ...               threshold=1.0, score=0.9, started_at=0.0, ended_at=None, summary="slow")
    >>> seen = []
    >>> CallbackSink(seen.append).send(alert)
    >>> seen[0].labels["severity"]
    'warning'
    >>> def broken(alert):
    ...     raise RuntimeError("boom")
    >>> sink = CallbackSink(broken)
    >>> sink.send(alert)  # logged and counted, not raised
    >>> sink.errors
    1
    """

    def __init__(self, fn: Callable[[Alert], object], *, meter_provider: metrics.MeterProvider | None = None) -> None:
        self._fn = fn
        self._failures = send_failure_counter(meter_provider)
        self._lock = threading.Lock()
        #: number of calls that raised
        self.errors = 0

    def send(self, alert: Alert) -> None:
        try:
            self._fn(alert)
        except Exception as exc:
            with self._lock:
                self.errors += 1
            log_exception(  # the application's code: written under the redaction policy
                _log,
                logging.ERROR,
                "alert callback %r raised on alert %s (%s); the alert engine continues",
                self._fn,
                alert.name,
                alert.state.value,
            )
            count_send_failure(self._failures, "callback", type(exc).__qualname__)

    def __repr__(self) -> str:
        return f"CallbackSink({self._fn!r})"
