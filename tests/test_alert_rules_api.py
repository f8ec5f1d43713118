"""Alert rules as an API: run-time rules, custom detectors (Python and entry points),
recent values on alerts, statistics, host-scope labels."""

from __future__ import annotations

import importlib
import logging
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_eda.anomaly import registry
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.engine import RECENT_VALUES, AnomalyEngine
from otel_eda.anomaly.reader import AnomalyMetricReader, installed_reader
from otel_eda.anomaly.rules import Rule, condition_rule, load_rule_set
from otel_eda.anomaly.series import SeriesPoint
from otel_eda.settings import Settings

STEP_DETECTOR = '''
class StepDetector:
    """Anomalous when the value is at or above ``level`` (a third-party detector)."""

    def __init__(self, level: float) -> None:
        self.level = level
        self.threshold = 1.0
        self.score = 0.0
        self.value = None
        self.skipped = 0

    def update(self, t, x):
        self.value = x
        self.score = 1.0 if x >= self.level else 0.0
        return self

    @property
    def is_anomaly(self):
        return self.score >= self.threshold
'''


@pytest.fixture
def step_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A tiny installed distribution with an ``otel_eda_detectors`` entry point ``step``."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "step_detector_plugin.py").write_text(STEP_DETECTOR)
    info = site / "step_detector_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: step-detector-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[otel_eda_detectors]\nstep = step_detector_plugin:StepDetector\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield "step"
    registry._from_entry_points.pop("step", None)


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def firing(self) -> list[str]:
        return sorted(a.name for a in self.alerts if a.state.value == "firing")


def test_a_python_rule_and_a_rules_file_rule_with_an_entry_point_detector_fire_through_the_real_reader(
    tmp_path: Path, step_distribution: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        textwrap.dedent(
            """\
            rules:
              - name: backlog
                alert: BacklogHigh
                metric: jobs.backlog
                detector: {kind: step, level: 100}
            """
        )
    )
    got = Collect()
    # as configure() builds it: the settings name the rules file
    reader = AnomalyMetricReader(settings=Settings(rules_file=str(rules)), interval_s=3600, start=False)
    reader.add_callback(got)
    provider = MeterProvider(metric_readers=[reader])
    try:
        assert installed_reader(provider) is reader
        reader.engine.add_alert_rule(
            "jobs-failing",
            lambda rate: rate > 2,
            "critical",
            "{value:.0f} failures per second",
            metric="jobs.failed",
            signal="rate",
        )
        meter = provider.get_meter("app")
        backlog = {"queue": 50.0}
        meter.create_observable_gauge("jobs.backlog", callbacks=[lambda options: _observe(backlog)])
        failed = meter.create_counter("jobs.failed")
        reader.force_flush()
        assert got.alerts == []
        backlog["queue"] = 150.0
        failed.add(10_000)  # far above 2 per second whatever the interval
        reader.force_flush()
        assert got.firing() == ["BacklogHigh", "JobsFailing"]
        (backlog_alert,) = [a for a in got.alerts if a.name == "BacklogHigh"]
        assert backlog_alert.value == 150.0 and backlog_alert.recent_values == (150.0,)
        # the detector came from the installed distribution, through importlib.metadata
        (state,) = reader.engine._states["backlog"].values()
        assert isinstance(state.detector, registry.GuardedDetector)
        assert type(state.detector.inner).__module__ == "step_detector_plugin"
        assert registry.detector_kinds()["step"] == "entry point"
    finally:
        provider.shutdown()


def _observe(values: dict[str, float]) -> list[Observation]:
    return [Observation(values["queue"])]


