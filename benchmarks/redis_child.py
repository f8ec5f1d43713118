"""One measurement of the Redis Streams benchmark, in a fresh process: ``redis_child.py VARIANT``.

Variants (``bench_redis.py`` runs them against one redis-server; run one by hand with
``REDIS_PORT=16390 BENCH_OPS=500 .venv/bin/python benchmarks/redis_child.py eda``):

``off``
    redis-py's asyncio client with no instrumentation (``reference_redis.py`` with
    ``telemetry=False``: the same Redis calls as the other two);
``reference``
    the fixed hand-written reference (``reference_redis.py``, the telemetry of
    ``reference_queue.py`` on this client);
``eda``
    otel-eda's instrumentation (``RedisStreamsInstrumentor``) on the uninstrumented calls.

All get the same exporter set-up (``hotpath_child.Exporters``): a TracerProvider with a
BatchSpanProcessor around an exporter that counts and discards spans, a MeterProvider with
one PeriodicExportingMetricReader around a discarding exporter, the default
``tracecontext,baggage`` propagator. ``off`` installs the same providers and nothing uses them.

One operation is one event: added with ``XADD`` in batches of :data:`BATCH`, then read with
one ``XREADGROUP COUNT BATCH``, each entry handled (a no-op handler) and acknowledged with
``XACK``. Each process uses a stream and group of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from typing import Final

import redis.asyncio
from hotpath_child import Exporters
from method import child_measure_async
from reference_redis import ReferenceRedisStreams

VARIANTS: Final = ("off", "reference", "eda")
BATCH: Final = 100
FIELDS: Final = {"order": "A-1001", "amount_cents": "4200"}


async def _nothing(_: object) -> None:
    return None


async def main(variant: str) -> None:
    exporters = Exporters()
    exporters.install()
    if variant == "eda":
        from otel_eda.transports.redis.instrumentor import RedisStreamsInstrumentor

        RedisStreamsInstrumentor().instrument(
            tracer_provider=exporters.tracer_provider, meter_provider=exporters.meter_provider
        )
    client = redis.asyncio.Redis(host="127.0.0.1", port=int(os.environ["REDIS_PORT"]), decode_responses=True)
    stream = f"bench-{variant}-{uuid.uuid4().hex[:8]}"
    await client.xgroup_create(stream, "billing", id="0", mkstream=True)
    queue = ReferenceRedisStreams(client, _nothing, telemetry=variant == "reference", stream=stream)
    handled = [0]

    async def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            for _ in range(k):
                await queue.publish(dict(FIELDS))
            read = 0
            while read < k:
                read += await queue.consume(k - read)
            done += k
        handled[0] += n

    if variant == "off":
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(lambda: handled[0]))
    await client.delete(stream)
    await client.aclose()


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in VARIANTS:
        sys.exit(f"usage: redis_child.py {{{'|'.join(VARIANTS)}}}")
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(sys.argv[1]))
