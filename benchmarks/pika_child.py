"""One measurement of the broker benchmark's pika line, in a fresh process: ``pika_child.py VARIANT``.

Variants (``bench_kafka.py --brokers pika`` runs them against one RabbitMQ; run one by hand with
``AMQP_URL=amqp://guest:guest@127.0.0.1:19672/ BENCH_OPS=500 .venv/bin/python benchmarks/pika_child.py eda``):

``off``
    pika with no instrumentation;
``eda``
    otel-eda's pika instrumentation (``PikaInstrumentor``);
``contrib``
    ``opentelemetry-instrumentation-pika``'s.

Both instrumented variants get the same exporter set-up as the other broker lines
(``hotpath_child.Exporters``); ``off`` installs the same providers and nothing uses them.

One operation is one message published and consumed on a ``BlockingConnection``: messages are
published in batches of :data:`BATCH` on a channel with publisher confirms (each
``basic_publish`` waits for its confirmation), then handled by a ``basic_consume`` callback that
acknowledges each (``basic_ack``) while ``process_data_events`` runs; the batch ends when all are
handled. Each process uses a queue of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any, Final

import pika
from hotpath_child import Exporters
from method import child_measure

VARIANTS: Final = ("off", "eda", "contrib")
BATCH: Final = 100
BODY: Final = b'{"order": "A-1001", "amount_cents": 4200}'


def instrument(variant: str, exporters: Exporters) -> None:
    if variant == "eda":
        from otel_eda.transports.pika.instrumentor import PikaInstrumentor

        PikaInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    elif variant == "contrib":
        from opentelemetry.instrumentation.pika import PikaInstrumentor as ContribInstrumentor

        ContribInstrumentor().instrument(tracer_provider=exporters.tracer_provider)


def main(variant: str) -> None:
    exporters = Exporters()
    exporters.install()
    instrument(variant, exporters)
    connection = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
    channel = connection.channel()  # after instrument(): the contrib instrumentation wraps channels as made
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=BATCH)
    queue = f"bench-pika-{variant}-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, exclusive=True)
    handled = [0]

    def handle(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        handled[0] += 1

    channel.basic_consume(queue, handle)

    def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            target = handled[0] + k
            for _ in range(k):
                channel.basic_publish("", queue, BODY)
            while handled[0] < target:
                connection.process_data_events(time_limit=None)
            done += k

    if variant == "off":
        child_measure(run)
    else:
        child_measure(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    connection.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: pika_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    main(sys.argv[1])
