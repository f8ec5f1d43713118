"""``eda.consumer.lag`` against a real Kafka: records behind the high watermark, from what aiokafka knows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from brokers import KafkaBroker, client_config, unique_name

from otel_eda import semconv
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.rules import default_rules
from otel_eda.anomaly.series import SeriesPoint
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.aiokafka.lag import ConsumerLag

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def eventually(probe: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll ``probe`` until it is true; fail naming ``what`` after ``timeout_s`` (a generous bound)."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.05)


async def produce(kafka: KafkaBroker, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(**client_config(kafka))
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"r{i}".encode())
    finally:
        await producer.stop()


async def test_lag_follows_the_high_watermark_and_the_position(kafka: KafkaBroker, capture: TelemetryCapture) -> None:
    topic, group = unique_name("lag"), unique_name("lag-group")
    await produce(kafka, topic, 10)
    lag = ConsumerLag(capture.meter_provider, refresh_s=0.05)
    consumer = AIOKafkaConsumer(
        topic, **client_config(kafka, group_id=group, auto_offset_reset="earliest", max_poll_records=3)
    )
    await consumer.start()
    try:
        lag.track(consumer, group)
        got = await consumer.getmany(timeout_ms=30_000)
        assert sum(len(records) for records in got.values()) == 3
        await eventually(lambda: lag.lags() == {(topic, 0, group): 7}, "a lag of 7 after 3 of 10 records")
        points = capture.points(semconv.METRIC_CONSUMER_LAG)
        assert [(p.value, dict(p.attributes)) for p in points] == [
            (
                7,
                {
                    semconv.MESSAGING_SYSTEM: "kafka",
                    semconv.MESSAGING_DESTINATION_NAME: topic,
                    semconv.MESSAGING_DESTINATION_PARTITION_ID: "0",
                    semconv.MESSAGING_CONSUMER_GROUP_NAME: group,
                },
            )
        ]
        handed = 3
        while handed < 10:
            got = await consumer.getmany(timeout_ms=30_000)
            handed += sum(len(records) for records in got.values())
        await eventually(lambda: lag.lags() == {(topic, 0, group): 0}, "a lag of 0 once every record is handed over")
        # records produced while the application takes none: the lag grows without any call of it
        # (aiokafka fetches the first and then stops fetching: the refresh asks for the end offset)
        await produce(kafka, topic, 4)
        await eventually(
            lambda: lag.lags() == {(topic, 0, group): 4}, "a lag of 4 while the application takes no record"
        )
    finally:
        lag.untrack(consumer)
        await consumer.stop()
    assert lag.lags() == {}
    assert capture.points(semconv.METRIC_CONSUMER_LAG) == []


async def test_lag_of_a_dropped_consumer_disappears(kafka: KafkaBroker, capture: TelemetryCapture) -> None:
    topic = unique_name("lag-gone")
    await produce(kafka, topic, 2)
    lag = ConsumerLag(capture.meter_provider, refresh_s=0.05)
    consumer = AIOKafkaConsumer(topic, **client_config(kafka, auto_offset_reset="earliest"))
    await consumer.start()
    lag.track(consumer, None)
    await consumer.getone()
    await eventually(lambda: lag.lags() == {(topic, 0, None): 1}, "a lag of 1 without a group")
    point = capture.points(semconv.METRIC_CONSUMER_LAG)[0]
    assert semconv.MESSAGING_CONSUMER_GROUP_NAME not in point.attributes
    lag.close()
    await consumer.stop()
    assert lag.lags() == {}


def lag_alerts(values: list[float]) -> list[str]:
    """The alerts the default rule set raises on one partition's lag, one point per evaluation."""
    engine = AnomalyEngine(default_rules())
    attrs = (
        (semconv.MESSAGING_CONSUMER_GROUP_NAME, "billing"),
        (semconv.MESSAGING_DESTINATION_NAME, "orders"),
        (semconv.MESSAGING_DESTINATION_PARTITION_ID, "0"),
        (semconv.MESSAGING_SYSTEM, "kafka"),
    )
    fired = []
    for i, value in enumerate(values):
        t = 1_800_000_000.0 + 5.0 * i
        for alert in engine.evaluate([SeriesPoint(semconv.METRIC_CONSUMER_LAG, "value", attrs, t, value)], now=t):
            fired.append(f"{alert.name} {alert.state.value}")
    return fired


def test_the_default_rules_alert_on_a_growing_lag_only() -> None:
    noise = [((i * 7919) % 13) - 6.0 for i in range(60)]  # deterministic, zero-mean-ish jitter
    growing = [max(0.0, 20.0 + 4.0 * i + n) for i, n in enumerate(noise)]
    falling = [max(0.0, 300.0 - 4.0 * i + n) for i, n in enumerate(noise)]
    steady = [40.0 + n for n in noise]
    assert lag_alerts(growing)[:1] == ["ConsumerLagGrowing firing"]
    assert lag_alerts(falling) == []  # catching up is no alert
    assert lag_alerts(steady) == []
