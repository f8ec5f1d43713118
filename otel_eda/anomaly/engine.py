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
  alert mutes the alerts an :class:`~otel_eda.anomaly.inhibition.Inhibition` names as its
  targets, with the same ``equal`` labels; :func:`~otel_eda.anomaly.rules.default_inhibitions`
  pairs each default critical alert with the warning about the same thing).

Rules can be added and removed at run time (:meth:`AnomalyEngine.add_rule`,
:meth:`~AnomalyEngine.add_alert_rule`, :meth:`~AnomalyEngine.remove_rule`); an alert
carries the values of the anomalous run that made it fire (``recent_values``, the last
:data:`RECENT_VALUES`); :meth:`AnomalyEngine.statistics` answers count, mean and
percentiles of a tracked metric over a window (:mod:`otel_eda.anomaly.statistics`).
A rule of scope ``host`` is labelled with ``host`` and ``scope=host`` instead of the
reporting ``service``.

State is bounded: at most ``max_series`` (rule, series) states; beyond that, points go to
one overflow series per rule (attribute ``otel.metric.overflow=true``), counted in
``overflowed``; states not updated for ``idle_timeout_s`` are evicted (``evicted``).
NaN and infinite values are skipped and counted (``skipped``). Thread-safe.

Speed: :meth:`AnomalyEngine.evaluate` is built for one collection of 100,000 series and
more. The rules watching a (metric, signal) are looked up once per run of points of that
metric, a rule without ``match`` matches without a look at the attributes, states live in
one dict per rule name keyed by the attribute tuple (no key built per point), a state
records when it was last updated instead of moving in an LRU list, and idle states are
found by a sweep that only runs when one may be idle (the oldest update is past the
horizon). The common point — a normal value on a series with no alert — is handled
inline; everything else takes the full lifecycle path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from otel_eda._selfmetrics import internal_error
from otel_eda.anomaly.alerts import Alert, AlertSink, AlertState, Exemplar, Severity
from otel_eda.anomaly.detectors import Detector
from otel_eda.anomaly.inhibition import Inhibition
from otel_eda.anomaly.registry import make_detector
from otel_eda.anomaly.rules import Rule, condition_rule
from otel_eda.anomaly.series import Attributes, SeriesPoint
from otel_eda.anomaly.statistics import SeriesHistory, SeriesStatistics

__all__ = ["RECENT_VALUES", "AnomalyEngine", "Silence"]

#: How many values of the anomalous run an alert carries (``Alert.recent_values``).
RECENT_VALUES: Final = 10

_log = logging.getLogger(__name__)
#: The level an alert change is logged at: its severity's (a resolved alert at INFO).
_LOG_LEVELS: Final[Mapping[Severity, int]] = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}
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
    #: whether a change of the current alert was held back (silence, inhibition): offered again
    held: bool = False
    cooldown_until: float = 0.0
    exemplars: tuple[Exemplar, ...] = ()
    #: the values of the current anomalous run (at most RECENT_VALUES; None: none yet)
    recent: list[float] | None = None
    #: the engine's update count at this state's last update: the least recently
    #: updated order (of evictions, of resolves on eviction, of held alerts and of
    #: ``active_alerts``), as an LRU list kept it before, without moving anything per point
    seq: int = 0


#: the states of one rule name, by series attributes
_States = dict[Attributes, _State]
#: what a (metric, signal) feeds: each rule, its match pairs (None: matches everything),
#: and the states of its name
_Target = tuple[Rule, tuple[tuple[str, str], ...] | None, _States]


