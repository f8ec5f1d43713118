"""One measurement of the broker benchmark's aio-pika line, in a fresh process: ``rabbitmq_child.py VARIANT``.

Variants (``bench_kafka.py`` runs them against one RabbitMQ; run one by hand with
``AMQP_URL=amqp://guest:guest@127.0.0.1:19672/ BENCH_OPS=500 .venv/bin/python benchmarks/rabbitmq_child.py eda``):

``off``
    aio-pika with no instrumentation;
``eda``
    otel-eda's aio-pika instrumentation (``AioPikaInstrumentor``);
``contrib``
    ``opentelemetry-instrumentation-aio-pika``'s.

Both instrumented variants get the same exporter set-up as the other broker lines
(``hotpath_child.Exporters``); ``off`` installs the same providers and nothing uses them.

One operation is one message published and consumed: messages are published in batches of
:data:`BATCH` on a channel with publisher confirms (the publishes of a batch concurrent, each
waiting for its confirmation), then handled by a ``queue.consume`` callback that acknowledges
each with ``message.process()``; the batch ends when all are handled. Each process uses a queue
of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any, Final

import aio_pika
from hotpath_child import Exporters
from method import child_measure_async

VARIANTS: Final = ("off", "eda", "contrib")
BATCH: Final = 100
BODY: Final = b'{"order": "A-1001", "amount_cents": 4200}'


def instrument(variant: str, exporters: Exporters) -> None:
    if variant == "eda":
        from otel_eda.transports.aio_pika.instrumentor import AioPikaInstrumentor

        AioPikaInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    elif variant == "contrib":
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor as ContribInstrumentor

        ContribInstrumentor().instrument(tracer_provider=exporters.tracer_provider)


async def main(variant: str) -> None:
    exporters = Exporters()
    exporters.install()
    instrument(variant, exporters)
    connection = await aio_pika.connect(os.environ["AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=BATCH)
    queue = await channel.declare_queue(f"bench-{variant}-{uuid.uuid4().hex[:8]}", exclusive=True)
    exchange = channel.default_exchange
    handled = [0]
    target = [0]
    batch_done = asyncio.Event()

    async def handle(message: Any) -> None:
        async with message.process():
            handled[0] += 1
        if handled[0] >= target[0]:
            batch_done.set()

    await queue.consume(handle)

    async def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            target[0] = handled[0] + k
            batch_done.clear()
            await asyncio.gather(*(exchange.publish(aio_pika.Message(BODY), routing_key=queue.name) for _ in range(k)))
            await batch_done.wait()
            done += k

    if variant == "off":
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    await connection.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: rabbitmq_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
