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

A malformed file is reported as ``RulesFileError("<file>:<line>: <reason>")``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from otel_eda.anomaly.alerts import Severity

__all__ = ["SIGNALS", "Rule", "RulesFileError", "default_rules", "load_rules", "parse_duration"]

SIGNALS = frozenset({"rate", "value", "count", "mean", "p95", "p99", "error_ratio"})


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

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("a rule needs a name")
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}: use one of {', '.join(sorted(SIGNALS))}")
        if "kind" not in self.detector:
            raise ValueError("detector needs a 'kind'")
        object.__setattr__(self, "severity", Severity.parse(self.severity))
        object.__setattr__(self, "match", MappingProxyType({str(k): str(v) for k, v in self.match.items()}))
        object.__setattr__(self, "detector", MappingProxyType(dict(self.detector)))
        if self.for_evaluations < 1 or self.resolve_after < 1:
            raise ValueError("for and resolve_after count evaluations: at least 1")
        if self.escalate_factor is not None and self.escalate_factor <= 1:
            raise ValueError("escalate_factor must be greater than 1")
        # build it once here so that a bad detector is reported with the rule
        from otel_eda.anomaly.detectors import make_detector

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
    if "match" in kwargs and not isinstance(kwargs["match"], Mapping):
        raise ValueError("match must be a mapping of attribute to value")
    return Rule(**kwargs)


def load_rules(path: str | Path) -> list[Rule]:
    """Read rules from a YAML (needs PyYAML: ``otel-eda[rules]``) or JSON file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise RulesFileError(f"{path}:0: cannot read the rules file ({exc.strerror})") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    items = _yaml_items(path, text) if is_yaml else _json_items(path, text)
    rules: list[Rule] = []
    names: set[str] = set()
    for line, raw in items:
        if not isinstance(raw, Mapping):
            raise RulesFileError(f"{path}:{line}: each rule must be a mapping")
        try:
            rule = _rule_from_mapping(raw)
        except (ValueError, TypeError) as exc:
            raise RulesFileError(f"{path}:{line}: rule {raw.get('name', '?')!r}: {exc}") from None
        if rule.name in names:
            raise RulesFileError(f"{path}:{line}: duplicate rule name {rule.name!r}")
        names.add(rule.name)
        rules.append(rule)
    return rules


def _yaml_items(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        import yaml
    except ImportError:
        raise RulesFileError(f"{path}:0: YAML rules need PyYAML: pip install 'otel-eda[rules]'") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        raise RulesFileError(f"{path}:{line}: {getattr(exc, 'problem', None) or exc}") from None
    seq = _rules_node(path, root, yaml)
    loader = yaml.SafeLoader("")
    items = []
    for node in seq:
        try:
            items.append((node.start_mark.line + 1, loader.construct_document(node)))
        except yaml.YAMLError as exc:  # e.g. a tag SafeLoader refuses (!!python/object)
            mark = getattr(exc, "problem_mark", None) or node.start_mark
            raise RulesFileError(f"{path}:{mark.line + 1}: {getattr(exc, 'problem', None) or exc}") from None
    return items


def _rules_node(path: Path, root: Any, yaml: Any) -> list[Any]:
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "rules":
                root = value
                break
        else:
            raise RulesFileError(f"{path}:{root.start_mark.line + 1}: expected a top-level 'rules:' list")
    if not isinstance(root, yaml.SequenceNode):
        line = root.start_mark.line + 1 if root is not None else 1
        raise RulesFileError(f"{path}:{line}: expected a list of rules")
    return list(root.value)


def _json_items(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesFileError(f"{path}:{exc.lineno}: {exc.msg}") from None
    rules = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(rules, list):
        raise RulesFileError(f"{path}:1: expected a list of rules (or an object with a 'rules' list)")
    # JSON has no node positions: find each rule's line from its "name"
    lines = []
    search_from = 0
    for raw in rules:
        line = 1
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            index = text.find(json.dumps(raw["name"]), search_from)
            if index >= 0:
                line = text.count("\n", 0, index) + 1
                search_from = index + 1
        lines.append((line, raw))
    return lines


def default_rules() -> list[Rule]:
    """The rule set otel-eda ships (and the demo uses)."""
    return [
        Rule(
            name="processing-latency",
            alert="ProcessingLatencyHigh",
            metric="messaging.process.duration",
            signal="p95",
            detector={"kind": "zscore", "window": 120, "direction": "up", "hold": 120},
            labels=("messaging.destination.name", "messaging.consumer.group.name"),
            for_evaluations=2,
            escalate_after_s=300.0,
            summary="p95 processing time of {series} is unusually high: {value:.3g} s",
        ),
        Rule(
            name="processing-errors",
            alert="ProcessingErrorsHigh",
            metric="messaging.process.duration",
            signal="error_ratio",
            detector={"kind": "threshold", "op": "gt", "value": 0.2},
            labels=("messaging.destination.name", "messaging.consumer.group.name"),
            for_evaluations=2,
            summary="{value:.0%} of handling attempts fail on {series}",
        ),
        Rule(
            name="dead-letters",
            alert="EventsDeadLettered",
            metric="eda.bus.dead_letters",
            signal="rate",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            labels=("messaging.destination.name", "messaging.consumer.group.name"),
            escalate_factor=None,
            summary="events are being dead-lettered on {series}",
        ),
        Rule(
            name="event-age",
            alert="EventAgeHigh",
            metric="eda.event.age",
            signal="p95",
            detector={"kind": "threshold", "op": "gt", "value": 5.0},
            labels=("messaging.destination.name", "messaging.consumer.group.name"),
            for_evaluations=2,
            summary="events wait {value:.3g} s (p95) before {series} handles them",
        ),
        Rule(
            name="consumer-lag",
            alert="ConsumerLagGrowing",
            metric="eda.consumer.lag",
            signal="value",
            detector={"kind": "trend", "window": 20, "warmup": 12, "direction": "up"},
            labels=(
                "messaging.destination.name",
                "messaging.destination.partition.id",
                "messaging.consumer.group.name",
            ),
            for_evaluations=3,
            summary="the consumer lag of {series} keeps growing: {value:.0f} records behind",
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
        ),
        Rule(
            name="spans-lost",
            alert="SpansLost",
            metric="eda.export.spans.lost",
            signal="rate",
            detector={"kind": "threshold", "op": "gt", "value": 0.0},
            labels=("eda.reason", "eda.exporter", "otel.component.type"),
            escalate_factor=None,
            summary="spans are being lost ({series}): {value:.3g} per second",
        ),
    ]
