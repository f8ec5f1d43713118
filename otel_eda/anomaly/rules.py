"""Alert rules: which series to watch, with which detector, and how alerts behave.

Rules are declared in Python (:class:`Rule`) or in a YAML / JSON file named by
``OTEL_EDA_RULES_FILE`` (:func:`load_rules`)::

    rules:
      - name: processing-latency
        alert: ProcessingLatencyHigh        # Alertmanager's alertname
        metric: messaging.process.duration
        signal: p95                         # rate | value | count | mean | p95 | p99 | error_ratio
        match: {messaging.destination.name: order_placed}   # optional, exact matches
        labels: [messaging.destination.name, messaging.consumer.group.name]  # kept on the alert
        detector: {kind: threshold, op: gt, value: 0.5}
        severity: warning                   # info | warning | critical
        for: 2                              # consecutive anomalous evaluations (or "30s")
        resolve_after: 3                    # consecutive normal evaluations before resolving
        cooldown: 60s                       # no new alert for this rule+series after a resolve
        escalate_after: 5m                  # severity rises one step if still firing
        escalate_factor: 1.5                # ... or at once when value > 1.5 x threshold

        scope: service                      # service | host (host: labelled with the host, no service)

    inhibit:                                # optional; see otel_eda.anomaly.inhibition
      - source_match: {alertname: QueueFull}
        target_match: {alertname: QueueNearlyFull}
        equal: [messaging.destination.name, messaging.consumer.group.name]

A rules file replaces the default rule set *and* the default inhibitions. Reading one is
bounded (:mod:`otel_eda.anomaly.rulesfile`); a malformed file is reported as
``RulesFileError("<file>:<line>: <reason>")``. From Python, :func:`condition_rule` makes
a rule from a plain ``condition(value) -> bool``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from otel_eda import semconv
from otel_eda.anomaly.alerts import Severity
from otel_eda.anomaly.detectors.base import z_to_score
from otel_eda.anomaly.inhibition import Inhibition

__all__ = [
    "SCOPES",
    "SIGNALS",
    "Rule",
    "RuleSet",
    "RulesFileError",
    "condition_rule",
    "default_inhibitions",
    "default_rule_set",
    "default_rules",
    "load_rule_set",
    "load_rules",
    "parse_duration",
]

SIGNALS = frozenset({"rate", "value", "count", "mean", "p95", "p99", "error_ratio"})
#: ``service``: an alert about the reporting service (labelled ``service``); ``host``: about
#: the machine it runs on (labelled ``host`` and ``scope=host``, never charged to a service).
SCOPES = frozenset({"service", "host"})


def parse_duration(value: object) -> float:
    """Seconds from ``30``, ``"30s"``, ``"5m"``, ``"1h"`` or ``"250ms"``.

    >>> parse_duration("5m"), parse_duration(2.5), parse_duration("250ms")
    (300.0, 2.5, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number of seconds or a string like '30s'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 1h, 250ms)")
        unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]
        seconds = float(match.group(1)) * unit
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


@dataclasses.dataclass(frozen=True)
class Rule:
    """One alert rule. See the module documentation for the meaning of each field."""

    name: str
    metric: str
    signal: str = "value"
    detector: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "zscore"})
    alert: str | None = None
    severity: Severity = Severity.WARNING
    match: Mapping[str, str] = dataclasses.field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    for_evaluations: int = 1
    for_seconds: float = 0.0
    resolve_after: int = 3
    cooldown_s: float = 60.0
    escalate_after_s: float | None = None
    escalate_factor: float | None = 1.5
    summary: str = "{alert}: {metric} {signal} = {value:.4g} on {series}"
    scope: str = "service"

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a rule needs a name")
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}: use one of {', '.join(sorted(SIGNALS))}")
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError("a rule needs a metric name")
        if "kind" not in self.detector:
            raise ValueError("detector needs a 'kind'")
        if self.scope not in SCOPES:
            raise ValueError(f"unknown scope {self.scope!r}: use service or host")
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        object.__setattr__(self, "match", MappingProxyType({str(k): str(v) for k, v in self.match.items()}))
        object.__setattr__(self, "detector", MappingProxyType(dict(self.detector)))
        if self.for_evaluations < 1 or self.resolve_after < 1:
            raise ValueError("for and resolve_after count evaluations: at least 1")
        if self.escalate_factor is not None and self.escalate_factor <= 1:
            raise ValueError("escalate_factor must be greater than 1")
        # build it once here so that a bad detector is reported with the rule
        from otel_eda.anomaly.registry import make_detector

        make_detector(**self.detector)

    @property
    def alert_name(self) -> str:
        return self.alert or "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", self.name))


