"""Span loss accounting: failed exports, queue overflows and shutdown, counted exactly."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import types
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

from otel_eda.sdk import exportloss
from otel_eda.sdk.exportloss import (
    METRIC_SPANS_LOST,
    LossCountingSpanExporter,
    SpanLossTally,
    span_loss_tallies,
    track_span_losses,
)
from otel_eda.sdk.processor import EventSpanProcessor
from otel_eda.testing import TelemetryCapture

LOGGER = "otel_eda.sdk.exportloss"


class Recording(SpanExporter):
    """Keeps what it is given; fails or raises on demand; can block until released."""

    def __init__(self, *, result: SpanExportResult = SpanExportResult.SUCCESS, raises: bool = False) -> None:
        self.result = result
        self.raises = raises
        self.exported = 0
        self.calls = 0
        self.sizes: list[int] = []  # spans handed over, per call
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.shut_down = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.sizes.append(len(spans))
        self.entered.set()
        self.release.wait(10)
        if self.raises:
            raise ConnectionError("connection refused (test)")
        if self.result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        return self.result

    def shutdown(self) -> None:
        self.shut_down = True


@pytest.fixture
def meters() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def lost_by_reason(reader: InMemoryMetricReader) -> dict[str, int]:
    found: dict[str, int] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == METRIC_SPANS_LOST:
                    for point in metric.data.data_points:
                        reason = str((point.attributes or {})["eda.reason"])
                        found[reason] = found.get(reason, 0) + int(point.value)  # type: ignore[union-attr]
    return found


def pipeline(
    exporter: SpanExporter, meters: tuple[MeterProvider, InMemoryMetricReader], **bsp: int
) -> tuple[TracerProvider, BatchSpanProcessor]:
    provider = TracerProvider()
    processor = BatchSpanProcessor(exporter, **bsp)  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    assert track_span_losses(provider, meter_provider=meters[0]) == 1
    return provider, processor


def emit(provider: TracerProvider, n: int) -> None:
    tracer = provider.get_tracer("test")
    for _ in range(n):
        tracer.start_span("work").end()


@pytest.mark.parametrize("raises", [False, True], ids=["returns FAILURE", "raises"])
def test_every_span_of_a_failed_export_is_counted(
    raises: bool, meters: tuple[MeterProvider, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = Recording(result=SpanExportResult.FAILURE, raises=raises)
    provider, processor = pipeline(exporter, meters, max_export_batch_size=7, schedule_delay_millis=60_000)
    with caplog.at_level(logging.DEBUG):
        emit(provider, 23)
        assert processor.force_flush()
    (tally,) = span_loss_tallies(provider)
    assert tally.totals() == {"queue_full": 0, "export_failed": 23, "shutdown": 0}
    assert exporter.calls == 4  # 7 + 7 + 7 + 2
    assert lost_by_reason(meters[1]) == {"queue_full": 0, "export_failed": 23, "shutdown": 0}
    # the SDK's "Exception while exporting" traceback per batch is gone
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry") and r.exc_info]
    provider.shutdown()


@pytest.mark.parametrize("raises", [False, True], ids=["returns FAILURE", "raises"])
def test_in_an_outage_each_batch_costs_one_span_and_recovery_sends_everything(
    raises: bool, meters: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    """Issue 12: a dropped span cost the encoding of its whole batch (more CPU than an exported one)."""
    exporter = Recording(result=SpanExportResult.FAILURE, raises=raises)
    provider, processor = pipeline(exporter, meters, max_export_batch_size=7, schedule_delay_millis=60_000)
    emit(provider, 23)
    assert processor.force_flush()
    assert exporter.sizes == [7, 1, 1, 1]  # the first failure, then one span a batch
    (tally,) = span_loss_tallies(provider)
    assert tally.totals() == {"queue_full": 0, "export_failed": 23, "shutdown": 0}
    exporter.raises, exporter.result = False, SpanExportResult.SUCCESS  # the backend is back
    exporter.sizes.clear()
    emit(provider, 14)
    assert processor.force_flush()
    assert exporter.sizes == [1, 6, 7]  # the probe, the rest of its batch, then whole batches
    assert exporter.exported == 14 and tally.export_failed == 23
    provider.shutdown()


def test_simple_span_processor_failures_are_counted_and_never_reach_the_app(
    meters: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    exporter = Recording(raises=True)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert track_span_losses(provider, meter_provider=meters[0]) == 1
    emit(provider, 5)  # raises nothing
    (tally,) = span_loss_tallies(provider)
    assert (tally.export_failed, tally.component_type, tally.exporter) == (5, "simple_span_processor", "Recording")
    provider.shutdown()
    emit(provider, 2)  # after shutdown: the SDK's already_shutdown drops
    assert tally.totals() == {"queue_full": 0, "export_failed": 5, "shutdown": 2}


def test_queue_overflow_is_counted_exactly(
    meters: tuple[MeterProvider, InMemoryMetricReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.sdk import _shared_internal

    calls: list[str] = []
    monkeypatch.setattr(_shared_internal._logger, "warning", lambda msg, *args: calls.append(msg % args))
    exporter = Recording()
    exporter.release.clear()
    provider, processor = pipeline(exporter, meters, max_queue_size=4, max_export_batch_size=2)
    emit(provider, 2)  # wakes the worker, which takes these two and blocks in export
    assert exporter.entered.wait(5)
    emit(provider, 10)  # 4 fit in the queue, 6 are dropped
    # the SDK's "Queue full" log call for every dropped span (a LogRecord made, then filtered:
    # about 6 us a span in an outage) is skipped; the counting queue counts the drops
    assert not [c for c in calls if "Queue full" in c]
    (tally,) = span_loss_tallies(provider)
    assert tally.queue_full == 6
    exporter.release.set()
    assert processor.force_flush()
    assert exporter.exported == 6
    wrapper = processor._batch_processor._exporter
    assert isinstance(wrapper, LossCountingSpanExporter) and wrapper.exported == 6  # accepted spans
    assert tally.totals() == {"queue_full": 6, "export_failed": 0, "shutdown": 0}
    assert lost_by_reason(meters[1])["queue_full"] == 6
    provider.shutdown()


def test_overflow_count_is_exact_with_several_emitting_threads(
    meters: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    """The SDK's own drop hook miscounts here (check-then-append races the export thread)."""
    exporter = Recording()
    provider, processor = pipeline(
        exporter, meters, max_queue_size=16, max_export_batch_size=4, schedule_delay_millis=1
    )
    threads = [threading.Thread(target=emit, args=(provider, 5000)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert processor.force_flush()
    (tally,) = span_loss_tallies(provider)
    assert tally.queue_full > 0
    assert exporter.exported + tally.queue_full == 20_000
    provider.shutdown()
    assert tally.total == tally.queue_full


def test_spans_left_queued_when_shutdown_gives_up_are_counted(
    meters: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    exporter = Recording()
    exporter.release.clear()
    provider, processor = pipeline(exporter, meters, max_queue_size=50, max_export_batch_size=5)
    emit(provider, 5)
    assert exporter.entered.wait(5)  # the worker is stuck in an export of 5
    emit(provider, 30)
    processor._batch_processor.shutdown(timeout_millis=200)  # the join times out; 30 stay queued
    (tally,) = span_loss_tallies(provider)
    assert tally.shutdown == 30
    emit(provider, 3)  # ended after shutdown
    assert tally.shutdown == 33
    exporter.release.set()  # the stuck export finishes; nothing more is exported
    processor._batch_processor._worker_thread.join(5)
    assert exporter.exported == 5
    assert exporter.exported + tally.total == 38
    assert exporter.shut_down


def test_tracking_is_idempotent_and_leaves_other_processors_alone(
    meters: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider = TracerProvider()
    other = SimpleSpanProcessor(Recording())
    provider.add_span_processor(BatchSpanProcessor(Recording()))
    provider.add_span_processor(other)
    provider.add_span_processor(EventSpanProcessor())  # not an export pipeline
    assert track_span_losses(provider, meter_provider=meters[0]) == 2
    assert track_span_losses(provider, meter_provider=meters[0]) == 2
    assert track_span_losses(provider) == 2
    for tally in span_loss_tallies(provider):
        assert tally.total == 0
    assert isinstance(other.span_exporter, LossCountingSpanExporter)
    assert not isinstance(other.span_exporter.inner, LossCountingSpanExporter)
    assert len(span_loss_tallies(provider)) == 2
    # one observable counter for the meter provider, three reasons per pipeline
    assert sorted(lost_by_reason(meters[1]).values()) == [0, 0, 0]
    provider.shutdown()


def test_tracking_never_raises() -> None:
    assert track_span_losses(object()) == 0  # type: ignore[arg-type]
    broken = TracerProvider(shutdown_on_exit=False)
    broken._active_span_processor = None  # type: ignore[assignment]
    assert track_span_losses(broken) == 0


def test_without_the_private_sdk_attributes_one_warning_and_failures_still_counted(
    meters: tuple[MeterProvider, InMemoryMetricReader],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exportloss, "_warned_private_api", False)
    exporter = Recording(result=SpanExportResult.FAILURE)
    providers = []
    real = []
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(2):
            provider = TracerProvider(shutdown_on_exit=False)
            processor = BatchSpanProcessor(exporter)
            real.append(processor._batch_processor)
            processor._batch_processor = types.SimpleNamespace(_exporter=exporter)  # type: ignore[assignment]
            provider.add_span_processor(processor)
            assert track_span_losses(provider, meter_provider=meters[0]) == 1
            providers.append(provider)
    warnings = [r for r in caplog.records if "cannot count span queue overflows" in r.getMessage()]
    assert len(warnings) == 1
    wrapper = providers[0]._active_span_processor._span_processors[0]._batch_processor._exporter  # type: ignore[attr-defined]
    assert isinstance(wrapper, LossCountingSpanExporter)
    assert wrapper.export([object(), object()]) is SpanExportResult.FAILURE  # type: ignore[list-item]
    assert wrapper.lost == 2
    for batch in real:
        batch.shutdown()


def test_losses_are_logged_once_per_interval_then_summarised_at_shutdown(
    meters: tuple[MeterProvider, InMemoryMetricReader], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = Recording(raises=True)
    provider, processor = pipeline(exporter, meters, max_export_batch_size=10, schedule_delay_millis=60_000)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(5):
            emit(provider, 10)
            processor.force_flush()
        reports = [r.getMessage() for r in caplog.records if r.name == LOGGER]
        assert len(reports) == 1
        assert reports[0].startswith("otel-eda: 10 span(s) lost since the last report because Recording failed")
        assert "(ConnectionError)" in reports[0] and "10 lost for this reason" in reports[0]
        provider.shutdown()
    reports = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(reports) == 2
    assert reports[1].startswith("otel-eda: 40 span(s) lost since the last report")
    assert "50 lost for this reason and 50 in all" in reports[1]


def test_tally_logs_again_after_the_interval(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(exportloss, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    tally = SpanLossTally("ZipkinExporter", max_queue_size=2048)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        tally.add("queue_full", 1)
        for _ in range(99):
            tally.add("queue_full", 1)
        tally.add("export_failed", 512, "ConnectionError")  # another reason has its own throttle
        now[0] += 30.0
        tally.add("queue_full", 1)
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 3
    assert "max_queue_size=2048" in reports[0] and reports[0].startswith("otel-eda: 1 span(s)")
    assert reports[2].startswith("otel-eda: 100 span(s) lost since the last report")
    assert "101 lost for this reason and 613 in all" in reports[2]


def test_the_anomaly_engine_alerts_on_lost_spans() -> None:
    with TelemetryCapture(service="shop") as capture:
        exporter = Recording(raises=True)
        processor = BatchSpanProcessor(exporter, schedule_delay_millis=60_000)
        capture.tracer_provider.add_span_processor(processor)
        assert track_span_losses(capture.tracer_provider, meter_provider=capture.meter_provider) == 2
        capture.evaluate()  # nothing lost yet
        emit(capture.tracer_provider, 20)
        processor.force_flush()
        alerts = capture.evaluate()
        assert [(a.labels["alertname"], a.state.value) for a in alerts] == [("SpansLost", "firing")]
        assert alerts[0].labels["eda.reason"] == "export_failed"
        assert alerts[0].labels["eda.exporter"] == "Recording"
        assert alerts[0].labels["service"] == "shop"
        resolved = [capture.evaluate() for _ in range(3)]  # no more losses: rate 0
        assert [(a.labels["alertname"], a.state.value) for a in resolved[-1]] == [("SpansLost", "resolved")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_inherit_a_held_queue_lock(meters: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    exporter = Recording()
    provider, processor = pipeline(exporter, meters, max_queue_size=4, max_export_batch_size=2)
    queue = processor._batch_processor._queue
    assert isinstance(queue, exportloss._CountingQueue)
    queue.lock.acquire()  # as if the export thread were popping when the process forks
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                emit(provider, 10)  # would hang on the inherited lock
                processor.force_flush()
                os._exit(0 if exporter.exported + span_loss_tallies(provider)[0].queue_full == 10 else 1)
            finally:
                os._exit(2)
    finally:
        queue.lock.release()
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the span queue's lock")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    provider.shutdown()


def test_an_exporter_returning_none_loses_nothing_and_its_attributes_read_through() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from otel_eda.sdk.exportloss import LossCountingSpanExporter, span_loss_tallies, track_span_losses

    class DuckExporter:  # returns nothing, as the SDK tolerates
        endpoint = "http://127.0.0.1:1/api"

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: object) -> None:
            self.spans += len(spans)  # type: ignore[arg-type]

        def shutdown(self) -> None:
            pass

    duck = DuckExporter()
    provider = TracerProvider()
    processor = SimpleSpanProcessor(duck)  # type: ignore[arg-type]
    provider.add_span_processor(processor)
    assert track_span_losses(provider) == 1
    for _ in range(10):
        provider.get_tracer("t").start_span("s").end()
    wrapped = processor.span_exporter
    assert isinstance(wrapped, LossCountingSpanExporter)
    assert duck.spans == 10 and wrapped.exported == 10
    assert span_loss_tallies(provider)[0].total == 0
    assert wrapped.endpoint == DuckExporter.endpoint
