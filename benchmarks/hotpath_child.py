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
    lifecycle store remain);
``span-with-processor`` / ``span-without-processor``
    one operation is one CLIENT span started and ended inside a flow (a context carrying an
    otel-eda current event and a parent span; 5 caller attributes; 1 link whose attributes
    carry ``messaging.message.id``) on a TracerProvider with or without the
    ``EventSpanProcessor`` (both: ``LinkAwareSampler(ParentBased(ALWAYS_ON))``, a
    BatchSpanProcessor with a discarding exporter);
``collection``
    one operation is otel-eda's part of one anomaly-reader collection of ``BENCH_SERIES``
    (default 100,000) counter series: the conversion to series points with the zero fill,
    then ``AnomalyEngine.evaluate`` with a z-score rule on every series (the cheap
    detector); the SDK's own collect before it is not timed.

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

from method import child_measure, child_measure_async, child_plan, child_profiler, child_report
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

VARIANTS: Final = (
    "reference",
    "bare",
    "eda",
    "eda-no-anomaly",
    "eda-off",
    "span-with-processor",
    "span-without-processor",
    "collection",
)
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
    from otel_eda.installation.configuration import installation

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


def spans(with_processor: bool) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
    from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    from otel_eda import EventContext, semconv, with_event
    from otel_eda.sdk.processor import EventSpanProcessor
    from otel_eda.sdk.sampling import LinkAwareSampler

    exporter = DiscardingSpanExporter()
    provider = TracerProvider(
        sampler=LinkAwareSampler(ParentBased(ALWAYS_ON)), resource=Resource.create({"service.name": "bench"})
    )
    if with_processor:
        provider.add_span_processor(EventSpanProcessor())
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 20))
    event = EventContext.root("order_placed").child("payment_authorized")
    parent = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))
    producer = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))
    context = with_event(event, trace.set_span_in_context(NonRecordingSpan(parent)))
    links = [Link(producer, {semconv.MESSAGING_MESSAGE_ID: event.causation_id or event.event_id})]
    attributes: dict[str, Any] = {
        "http.request.method": "GET",
        "url.full": "http://inventory.internal:8080/stock/A-1001",
        "server.address": "inventory.internal",
        "server.port": 8080,
        "http.response.status_code": 200,
    }
    start_span = provider.get_tracer("bench.client").start_span
    started = [0]

    def run(n: int) -> None:
        for _ in range(n):
            start_span("GET", context, kind=SpanKind.CLIENT, attributes=attributes, links=links).end()
        started[0] += n

    def extra() -> Mapping[str, float]:
        provider.force_flush()
        return {"exported_per_span": exporter.exported / max(1, started[0])}

    child_measure(run, flush=provider.force_flush, extra=extra)
    provider.shutdown()


def collection() -> None:
    import os
    import time

    from opentelemetry.sdk.metrics import Histogram
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

    from otel_eda.anomaly import reader as anomaly_reader
    from otel_eda.anomaly.engine import AnomalyEngine
    from otel_eda.anomaly.rules import Rule

    class CapturingReader(MetricReader):
        """Keeps the last collection; the anomaly reader's temporality and aggregation."""

        def __init__(self) -> None:
            super().__init__(
                preferred_temporality=anomaly_reader._TEMPORALITY,  # type: ignore[arg-type]
                preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()},
            )
            self.data: MetricsData | None = None

        def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> None:
            self.data = metrics_data

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            return None

    series = int(os.environ.get("BENCH_SERIES", "100000"))
    ops, warmup = child_plan()
    reader = CapturingReader()
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("bench").create_counter("jobs")
    attrs = [{"job": f"j{i}"} for i in range(series)]
    rule = Rule(name="jobs", metric="jobs", signal="rate", detector={"kind": "zscore", "window": 60})
    engine = AnomalyEngine([rule], max_series=series + 10)
    anomaly = anomaly_reader.AnomalyMetricReader(engine, interval_s=3600, start=False)  # fed by hand

    def one(round_no: int) -> tuple[float, float]:
        for a in attrs:
            counter.add(1 + round_no % 3, a)
        reader.collect()  # the SDK's part: not timed
        data = reader.data
        reader.data = None
        assert data is not None
        cpu, wall = time.process_time(), time.perf_counter()
        points, now = anomaly._series(data)
        engine.evaluate(points, now)
        return time.process_time() - cpu, time.perf_counter() - wall

    for i in range(max(1, warmup)):  # the first collection creates the engine's series
        one(i)
    profiler = child_profiler()
    cpu = wall = 0.0
    for i in range(ops):
        c, w = one(warmup + i)
        cpu += c
        wall += w
    if profiler is not None:
        profiler.stop_and_print()
    child_report(ops, cpu, wall, {"series": float(engine.series_count)})
    provider.shutdown()


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in VARIANTS:
        print(f"usage: hotpath_child.py {{{','.join(VARIANTS)}}}", file=sys.stderr)
        return 2
    variant = argv[0]
    if variant in ("reference", "bare"):
        asyncio.run(reference(telemetry=variant == "reference"))
    elif variant.startswith("span-"):
        spans(with_processor=variant == "span-with-processor")
    elif variant == "collection":
        collection()
    else:
        asyncio.run(eda(variant))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
