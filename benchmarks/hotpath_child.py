"""One measurement of the hot-path benchmark, in a fresh process: ``hotpath_child.py VARIANT``.

Variants (``bench_hotpath.py`` runs them; run one by hand with ``BENCH_OPS=2000``):

``reference``
    the fixed hand-written reference (``reference_queue.py``) with its telemetry on;
``bare``
    the same class with telemetry off: a bare ``asyncio.Queue`` (no SDK installed);
``eda``
    otel-eda's ``EventBus`` with what ``otel_eda.configure()`` installs;
``eda-no-anomaly``
    the same, without the anomaly engine (see :func:`eda_without_anomaly_engine`);
``eda-off``
    otel-eda's ``EventBus`` with telemetry off (``OTEL_SDK_DISABLED=true``: ``configure()``
    installs nothing, the API is a no-op; identity headers, their validation and the
    lifecycle store remain).

Both telemetry sides get the same exporter set-up, installed before anything else: a
TracerProvider with a BatchSpanProcessor (queue of 2^16, so nothing is dropped; drops are
counted) around an exporter that counts and discards spans, and a MeterProvider with one
PeriodicExportingMetricReader (default interval) around an exporter that discards metrics;
the global propagator is the default ``tracecontext,baggage``. otel-eda's side then calls
``configure()``, which completes those providers with what it adds (EventSpanProcessor,
LinkAwareSampler, the anomaly reader, its propagator, span-loss accounting, host metrics).

One operation is one event published and consumed by one subscriber whose handler does
nothing; events go in batches of 100 followed by a join, so no queue ever fills.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final

from method import child_measure_async
from opentelemetry import metrics, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from reference_queue import ReferenceQueue

VARIANTS: Final = ("reference", "bare", "eda", "eda-no-anomaly", "eda-off")
BSP_MAX_QUEUE: Final = 1 << 16
BATCH: Final = 1  # publish one event, then wait until it is handled
DESTINATION: Final = "orders"
GROUP: Final = "billing"
PAYLOAD: Final = {"order": "A-1001", "amount_cents": 4200}


class DiscardingSpanExporter(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class DiscardingMetricExporter(MetricExporter):
    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class DropCounter(logging.Handler):
    """Counts the BatchProcessor's 'Queue full, dropping ...' warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Queue full"):
            self.dropped += 1


class Exporters:
    """The exporter set-up both telemetry sides share."""

    def __init__(self) -> None:
        resource = Resource.create({"service.name": "bench-hotpath"})
        self.spans = DiscardingSpanExporter()
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.spans, max_queue_size=BSP_MAX_QUEUE))
        self.meter_provider = MeterProvider(
            metric_readers=[PeriodicExportingMetricReader(DiscardingMetricExporter())], resource=resource
        )
        self.drops = DropCounter()
        logging.getLogger("opentelemetry.sdk._shared_internal").addHandler(self.drops)

    def install(self, *, meter_provider: metrics.MeterProvider | None = None) -> None:
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(meter_provider or self.meter_provider)

    def flush(self) -> None:
        self.tracer_provider.force_flush()

    def extra(self, events: Callable[[], int]) -> Callable[[], Mapping[str, float]]:
        def numbers() -> Mapping[str, float]:
            self.flush()
            return {"spans_per_event": self.spans.exported / max(1, events()), "spans_dropped": self.drops.dropped}

        return numbers


async def _nothing(_: object) -> None:
    return None


def batched(publish: Callable[[], Awaitable[object]], join: Callable[[], Awaitable[object]]) -> Any:
    count = [0]

    async def run(n: int) -> None:
        done = 0
        while done < n:
            k = min(BATCH, n - done)
            for _ in range(k):
                await publish()
            await join()
            done += k
        count[0] += n

    run.events = lambda: count[0]  # type: ignore[attr-defined]
    return run


async def reference(telemetry: bool) -> None:
    exporters = Exporters() if telemetry else None
    if exporters is not None:
        exporters.install()
    queue = ReferenceQueue(_nothing, telemetry=telemetry, destination=DESTINATION, group=GROUP)
    queue.start()
    run = batched(lambda: queue.publish(PAYLOAD), queue.join)
    if exporters is None:
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(run.events))
    await queue.close()


def _check_installation(expect_anomaly: bool) -> None:
    from otel_eda.configuration import installation

    state = installation()
    gaps = [gap for gap in state.missing() if expect_anomaly or not gap.startswith("AnomalyMetricReader")]
    if gaps:
        print(f"WARNING: configure() left gaps: {gaps}", file=sys.stderr)


async def eda(variant: str) -> None:
    import otel_eda

    exporters = None
    if variant == "eda":
        exporters = Exporters()
        exporters.install()
    elif variant == "eda-no-anomaly":
        exporters = eda_without_anomaly_engine()
    otel_eda.configure()
    if exporters is not None:
        _check_installation(expect_anomaly=variant == "eda")
    bus = otel_eda.EventBus(
        service="bench-hotpath", meter_provider=exporters.meter_provider if exporters is not None else None
    )

    async def handle(_: object) -> None:
        return None

    bus.subscribe(DESTINATION, handle, subscriber=GROUP)
    run = batched(lambda: bus.publish(DESTINATION, PAYLOAD), bus.join)
    if exporters is None:
        await child_measure_async(run)
    else:
        await child_measure_async(run, flush=exporters.flush, extra=exporters.extra(run.events))
    await bus.close()


def eda_without_anomaly_engine() -> Exporters:
    """The same exporters, but ``configure()`` sees no SDK MeterProvider (a no-op one is
    global), so it attaches no anomaly reader and its host metrics go nowhere; the bus gets
    the SDK MeterProvider explicitly and records its metrics there exactly as in ``eda``."""
    exporters = Exporters()
    exporters.install(meter_provider=NoOpMeterProvider())
    return exporters


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in VARIANTS:
        print(f"usage: hotpath_child.py {{{','.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    variant = argv[0]
    if variant in ("reference", "bare"):
        asyncio.run(reference(telemetry=variant == "reference"))
    else:
        asyncio.run(eda(variant))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
