"""The default rule set, tried as a user would: drops, full queues, lag, memory pressure."""

from __future__ import annotations

import asyncio
import contextlib
import random

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_eda import semconv
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.growth import GrowthDetector
from otel_eda.anomaly.reader import AnomalyMetricReader
from otel_eda.anomaly.rules import default_inhibitions, default_rule_set, default_rules
from otel_eda.anomaly.series import SeriesPoint
from otel_eda.settings import Settings
from otel_eda.transports.bus import BusFull, Delivery, EventBus

QUEUE = (
    (semconv.MESSAGING_CONSUMER_GROUP_NAME, "slow"),
    (semconv.MESSAGING_DESTINATION_NAME, "order_placed"),
    (semconv.MESSAGING_SYSTEM, "otel_eda"),
)
LAG = (
    (semconv.MESSAGING_CONSUMER_GROUP_NAME, "billing"),
    (semconv.MESSAGING_DESTINATION_NAME, "orders"),
    (semconv.MESSAGING_DESTINATION_PARTITION_ID, "3"),
)


class Collect:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def __call__(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def fired(self) -> list[str]:
        return [a.name for a in self.alerts if a.state.value == "firing"]


def default_engine(sink: Collect) -> AnomalyEngine:
    rule_set = default_rule_set()
    return AnomalyEngine(
        rule_set.rules,
        [sink],
        inhibitions=rule_set.inhibitions,
        resource_labels={"service": "shop"},
        host_labels={"host": "node-1"},
    )


async def test_dropped_events_of_a_real_bus_raise_an_alert_under_the_default_rules() -> None:
    got = Collect()
    reader = AnomalyMetricReader(settings=Settings(), interval_s=3600, start=False, callbacks=[got])
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "shop"}))
    release = asyncio.Event()

    async def stuck(delivery: Delivery) -> None:
        await release.wait()

    bus = EventBus(
        service="shop",
        queue_size=1,
        publish_timeout_s=0.001,
        tracer_provider=TracerProvider(),
        meter_provider=provider,
    )
    bus.subscribe("order_placed", stuck, subscriber="slow")
    dropped = 0
    try:
        for _ in range(26):  # one handled (stuck), one queued, 24 dropped
            try:
                await bus.publish("order_placed")
            except BusFull:
                dropped += 1
            await asyncio.sleep(0)
        assert dropped == 24
        reader.force_flush()
    finally:
        release.set()
        await bus.close()
        provider.shutdown()
    dropped_alerts = [a for a in got.alerts if a.name == "EventsDropped"]
    assert dropped_alerts and dropped_alerts[0].severity.label == "critical"
    assert dropped_alerts[0].series_labels == {
        semconv.MESSAGING_SYSTEM: "otel_eda",
        semconv.MESSAGING_DESTINATION_NAME: "order_placed",
        semconv.MESSAGING_CONSUMER_GROUP_NAME: "slow",
        "service": "shop",
    }


def test_a_full_queue_raises_queue_full_and_mutes_only_its_own_nearly_full_warning() -> None:
    got = Collect()
    engine = default_engine(got)
    other = ((semconv.MESSAGING_CONSUMER_GROUP_NAME, "fast"), *QUEUE[1:])
    for t in range(4):
        engine.evaluate(
            [
                SeriesPoint(semconv.METRIC_QUEUE_UTILIZATION, "value", QUEUE, float(t), 1.0),  # full
                SeriesPoint(semconv.METRIC_QUEUE_UTILIZATION, "value", other, float(t), 0.85),  # nearly
            ],
            now=float(t),
        )
    fired = sorted((a.name, a.series_labels[semconv.MESSAGING_CONSUMER_GROUP_NAME]) for a in got.alerts)
    assert fired == [("QueueFull", "slow"), ("QueueNearlyFull", "fast")]
    assert engine.suppressed == 1  # the nearly-full warning of the full queue


def test_publish_waits_raise_a_warning() -> None:
    got = Collect()
    engine = default_engine(got)
    attrs = ((semconv.MESSAGING_DESTINATION_NAME, "order_placed"), (semconv.MESSAGING_SYSTEM, "otel_eda"))
    for t in range(3):
        engine.evaluate([SeriesPoint(semconv.METRIC_PUBLISH_WAIT, "count", attrs, float(t), 0.4)], now=float(t))
    assert got.fired() == ["PublishWaits"]


