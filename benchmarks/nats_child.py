"""One NATS measurement of the broker benchmark, in a fresh process: ``nats_child.py VARIANT``.

Variants (``bench_kafka.py`` runs them against one nats-server; run one by hand with
``NATS_URL=nats://127.0.0.1:14222 BENCH_OPS=500 .venv/bin/python benchmarks/nats_child.py eda``):

``off``
    nats-py with no instrumentation;
``eda``
    otel-eda's nats-py instrumentation (``NATSInstrumentor``);
``reference``
    the fixed hand-written reference (``reference_nats.py``): the hot-path benchmark's
    reference telemetry, by hand around the same nats-py calls.

Both instrumented variants get the same exporter set-up (``hotpath_child.Exporters``); ``off``
installs the same providers and nothing uses them.

One operation is one message published and handled over JetStream: messages go in batches of
:data:`BATCH` (``js.publish`` each, awaiting its PubAck), then a durable pull consumer fetches
them (``fetch``, up to a batch at a time) and handles each one by acking it. Each process uses
a memory stream, a subject and a consumer of its own, created before the measurement.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Any, Final

import nats
from hotpath_child import Exporters
from method import child_measure_async
from nats.js.api import StorageType, StreamConfig
from reference_nats import ReferenceNats

VARIANTS: Final = ("off", "eda", "reference")
BATCH: Final = 100
VALUE: Final = b'{"order": "A-1001", "amount_cents": 4200}'


async def _ack(msg: Any) -> None:
    await msg.ack()


async def main(variant: str) -> None:
    exporters = Exporters()
    exporters.install()
    if variant == "eda":
        from otel_eda.transports.nats.instrumentor import NATSInstrumentor

        NATSInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    nc = await nats.connect(os.environ["NATS_URL"])
    js = nc.jetstream()
    name = f"{variant}_{uuid.uuid4().hex[:8]}"
    subject = f"bench.{name}"
    await js.add_stream(StreamConfig(name=f"BENCH_{name}", subjects=[subject], storage=StorageType.MEMORY))
    psub = await js.pull_subscribe(subject, durable="bench")
    reference = ReferenceNats(destination=subject, group="bench") if variant == "reference" else None
    handled = [0]

    async def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            for _ in range(k):
                if reference is not None:
                    await reference.publish(js, VALUE)
                else:
                    await js.publish(subject, VALUE)
            got = 0
            while got < k:
                msgs = await psub.fetch(k - got, timeout=10)
                for msg in msgs:
                    if reference is not None:
                        await reference.process(msg, _ack)
                    else:
                        await msg.ack()
                got += len(msgs)
            done += k
        handled[0] += n

    if variant == "off":
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    await js.delete_stream(f"BENCH_{name}")
    await nc.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: nats_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