def test_a_rules_file_naming_an_unknown_detector_says_how_to_provide_one(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text('{"rules": [{"name": "r", "metric": "m", "detector": {"kind": "nowhere"}}]}')
    with pytest.raises(
        ValueError, match=r"rules.json:1: rule 'r': unknown detector kind 'nowhere'.*otel_eda_detectors"
    ):
        load_rule_set(rules)


class Above:
    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.threshold = 1.0
        self.score = 0.0
        self.value: float | None = None
        self.skipped = 0

    def update(self, t: float, x: float) -> Above:
        self.value, self.score = x, float(x > self.limit)
        return self

    @property
    def is_anomaly(self) -> bool:
        return self.score >= self.threshold


@pytest.fixture
def above() -> Iterator[str]:
    registry.register_detector("above", Above)
    yield "above"
    registry.unregister_detector("above")


def points(metric: str, values: list[float], start: float = 0.0, signal: str = "value") -> list[SeriesPoint]:
    return [SeriesPoint(metric, signal, (("queue", "q1"),), start + i, v) for i, v in enumerate(values)]


def run(engine: AnomalyEngine, pts: list[SeriesPoint]) -> None:
    for p in pts:
        engine.evaluate([p], now=p.t)


def test_rules_added_and_removed_at_run_time_with_a_registered_detector(above: str) -> None:
    got = Collect()
    engine = AnomalyEngine([], [type("Sink", (), {"send": staticmethod(got)})()])
    run(engine, points("depth", [500.0]))
    engine.add_rule(Rule(name="deep", metric="depth", detector={"kind": above, "limit": 100}))
    with pytest.raises(ValueError, match="exists"):
        engine.add_rule(Rule(name="deep", metric="depth", detector={"kind": above, "limit": 1}))
    run(engine, points("depth", [500.0, 600.0], start=1.0))
    assert [(a.name, a.state.value) for a in got.alerts] == [("Deep", "firing")]
    assert engine.remove_rule("deep") and not engine.remove_rule("deep")
    # its firing alert is resolved at once, and the rule no longer watches
    assert [(a.name, a.state.value) for a in got.alerts] == [("Deep", "firing"), ("Deep", "resolved")]
    run(engine, points("depth", [700.0], start=3.0))
    assert len(got.alerts) == 2 and engine.series_count == 0 and engine.active_alerts() == []


def test_registry_refuses_built_in_and_conflicting_kinds(above: str) -> None:
    with pytest.raises(ValueError, match="built into otel-eda"):
        registry.register_detector("zscore", Above)
    with pytest.raises(ValueError, match="built into otel-eda"):
        registry.register_detector("growth", Above)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_detector(above, dict)
    registry.register_detector(above, Above)  # the same factory again: no-op
    with pytest.raises(ValueError, match="lacks the detector interface"):
        registry.register_detector("not-a-detector", dict)
        Rule(name="r", metric="m", detector={"kind": "not-a-detector"})
    registry.unregister_detector("not-a-detector")
    with pytest.raises(ValueError, match=r"above: .*unexpected keyword"):
        Rule(name="r", metric="m", detector={"kind": above, "limt": 3})


def test_a_detector_that_raises_is_logged_once_counted_and_the_engine_continues(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(value: float) -> bool:
        if value > 10:
            raise ZeroDivisionError("bug in the user's condition")
        return value > 5

    got = Collect()
    sink = type("Sink", (), {"send": staticmethod(got)})()
    engine = AnomalyEngine(
        [
            condition_rule("c", broken, metric="m"),
            Rule(name="t", metric="m", detector={"kind": "threshold", "op": "gt", "value": 5}),
        ],
        [sink],
    )
    with caplog.at_level(logging.ERROR):
        run(engine, points("m", [20.0, 30.0, 7.0]))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "raised on a point" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    (state,) = engine._states["c"].values()
    assert isinstance(state.detector, registry.GuardedDetector) and state.detector.failures == 2
    # the failing points counted as normal; the other rule on the same series fired as usual
    assert [(a.rule, a.value) for a in got.alerts] == [("t", 20.0), ("c", 7.0)]


def test_an_alert_carries_the_values_of_the_run_that_made_it_fire() -> None:
    got = Collect()
    sink = type("Sink", (), {"send": staticmethod(got)})()
    rule = Rule(name="q", metric="m", detector={"kind": "threshold", "op": "gt", "value": 5}, for_evaluations=3)
    engine = AnomalyEngine([rule], [sink])
    run(engine, points("m", [9.0, 1.0, 6.0, 7.0, 8.0]))
    (alert,) = got.alerts
    assert alert.recent_values == (6.0, 7.0, 8.0)  # not the 9 of an earlier, interrupted run
    assert alert.annotations()["recent_values"] == "6,7,8"
    run(engine, points("m", [float(v) for v in range(10, 30)], start=5.0))
    assert len(engine._states["q"][(("queue", "q1"),)].recent or ()) == RECENT_VALUES  # bounded


def test_statistics_over_a_window_per_metric_and_labels() -> None:
    engine = AnomalyEngine([])
    engine.track("lat")
    for i in range(1, 101):
        engine.evaluate(
            [
                SeriesPoint("lat", "p95", (("dest", "a"),), float(i), float(i)),
                SeriesPoint("lat", "p95", (("dest", "b"),), float(i), 1000.0 + i),
                SeriesPoint("other", "p95", (("dest", "a"),), float(i), 5.0),
            ],
            now=float(i),
        )
    stats = engine.statistics("lat", {"dest": "a"}, signal="p95", window_s=1000, now=100.0)
    assert (stats.count, stats.series, stats.mean) == (100, 1, 50.5)
    assert (stats.p50, stats.p95, stats.p99) == pytest.approx((50.5, 95.05, 99.01))
    recent = engine.statistics("lat", {"dest": "a"}, signal="p95", window_s=9.5, now=100.0)
    assert (recent.count, recent.p50) == (10, 95.5)
    both = engine.statistics("lat", signal="p95", window_s=1000, now=100.0)
    assert (both.count, both.series) == (200, 2)
    untracked = engine.statistics("other", signal="p95", now=100.0)  # tracked from now on
    assert untracked.count == 0
    engine.evaluate([SeriesPoint("other", "p95", (("dest", "a"),), 101.0, 5.0)], now=101.0)
    assert engine.statistics("other", signal="p95", now=101.0).count == 1


def test_statistics_keep_bounded_memory() -> None:
    from otel_eda.anomaly.statistics import SeriesHistory

    engine = AnomalyEngine([], history=SeriesHistory(max_series=3, max_points=5))
    engine.track("m")
    for t in range(10):
        engine.evaluate([SeriesPoint("m", "value", (("k", str(i)),), float(t), 1.0) for i in range(6)], now=float(t))
    assert engine.history.untracked == 30
    assert engine.statistics("m", now=9.0).count == 15


def test_host_alerts_are_labelled_as_host_alerts_not_charged_to_the_service() -> None:
    got = Collect()
    sink = type("Sink", (), {"send": staticmethod(got)})()
    host_rule = Rule(
        name="mem",
        metric="system.memory.utilization",
        match={"state": "used"},
        labels=(),
        detector={"kind": "threshold", "op": "gt", "value": 0.9},
        scope="host",
    )
    service_rule = Rule(name="svc", metric="depth", detector={"kind": "threshold", "op": "gt", "value": 1})
    engine = AnomalyEngine([host_rule, service_rule], [sink], resource_labels={"service": "orders"})
    engine.host_labels["host"] = "node-7"
    engine.evaluate(
        [
            SeriesPoint("system.memory.utilization", "value", (("state", "used"),), 0.0, 0.95),
            SeriesPoint("depth", "value", (), 0.0, 5.0),
        ],
        now=0.0,
    )
    by_rule = {a.rule: a.labels for a in got.alerts}
    assert by_rule["mem"] == {
        "host": "node-7",
        "scope": "host",
        "alertname": "Mem",
        "rule": "mem",
        "severity": "warning",
    }
    assert by_rule["svc"]["service"] == "orders" and "scope" not in by_rule["svc"]


def test_the_reader_takes_the_host_name_from_the_resource() -> None:
    from opentelemetry.sdk.resources import Resource

    got = Collect()
    rule = Rule(name="mem", metric="mem", detector={"kind": "threshold", "op": "gt", "value": 0.9}, scope="host")
    reader = AnomalyMetricReader(AnomalyEngine([rule]), interval_s=3600, start=False, callbacks=[got])
    provider = MeterProvider(
        metric_readers=[reader, InMemoryMetricReader()],
        resource=Resource.create({"service.name": "orders", "host.name": "node-9"}),
    )
    try:
        provider.get_meter("t").create_gauge("mem").set(0.95)
        reader.force_flush()
    finally:
        provider.shutdown()
    assert got.alerts[0].series_labels == {"host": "node-9", "scope": "host"}


def test_the_api_functions_act_on_the_installed_reader() -> None:
    from otel_eda.anomaly import api

    reader = AnomalyMetricReader(AnomalyEngine([]), interval_s=3600, start=False)
    provider = MeterProvider(metric_readers=[reader])
    try:
        rule = api.add_alert_rule("deep", lambda v: v > 3, metric="depth", provider=provider)
        assert reader.engine.rules == (rule,)
        api.track("depth", provider=provider)
        provider.get_meter("t").create_gauge("depth").set(4)
        reader.force_flush()
        assert api.statistics("depth", provider=provider).count == 1
        assert [a.name for a in reader.engine.active_alerts()] == ["Deep"]
        assert api.remove_rule("deep", provider=provider)
    finally:
        provider.shutdown()
    with pytest.raises(RuntimeError, match="configure"):
        api.add_rule(rule, provider=MeterProvider())


#: The README's example of the rules API ("Alert rules from Python"), verbatim.
README_EXAMPLE = """\
from opentelemetry import metrics

import otel_eda
from otel_eda.anomaly import api
from otel_eda.anomaly.rules import Rule

otel_eda.configure(on_alert=lambda alert: print(alert.state.value, alert.name, alert.summary, alert.recent_values))

# A plain condition on a metric's series
api.add_alert_rule(
    "backlog", lambda depth: depth > 100, "critical", "{value:.0f} jobs waiting", metric="jobs.backlog"
)


# A detector class: update(t, x) returns it; score, is_anomaly, threshold, value, skipped
class AtLeast:
    def __init__(self, limit: float) -> None:
        self.limit, self.threshold, self.score, self.value, self.skipped = limit, 1.0, 0.0, None, 0

    def update(self, t: float, x: float) -> "AtLeast":
        self.value, self.score = x, float(x >= self.limit)
        return self

    @property
    def is_anomaly(self) -> bool:
        return self.score >= self.threshold


api.register_detector("at_least", AtLeast)  # or an entry point in the group otel_eda_detectors
api.add_rule(Rule(name="workers", metric="jobs.workers", detector={"kind": "at_least", "limit": 8}))
api.track("jobs.backlog")  # keep recent values for api.statistics()

meter = metrics.get_meter("jobs")
meter.create_gauge("jobs.backlog").set(250)
meter.create_gauge("jobs.workers").set(8)
metrics.get_meter_provider().force_flush()  # evaluate now (otherwise every OTEL_EDA_ANOMALY_INTERVAL s)
print(api.statistics("jobs.backlog", window_s=60))
api.remove_rule("backlog")  # its firing alert resolves
"""


def test_the_readme_example_of_the_rules_api_runs(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = tmp_path / "example.py"
    script.write_text(README_EXAMPLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "jobs"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "firing Backlog 250 jobs waiting (250.0,)",
        "firing Workers Workers: jobs.workers value = 8 on service=jobs (8.0,)",
        "SeriesStatistics(count=1, mean=250.0, p50=250.0, p95=250.0, p99=250.0, series=1)",
        "resolved Backlog 250 jobs waiting (250.0,)",
    ]
