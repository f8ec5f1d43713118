"""Alert rules at run time, for an application that called ``otel_eda.configure()``.

These functions act on the anomaly engine of the :class:`AnomalyMetricReader` installed on
the global MeterProvider (or on ``provider``). Each raises RuntimeError when there is none
(``configure()`` has not run, or ``OTEL_SDK_DISABLED=true``).

>>> import otel_eda
>>> from otel_eda.anomaly import api
>>> otel_eda.configure()  # doctest: +SKIP
>>> api.add_alert_rule(  # doctest: +SKIP
...     "orders-backlog", lambda depth: depth > 500, "critical",
...     "{series} holds {value:.0f} orders", metric="eda.bus.queue.depth")
>>> api.statistics("messaging.process.duration", {"messaging.destination.name": "order_placed"},
...                signal="p95", window_s=300).p95  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from otel_eda.anomaly.alerts import Severity
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.reader import installed_reader
from otel_eda.anomaly.registry import register_detector, unregister_detector
from otel_eda.anomaly.rules import Rule
from otel_eda.anomaly.statistics import SeriesStatistics

__all__ = [
    "add_alert_rule",
    "add_rule",
    "engine",
    "register_detector",
    "remove_rule",
    "statistics",
    "track",
    "unregister_detector",
]


def engine(provider: object | None = None) -> AnomalyEngine:
    """The anomaly engine of the installed reader; RuntimeError if there is none."""
    reader = installed_reader(provider)
    if reader is None:
        raise RuntimeError(
            "no otel-eda anomaly reader is installed on the MeterProvider: call otel_eda.configure() first"
        )
    return reader.engine


def add_rule(rule: Rule, *, provider: object | None = None) -> Rule:
    """Watch with ``rule`` from the next evaluation on (ValueError if its name is taken)."""
    return engine(provider).add_rule(rule)


def add_alert_rule(
    name: str,
    condition: Callable[[float], object],
    severity: Severity | str = Severity.WARNING,
    description: str | None = None,
    *,
    metric: str,
    signal: str = "value",
    provider: object | None = None,
    **fields: Any,
) -> Rule:
    """Alert ``name`` when ``condition(value)`` is true on a series of ``metric``."""
    return engine(provider).add_alert_rule(
        name, condition, severity, description, metric=metric, signal=signal, **fields
    )


def remove_rule(name: str, *, provider: object | None = None) -> bool:
    """Stop the rule ``name`` (its firing alert is resolved); whether it existed."""
    return engine(provider).remove_rule(name)


def track(metric: str, *, provider: object | None = None) -> None:
    """Keep recent values of ``metric`` for :func:`statistics`."""
    engine(provider).track(metric)


def statistics(
    metric: str,
    labels: Mapping[str, str] | None = None,
    *,
    signal: str = "value",
    window_s: float = 300.0,
    provider: object | None = None,
) -> SeriesStatistics:
    """Count, mean, p50, p95, p99 of ``metric``'s ``signal`` over the last ``window_s`` seconds."""
    return engine(provider).statistics(metric, labels, signal=signal, window_s=window_s)
