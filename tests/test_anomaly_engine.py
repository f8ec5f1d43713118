"""The anomaly engine: alert lifecycle, escalation, suppression and bounded state."""

from __future__ import annotations

import math
import tracemalloc
from typing import Any

import pytest

from otel_eda.anomaly.alerts import Alert, AlertState, Exemplar, Severity
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.inhibition import Inhibition
from otel_eda.anomaly.rules import Rule
from otel_eda.anomaly.series import SeriesPoint

QUEUE = (("messaging.destination.name", "order_placed"), ("messaging.consumer.group.name", "payment"))


def errors_rule(**overrides: object) -> Rule:
    fields: dict[str, object] = {
        "name": "processing-errors",
        "alert": "ProcessingErrorsHigh",
        "metric": "messaging.process.duration",
        "signal": "error_ratio",
        "detector": {"kind": "threshold", "op": "gt", "value": 0.2},
        "for_evaluations": 2,
        "resolve_after": 2,
        "cooldown_s": 10.0,
    }
    fields.update(overrides)
    return Rule(**fields)  # type: ignore[arg-type]


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def states(self) -> list[tuple[str, str]]:
        return [(a.state.value, a.severity.label) for a in self.alerts]


def feed(engine: AnomalyEngine, values: list[float], start: float = 0.0, attrs: tuple = QUEUE) -> None:  # type: ignore[type-arg]
    for i, v in enumerate(values):
        t = start + i
        engine.evaluate([SeriesPoint("messaging.process.duration", "error_ratio", attrs, t, v)], now=t)


def test_fires_after_for_and_resolves_with_hysteresis() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule()], [sink], resource_labels={"service": "payment-svc"})
    feed(engine, [0.0, 0.25, 0.0, 0.25, 0.25, 0.25, 0.1, 0.25, 0.1, 0.1])
    # one anomalous point is not enough (for: 2); a dip of one point does not resolve (resolve_after: 2)
    assert sink.states() == [("firing", "warning"), ("resolved", "warning")]
    firing, resolved = sink.alerts
    assert firing.started_at == 4.0 and resolved.ended_at == 9.0
    assert firing.labels == {
        "messaging.destination.name": "order_placed",
        "messaging.consumer.group.name": "payment",
        "service": "payment-svc",
        "alertname": "ProcessingErrorsHigh",
        "rule": "processing-errors",
        "severity": "warning",
    }
    assert firing.threshold == 0.2 and firing.value == 0.25
    assert firing.summary.startswith("ProcessingErrorsHigh: messaging.process.duration error_ratio = 0.25 on ")
    assert engine.active_alerts() == []


def test_a_firing_alert_is_not_repeated_and_cooldown_holds_back_a_new_one() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule()], [sink])
    feed(engine, [0.3] * 5 + [0.0, 0.0] + [0.3] * 4 + [0.0] * 6 + [0.3] * 3)
    # t=0..4 firing once; resolved at t=6; t=7..10 inside the 10 s cooldown; fires again at t=18
    assert [(a.state.value, a.started_at) for a in sink.alerts] == [
        ("firing", 1.0),
        ("resolved", 1.0),
        ("firing", 18.0),
    ]


def test_escalates_with_persistence_and_at_once_past_one_and_a_half_times_the_threshold() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule(escalate_after_s=3.0)], [sink])
    feed(engine, [0.25] * 9)
    assert sink.states() == [("firing", "warning"), ("firing", "critical")]
    assert sink.alerts[1].started_at == sink.alerts[0].started_at  # the same alert, escalated

    sink2 = Collect()
    engine2 = AnomalyEngine([errors_rule()], [sink2])
    feed(engine2, [0.25, 0.25, 0.31])  # 0.31 > 1.5 x 0.2
    assert sink2.states() == [("firing", "warning"), ("firing", "critical")]


def test_silences_mute_matching_alerts_until_they_expire() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule()], [sink], resource_labels={"service": "payment-svc"})
    engine.silence({"service": "payment-svc"}, duration_s=5.0, now=0.0)
    feed(engine, [0.3] * 3)
    assert sink.alerts == [] and engine.suppressed == 1
    assert [a.rule for a in engine.active_alerts()] == ["processing-errors"]  # tracked, not delivered
    feed(engine, [0.3] * 3, start=3.0)  # the silence ends at t=5: the still-firing alert goes out
    assert [(a.state.value, a.started_at) for a in sink.alerts] == [("firing", 1.0)]
    assert engine.suppressed == 1