class RulesFileError(ValueError):
    """A rules file that cannot be used; the message names the file, the line and why."""


# file fields passed to Rule as they are; "for", "cooldown" and "escalate_after" are parsed
_FIELDS = frozenset(
    {
        "name",
        "metric",
        "signal",
        "detector",
        "alert",
        "severity",
        "match",
        "labels",
        "resolve_after",
        "summary",
        "escalate_factor",
        "scope",
    }
)


def _rule_from_mapping(raw: Mapping[str, Any]) -> Rule:
    unknown = set(raw) - set(_FIELDS) - {"for", "cooldown", "escalate_after"}
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    for required in ("name", "metric"):
        if required not in raw:
            raise ValueError(f"missing field {required!r}")
    kwargs: dict[str, Any] = {k: v for k, v in raw.items() if k in _FIELDS}
    if "labels" in kwargs and kwargs["labels"] is not None:
        kwargs["labels"] = tuple(str(x) for x in kwargs["labels"])
    if "for" in raw:
        spec = raw["for"]
        if isinstance(spec, int) and not isinstance(spec, bool):
            kwargs["for_evaluations"] = spec
        else:
            kwargs["for_seconds"] = parse_duration(spec)
    if "cooldown" in raw:
        kwargs["cooldown_s"] = parse_duration(raw["cooldown"])
    if "escalate_after" in raw:
        kwargs["escalate_after_s"] = parse_duration(raw["escalate_after"])
    if "detector" in kwargs and not isinstance(kwargs["detector"], Mapping):
        raise ValueError("detector must be a mapping with a 'kind'")
    if "detector" in kwargs and kwargs["detector"].get("kind") == "condition":
        raise ValueError("the 'condition' detector takes a Python callable: add the rule from Python (add_alert_rule)")
    if "match" in kwargs and not isinstance(kwargs["match"], Mapping):
        raise ValueError("match must be a mapping of attribute to value")
    return Rule(**kwargs)


@dataclasses.dataclass(frozen=True)
class RuleSet:
    """Rules and the inhibitions between their alerts: what a rules file holds."""

    rules: tuple[Rule, ...]
    inhibitions: tuple[Inhibition, ...] = ()


