"""The alert model shared by rules and sinks.

An :class:`Alert` is one rule firing on one series. It has a lifecycle: ``firing`` (sent
again while it lasts, possibly with a raised severity) then ``resolved``. Its ``labels``
identify it and stay low-cardinality (alert name, rule, service, severity, the rule's
series labels); everything else — value, threshold, summary, the trace and span ids of
recent exemplars — are annotations, never labels.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Protocol

__all__ = ["Alert", "AlertSink", "AlertState", "Exemplar", "Severity"]


class Severity(enum.IntEnum):
    """Alert severities, ordered."""

    INFO = 1
    WARNING = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, value: str | Severity) -> Severity:
        if isinstance(value, Severity):
            return value
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {value!r}: use info, warning or critical") from None


class AlertState(enum.StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclasses.dataclass(frozen=True, slots=True)
class Exemplar:
    """A measurement's trace context: where to look for an example trace."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str  # 16 lower-case hex digits


@dataclasses.dataclass(frozen=True, slots=True)
class Alert:
    """One rule firing (or resolved) on one series. Immutable; each change is a new Alert."""

    #: the alert's name (Alertmanager's ``alertname``), e.g. ``ProcessingLatencyHigh``
    name: str
    #: the rule that produced it
    rule: str
    severity: Severity
    state: AlertState
    #: the offending series' labels (metric attributes kept by the rule), ``service`` included
    series_labels: Mapping[str, str]
    #: the value that made the rule fire (or the last one seen, on resolve)
    value: float
    #: the rule's threshold, when it has one
    threshold: float | None
    #: the detector's score in [0, 1]
    score: float
    #: epoch seconds
    started_at: float
    ended_at: float | None
    summary: str
    exemplars: tuple[Exemplar, ...] = ()
    #: the values of the anomalous run that made the rule fire, oldest first (at most the
    #: engine's ``RECENT_VALUES``; the last one is ``value`` when firing)
    recent_values: tuple[float, ...] = ()

    @property
    def labels(self) -> dict[str, str]:
        """The identifying, low-cardinality labels (what Alertmanager fingerprints)."""
        return {
            **self.series_labels,
            "alertname": self.name,
            "rule": self.rule,
            "severity": self.severity.label,
        }

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """De-duplication key: the rule and the series (not the severity, which may rise)."""
        return self.rule, tuple(sorted(self.series_labels.items()))

    def annotations(self) -> dict[str, str]:
        """Everything that is not identity: value, threshold, summary, example traces."""
        notes = {
            "summary": self.summary,
            "value": f"{self.value:.6g}",
            "score": f"{self.score:.3f}",
        }
        if self.threshold is not None:
            notes["threshold"] = f"{self.threshold:.6g}"
        if self.recent_values:
            notes["recent_values"] = ",".join(f"{v:.6g}" for v in self.recent_values)
        if self.exemplars:
            notes["trace_ids"] = ",".join(e.trace_id for e in self.exemplars)
            notes["span_ids"] = ",".join(e.span_id for e in self.exemplars)
        return notes


class AlertSink(Protocol):
    """Receives every alert change (firing, escalated, resolved). Must not block."""

    def send(self, alert: Alert) -> None: ...