class AnomalyEngine:
    def __init__(
        self,
        rules: Sequence[Rule],
        sinks: Iterable[AlertSink] = (),
        *,
        max_series: int = 10_000,
        idle_timeout_s: float = 3600.0,
        resource_labels: Mapping[str, str] | None = None,
        inhibitions: Iterable[Inhibition] = (),
        host_labels: Mapping[str, str] | None = None,
        history: SeriesHistory | None = None,
    ) -> None:
        if max_series < 1:
            raise ValueError("max_series must be at least 1")
        self.rules = tuple(rules)
        self.sinks = list(sinks)
        self.max_series = max_series
        self.idle_timeout_s = idle_timeout_s
        #: labels of every service-scope alert (the reader adds ``service``)
        self.resource_labels = dict(resource_labels or {})
        #: labels of every host-scope alert, besides ``scope=host``
        self.host_labels = dict(host_labels) if host_labels is not None else {"host": socket.gethostname()}
        self.inhibitions = tuple(inhibitions)
        self.history = history or SeriesHistory()
        self.overflowed = 0
        self.evicted = 0
        self.skipped = 0
        self.suppressed = 0
        # states by rule name (rules sharing a name share states, as they always did)
        self._states: dict[str, _States] = {rule.name: {} for rule in self.rules}
        self._by_signal: dict[tuple[str, str], list[_Target]] = {}
        self._index()
        self._count = 0  # states, over all rule names
        self._oldest = math.inf  # no state was last updated before this (-inf: sweep at once)
        self._alerting: dict[int, _State] = {}  # states with an alert, by id
        self._seq = 0  # state updates so far
        self._silences: list[Silence] = []
        self._lock = threading.Lock()

    def _index(self) -> None:
        """Which rules (with their match pairs and states) each (metric, signal) feeds."""
        by_signal: dict[tuple[str, str], list[_Target]] = {}
        for rule in self.rules:
            match = tuple(rule.match.items()) or None
            by_signal.setdefault((rule.metric, rule.signal), []).append((rule, match, self._states[rule.name]))
        self._by_signal = by_signal

    # -- public -------------------------------------------------------------------------
    @property
    def series_count(self) -> int:
        return self._count

    def add_rule(self, rule: Rule) -> Rule:
        """Watch with one more rule from the next evaluation on; raises ValueError if its name is taken."""
        if not isinstance(rule, Rule):
            raise TypeError(f"add_rule() takes a Rule, got {type(rule).__name__}")
        with self._lock:
            if rule.name in self._states:
                raise ValueError(f"a rule named {rule.name!r} exists: remove_rule() it first")
            self._states[rule.name] = {}
            self.rules = (*self.rules, rule)
            self._index()
        return rule

    def add_alert_rule(
        self,
        name: str,
        condition: Callable[[float], object],
        severity: Severity | str = Severity.WARNING,
        description: str | None = None,
        *,
        metric: str,
        signal: str = "value",
        **fields: Any,
    ) -> Rule:
        """Add a rule firing when ``condition(value)`` is true (see :func:`~otel_eda.anomaly.rules.condition_rule`).

        >>> engine = AnomalyEngine([])
        >>> rule = engine.add_alert_rule("deep-queue", lambda depth: depth > 500, "critical",
        ...                              "{series} holds {value:.0f} messages", metric="eda.bus.queue.depth")
        >>> [r.name for r in engine.rules]
        ['deep-queue']
        """
        return self.add_rule(
            condition_rule(name, condition, severity, description, metric=metric, signal=signal, **fields)
        )

    def remove_rule(self, name: str) -> bool:
        """Stop watching with the rule(s) named ``name``; whether there was one.

        Its series are forgotten; a firing alert of it that the sinks saw is resolved
        (delivered now, with its last value).
        """
        resolved: list[Alert] = []
        with self._lock:
            states = self._states.pop(name, None)
            if states is None:
                return False
            self.rules = tuple(rule for rule in self.rules if rule.name != name)
            self._index()
            now = time.time()
            for state in states.values():
                if state.alert is not None:
                    alert = self._resolved(state, state.alert.value, now)
                    if state.delivered:
                        resolved.append(alert)
            self._count -= len(states)
        for alert in resolved:
            self._deliver(alert)
        return True

    def track(self, metric: str) -> None:
        """Keep recent values of ``metric`` for :meth:`statistics` (bounded: :class:`SeriesHistory`)."""
        with self._lock:
            self.history.track(metric)

    def statistics(
        self,
        metric: str,
        labels: Mapping[str, str] | None = None,
        *,
        signal: str = "value",
        window_s: float = 300.0,
        now: float | None = None,
    ) -> SeriesStatistics:
        """Count, mean, p50, p95 and p99 of ``metric``'s ``signal`` over the last ``window_s``.

        Pools every series whose attributes contain ``labels``. A metric not tracked yet
        is tracked from now on (its first answer has ``count == 0``): call :meth:`track`
        up front for a metric you will ask about.
        """
        now = time.time() if now is None else now
        with self._lock:
            self.history.track(metric)
            return self.history.statistics(metric, labels, signal, window_s, now)

    def silence(self, matchers: Mapping[str, str], duration_s: float, now: float | None = None) -> Silence:
        """Mute alerts matching ``matchers`` for ``duration_s`` seconds."""
        entry = Silence(dict(matchers), (now if now is not None else time.time()) + duration_s)
        with self._lock:
            self._silences.append(entry)
        return entry

    def active_alerts(self) -> list[Alert]:
        with self._lock:
            return [s.alert for s in self._alerting_states() if s.alert is not None]

    def evaluate(self, points: Iterable[SeriesPoint], now: float | None = None) -> list[Alert]:
        """Feed one collection's points; deliver and return the alert changes."""
        now = time.time() if now is None else now
        changes: list[tuple[_State, Alert]] = []
        with self._lock:
            if self.history.tracking:
                points = points if isinstance(points, list) else list(points)
                self.history.record(points, now)
            self._evict_idle(now, changes)  # first, so that idle series free their places
            self._feed(points, changes)
            self._silences = [s for s in self._silences if s.until > now]
            delivered = self._filter(changes, now)
        for alert in delivered:
            self._deliver(alert)
        return delivered

    def _feed(self, points: Iterable[SeriesPoint], changes: list[tuple[_State, Alert]]) -> None:
        """The hot loop: every point to the detectors of the rules that watch it."""
        by_signal = self._by_signal
        isfinite = math.isfinite
        oldest = self._oldest
        seq = self._seq
        metric = signal = None
        targets: list[_Target] | None = None
        try:
            for point in points:
                m, sg, attributes, t, value, exemplars = point
                if m is not metric or sg is not signal:  # points come in runs of one metric and signal
                    metric, signal = m, sg
                    targets = by_signal.get((m, sg))
                if not targets:
                    continue
                if not isfinite(value):
                    self.skipped += 1
                    continue
                if not t >= oldest:  # an earlier time; or NaN (such a state is idle at once)
                    oldest = -math.inf if math.isnan(t) else t
                for rule, match, states in targets:
                    if match is not None and not all(_get(attributes, k) == v for k, v in match):
                        continue
                    state = states.get(attributes)
                    if state is None:
                        state = self._new_state(rule, states, attributes)
                    seq += 1
                    state.seq = seq
                    state.last_seen = t
                    detector = state.detector
                    detector.update(t, value)
                    if exemplars:
                        state.exemplars = exemplars
                    if state.alert is None and not detector.is_anomaly:
                        # a normal value, no alert: nothing can fire (for_evaluations >= 1)
                        state.normal += 1
                        state.anomalous = 0
                        state.anomalous_since = None
                        continue
                    change = self._update(state, point)
                    if change is not None:
                        changes.append((state, change))
        finally:
            self._oldest = oldest
            self._seq = seq

    def _alerting_states(self) -> list[_State]:
        """The states with an alert, least recently updated first."""
        return sorted(self._alerting.values(), key=lambda s: s.seq)

    def _filter(self, changes: list[tuple[_State, Alert]], now: float) -> list[Alert]:
        """Apply silences and inhibition; a suppressed firing alert is offered again later."""
        out: list[Alert] = []
        changed = {id(state) for state, _ in changes}
        # firing alerts held back earlier and not changed now: deliver once unmuted
        held = [
            (s, s.alert)
            for s in (self._alerting_states() if self._alerting else ())
            if s.alert and s.held and id(s) not in changed
        ]
        for state, alert in [*changes, *held]:
            if alert.state is AlertState.RESOLVED:
                # the sinks never saw a suppressed alert fire; one they saw fire, they see resolve
                # (also when a later change of it, an escalation, was held back)
                if state.delivered:
                    out.append(alert)
                state.delivered = state.held = False
            elif self._suppressed(alert, now):
                if id(state) in changed:
                    self.suppressed += 1  # counted once per change held back
                state.held = True
            else:
                state.delivered = True
                state.held = False
                out.append(alert)
        return out

    # -- internals ----------------------------------------------------------------------
    def _new_state(self, rule: Rule, states: _States, attributes: Attributes) -> _State:
        """A new series' state, or the overflow series' once ``max_series`` are held."""
        if self._count >= self.max_series - 1:  # keep one place for the overflow series
            self.overflowed += 1
            state = states.get(OVERFLOW)
            if state is not None:
                return state
            attributes = OVERFLOW
        state = _State(rule, attributes, make_detector(**rule.detector))
        states[attributes] = state
        self._count += 1
        return state

    def _evict_idle(self, now: float, changes: list[tuple[_State, Alert]]) -> None:
        """Evict series silent for ``idle_timeout_s``; a firing alert on one is resolved.

        What goes: the least recently updated states up to the first one updated at or
        after the horizon (with point times that go back, an idle state updated after a
        fresh one waits for it). A sweep over every state, run only when one may be
        idle: no state's last point is older than ``_oldest``.
        """
        horizon = now - self.idle_timeout_s
        if horizon <= self._oldest:
            return
        idle: list[tuple[_States, Attributes, _State]] = []
        oldest = math.inf  # of the fresh states
        first_fresh = math.inf  # the least recently updated fresh state's seq
        for states in self._states.values():
            for attributes, state in states.items():
                seen = state.last_seen
                if not seen >= horizon:
                    idle.append((states, attributes, state))
                else:  # (not min(): a function call per state)
                    oldest = seen if seen < oldest else oldest
                    first_fresh = state.seq if state.seq < first_fresh else first_fresh
        idle.sort(key=lambda entry: entry[2].seq)
        for states, attributes, state in idle:
            if state.seq > first_fresh:
                oldest = -math.inf  # still idle: look again next time
                break
            if state.alert is not None:
                changes.append((state, self._resolved(state, state.alert.value, now)))
            del states[attributes]
            self._count -= 1
            self.evicted += 1
        self._oldest = oldest

    def _labels(self, rule: Rule, attributes: Attributes) -> dict[str, str]:
        keep = rule.labels
        labels = {k: v for k, v in attributes if keep is None or k in keep or k == "otel.metric.overflow"}
        if rule.scope == "host":
            labels.update(self.host_labels)
            labels["scope"] = "host"
        else:
            labels.update(self.resource_labels)
        return labels

    def _update(self, state: _State, point: SeriesPoint) -> Alert | None:
        """The alert lifecycle after the state's detector took ``point``."""
        rule = state.rule
        detector = state.detector
        if detector.is_anomaly:
            state.anomalous += 1
            state.normal = 0
            if state.anomalous_since is None:
                state.anomalous_since = point.t
            recent = state.recent
            if state.anomalous == 1 or recent is None:
                state.recent = [point.value]
            else:
                recent.append(point.value)
                if len(recent) > RECENT_VALUES:
                    del recent[0]
        else:
            state.normal += 1
            state.anomalous = 0
            state.anomalous_since = None
        if state.alert is None:
            return self._maybe_fire(state, point)
        if state.normal >= rule.resolve_after:
            return self._resolved(state, point.value, point.t)
        return self._maybe_escalate(state, point)

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
        self._alerting[id(state)] = state
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
        del self._alerting[id(state)]
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
            recent_values=tuple(state.recent or ()),
        )

    def _suppressed(self, alert: Alert, now: float) -> bool:
        labels = alert.labels
        if any(s.matches(labels, now) for s in self._silences):
            return True
        targeted = [inhibition for inhibition in self.inhibitions if inhibition.is_target(labels)]
        if not targeted:
            return False
        key = alert.key
        for state in self._alerting.values():
            source = state.alert
            if source is None or source.state is not AlertState.FIRING or source.key == key:
                continue
            source_labels = source.labels
            if any(inhibition.mutes(source_labels, labels) for inhibition in targeted):
                return True
        return False

    def _deliver(self, alert: Alert) -> None:
        level = logging.INFO if alert.state is AlertState.RESOLVED else _LOG_LEVELS[alert.severity]
        _log.log(level, "alert %s %s [%s]: %s", alert.name, alert.state.value, alert.severity.label, alert.summary)
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
