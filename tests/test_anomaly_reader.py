"""AnomalyMetricReader and rules files: OpenTelemetry metrics in, alerts out."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

from otel_eda import semconv
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.reader import AnomalyMetricReader
from otel_eda.anomaly.rules import Rule, RulesFileError, load_rules
from otel_eda.anomaly.series import SeriesPoint
from otel_eda.testing import TelemetryCapture


class SpyEngine(AnomalyEngine):
    def __init__(self) -> None:
        super().__init__([])
        self.seen: list[list[SeriesPoint]] = []

    def evaluate(self, points, now=None):  # type: ignore[no-untyped-def]
        self.seen.append(list(points))
        return []


def _series(points: list[SeriesPoint]) -> dict[tuple[str, str, tuple[tuple[str, str], ...]], float]:
    return {(p.metric, p.signal, p.attributes): p.value for p in points}


async def test_counters_become_rates_histograms_percentiles_and_errors_ratios() -> None:
    spy = SpyEngine()
    reader = AnomalyMetricReader(spy, interval_s=3600, start=False)
    with TelemetryCapture() as capture:
        provider = MeterProvider(metric_readers=[reader])
        async with capture.bus(meter_provider=provider, retry=None) as bus:

            def handler(d: object) -> None:
                if getattr(d, "payload", None) == "bad":
                    raise RuntimeError("boom")

            from otel_eda import RetryPolicy

            bus.subscribe("order_placed", handler, subscriber="payment", retry=RetryPolicy(max_attempts=1))
            for payload in ["ok"] * 6 + ["bad"] * 2:
                await bus.publish("order_placed", payload)
            await bus.join()
        reader.force_flush()
        provider.shutdown()
    series = _series(spy.seen[0])
    queue = (
        ("messaging.consumer.group.name", "payment"),
        ("messaging.destination.name", "order_placed"),
        ("messaging.operation.name", "process"),
        ("messaging.system", "otel_eda"),
    )
    assert series[(semconv.METRIC_PROCESS_DURATION, "error_ratio", queue)] == pytest.approx(0.25)
    assert series[(semconv.METRIC_CONSUMED_MESSAGES, "rate", queue)] > 0
    p95 = series[(semconv.METRIC_PROCESS_DURATION, "p95", queue)]
    mean = series[(semconv.METRIC_PROCESS_DURATION, "mean", queue)]
    assert mean > 0 and 0 < p95 < 1
    assert (semconv.METRIC_EVENT_AGE, "p99", queue) in series
    depth = [k for k in series if k[0] == semconv.METRIC_QUEUE_DEPTH]
    assert depth and all(k[1] == "value" for k in depth)


def test_delta_temporality_turns_a_counter_into_per_interval_rates() -> None:
    spy = SpyEngine()
    reader = AnomalyMetricReader(spy, interval_s=3600, start=False)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("t").create_counter("jobs")
    counter.add(10)
    reader.force_flush()
    time.sleep(0.2)
    reader.force_flush()  # nothing new: a rate of 0, not a cumulative 10
    provider.shutdown()
    rates = [p.value for batch in spy.seen for p in batch if p.metric == "jobs"]
    assert rates[0] > 0 and rates[1] == 0.0


def test_the_reader_keeps_its_own_cadence_and_evaluates_once_more_on_shutdown() -> None:
    spy = SpyEngine()
    reader = AnomalyMetricReader(spy, interval_s=0.05)
    exported = io.StringIO()
    exporting = PeriodicExportingMetricReader(ConsoleMetricExporter(out=exported), export_interval_millis=600_000)
    provider = MeterProvider(metric_readers=[exporting, reader])
    provider.get_meter("t").create_counter("jobs").add(1)
    # many collections while the exporter waits for its first export (ten minutes away)
    deadline = time.monotonic() + 60
    while reader.collections < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    before = reader.collections
    assert before >= 4 and exported.getvalue() == ""
    provider.shutdown()
    assert reader.collections >= before + 1  # the last evaluation
    assert reader._thread is not None and not reader._thread.is_alive()
    reader.shutdown()  # idempotent, never raises


def test_an_alert_reaches_callbacks() -> None:
    got: list[Alert] = []
    rule = Rule(name="jobs", metric="jobs", signal="rate", detector={"kind": "threshold", "op": "gt", "value": 0})
    reader = AnomalyMetricReader(AnomalyEngine([rule]), interval_s=3600, start=False, callbacks=[got.append])
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("jobs").add(3)
    reader.force_flush()
    provider.shutdown()
    assert [(a.name, a.state.value) for a in got] == [("Jobs", "firing")]


RULES_YAML = """\
rules:
  - name: errors
    metric: messaging.process.duration
    signal: error_ratio
    detector: {kind: threshold, op: gt, value: 0.2}
    severity: critical
    for: 30s
    cooldown: 2m
  - name: latency
    metric: messaging.process.duration
    signal: p95
    detector: {kind: zscore, window: 100}
    labels: [messaging.destination.name]