def test_an_alert_resolved_while_muted_is_never_sent() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule()], [sink], resource_labels={"service": "payment-svc"})
    engine.silence({"service": "payment-svc"}, duration_s=100.0, now=0.0)
    feed(engine, [0.3, 0.3, 0.0, 0.0, 0.0])
    assert sink.alerts == []


def test_a_silent_series_resolves_its_alert_when_it_is_evicted() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule()], [sink], idle_timeout_s=10.0)
    feed(engine, [0.3, 0.3])
    engine.evaluate([], now=20.0)
    assert sink.states() == [("firing", "warning"), ("resolved", "warning")]
    assert engine.series_count == 0 and engine.evicted == 1


def critical_errors_rule() -> Rule:
    return errors_rule(
        name="errors-critical",
        alert="ProcessingErrorsCritical",
        severity="critical",
        detector={"kind": "threshold", "op": "gt", "value": 0.22},
    )


def test_without_inhibitions_a_critical_alert_mutes_nothing() -> None:
    sink = Collect()
    engine = AnomalyEngine([critical_errors_rule(), errors_rule()], [sink], resource_labels={"service": "payment-svc"})
    feed(engine, [0.25, 0.25, 0.25])
    assert sorted(a.rule for a in sink.alerts) == ["errors-critical", "processing-errors"]


def test_an_inhibition_mutes_only_its_targets_with_equal_labels() -> None:
    sink = Collect()
    other_warning = errors_rule(name="other", alert="SomethingElse", for_evaluations=1)
    pair = Inhibition(
        {"alertname": "ProcessingErrorsCritical"},
        {"alertname": "ProcessingErrorsHigh"},
        equal=("messaging.destination.name",),
    )
    engine = AnomalyEngine(
        [critical_errors_rule(), errors_rule(), other_warning],
        [sink],
        resource_labels={"service": "payment-svc"},
        inhibitions=[pair],
    )
    other_queue = (("messaging.destination.name", "order_shipped"), ("messaging.consumer.group.name", "payment"))
    for t in range(3):
        engine.evaluate(
            [
                SeriesPoint("messaging.process.duration", "error_ratio", QUEUE, float(t), 0.25),
                # the warning's own rule fires on another queue: not muted (equal labels differ)
                SeriesPoint("messaging.process.duration", "error_ratio", other_queue, float(t), 0.21),
            ],
            now=float(t),
        )
    got = sorted((a.rule, a.series_labels["messaging.destination.name"]) for a in sink.alerts)
    assert got == [
        ("errors-critical", "order_placed"),
        ("other", "order_placed"),  # a warning of the same service that the pair does not name
        ("other", "order_shipped"),
        ("processing-errors", "order_shipped"),
    ]
    assert engine.suppressed == 1
    # the critical alert resolves while the warning still fires: the warning is delivered then
    feed(engine, [0.21, 0.21, 0.21], start=3.0)
    assert ("processing-errors", "order_placed") in [
        (a.rule, a.series_labels["messaging.destination.name"]) for a in sink.alerts if a.state.value == "firing"
    ]


def test_nan_and_infinite_values_are_skipped_and_counted() -> None:
    engine = AnomalyEngine([errors_rule()])
    feed(engine, [math.nan, math.inf, -math.inf, 0.1])
    assert engine.skipped == 3
    assert engine.series_count == 1


def test_exemplars_of_the_offending_series_ride_on_the_alert_as_annotations() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule(for_evaluations=1)], [sink])
    ex = (Exemplar("a" * 32, "b" * 16),)
    engine.evaluate([SeriesPoint("messaging.process.duration", "error_ratio", QUEUE, 1.0, 0.5, ex)], now=1.0)
    (alert,) = sink.alerts
    assert alert.exemplars == ex
    assert alert.annotations()["trace_ids"] == "a" * 32
    assert "a" * 32 not in str(alert.labels)


def test_series_beyond_the_cap_go_to_one_overflow_series_and_idle_ones_are_evicted() -> None:
    engine = AnomalyEngine([errors_rule()], max_series=100, idle_timeout_s=500.0)
    for i in range(150):
        feed(engine, [0.0], start=float(i), attrs=(("messaging.destination.name", f"q{i}"),))
    assert engine.series_count == 100  # 99 series + the overflow series
    assert engine.overflowed == 51
    feed(engine, [0.0], start=1000.0, attrs=(("messaging.destination.name", "late"),))
    assert engine.evicted == 100
    assert engine.series_count == 1


