"""One measurement of the broker benchmark's confluent-kafka line, in a fresh process:
``confluent_kafka_child.py VARIANT``.

Variants (``bench_kafka.py`` runs them against its Kafka; run one by hand with
``KAFKA_BOOTSTRAP=127.0.0.1:19092 BENCH_OPS=500 .venv/bin/python benchmarks/confluent_kafka_child.py eda``):

``off``
    confluent-kafka with no instrumentation;
``eda``
    otel-eda's confluent-kafka instrumentation (``ConfluentKafkaInstrumentor``);
``contrib``
    ``opentelemetry-instrumentation-confluent-kafka``'s.

The exporter set-up is ``kafka_child``'s (``hotpath_child.Exporters``). One operation is one
record produced and consumed: records go in batches of :data:`BATCH` (``produce`` each, then
``flush``, which runs the delivery reports), then the consumer takes them one by one with
``poll`` (each handling current until the next ``poll``, as in a ``while True: msg =
consumer.poll(...)`` loop). Each process uses a topic and a consumer group of its own, created
before the measurement. The clients are made through ``confluent_kafka.Producer`` /
``Consumer`` after instrumenting, as under ``opentelemetry-instrument``.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any, Final

import confluent_kafka
from hotpath_child import Exporters
from method import child_measure

VARIANTS: Final = ("off", "eda", "contrib")
BATCH: Final = 100
VALUE: Final = b'{"order": "A-1001", "amount_cents": 4200}'


def instrument(variant: str, exporters: Exporters) -> None:
    if variant == "eda":
        from otel_eda.transports.confluent_kafka.instrumentor import ConfluentKafkaInstrumentor

        ConfluentKafkaInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    elif variant == "contrib":
        from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor as ContribInstrumentor

        ContribInstrumentor().instrument(tracer_provider=exporters.tracer_provider)


def next_record(consumer: Any) -> Any:
    while True:
        msg = consumer.poll(10.0)
        if msg is not None and msg.error() is None:
            return msg


def main(variant: str) -> None:
    servers = os.environ["KAFKA_BOOTSTRAP"]
    exporters = Exporters()
    exporters.install()
    instrument(variant, exporters)
    topic = f"bench-ck-{variant}-{uuid.uuid4().hex[:8]}"
    producer = confluent_kafka.Producer({"bootstrap.servers": servers, "linger.ms": 0})
    producer.produce(topic, b"create")  # the topic exists before the consumer joins
    producer.flush(60)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    next_record(consumer)
    handled = [0]

    def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            for _ in range(k):
                producer.produce(topic, VALUE)
            producer.flush(60)
            for _ in range(k):
                next_record(consumer)
            done += k
        handled[0] += n

    if variant == "off":
        child_measure(run)
    else:
        child_measure(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    consumer.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: confluent_kafka_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    main(sys.argv[1])
