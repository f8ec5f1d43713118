"""The anomaly engine: series points in, alert changes out.

For each point and each rule that watches its (metric, signal, attributes), the engine
feeds the rule's detector for that series and runs the alert lifecycle:

* **for**: a rule fires after ``for_evaluations`` consecutive anomalous evaluations (and
  ``for_seconds`` of anomaly, if set);
* **hysteresis**: a firing alert resolves after ``resolve_after`` consecutive normal ones;
* **de-duplication**: one alert per (rule, series) at a time; only changes are delivered
  (firing, escalated, resolved) — repeating a firing alert is the sinks' job;
* **cooldown**: after a resolve, the same rule and series stay quiet for ``cooldown_s``;
* **escalation**: severity rises one step after ``escalate_after_s`` of firing, and goes
  to critical at once when a threshold detector's value passes ``escalate_factor`` x its
  threshold;
* **suppression**: silences (label matchers with an end time) and inhibition (a firing
  critical alert on a service mutes that service's warnings and infos).

State is bounded: at most ``max_series`` (rule, series) states; beyond that, points go to
one overflow series per rule (attribute ``otel.metric.overflow=true``), counted in
``overflowed``; states not updated for ``idle_timeout_s`` are evicted (``evicted``).
NaN and infinite values are skipped and counted (``skipped``). Thread-safe.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from otel_eda._selfmetrics import internal_error
from otel_eda.anomaly.alerts import Alert, AlertSink, AlertState, Exemplar, Severity
from otel_eda.anomaly.detectors import Detector, make_detector
from otel_eda.anomaly.rules import Rule
from otel_eda.anomaly.series import Attributes, SeriesPoint

__all__ = ["AnomalyEngine", "Silence"]

_log = logging.getLogger(__name__)
OVERFLOW: Final[Attributes] = (("otel.metric.overflow", "true"),)


@dataclasses.dataclass(frozen=True)
class Silence:
    """Mutes alerts whose labels contain every ``matchers`` pair, until ``until`` (epoch s)."""

    matchers: Mapping[str, str]
    until: float

    def matches(self, labels: Mapping[str, str], now: float) -> bool:
        return now < self.until and all(labels.get(k) == v for k, v in self.matchers.items())


@dataclasses.dataclass(slots=True)
class _State:
    rule: Rule
    attributes: Attributes
    detector: Detector
    last_seen: float = 0.0
    anomalous: int = 0
    anomalous_since: float | None = None
    normal: int = 0
    alert: Alert | None = None
    #: whether the current alert's firing reached the sinks (it may have been suppressed)
    delivered: bool = False
    cooldown_until: float = 0.0
    exemplars: tuple[Exemplar, ...] = ()


class AnomalyEngine:
    def __init__(
        self,
        rules: Sequence[Rule],
        sinks: Iterable[AlertSink] = (),
        *,
        max_series: int = 10_000,
        idle_timeout_s: float = 3600.0,
        resource_labels: Mapping[str, str] | None = None,
    ) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        self.rules = tuple(rules)
        self.sinks = list(sinks)
        self.max_series = max_series
        self.idle_timeout_s = idle_timeout_s
        self.resource_labels = dict(resource_labels or {})
        self.overflowed = 0
        self.evicted = 0
        self.skipped = 0
        self.suppressed = 0
        self._by_signal: dict[tuple[str, str], list[Rule]] = {}
        for rule in self.rules:
            self._by_signal.setdefault((rule.metric, rule.signal), []).append(rule)
        self._states: OrderedDict[tuple[str, Attributes], _State] = OrderedDict()
        self._silences: list[Silence] = []
        self._lock = threading.Lock()

    # -- public -------------------------------------------------------------------------
    @property
    def series_count(self) -> int:
        return len(self._states)

    def silence(self, matchers: Mapping[str, str], duration_s: float, now: float | None = None) -> Silence:
        """Mute alerts matching ``matchers`` for ``duration_s`` seconds."""
        entry = Silence(dict(matchers), (now if now is not None else time.time()) + duration_s)
        with self._lock:
            self._silences.append(entry)
        return entry

    def active_alerts(self) -> list[Alert]:
        with self._lock:
            return [s.alert for s in self._states.values() if s.alert is not None]

    def evaluate(self, points: Iterable[SeriesPoint], now: float | None = None) -> list[Alert]:
        """Feed one collection's points; deliver and return the alert changes."""
        now = time.time() if now is None else now
        changes: list[tuple[_State, Alert]] = []
        with self._lock:
            self._evict_idle(now, changes)  # first, so that idle series free their places
            for point in points:
                rules = self._by_signal.get((point.metric, point.signal))
                if not rules:
                    continue
                if not math.isfinite(point.value):
                    self.skipped += 1
                    continue
                for rule in rules:
                    if all(_get(point.attributes, k) == v for k, v in rule.match.items()):
                        state, change = self._update(rule, point)
                        if change is not None:
                            changes.append((state, change))
            self._silences = [s for s in self._silences if s.until > now]
            delivered = self._filter(changes, now)
        for alert in delivered:
            self._deliver(alert)
        return delivered

    def _filter(self, changes: list[tuple[_State, Alert]], now: float) -> list[Alert]:
        """Apply silences and inhibition; a suppressed firing alert is offered again later."""
        out: list[Alert] = []
        changed = {id(state) for state, _ in changes}
        # firing alerts held back earlier and not changed now: deliver once unmuted
        held = [(s, s.alert) for s in self._states.values() if s.alert and not s.delivered and id(s) not in changed]
        for state, alert in [*changes, *held]:
            if alert.state is AlertState.RESOLVED:
                if state.delivered:  # the sinks never saw a suppressed alert fire
                    out.append(alert)
                state.delivered = False
            elif self._suppressed(alert, now):
                if id(state) in changed:
                    self.suppressed += 1  # counted once per change held back
                state.delivered = False
            else:
                state.delivered = True
                out.append(alert)
        return out

    # -- internals ----------------------------------------------------------------------
    def _state(self, rule: Rule, attributes: Attributes, t: float) -> _State:
        key = (rule.name, attributes)
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self.max_series - 1:  # keep one place for the overflow series
                self.overflowed += 1
                key = (rule.name, OVERFLOW)
                state = self._states.get(key)
                attributes = OVERFLOW
            if state is None:
                state = _State(rule, attributes, make_detector(**rule.detector))
                self._states[key] = state
        self._states.move_to_end(key)
        state.last_seen = t
        return state

    def _evict_idle(self, now: float, changes: list[tuple[_State, Alert]]) -> None:
        """Evict series silent for ``idle_timeout_s``; a firing alert on one is resolved."""
        horizon = now - self.idle_timeout_s
        while self._states:
            key, state = next(iter(self._states.items()))
            if state.last_seen >= horizon:
                break
            if state.alert is not None:
                changes.append((state, self._resolved(state, state.alert.value, now)))
            del self._states[key]
            self.evicted += 1

    def _labels(self, rule: Rule, attributes: Attributes) -> dict[str, str]:
        keep = rule.labels
        labels = {k: v for k, v in attributes if keep is None or k in keep or k == "otel.metric.overflow"}
        labels.update(self.resource_labels)
        return labels

    def _update(self, rule: Rule, point: SeriesPoint) -> tuple[_State, Alert | None]:
        state = self._state(rule, point.attributes, point.t)
        detector = state.detector
        detector.update(point.t, point.value)
        if point.exemplars:
            state.exemplars = point.exemplars
        if detector.is_anomaly:
            state.anomalous += 1
            state.normal = 0
            if state.anomalous_since is None:
                state.anomalous_since = point.t
        else:
            state.normal += 1
            state.anomalous = 0
            state.anomalous_since = None
        if state.alert is None:
            return state, self._maybe_fire(state, point)
        if state.normal >= rule.resolve_after:
            return state, self._resolved(state, point.value, point.t)
        return state, self._maybe_escalate(state, point)

    def _maybe_fire(self, state: _State, point: SeriesPoint) -> Alert | None:
        rule = state.rule
        if state.anomalous < rule.for_evaluations or point.t < state.cooldown_until:
            return None
        if state.anomalous_since is not None and point.t - state.anomalous_since < rule.for_seconds:
            return None
        severity = rule.severity
        if self._beyond_escalation_value(state, point.value):
            severity = Severity.CRITICAL
        state.alert = self._alert(state, point, severity, AlertState.FIRING, started=point.t)
        return state.alert

    def _maybe_escalate(self, state: _State, point: SeriesPoint) -> Alert | None:
        alert = state.alert
        assert alert is not None
        rule = state.rule
        severity = alert.severity
        if rule.escalate_after_s is not None and point.t - alert.started_at >= rule.escalate_after_s:
            steps = int((point.t - alert.started_at) // rule.escalate_after_s)
            severity = Severity(min(Severity.CRITICAL, rule.severity + steps))
        if self._beyond_escalation_value(state, point.value):
            severity = Severity.CRITICAL
        if severity <= alert.severity:
            return None
        state.alert = self._alert(state, point, severity, AlertState.FIRING, started=alert.started_at)
        return state.alert

    def _resolved(self, state: _State, value: float, t: float) -> Alert:
        alert = state.alert
        assert alert is not None
        state.alert = None
        state.cooldown_until = t + state.rule.cooldown_s
        return dataclasses.replace(
            alert, state=AlertState.RESOLVED, value=value, score=state.detector.score, ended_at=t
        )

    def _beyond_escalation_value(self, state: _State, value: float) -> bool:
        factor = state.rule.escalate_factor
        limit = getattr(state.detector, "threshold_value", None)
        if factor is None or not isinstance(limit, int | float) or limit <= 0:
            return False
        return value > factor * limit

    def _alert(self, state: _State, point: SeriesPoint, severity: Severity, st: AlertState, started: float) -> Alert:
        rule = state.rule
        labels = self._labels(rule, state.attributes)
        series = ", ".join(f"{k}={v}" for k, v in labels.items()) or "(all)"
        threshold = getattr(state.detector, "threshold_value", None)
        summary = _format(
            rule.summary,
            alert=rule.alert_name,
            metric=rule.metric,
            signal=rule.signal,
            value=point.value,
            series=series,
        )
        return Alert(
            name=rule.alert_name,
            rule=rule.name,
            severity=severity,
            state=st,
            series_labels=labels,
            value=point.value,
            threshold=float(threshold) if isinstance(threshold, int | float) else None,
            score=state.detector.score,
            started_at=started,
            ended_at=None,
            summary=summary,
            exemplars=state.exemplars,
        )

    def _suppressed(self, alert: Alert, now: float) -> bool:
        labels = alert.labels
        muted = any(s.matches(labels, now) for s in self._silences)
        service = labels.get("service")
        if not muted and service is not None and alert.severity < Severity.CRITICAL:
            muted = any(
                s.alert is not None
                and s.alert.severity is Severity.CRITICAL
                and s.alert.series_labels.get("service") == service
                for s in self._states.values()
            )
        return muted

    def _deliver(self, alert: Alert) -> None:
        _log.info("alert %s %s [%s]: %s", alert.name, alert.state.value, alert.severity.label, alert.summary)
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception:
                internal_error("alert sink", f"delivering {alert.name}")


def _get(attributes: Attributes, key: str) -> str | None:
    for k, v in attributes:
        if k == key:
            return v
    return None


def _format(template: str, **values: Any) -> str:
    try:
        return template.format(**values)
    except (KeyError, ValueError, IndexError):
        return f"{values['alert']}: {values['metric']} {values['signal']} = {values['value']:.4g}"