def test_a_growing_consumer_lag_warns_then_goes_critical_and_a_flat_one_does_not() -> None:
    got = Collect()
    engine = default_engine(got)
    flat = ((semconv.MESSAGING_CONSUMER_GROUP_NAME, "steady"), *LAG[1:])
    for i in range(200):  # 5 s apart: 1000 s
        t = 5.0 * i
        engine.evaluate(
            [
                SeriesPoint(semconv.METRIC_CONSUMER_LAG, "value", LAG, t, 100.0 + 40 * i + (i % 3) * 15),
                SeriesPoint(semconv.METRIC_CONSUMER_LAG, "value", flat, t, 5_000.0 + (i % 5) * 20),
            ],
            now=t,
        )
    fired = [(a.name, a.severity.label, a.started_at) for a in got.alerts if a.state.value == "firing"]
    assert [(name, severity) for name, severity, _ in fired] == [
        ("ConsumerLagGrowing", "warning"),
        ("ConsumerLagCritical", "critical"),
    ]
    warning, critical = fired
    assert warning[2] == 5.0 * 12  # a full window of 12 points, then for: 2
    assert critical[2] - 5.0 * 11 >= 600.0  # after 10 minutes of growth
    assert {a.series_labels[semconv.MESSAGING_CONSUMER_GROUP_NAME] for a in got.alerts} == {"billing"}


def wandering_lag_alerts(seed: int, coefficient: float) -> int:
    """Alerts of the lag-growth rules over a simulated day (one evaluation every 5 s) of a lag
    that wanders around 200 and never falls behind: AR(1) noise, each step 20 messages."""
    rules = [r for r in default_rules() if r.name in ("consumer-lag-growing", "consumer-lag-critical")]
    engine = AnomalyEngine(rules)
    rng = random.Random(seed)
    lag, fired = 200.0, 0
    for i in range(17_280):
        t = 5.0 * i
        lag = 200.0 + coefficient * (lag - 200.0) + rng.gauss(0.0, 20.0)
        point = SeriesPoint(semconv.METRIC_CONSUMER_LAG, "value", LAG, t, max(0.0, lag))
        fired += sum(1 for a in engine.evaluate([point], now=t) if a.state.value == "firing" and a.started_at == t)
    return fired


def test_a_lag_that_wanders_is_not_growing() -> None:
    # A lag rises for a minute after each burst and drains: twelve points of it pass the
    # trend test (about 320 alerts a day without the baseline); the rules ask that the lag also
    # stand above its usual level (mean + 3 sd over the last ~720 points) before it is growing.
    assert [wandering_lag_alerts(seed, 0.0) for seed in (1, 2)] == [0, 0]  # plain noise, sd 20
    wanders = [wandering_lag_alerts(seed, coefficient) for seed in (1, 2) for coefficient in (0.9, 0.99)]
    assert max(wanders) <= 12, wanders  # sd 46 and 142: an excursion past 3 sd now and then


def test_a_lag_that_starts_growing_after_hours_of_wandering_is_caught() -> None:
    # Past the baseline's warm-up: two hours of a wandering lag, then the consumer falls
    # behind by 40 messages per evaluation; the growth rule fires within a minute or two.
    rules = [r for r in default_rules() if r.name == "consumer-lag-growing"]
    engine = AnomalyEngine(rules)
    rng = random.Random(4)
    lag, fired_at = 200.0, []
    for i in range(1_600):
        t = 5.0 * i
        lag = 200.0 + 0.9 * (lag - 200.0) + rng.gauss(0.0, 20.0)
        value = max(0.0, lag) + (40.0 * (i - 1_440) if i >= 1_440 else 0.0)
        point = SeriesPoint(semconv.METRIC_CONSUMER_LAG, "value", LAG, t, value)
        fired_at += [i for a in engine.evaluate([point], now=t) if a.state.value == "firing" and a.started_at == t]
    growing = [i for i in fired_at if i >= 1_440]
    assert growing and growing[0] - 1_440 <= 24, fired_at


