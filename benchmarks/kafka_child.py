"""One measurement of the broker benchmark, in a fresh process: ``kafka_child.py VARIANT``.

Variants (``bench_kafka.py`` runs them against one Kafka; run one by hand with
``KAFKA_BOOTSTRAP=127.0.0.1:19092 BENCH_OPS=500 .venv/bin/python benchmarks/kafka_child.py eda``):

``off``
    aiokafka with no instrumentation;
``eda``
    otel-eda's aiokafka instrumentation (``AIOKafkaInstrumentor``);
``contrib``
    ``opentelemetry-instrumentation-aiokafka``'s.

Both instrumented variants get the same exporter set-up (``hotpath_child.Exporters``): a
TracerProvider with a BatchSpanProcessor around an exporter that counts and discards spans,
a MeterProvider with one PeriodicExportingMetricReader around a discarding exporter, the
default ``tracecontext,baggage`` propagator. ``off`` installs the same providers and
nothing uses them.

One operation is one record produced and consumed: records go in batches of
:data:`BATCH` (``send`` each, ``flush``), then the consumer takes them one by one with
``getone`` (each handling current until the next ``getone``, as in an ``async for`` loop).
Each process uses a topic and a consumer group of its own, created before the measurement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from hotpath_child import Exporters
from method import child_measure_async

VARIANTS: Final = ("off", "eda", "contrib")
BATCH: Final = 100
VALUE: Final = b'{"order": "A-1001", "amount_cents": 4200}'


def instrument(variant: str, exporters: Exporters) -> None:
    if variant == "eda":
        from otel_eda.transports.aiokafka.instrumentor import AIOKafkaInstrumentor

        AIOKafkaInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    elif variant == "contrib":
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor as ContribInstrumentor

        ContribInstrumentor().instrument(tracer_provider=exporters.tracer_provider)


async def main(variant: str) -> None:
    servers = os.environ["KAFKA_BOOTSTRAP"]
    exporters = Exporters()
    exporters.install()
    instrument(variant, exporters)
    topic = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=0)
    await producer.start()
    await producer.send_and_wait(topic, b"create")  # the topic exists before the consumer joins
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=servers, group_id=topic, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    await consumer.getone()
    handled = [0]

    async def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            for _ in range(k):
                await producer.send(topic, VALUE)
            await producer.flush()
            for _ in range(k):
                await consumer.getone()
            done += k
        handled[0] += n

    if variant == "off":
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    await consumer.stop()
    await producer.stop()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: kafka_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