def test_a_million_distinct_series_keep_memory_bounded() -> None:
    """1,000,000 attribute sets, fed as collections of 10,000 points one second apart."""
    engine = AnomalyEngine(
        [errors_rule(detector={"kind": "zscore", "window": 60})], max_series=1000, idle_timeout_s=3.0
    )
    settled = 0
    for batch in range(100):
        if batch == 80:  # long warmed up: trace the allocations of the last 200,000 points
            tracemalloc.start()
        if batch == 90:  # every state has been replaced since tracing started
            settled = tracemalloc.get_traced_memory()[0]
        t = float(batch)
        points = [
            SeriesPoint("messaging.process.duration", "error_ratio", (("k", f"{batch}-{i}"),), t, 0.0)
            for i in range(10_000)
        ]
        engine.evaluate(points, now=t)
        del points
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert engine.series_count <= 1000
    assert engine.overflowed > 900_000
    assert engine.evicted > 0
    # 100,000 more points after that left nothing more behind: no growth
    assert abs(current - settled) < 200_000, f"the engine grew by {current - settled} bytes over 100,000 points"
    # peak: one collection's points (10,000) in flight plus replaced states
    assert peak < 8_000_000, f"peak {peak} bytes"


def test_rules_are_validated_when_declared() -> None:
    with pytest.raises(ValueError, match="unknown signal"):
        Rule(name="r", metric="m", signal="p50")
    with pytest.raises(ValueError):
        Rule(name="r", metric="m", detector={"kind": "nope"})
    with pytest.raises(ValueError, match="severity"):
        Rule(name="r", metric="m", severity="urgent")  # type: ignore[arg-type]
    assert Rule(name="queue-depth", metric="m").alert_name == "QueueDepth"
    assert Rule(name="r", metric="m", severity="critical").severity is Severity.CRITICAL  # type: ignore[arg-type]
    assert AlertState.FIRING.value == "firing"


@pytest.mark.timeout(900)
def test_a_million_distinct_attribute_sets_through_a_meter_provider_keep_otel_edas_memory_bounded() -> None:
    """1,000,000 distinct attribute sets through a MeterProvider and the anomaly reader.

    Ten collections of 100,000 new sets each. The OpenTelemetry SDK 1.45 used here has no
    per-instrument cardinality limit at all (the 2000-set cap of other SDKs does not exist
    in it): its own storage keeps every set, about 550 bytes each, and collects them all
    every time, which is the SDK's business. otel-eda's part of each collection, measured
    with tracemalloc around the reader's ``_receive_metrics`` once warmed up (tracing only
    the last two collections: tracing slows the SDK tenfold), must stay within a bound:
    the engine holds at most ``max_series`` states, the conversion's cache at most twice a
    collection's points, and nothing else is kept.
    """
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_eda.anomaly.reader import AnomalyMetricReader

    rule = errors_rule(name="jobs", metric="jobs", signal="rate", detector={"kind": "zscore", "window": 30})
    engine = AnomalyEngine([rule], max_series=2_000, idle_timeout_s=0.0)
    reader = AnomalyMetricReader(engine, interval_s=3600, start=False)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("m").create_counter("jobs")
    receive = reader._receive_metrics
    measured: list[tuple[int, int]] = []  # (retained, transient peak) of otel-eda's part, bytes

    def measuring(metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if not tracemalloc.is_tracing():
            return receive(metrics_data, timeout_millis, **kwargs)
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        receive(metrics_data, timeout_millis, **kwargs)
        current, peak = tracemalloc.get_traced_memory()
        measured.append((current - before, peak - before))
        return None

    reader._receive_metrics = measuring  # type: ignore[method-assign]
    try:
        for batch in range(10):
            if batch == 8:
                tracemalloc.start()
            for i in range(100_000):
                counter.add(1, {"job": f"{batch}-{i}"})
            reader.force_flush()
    finally:
        tracemalloc.stop()
        provider.shutdown()
    print(f"otel-eda's part of the last two collections (retained, peak bytes): {measured}")
    assert engine.series_count <= 2_000
    assert engine.overflowed > 950_000 and engine.evicted > 15_000
    assert reader.collections >= 10
    assert len(measured) == 2
    # stated bound: 100,000 points in flight plus the conversion cache (2 x 100,000 entries)
    for retained, peak in measured:
        assert peak < 120_000_000, f"otel-eda's part peaked at {peak / 1e6:.1f} MB for 100,000 points"
        assert retained < 60_000_000, f"otel-eda's part kept {retained / 1e6:.1f} MB"
    assert sum(retained for retained, _ in measured) < 60_000_000


def _point(key: str, t: float, v: float, metric: str = "messaging.process.duration") -> SeriesPoint:
    return SeriesPoint(metric, "error_ratio", (("messaging.destination.name", key),), t, v)


def test_idle_series_go_least_recently_updated_first_and_resolve_their_alerts_in_that_order() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule(for_evaluations=1)], [sink], idle_timeout_s=10.0)
    engine.evaluate([_point("a", 0.0, 0.5), _point("b", 1.0, 0.5), _point("c", 2.0, 0.5)], now=2.0)
    engine.evaluate([_point("a", 3.0, 0.5)], now=3.0)  # a is now the most recently updated
    assert [a.series_labels["messaging.destination.name"] for a in engine.active_alerts()] == ["b", "c", "a"]
    engine.evaluate([], now=12.5)  # b (1.0) and c (2.0) are idle, a (3.0) is not
    resolved = [a.series_labels["messaging.destination.name"] for a in sink.alerts if a.state is AlertState.RESOLVED]
    assert resolved == ["b", "c"]
    assert engine.evicted == 2 and engine.series_count == 1