"""


def test_rules_file_in_yaml_and_json(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES_YAML)
    errors, latency = load_rules(path)
    assert (errors.severity.label, errors.for_seconds, errors.cooldown_s) == ("critical", 30.0, 120.0)
    assert latency.labels == ("messaging.destination.name",)
    as_json = tmp_path / "rules.json"
    as_json.write_text('{"rules": [{"name": "errors", "metric": "m", "signal": "rate", "for": 3}]}')
    (rule,) = load_rules(as_json)
    assert rule.for_evaluations == 3


@pytest.mark.parametrize(
    ("suffix", "text", "expected"),
    [
        (".yaml", RULES_YAML.replace("signal: p95", "signal: p50"), r"rules.yaml:9: rule 'latency': unknown signal"),
        (".yaml", RULES_YAML.replace("for: 30s", "for: soon"), r"rules.yaml:2: rule 'errors': not a duration"),
        (".yaml", RULES_YAML + "  - name: errors\n    metric: m\n", r"rules.yaml:14: duplicate rule name"),
        (".yaml", "rules:\n  - name: x\n    metric: [unclosed\n", r"rules.yaml:\d+: "),
        (".yaml", RULES_YAML.replace("kind: zscore", "kind: magic"), r"rules.yaml:9: rule 'latency': .*magic"),
        (".yaml", RULES_YAML.replace("cooldown", "cooldwn"), r"rules.yaml:2: rule 'errors': unknown field"),
        (".json", '{"rules": [\n  {"name": "a", "metric": "m"},\n  {"name": "b"}\n]}', r"rules.json:3: .*metric"),
        (".json", '{"rules": [\n  {"name": "a",, }\n]}', r"rules.json:2:16: Expecting property name"),
    ],
)
def test_a_malformed_rules_file_names_the_file_line_and_reason(
    tmp_path: Path, suffix: str, text: str, expected: str
) -> None:
    path = tmp_path / f"rules{suffix}"
    path.write_text(text)
    with pytest.raises(RulesFileError, match=expected):
        load_rules(path)


ATTACH_APP = textwrap.dedent(
    """
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    import otel_eda

    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider())       # an app's own provider, before otel-eda
    otel_eda.configure(on_alert=lambda a: print("ALERT", a.name, a.state.value, flush=True))
    metrics.get_meter("app").create_counter("jobs").add(5)
    print("exiting", flush=True)
    """
)


def test_attached_to_an_existing_provider_it_still_evaluates_at_exit(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: jobs\n    metric: jobs\n    signal: rate\n"
        "    detector: {kind: threshold, op: gt, value: 0}\n"
    )
    app = tmp_path / "app.py"
    app.write_text(ATTACH_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EDA_RULES_FILE=str(rules), OTEL_EDA_ANOMALY_INTERVAL="3600", OTEL_TRACES_EXPORTER="none")
    result = subprocess.run(
        [sys.executable, str(app)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    # the provider's own shutdown skips readers added later: otel-eda's atexit hook ran it
    assert result.stdout.splitlines() == ["exiting", "ALERT Jobs firing"]


def test_a_malformed_rules_file_is_reported_and_the_default_rules_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from otel_eda.anomaly.rules import default_rules
    from otel_eda.settings import Settings

    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: x\n    metric: m\n    signal: p42\n")
    reader = AnomalyMetricReader(interval_s=3600, start=False)  # settings from the environment
    assert [r.name for r in reader.engine.rules] == [r.name for r in default_rules()]
    with caplog.at_level("ERROR"):
        from otel_eda.anomaly.reader import _engine_from_settings

        engine = _engine_from_settings(Settings(rules_file=str(path)))
    assert [r.name for r in engine.rules] == [r.name for r in default_rules()]
    assert any(f"{path}:2: rule 'x': unknown signal" in r.getMessage() for r in caplog.records)


async def test_alerts_carry_exemplars_of_real_traces_end_to_end() -> None:
    from otel_eda import Delivery, RetryPolicy

    rule = Rule(
        name="dead-letters",
        metric=semconv.METRIC_DEAD_LETTERS,
        signal="rate",
        detector={"kind": "threshold", "op": "gt", "value": 0},
    )
    got: list[Alert] = []
    with TelemetryCapture() as capture:
        reader = AnomalyMetricReader(AnomalyEngine([rule]), interval_s=3600, start=False, callbacks=[got.append])
        provider = MeterProvider(metric_readers=[reader])

        def fails(d: Delivery) -> None:
            raise ValueError("no")

        async with capture.bus(meter_provider=provider, retry=RetryPolicy(max_attempts=1)) as bus:
            bus.subscribe("order_placed", fails, subscriber="payment")
            await bus.publish("order_placed")
            await bus.join()
        reader.force_flush()
        provider.shutdown()
        (consumer,) = capture.spans(name="process order_placed")
    (alert,) = got
    assert alert.annotations()["trace_ids"] == f"{consumer.context.trace_id:032x}"
    assert alert.annotations()["span_ids"] == f"{consumer.context.span_id:016x}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_gets_its_own_evaluation_thread() -> None:
    spy = SpyEngine()
    reader = AnomalyMetricReader(spy, interval_s=0.02)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("t").create_counter("jobs").add(1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its reader thread must be running and collecting
        try:
            before = reader.collections
            deadline = time.monotonic() + 60  # until it collects again (each 0.02 s on a quiet machine)
            while reader.collections <= before and time.monotonic() < deadline:
                time.sleep(0.02)
            alive = reader._thread is not None and reader._thread.is_alive()
            os.write(write_end, b"ok" if alive and reader.collections > before else b"no")
        finally:
            os._exit(0)
    os.close(write_end)
    answer = os.read(read_end, 2)
    os.waitpid(pid, 0)
    provider.shutdown()
    assert answer == b"ok"


async def test_telemetry_capture_collects_alerts_for_users_tests() -> None:
    from otel_eda import Delivery, RetryPolicy

    with TelemetryCapture() as capture:  # the default rule set

        def fails(d: Delivery) -> None:
            raise ValueError("no")

        async with capture.bus(retry=RetryPolicy(max_attempts=1)) as bus:
            bus.subscribe("order_placed", fails, subscriber="payment")
            await bus.publish("order_placed")
            await bus.join()
        new = capture.evaluate()
    assert [(a.name, a.state.value) for a in new] == [("EventsDeadLettered", "firing")]
    assert capture.alerts == new


def test_the_series_converter_gives_to_series_points_and_reuses_attribute_tuples() -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_eda.anomaly.reader import _TEMPORALITY
    from otel_eda.anomaly.series import SeriesConverter, to_series

    memory = InMemoryMetricReader(preferred_temporality=_TEMPORALITY)  # type: ignore[arg-type]
    provider = MeterProvider(metric_readers=[memory])
    meter = provider.get_meter("t")
    jobs, depth = meter.create_counter("jobs"), meter.create_up_down_counter("depth")
    latency, handled = meter.create_histogram("latency"), meter.create_counter("messaging.handled")
    convert = SeriesConverter()
    seen: list[list[SeriesPoint]] = []
    for round_ in range(3):
        for i in range(20):
            jobs.add(i + round_, {"job": f"j{i}", "n": i})
            depth.add(1, {"queue": f"q{i % 3}"})
            latency.record(0.1 * (i + 1), {"job": f"j{i % 4}"})
            handled.add(1, {"queue": "q", **({"error.type": "E"} if i % 5 == 0 else {})})
        data = memory.get_metrics_data()
        assert data is not None
        points = convert(data)
        assert points == to_series(data)  # the same points, in the same order
        seen.append(points)
    provider.shutdown()
    assert {p.signal for p in seen[2]} == {"rate", "value", "count", "mean", "p95", "p99", "error_ratio"}
    # an attribute set's tuple is computed once and found again by its mapping's identity
    # (error ratios: the attributes without error.type, computed per collection)
    first = {(p.metric, p.signal, p.attributes): p.attributes for p in seen[0]}
    again = [p for p in seen[2] if p.signal != "error_ratio"]
    assert again and all(first[(p.metric, p.signal, p.attributes)] is p.attributes for p in again)
    assert (("job", "j3"), ("n", "3")) in {p.attributes for p in seen[2]}  # sorted, values as str


def test_the_series_converters_memory_stays_bounded_under_churn() -> None:
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_eda.anomaly.reader import _TEMPORALITY
    from otel_eda.anomaly.series import SeriesConverter

    memory = InMemoryMetricReader(preferred_temporality=_TEMPORALITY)  # type: ignore[arg-type]
    provider = MeterProvider(metric_readers=[memory])
    jobs = provider.get_meter("t").create_counter("jobs")
    convert = SeriesConverter()
    sizes = []
    for round_ in range(8):
        for i in range(1_000):  # every round, 1,000 attribute sets never seen before
            jobs.add(1, {"job": f"{round_}-{i}"})
        data = memory.get_metrics_data()
        assert data is not None
        assert len(convert(data)) == 1_000
        sizes.append(len(convert._memory))
    provider.shutdown()
    assert max(sizes) <= 2 * 1_000 + 1_000


def test_zero_fill_when_the_clock_does_not_advance() -> None:
    from otel_eda.anomaly.series import ZeroFill

    fill = ZeroFill()
    a, b = (("k", "a"),), (("k", "b"),)
    first = fill([SeriesPoint("jobs", "rate", a, 10.0, 1.0), SeriesPoint("jobs", "rate", b, 10.0, 1.0)], 10.0)
    assert len(first) == 2
    # the same ``now`` again (a clock step back or a coarse clock): b was not seen this time
    again = fill([SeriesPoint("jobs", "rate", a, 10.0, 2.0)], 10.0)
    assert [(p.attributes, p.value) for p in again] == [(a, 2.0), (b, 0.0)]
    later = fill([], 11.0)
    assert [(p.attributes, p.t, p.value) for p in later] == [(a, 11.0, 0.0), (b, 11.0, 0.0)]


def test_overlapping_collections_are_converted_one_at_a_time(caplog: pytest.LogCaptureFixture) -> None:
    """force_flush() from other threads while the reader collects: nothing is lost or raised."""
    import threading

    rule = Rule(name="jobs", metric="jobs", signal="rate", detector={"kind": "zscore", "window": 30})
    reader = AnomalyMetricReader(AnomalyEngine([rule], max_series=50_000), interval_s=3600, start=False)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("t").create_counter("jobs")
    for i in range(20_000):
        counter.add(1, {"job": str(i)})
    errors: list[BaseException] = []

    def flush(name: str) -> None:
        try:
            for n in range(15):
                for i in range(200):  # new series every time: the zero fill's memory changes size
                    counter.add(1, {"job": f"{name}-{n}-{i}"})
                reader.force_flush()
        except BaseException as exc:  # pragma: no cover - the failure this test is about
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(str(t),)) for t in range(3)]
    with caplog.at_level("ERROR", logger="otel_eda"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    provider.shutdown()
    assert not errors
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert reader.collections >= 45