def test_a_consumer_falling_behind_for_hours_stays_growing() -> None:
    # The baseline holds a rise out for as long as the window keeps rising: three hours of a
    # lag climbing 40 messages per evaluation stay anomalous to the end.
    detector = GrowthDetector(12, min_increase=10, baseline_span=720)
    rng = random.Random(1)
    lag, per_hour = 200.0, [0, 0, 0]
    for i in range(1_440 + 3 * 720):
        lag = 200.0 + 0.9 * (lag - 200.0) + rng.gauss(0.0, 20.0)
        value = max(0.0, lag) + (40.0 * (i - 1_440) if i >= 1_440 else 0.0)
        anomalous = detector.update(5.0 * i, value).is_anomaly
        if i >= 1_440:
            per_hour[(i - 1_440) // 720] += anomalous
    assert per_hour[1] >= 700 and per_hour[2] >= 700, per_hour
    assert detector.is_anomaly


def test_a_lag_that_moves_to_a_new_level_stops_alerting_once_the_baseline_follows() -> None:
    # A lasting shift (100 to 1000, the same wander) is growth for the hour the baseline holds
    # it out; after that the baseline learns the new level and the wander there is usual again.
    detector = GrowthDetector(12, min_increase=10, baseline_span=720)
    rng = random.Random(1)
    lag, onsets, was = 0.0, [0, 0], False
    for i in range(5_000 + 2 * 17_280):
        lag = 0.9 * lag + rng.gauss(0.0, 20.0)
        now = detector.update(5.0 * i, (100.0 if i < 5_000 else 1_000.0) + lag).is_anomaly
        if i >= 5_000 and now and not was:
            onsets[(i - 5_000) // 17_280] += 1
        was = now
    assert onsets[0] <= 60 and onsets[1] <= 20, onsets  # (without relearning: 441, then 108)


def test_memory_pressure_is_a_host_alert_and_does_not_mute_cpu_warnings() -> None:
    got = Collect()
    engine = default_engine(got)
    for t in range(4):
        engine.evaluate(
            [
                SeriesPoint("system.cpu.utilization", "value", (("cpu", "1"), ("state", "idle")), float(t), 0.02),
                SeriesPoint("system.memory.utilization", "value", (("state", "used"),), float(t), 0.99),
                SeriesPoint("system.memory.utilization", "value", (("state", "free"),), float(t), 0.01),
            ],
            now=float(t),
        )
    assert sorted(got.fired()) == ["HostCpuHigh", "HostMemoryCritical"]  # HostMemoryHigh muted by the critical
    memory = next(a for a in got.alerts if a.name == "HostMemoryCritical")
    assert memory.series_labels == {"host": "node-1", "scope": "host"}  # not charged to the service "shop"
    assert engine.suppressed == 1


def test_every_default_inhibition_names_default_alerts_and_kept_labels() -> None:
    rules = {r.alert_name: r for r in default_rules()}
    assert len(rules) == len(default_rules())
    for inhibition in default_inhibitions():
        source = rules[inhibition.source_match["alertname"]]
        target = rules[inhibition.target_match["alertname"]]
        assert source.severity > target.severity and source.metric == target.metric
        for label in inhibition.equal:
            if label != "host":
                assert source.labels is not None and label in source.labels and label in (target.labels or ())


async def test_a_full_queue_of_a_real_bus_raises_queue_full_drops_and_publish_waits() -> None:
    """Needs the bus to report eda.bus.queue.utilization and eda.bus.publish.wait.duration."""
    got = Collect()
    reader = AnomalyMetricReader(settings=Settings(), interval_s=3600, start=False, callbacks=[got])
    provider = MeterProvider(metric_readers=[reader], resource=Resource.create({"service.name": "shop"}))
    release = asyncio.Event()

    async def stuck(delivery: Delivery) -> None:
        await release.wait()

    bus = EventBus(
        service="shop",
        queue_size=2,
        publish_timeout_s=0.001,
        tracer_provider=TracerProvider(),
        meter_provider=provider,
    )
    bus.subscribe("order_placed", stuck, subscriber="slow")
    try:
        for _ in range(2):  # two evaluations (PublishWaits: for 2)
            for _ in range(5):
                with contextlib.suppress(BusFull):
                    await bus.publish("order_placed")
                await asyncio.sleep(0)
            reader.force_flush()
    finally:
        release.set()
        await bus.close()
        provider.shutdown()
    assert sorted(set(got.fired())) == ["EventsDropped", "PublishWaits", "QueueFull"]  # QueueNearlyFull muted
    full = next(a for a in got.alerts if a.name == "QueueFull")
    assert full.value == 1.0 and full.series_labels[semconv.MESSAGING_CONSUMER_GROUP_NAME] == "slow"