def test_with_times_that_go_back_an_idle_series_updated_after_a_fresh_one_waits_for_it() -> None:
    engine = AnomalyEngine([errors_rule()], idle_timeout_s=10.0)
    # b is updated after a, with an older time
    engine.evaluate([_point("a", 5.0, 0.0), _point("b", 0.0, 0.0)], now=5.0)
    engine.evaluate([], now=12.0)  # horizon 2: b is idle, but a, updated before it, is not
    assert engine.evicted == 0
    engine.evaluate([], now=16.0)  # horizon 6: both
    assert engine.evicted == 2 and engine.series_count == 0


def test_a_point_with_a_nan_time_leaves_its_series_idle() -> None:
    engine = AnomalyEngine([errors_rule()], idle_timeout_s=10.0)
    engine.evaluate([_point("a", math.nan, 0.0)], now=0.0)
    assert engine.series_count == 1
    engine.evaluate([], now=0.0)
    assert engine.evicted == 1 and engine.series_count == 0


def test_rules_find_their_metric_by_name_not_by_string_identity() -> None:
    sink = Collect()
    engine = AnomalyEngine([errors_rule(for_evaluations=1)], [sink])
    name = "".join(["messaging.process", ".duration"])  # equal, not the same object
    engine.evaluate([_point("a", 0.0, 0.1, metric=name), _point("b", 0.0, 0.5, metric=name)], now=0.0)
    assert [a.series_labels["messaging.destination.name"] for a in sink.alerts] == ["b"]


def test_one_collection_of_many_series_keeps_every_state_and_lifecycle() -> None:
    """20,000 series in one collection, some of them firing: the hot path and the full path agree."""
    sink = Collect()
    engine = AnomalyEngine([errors_rule(for_evaluations=2, resolve_after=1)], [sink], max_series=30_000)
    keys = [f"q{i}" for i in range(20_000)]
    for t in range(4):
        bad = {f"q{i}" for i in range(0, 20_000, 1_000)} if t in (1, 2) else set()
        engine.evaluate([_point(k, float(t), 0.25 if k in bad else 0.0) for k in keys], now=float(t))
    assert engine.series_count == 20_000
    assert sink.states() == [("firing", "warning")] * 20 + [("resolved", "warning")] * 20
    assert [a.started_at for a in sink.alerts[:20]] == [2.0] * 20


def test_an_alert_the_sinks_saw_fire_is_resolved_even_if_its_escalation_was_muted() -> None:
    sink = Collect()
    source = errors_rule(name="source", alert="Source", severity="critical", metric="other", for_evaluations=1)
    target = errors_rule(for_evaluations=1, escalate_after_s=2.0)
    pair = Inhibition({"alertname": "Source"}, {"alertname": "ProcessingErrorsHigh"})
    engine = AnomalyEngine([source, target], [sink], inhibitions=[pair])
    feed(engine, [0.21])  # the target fires, delivered
    for t, (target_value, source_value) in enumerate([(0.21, 0.9), (0.21, 0.9), (0.21, 0.9)], start=1):
        engine.evaluate(
            [
                SeriesPoint("messaging.process.duration", "error_ratio", QUEUE, float(t), target_value),
                SeriesPoint("other", "error_ratio", QUEUE, float(t), source_value),
            ],
            now=float(t),
        )
    assert engine.suppressed == 1  # the target's escalation to critical, while the source fires
    feed(engine, [0.0, 0.0], start=4.0)  # the target resolves (resolve_after: 2)
    target_changes = [(a.state.value, a.severity.label) for a in sink.alerts if a.rule == "processing-errors"]
    assert target_changes == [("firing", "warning"), ("resolved", "critical")]
