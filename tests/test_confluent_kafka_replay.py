"""A replay across processes with confluent-kafka: a consumer killed with ``kill -9`` while handling
a record, another group member taking over. As with aiokafka (``test_aiokafka_replay.py``, whose
run and checks this reuses): the replayed records show as a second handling of the same event id,
never as ``eda.delivery.attempt`` > 1."""

from __future__ import annotations

import textwrap
from pathlib import Path

import confluent_kafka
import pytest
from brokers import KafkaBroker, unique_name
from test_aiokafka_replay import assert_replay_across_processes

from otel_eda import semconv
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

CONSUMER = textwrap.dedent(
    """
    import json, os, sys, time
    import confluent_kafka
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor

    name, stop_after = sys.argv[1], int(sys.argv[2])
    records = open(f"{name}.records.jsonl", "a")

    class FileRecorder:
        def record(self, record):
            records.write(json.dumps(record._asdict()) + "\\n")
            records.flush()

    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=open(f"{name}.spans.json", "w"))))
    ConfluentKafkaInstrumentor().instrument(tracer_provider=provider, recorders=[FileRecorder()])

    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": os.environ["BOOTSTRAP"], "group.id": os.environ["GROUP"],
        "auto.offset.reset": "earliest", "enable.auto.commit": False,
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
    })
    consumer.subscribe([os.environ["TOPIC"]])
    handled = 0
    while handled < stop_after:
        msg = consumer.poll(0.5)
        if msg is None or msg.error() is not None:
            continue
        handled += 1
        print(f"handling {msg.offset()}", flush=True)
        if handled == stop_after:
            if name == "first":
                time.sleep(3600)  # killed here, mid-handling, nothing committed
            consumer.commit(asynchronous=False)
    consumer.close()
    provider.shutdown()
    """
)


def test_a_consumer_killed_mid_handling_shows_the_replay_as_a_second_handling(
    tmp_path: Path, kafka: KafkaBroker, capture: TelemetryCapture
) -> None:
    topic, group = unique_name("replay"), unique_name("replay-group")
    instrumentor = ConfluentKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=capture.tracer_provider, meter_provider=capture.meter_provider)
    try:
        producer = confluent_kafka.Producer({"bootstrap.servers": kafka.bootstrap_servers})
        for i in range(5):
            producer.produce(topic, f"order {i}".encode())
        assert producer.flush(60) == 0
    finally:
        instrumentor.uninstrument()
    sent = [(s.attributes or {})[semconv.MESSAGING_MESSAGE_ID] for s in capture.spans(name=f"send {topic}")]
    assert len(sent) == 5
    assert_replay_across_processes(tmp_path, kafka, topic, group, sent, CONSUMER)