def load_rule_set(path: str | Path) -> RuleSet:
    """Read rules and inhibitions from a YAML (``otel-eda[rules]``) or JSON file, bounded.

    Raises :class:`RulesFileError`. See :mod:`otel_eda.anomaly.rulesfile` for the limits;
    the same unchanged file is parsed once per process.
    """
    from otel_eda.anomaly.rulesfile import read_rule_set

    return read_rule_set(path)


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of a rules file (:func:`load_rule_set` without the inhibitions)."""
    return list(load_rule_set(path).rules)


def condition_rule(
    name: str,
    condition: Callable[[float], object],
    severity: Severity | str = Severity.WARNING,
    description: str | None = None,
    *,
    metric: str,
    signal: str = "value",
    **fields: Any,
) -> Rule:
    """A rule that fires when ``condition(value)`` is true for a series of ``metric``.

    ``description`` is the alert's summary (a template like :attr:`Rule.summary`);
    ``fields`` are any other :class:`Rule` fields (``match``, ``labels``,
    ``for_evaluations``, ``scope``, ...).

    >>> rule = condition_rule("queue-long", lambda depth: depth > 500, "critical",
    ...                       "{series} holds {value:.0f} messages", metric="eda.bus.queue.depth")
    >>> rule.severity.label, rule.detector["kind"]
    ('critical', 'condition')
    """
    if not callable(condition):
        raise ValueError(f"condition must be callable, got {type(condition).__name__}")
    if description is not None:
        fields["summary"] = description
    return Rule(
        name=name,
        metric=metric,
        signal=signal,
        severity=Severity.parse(severity),
        detector={"kind": "condition", "condition": condition},
        escalate_factor=fields.pop("escalate_factor", None),
        **fields,
    )


# The default rules' ARTime (the latency, error-ratio and lag signals): at most this many series
# per process carry it (the rest keep their fallback). ``benchmarks/anomaly_speed.py`` section
# "artime" measures what fits the 0.5 s budget of one collection (about 5,000-20,000 series at
# its mean cost, depending on the machine's load) and the memory: at most about 2.2 MB per series
# at the 1000-category cap, so memory sets the cap: 200 series, at most about 0.45 GB.
ARTIME_BUDGET = 200
_LATENCY_ZSCORE: Mapping[str, Any] = MappingProxyType({"kind": "zscore", "window": 120, "direction": "up", "hold": 120})


def artime_rule_detector(fallback: Mapping[str, Any] | None) -> dict[str, Any]:
    """The default rules' detector for a signal that rises in an incident: ARTime, confirmed, after a fallback.

    ARTime (as shipped: its range learnt online) decides *when* a series departs from its
    learnt shape; its verdict counts only while the series has also risen for a whole
    downsampling step of ARTime's (7 values): the median of the step's values at least 4.5
    standard deviations above the mean of the previous 480 steps' medians (a z-score
    detector fed once per step, ``direction="up"``, which keeps up to 120 anomalous steps
    out of its window). One outlier cannot move a step's median, so heavy-tailed noise,
    whose shape ARTime finds new a few times a day, does not page; a rise that lasts a step
    does. ``fallback`` answers for the first 750 points (and, past :data:`ARTIME_BUDGET`
    series, for good); the start of ARTime is staggered over 0-750 points so that series
    created together do not end their warm-up batch in the same collection.

    The gate's settings (step medians, 480 steps, z >= 4.5) were chosen on synthetic series
    only (``benchmarks/artime_gate.py``): quiet ones (Gaussian, log-normal, Student-t, daily
    and hourly cycles with noise, a bounded random walk, a ratio of few failures; three
    seeds, three simulated days each), where no day of any may raise more than one alert,
    then the most synthetic incidents found; before any NAB score was seen. None was tuned
    on NAB.

    >>> spec = artime_rule_detector(None)
    >>> d = spec["detector"]
    >>> d["kind"], d["confirm_on"], d["confirm"]["window"], spec["warmup"], spec["budget"]
    ('artime', 'step', 480, 750, 200)
    """
    confirm = {"kind": "zscore", "window": 480, "direction": "up", "hold": 120, "threshold": z_to_score(4.5)}
    return {
        "kind": "fallback",
        "detector": {"kind": "artime", "confirm": confirm, "confirm_on": "step"},
        "fallback": None if fallback is None else dict(fallback),
        "warmup": 750,
        "budget": ARTIME_BUDGET,
        "stagger": 750,
    }


def default_rules() -> list[Rule]:
    """The rule set otel-eda ships (and the demo uses)."""
    return [
        Rule(
            name="processing-latency",
            alert="ProcessingLatencyHigh",
            metric=semconv.METRIC_PROCESS_DURATION,
            signal="p95",
            detector=artime_rule_detector(_LATENCY_ZSCORE),
            labels=(semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME),
            for_evaluations=2,
            escalate_after_s=300.0,
            summary="p95 processing time of {series} is unusually high: {value:.3g} s",
        ),
        Rule(
            name="processing-errors",
            alert="ProcessingErrorsHigh",
            metric=semconv.METRIC_PROCESS_DURATION,
            signal="error_ratio",
            detector={"kind": "threshold", "op": "gt", "value": 0.2},
            labels=(semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME),
            for_evaluations=2,
            summary="{value:.0%} of handling attempts fail on {series}",
        ),
        Rule(
            name="processing-errors-unusual",
            alert="ProcessingErrorsUnusual",
            metric=semconv.METRIC_PROCESS_DURATION,
            signal="error_ratio",
            detector=artime_rule_detector(None),  # processing-errors covers the warm-up
            labels=(semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME),
            for_evaluations=2,
            escalate_factor=None,
            summary="the error ratio of {series} is unusually high for it: {value:.1%}",
        ),
        Rule(
            name="dead-letters",
            alert="EventsDeadLettered",
            metric=semconv.METRIC_DEAD_LETTERS,
            signal="rate",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            labels=(semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME),
            escalate_factor=None,
            summary="events are being dead-lettered on {series}",
        ),
        Rule(
            name="event-age",
            alert="EventAgeHigh",
            metric=semconv.METRIC_EVENT_AGE,
            signal="p95",
            detector={"kind": "threshold", "op": "gt", "value": 5.0},
            labels=(semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME),
            for_evaluations=2,
            summary="events wait {value:.3g} s (p95) before {series} handles them",
        ),
        Rule(
            name="host-cpu",
            alert="HostCpuHigh",
            metric="system.cpu.utilization",
            signal="value",
            match={"state": "idle"},
            detector={"kind": "threshold", "op": "lt", "value": 0.1},
            labels=("cpu",),
            for_evaluations=3,
            escalate_factor=None,
            summary="CPU {series} is less than 10% idle ({value:.0%})",
            scope="host",
        ),
        Rule(
            name="spans-lost",
            alert="SpansLost",
            metric=semconv.METRIC_SPANS_LOST,
            signal="rate",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            labels=(semconv.EDA_REASON, semconv.EDA_EXPORTER, "otel.component.type"),
            escalate_factor=None,
            summary="spans are being lost ({series}): {value:.3g} per second",
        ),
        *_backpressure_rules(),
        *_consumer_lag_rules(),
        *_host_memory_rules(),
    ]


def _growth() -> dict[str, Any]:
    """A gauge that keeps rising past its usual range (lag, queue depth): 12 points of
    significant rise, by 10 or more, ending above the usual level (mean + 3 sd over about the
    last 720 points, an hour at the default 5 s: a lag's minute-long wander after a burst is
    usual)."""
    return {"kind": "growth", "window": 12, "min_increase": 10, "baseline_span": 720}


_QUEUE_LABELS = (semconv.MESSAGING_SYSTEM, semconv.MESSAGING_DESTINATION_NAME, semconv.MESSAGING_CONSUMER_GROUP_NAME)
_LAG_LABELS = (
    semconv.MESSAGING_DESTINATION_NAME,
    semconv.MESSAGING_DESTINATION_PARTITION_ID,
    semconv.MESSAGING_CONSUMER_GROUP_NAME,
)


def _backpressure_rules() -> list[Rule]:
    """Queues filling up, events dropped, publishers waiting: the embedded bus and brokers."""
    return [
        Rule(
            name="queue-nearly-full",
            alert="QueueNearlyFull",
            metric=semconv.METRIC_QUEUE_UTILIZATION,
            detector={"kind": "threshold", "op": "ge", "value": 0.8},
            labels=_QUEUE_LABELS,
            for_evaluations=2,
            escalate_factor=None,
            summary="the queue of {series} is {value:.0%} full",
        ),
        Rule(
            name="queue-full",
            alert="QueueFull",
            metric=semconv.METRIC_QUEUE_UTILIZATION,
            detector={"kind": "threshold", "op": "ge", "value": 1.0},
            severity=Severity.CRITICAL,
            labels=_QUEUE_LABELS,
            escalate_factor=None,
            summary="the queue of {series} is full: publishers wait, then drop events",
        ),
        Rule(
            name="events-dropped",
            alert="EventsDropped",
            metric=semconv.METRIC_DROPPED,
            signal="rate",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            severity=Severity.CRITICAL,
            labels=_QUEUE_LABELS,
            escalate_factor=None,
            summary="events are dropped because the queue of {series} stayed full ({value:.3g} per second)",
        ),
        Rule(
            name="publish-waits",
            alert="PublishWaits",
            metric=semconv.METRIC_PUBLISH_WAIT,
            signal="count",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            labels=(semconv.MESSAGING_SYSTEM, semconv.MESSAGING_DESTINATION_NAME),
            for_evaluations=2,
            escalate_factor=None,
            summary="publishers to {series} wait for room in a full queue ({value:.3g} per second)",
        ),
        Rule(
            name="broker-queue-growing",
            alert="BrokerQueueGrowing",
            metric=semconv.METRIC_BROKER_QUEUE_DEPTH,
            detector=_growth(),
            labels=(semconv.MESSAGING_SYSTEM, semconv.MESSAGING_DESTINATION_NAME),
            for_evaluations=2,
            escalate_after_s=600.0,
            escalate_factor=None,
            summary="the broker queue {series} keeps growing ({value:.0f} messages): consumers fall behind",
        ),
    ]


def _consumer_lag_rules() -> list[Rule]:
    """A consumer group falling behind: its lag grows (a warning), or kept growing for 10 minutes."""
    growth = _growth()
    return [
        Rule(
            name="consumer-lag-growing",
            alert="ConsumerLagGrowing",
            metric=semconv.METRIC_CONSUMER_LAG,
            detector=growth,
            labels=_LAG_LABELS,
            for_evaluations=2,
            escalate_factor=None,
            summary="consumer lag of {series} keeps growing ({value:.0f} messages behind)",
        ),
        Rule(
            name="consumer-lag-critical",
            alert="ConsumerLagCritical",
            metric=semconv.METRIC_CONSUMER_LAG,
            detector=growth,
            severity=Severity.CRITICAL,
            labels=_LAG_LABELS,
            for_seconds=600.0,
            escalate_factor=None,
            summary="consumer lag of {series} has grown for 10 minutes ({value:.0f} messages behind)",
        ),
        Rule(
            name="consumer-lag-unusual",
            alert="ConsumerLagUnusual",
            metric=semconv.METRIC_CONSUMER_LAG,
            detector=artime_rule_detector(None),  # the growth rules cover the warm-up
            labels=_LAG_LABELS,
            for_evaluations=2,
            escalate_factor=None,
            summary="consumer lag of {series} is unusually high for it ({value:.0f} messages behind)",
        ),
    ]


def _host_memory_rules() -> list[Rule]:
    """Memory pressure on the host (``system.memory.utilization`` of the used state)."""
    return [
        Rule(
            name="host-memory",
            alert="HostMemoryHigh",
            metric="system.memory.utilization",
            match={"state": "used"},
            detector={"kind": "threshold", "op": "gt", "value": 0.9},
            labels=(),
            for_evaluations=3,
            escalate_factor=None,
            summary="host memory is {value:.0%} used",
            scope="host",
        ),
        Rule(
            name="host-memory-critical",
            alert="HostMemoryCritical",
            metric="system.memory.utilization",
            match={"state": "used"},
            detector={"kind": "threshold", "op": "gt", "value": 0.97},
            severity=Severity.CRITICAL,
            labels=(),
            for_evaluations=2,
            escalate_factor=None,
            summary="host memory is {value:.0%} used: the kernel may kill processes",
            scope="host",
        ),
    ]


def default_inhibitions() -> list[Inhibition]:
    """The default pairs: a critical alert mutes the warning about the same thing only."""
    return [
        Inhibition({"alertname": "QueueFull"}, {"alertname": "QueueNearlyFull"}, _QUEUE_LABELS),
        Inhibition({"alertname": "ConsumerLagCritical"}, {"alertname": "ConsumerLagGrowing"}, _LAG_LABELS),
        Inhibition({"alertname": "ConsumerLagCritical"}, {"alertname": "ConsumerLagUnusual"}, _LAG_LABELS),
        Inhibition({"alertname": "HostMemoryCritical"}, {"alertname": "HostMemoryHigh"}, ("host",)),
    ]


def default_rule_set() -> RuleSet:
    """:func:`default_rules` with :func:`default_inhibitions`."""
    return RuleSet(tuple(default_rules()), tuple(default_inhibitions()))
