"""confluent-kafka with otel-eda through a Kafka outage: the client's own behaviour only (delivery
reports with librdkafka's errors, empty polls), failed deliveries counted with their error and
logged with their event id, and flows that continue with intact ids once the broker is back. A
broker of its own (it is stopped)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import confluent_kafka
import pytest
from brokers import KafkaBroker, send_outcomes, unique_name

from otel_eda import semconv
from otel_eda.identity import current_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor, outgoing_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


@pytest.fixture
def instrumented(capture: TelemetryCapture) -> Iterator[TelemetryCapture]:
    instrumentor = ConfluentKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        yield capture
    finally:
        instrumentor.uninstrument()


def handle_one(consumer: Any, timeout_s: float = 90.0) -> tuple[Any, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            event = current_event()
            assert event is not None
            return msg, event.event_id
    raise AssertionError(f"no record within {timeout_s}s")


def test_an_outage_gives_delivery_errors_counted_and_logged_and_flows_resume(
    own_kafka: KafkaBroker, instrumented: TelemetryCapture, caplog: pytest.LogCaptureFixture
) -> None:
    capture = instrumented
    topic = unique_name("outage")
    reports: list[Any] = []
    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": own_kafka.bootstrap_servers,
            "message.timeout.ms": 3000,
            "on_delivery": lambda err, msg: reports.append((err, getattr(current_event(), "event_id", None))),
        }
    )
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": own_kafka.bootstrap_servers,
            "group.id": unique_name("outage-group"),
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        producer.produce(topic, b"before")
        assert producer.flush(60) == 0
        _, before_id = handle_one(consumer)

        own_kafka.stop()
        with outgoing_event() as during:
            producer.produce(topic, b"during")  # accepted into librdkafka's queue: no error here
        producer.flush(30)
        err, reported_id = reports[-1]
        assert err is not None and err.name() == "_MSG_TIMED_OUT"  # the client's own report
        assert reported_id == during.events[0].event_id  # the application's callback ran with the event current
        for _ in range(4):  # polling during the outage raises nothing and makes no span
            msg = consumer.poll(0.25)
            assert msg is None or msg.error() is not None
        failed = send_outcomes(capture, topic)
        assert failed == {"ok": 1, "_MSG_TIMED_OUT": 1}, failed
        assert any(during.events[0].event_id in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

        own_kafka.start()
        producer.produce(topic, b"after")
        assert producer.flush(120) == 0, "the producer did not recover within 120 s"
        msg, after_id = handle_one(consumer, 120)
    finally:
        consumer.close()
    assert msg.value() == b"after"
    assert reports[-1] == (None, after_id)
    sends = {(s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID): s for s in capture.spans(name=f"send {topic}")}
    assert len(sends) == 3 and all(s.status.is_ok for s in sends.values())  # a send span ends at produce()
    processes = capture.spans(name=f"process {topic}")
    assert [(p.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID) for p in processes] == [before_id, after_id]
    assert processes[-1].links[0].context.span_id == sends[after_id].context.span_id
    assert len(capture.spans(name=f"poll {topic}")) == 2  # one per record, none for the empty polls
