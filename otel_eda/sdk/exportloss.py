"""Count every span an export pipeline loses: queue overflows, failed exports, shutdown.

The SDK's ``BatchSpanProcessor`` drops spans silently when its queue is full (one SDK
WARNING per 20 s, no count unless ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), and when
an exporter raises (a stopped Zipkin: ``requests.ConnectionError``) it logs a full
traceback for every batch and forgets the spans. :func:`track_span_losses` makes both
exact and visible, for every ``BatchSpanProcessor`` and ``SimpleSpanProcessor`` of a
``TracerProvider``:

* the exporter is wrapped in a :class:`LossCountingSpanExporter`, which delegates, catches
  the exporter's exceptions (no traceback per batch; the application and the export
  thread never see them) and counts ``len(batch)`` lost when the export fails or raises;
* the batch processor's queue is replaced by a lock-protected deque that counts each span
  it evicts when full (reason ``queue_full``), and the SDK's own per-span "Queue full"
  log call (a LogRecord made for every dropped span, then filtered) is skipped. The SDK's own ``drop_items`` hook is not
  exact: ``emit`` checks "queue full" and appends in two steps, and the export thread can
  pop in between, so a drop would be counted that never happened (or, with two emitting
  threads, one missed);
* spans ended after shutdown (the SDK's ``drop_items(1, "already_shutdown")``, seen through
  a delegating proxy of the processor's private ``_metrics``) and spans still queued when
  shutdown gives up on the export thread are counted with reason ``shutdown``.

Counts go to an observable counter ``eda.export.spans.lost`` (unit ``{span}``, attributes
``eda.reason`` = ``queue_full`` | ``export_failed`` | ``shutdown``, ``otel.component.type``
and ``eda.exporter``: the exporter's class name) on the MeterProvider, so the anomaly
engine sees a loss rate (the default ``SpansLost`` rule), and to plain integers
(:class:`SpanLossTally`, see :func:`span_loss_tallies`). Each reason is logged as one
WARNING at most every 30 s, with the number lost since the previous report and the total;
what is still unreported is logged at shutdown.

One limit: ``TracerProvider.shutdown()`` stops waiting for the export thread after 30 s
(the SDK's ``BatchProcessor.shutdown``), so a batch still in flight then (a hung backend) is
counted only when its export ends, after the exporter's timeout; a process that exits
first leaves those spans (at most ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``) uncounted.

The queue and the metrics hook are private SDK attributes (checked against SDK 1.45): if
they are missing, one WARNING says that queue overflows cannot be counted with this SDK
version, and failed exports are still counted. Nothing here raises into the application.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
>>> class Down:
...     def export(self, spans): return SpanExportResult.FAILURE
...     def shutdown(self): pass
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(Down()))
>>> track_span_losses(provider), track_span_losses(provider)  # idempotent
(1, 1)
>>> provider.get_tracer("doc").start_span("lost").end()
>>> span_loss_tallies(provider)[0].export_failed
1
"""

from __future__ import annotations

import collections
import inspect
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult

from otel_eda import otel_internals, semconv
from otel_eda._selfmetrics import internal_error
from otel_eda.process_hooks import ForkHook, register_fork_hook
from otel_eda.version import VERSION

__all__ = [
    "LOG_INTERVAL_S",
    "METRIC_SPANS_LOST",
    "REASONS",
    "LossCountingSpanExporter",
    "SpanLossTally",
    "span_loss_tallies",
    "track_span_losses",
]

_log = logging.getLogger(__name__)

# Objects whose locks a forked child gets anew: a lock held by another thread at fork time
# (the export thread popping, say) would otherwise stay held in the child forever, and the
# child's first span would hang. The SDK does the same for its own export lock.
_fork_safe: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()  # by id: a deque is unhashable

METRIC_SPANS_LOST: Final = semconv.METRIC_SPANS_LOST
ATTR_REASON: Final = semconv.EDA_REASON
ATTR_EXPORTER: Final = semconv.EDA_EXPORTER
ATTR_COMPONENT_TYPE: Final = semconv.OTEL_COMPONENT_TYPE  # semconv, values copied below

QUEUE_FULL: Final = "queue_full"
EXPORT_FAILED: Final = "export_failed"
SHUTDOWN: Final = "shutdown"
REASONS: Final = (QUEUE_FULL, EXPORT_FAILED, SHUTDOWN)

BATCHING_SPAN_PROCESSOR: Final = "batching_span_processor"
SIMPLE_SPAN_PROCESSOR: Final = "simple_span_processor"

#: At most one WARNING per reason and pipeline in this many seconds.
LOG_INTERVAL_S: Final = 30.0

_WHY = {
    QUEUE_FULL: "the BatchSpanProcessor queue was full (max_queue_size={queue}; OTEL_BSP_MAX_QUEUE_SIZE)",
    EXPORT_FAILED: "{exporter} failed to export them ({detail})",
    SHUTDOWN: "they ended after shutdown or were still queued when shutdown stopped exporting",
}


class SpanLossTally:
    """Exact totals of the spans one export pipeline lost, by reason. Thread-safe.

    >>> tally = SpanLossTally("ZipkinExporter")
    >>> tally.add("export_failed", 512, "ConnectionError")
    >>> tally.export_failed, tally.total, tally.totals()
    (512, 512, {'queue_full': 0, 'export_failed': 512, 'shutdown': 0})
    """

    def __init__(
        self,
        exporter: str,
        component_type: str = BATCHING_SPAN_PROCESSOR,
        *,
        max_queue_size: int | None = None,
        log_interval_s: float = LOG_INTERVAL_S,
    ) -> None:
        self.exporter = exporter
        self.component_type = component_type
        self.max_queue_size = max_queue_size
        self.log_interval_s = log_interval_s
        self._lock = threading.Lock()
        _fork_safe[id(self)] = self
        self._totals = dict.fromkeys(REASONS, 0)
        self._unreported = dict.fromkeys(REASONS, 0)
        self._last_log = dict.fromkeys(REASONS, -math.inf)
        self._detail = dict.fromkeys(REASONS, "")
        self.attributes = {
            reason: {ATTR_REASON: reason, ATTR_COMPONENT_TYPE: component_type, ATTR_EXPORTER: exporter}
            for reason in REASONS
        }

    @property
    def queue_full(self) -> int:
        return self._totals[QUEUE_FULL]

    @property
    def export_failed(self) -> int:
        return self._totals[EXPORT_FAILED]

    @property
    def shutdown(self) -> int:
        return self._totals[SHUTDOWN]

    @property
    def total(self) -> int:
        return sum(self._totals.values())

    def totals(self) -> dict[str, int]:
        """Spans lost so far, by reason."""
        return dict(self._totals)

    def add(self, reason: str, count: int, detail: str = "") -> None:
        """Count ``count`` spans lost for ``reason``; log if this reason was quiet long enough."""
        if count <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._totals[reason] += count
            self._unreported[reason] += count
            if detail:
                self._detail[reason] = detail
            if now - self._last_log[reason] < self.log_interval_s:
                return
            self._last_log[reason] = now
            line = self._take_report(reason)
        _log.warning("%s", line)

    def report_unreported(self) -> None:
        """Log what the throttle has held back (at shutdown)."""
        with self._lock:
            lines = [self._take_report(reason) for reason in REASONS if self._unreported[reason]]
        for line in lines:
            _log.warning("%s", line)

    def _take_report(self, reason: str) -> str:
        lost, self._unreported[reason] = self._unreported[reason], 0
        why = _WHY[reason].format(
            queue=self.max_queue_size, exporter=self.exporter, detail=self._detail[reason] or "FAILURE"
        )
        return (
            f"otel-eda: {lost} span(s) lost since the last report because {why}; "
            f"{self._totals[reason]} lost for this reason and {sum(self._totals.values())} in all "
            f"by this {self.component_type} ({METRIC_SPANS_LOST}{{{ATTR_REASON}={reason}}})"
        )

    def _reinit_locks(self) -> None:
        self._lock = threading.Lock()

    def observations(self) -> Iterator[Observation]:
        for reason in REASONS:
            yield Observation(self._totals[reason], self.attributes[reason])


class _Abandoned:
    """What the counting queue's ``pop`` returns once drained: filtered out before export."""


_ABANDONED: Final = _Abandoned()


_appendleft = collections.deque.appendleft  # the C methods, without super()'s lookup per call
_pop = collections.deque.pop


class _CountingQueue(collections.deque[Any]):
    """The batch processor's queue, counting each span it evicts when full.

    ``appendleft`` (the application's thread) and ``pop`` (the export thread) share a
    lock, so "was it full?" and the append are one step. After :meth:`drain` (shutdown)
    nothing is queued any more: a late span is counted lost at once, and a ``pop`` the
    export thread had already decided on returns a marker instead of raising.
    """

    def __init__(self, maxlen: int, tally: SpanLossTally) -> None:
        super().__init__((), maxlen)
        self.lock = threading.Lock()
        self.tally = tally
        self.drained = False
        _fork_safe[id(self)] = self

    def _reinit_locks(self) -> None:
        self.lock = threading.Lock()

    def appendleft(self, item: Any) -> None:
        with self.lock:
            if self.drained:
                evicted = 1
            else:
                evicted = 1 if len(self) == self.maxlen else 0
                _appendleft(self, item)
        if evicted:
            try:
                self.tally.add(SHUTDOWN if self.drained else QUEUE_FULL, 1)
            except Exception:  # pragma: no cover - this runs inside the application's span.end()
                internal_error("span loss tracking", "counting a dropped span")

    def pop(self) -> Any:  # type: ignore[override]  # deque.pop takes no index
        with self.lock:
            if not self and self.drained:
                return _ABANDONED
            return _pop(self)

    def drain(self, timeout: float = -1) -> int:
        """Empty the queue for good; how many spans were in it.

        With a ``timeout`` (seconds) it waits at most that long for the lock (a shutdown
        that gives up may run in a signal handler, on a thread that holds it) and then
        counts and clears without it.
        """
        locked = self.lock.acquire(timeout=timeout)
        try:
            self.drained = True
            count = len(self)
            self.clear()
        finally:
            if locked:
                self.lock.release()
        return count

    def adopt(self, items: Sequence[Any]) -> None:
        """Take over the old queue's spans (newest first), behind any already queued."""
        with self.lock:
            room = (self.maxlen or len(items)) - len(self)
            kept = list(items[:room])
            self.extend(kept)
            dropped = len(items) - len(kept)
        if dropped > 0:
            self.tally.add(QUEUE_FULL, dropped)


class _MetricsProxy:
    """Delegates to the SDK's processor metrics and counts ``drop_items`` in a tally."""

    def __init__(self, inner: Any, tally: SpanLossTally, *, count_queue_full: bool) -> None:
        self._inner = inner
        self._tally = tally
        self._count_queue_full = count_queue_full

    def drop_items(self, count: int, error_type: str = QUEUE_FULL) -> None:
        try:
            if error_type == "already_shutdown":
                self._tally.add(SHUTDOWN, count)
            elif self._count_queue_full:
                self._tally.add(QUEUE_FULL, count)
        except Exception:  # pragma: no cover - counting must not break emit()
            internal_error("span loss tracking", "counting dropped spans")
        self._inner.drop_items(count, error_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LossCountingSpanExporter(SpanExporter):
    """Delegates to ``inner``; counts the spans of every failed or raising export as lost.

    An exception from ``inner.export`` is caught and returned as ``FAILURE`` (logged at
    DEBUG with its traceback; the tally's throttled WARNING names its type).

    Cheap under an outage: after a failed export, the next batch is first sent as its first
    span alone; only when that succeeds is the rest encoded and sent. While the backend
    refuses or hangs, a batch then costs one span's encoding instead of hundreds (a dropped
    span costs less CPU than an exported one), and the export thread holds the GIL less.
    """

    def __init__(self, inner: SpanExporter, tally: SpanLossTally | None = None) -> None:
        self.inner = inner
        self.tally = tally if tally is not None else SpanLossTally(type(inner).__name__)
        #: spans the inner exporter accepted (``SUCCESS``)
        self.exported = 0
        self._exported_lock = threading.Lock()
        _fork_safe[id(self)] = self
        self._queue: _CountingQueue | None = None
        #: spans handed to the inner exporter and not yet returned (the batch in flight)
        self.in_flight = 0
        #: set when a bounded shutdown gave up on this pipeline (see :meth:`abandon`)
        self.abandoned = False
        #: the last export failed: the next batch is first tried with one span
        self._failing = False
        try:
            self._shutdown_takes_timeout = "timeout_millis" in inspect.getfullargspec(inner.shutdown).args
        except (TypeError, ValueError):
            self._shutdown_takes_timeout = False

    @property
    def lost(self) -> int:
        """Spans lost by this pipeline so far, every reason."""
        return self.tally.total

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        items: Sequence[Any] = spans
        if any(s is _ABANDONED for s in items):  # counted when the queue was drained
            spans = [s for s in items if s is not _ABANDONED]
            if not spans:
                return SpanExportResult.SUCCESS
        if self.abandoned:  # shutdown gave up: whatever the export thread still pops is lost
            self.tally.add(SHUTDOWN, len(spans))
            return SpanExportResult.FAILURE
        self.in_flight = len(spans)
        try:
            if self._failing and len(spans) > 1:
                # the backend failed last time: try one span before encoding the whole batch,
                # so that a span dropped in an outage costs less than an exported one
                outcome = self._send(spans[:1])
                if outcome is not SpanExportResult.SUCCESS:
                    self._count(len(spans), outcome if isinstance(outcome, str) else "")
                    return SpanExportResult.FAILURE
                self._add_exported(1)
                spans = spans[1:]
            outcome = self._send(spans)
        finally:
            self.in_flight = 0
        if outcome is SpanExportResult.SUCCESS:
            self._add_exported(len(spans))
            return outcome
        self._count(len(spans), outcome if isinstance(outcome, str) else "")
        return SpanExportResult.FAILURE

    def _send(self, spans: Sequence[ReadableSpan]) -> SpanExportResult | str:
        """One call of the inner exporter: SUCCESS, FAILURE, or the name of what it raised."""
        try:
            result = self.inner.export(spans)
        except Exception as exc:
            _log.debug("%s raised while exporting %d span(s)", type(self.inner).__name__, len(spans), exc_info=True)
            self._failing = True
            return type(exc).__name__
        if result is SpanExportResult.FAILURE:
            self._failing = True
            return result
        # SUCCESS, or what a duck-typed exporter returns (None): the SDK ignores the result,
        # so only an explicit FAILURE (or an exception) counts as lost
        self._failing = False
        return SpanExportResult.SUCCESS

    def _add_exported(self, count: int) -> None:
        if self.abandoned:  # counted lost (in flight) when shutdown gave up on it
            return
        with self._exported_lock:  # a SimpleSpanProcessor exports from the application's threads
            self.exported += count

    def __getattr__(self, name: str) -> Any:
        """The inner exporter's own attributes (``endpoint``, ``session``, ...) read through."""
        if name == "inner":  # not set yet (during __init__ or unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _count(self, count: int, detail: str) -> None:
        if self.abandoned:  # counted lost (in flight) when shutdown gave up on it
            return
        try:
            self.tally.add(EXPORT_FAILED, count, detail)
        except Exception:  # pragma: no cover
            internal_error("span loss tracking", "counting a failed export")

    def shutdown(self, timeout_millis: float | None = None) -> None:
        # The BatchProcessor calls this after its worker stopped or its join timed out;
        # then the worker exports nothing more, so whatever is still queued is lost.
        try:
            if self._queue is not None:
                self.tally.add(SHUTDOWN, self._queue.drain())
        except Exception:  # pragma: no cover
            internal_error("span loss tracking", "counting spans left at shutdown")
        try:
            if self._shutdown_takes_timeout and timeout_millis is not None:
                self.inner.shutdown(timeout_millis=timeout_millis)  # type: ignore[call-arg]
            else:
                self.inner.shutdown()
        except Exception:
            internal_error("span exporter", "shutting down")
        self.tally.report_unreported()

    def abandon(self, lock_timeout_s: float = 0.1) -> tuple[int, int]:
        """Give up on this pipeline (a bounded shutdown ran out of time): count as lost, with
        reason ``shutdown``, what is still queued and the batch in flight, interrupt the inner
        exporter (its shutdown, on a daemon thread: the OTLP exporter's ends its retry back-off)
        and log what the throttle held back. Returns ``(queued, in_flight)``. Never raises.
        """
        queued = in_flight = 0
        try:
            self.abandoned = True
            in_flight = self.in_flight
            if self._queue is not None:
                queued = self._queue.drain(lock_timeout_s)
            self.tally.add(SHUTDOWN, queued + in_flight)
            threading.Thread(target=self._shutdown_inner, name="otel-eda-exporter-shutdown", daemon=True).start()
            self.tally.report_unreported()
        except Exception:  # pragma: no cover
            internal_error("span loss tracking", "abandoning an export pipeline")
        return queued, in_flight

    def _shutdown_inner(self) -> None:
        try:
            self.inner.shutdown()
        except Exception:
            _log.debug("%s raised while shutting down", type(self.inner).__name__, exc_info=True)

    def _reinit_locks(self) -> None:
        self._exported_lock = threading.Lock()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            return bool(self.inner.force_flush(timeout_millis))
        except Exception:
            internal_error("span exporter", "flushing")
            return False


# -- the observable counter: one per MeterProvider, reading every tally registered on it --


class _LostSpansInstrument:
    def __init__(self, meter_provider: Any) -> None:
        self.tallies: weakref.WeakSet[SpanLossTally] = weakref.WeakSet()
        meter_provider.get_meter(semconv.SCOPE, VERSION).create_observable_counter(
            METRIC_SPANS_LOST,
            callbacks=[self._observe],
            unit="{span}",
            description="Spans an export pipeline lost: queue full, export failed, or shutdown",
        )

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [obs for tally in list(self.tallies) for obs in tally.observations()]


_instruments: weakref.WeakKeyDictionary[Any, _LostSpansInstrument] = weakref.WeakKeyDictionary()
_instruments_strong: dict[int, tuple[Any, _LostSpansInstrument]] = {}  # providers without weak references
_instruments_lock = threading.Lock()
_warned_private_api = False


def _reinit_locks_in_child() -> None:
    global _instruments_lock
    _instruments_lock = threading.Lock()
    for obj in list(_fork_safe.values()):
        obj._reinit_locks()


register_fork_hook(ForkHook("export-loss accounting", after_in_child=_reinit_locks_in_child))


def _register(tally: SpanLossTally, meter_provider: Any) -> None:
    with _instruments_lock:
        try:
            instrument = _instruments.get(meter_provider)
            if instrument is None:
                instrument = _instruments[meter_provider] = _LostSpansInstrument(meter_provider)
        except TypeError:
            entry = _instruments_strong.get(id(meter_provider))
            if entry is None:
                entry = _instruments_strong[id(meter_provider)] = (meter_provider, _LostSpansInstrument(meter_provider))
            instrument = entry[1]
        instrument.tallies.add(tally)


def _warn_private_api(what: str) -> None:
    global _warned_private_api
    if not _warned_private_api:
        _warned_private_api = True
        _log.warning(
            "otel-eda cannot count span queue overflows with this OpenTelemetry SDK version (%s); "
            "failed exports are still counted in %s",
            what,
            METRIC_SPANS_LOST,
        )


def span_processors(provider: object) -> tuple[Any, ...]:
    """The span processors of an SDK TracerProvider (its private multi-processor's list)."""
    return otel_internals.span_processors(provider)


def span_loss_tallies(provider: TracerProvider) -> list[SpanLossTally]:
    """The tallies of the pipelines :func:`track_span_losses` tracks on ``provider``."""
    found = []
    for processor in span_processors(provider):
        exporter = exporter_of(processor)
        if isinstance(exporter, LossCountingSpanExporter):
            found.append(exporter.tally)
    return found


def exporter_of(processor: Any) -> Any:
    """The exporter of a BatchSpanProcessor or SimpleSpanProcessor (None for other processors)."""
    if isinstance(processor, BatchSpanProcessor):
        return otel_internals.worker_exporter(otel_internals.batch_worker(processor))
    if isinstance(processor, SimpleSpanProcessor):
        return processor.span_exporter
    return None


def track_span_losses(provider: TracerProvider, *, meter_provider: Any = None) -> int:
    """Count the spans every export pipeline of ``provider`` loses; idempotent.

    ``meter_provider`` (default: the global one) receives ``eda.export.spans.lost``.
    Returns how many pipelines are tracked now. Never raises.
    """
    tracked = 0
    try:
        for processor in span_processors(provider):
            if isinstance(exporter_of(processor), LossCountingSpanExporter):
                tracked += 1
            elif isinstance(processor, BatchSpanProcessor | SimpleSpanProcessor):
                if meter_provider is None:
                    meter_provider = metrics.get_meter_provider()
                if _track(processor, meter_provider):
                    tracked += 1
    except Exception:
        internal_error("span loss tracking", "wrapping the span exporters")
    return tracked


def _track(processor: BatchSpanProcessor | SimpleSpanProcessor, meter_provider: Any) -> bool:
    if isinstance(processor, SimpleSpanProcessor):
        tally = SpanLossTally(type(processor.span_exporter).__name__, SIMPLE_SPAN_PROCESSOR)
        processor.span_exporter = LossCountingSpanExporter(processor.span_exporter, tally)
        _hook_metrics(processor, tally, count_queue_full=False)
        _register(tally, meter_provider)
        return True
    batch = otel_internals.batch_worker(processor)
    inner = otel_internals.worker_exporter(batch)
    queue = otel_internals.worker_queue(batch)
    lock = otel_internals.worker_export_lock(batch)
    if batch is None or inner is None:
        _warn_private_api("no BatchSpanProcessor._batch_processor._exporter")
        return False
    maxlen = queue.maxlen if isinstance(queue, collections.deque) else None
    tally = SpanLossTally(type(inner).__name__, BATCHING_SPAN_PROCESSOR, max_queue_size=maxlen)
    exporter = LossCountingSpanExporter(inner, tally)
    counting_queue = maxlen is not None and lock is not None and hasattr(batch, "emit")
    if counting_queue:
        assert queue is not None and maxlen is not None and lock is not None
        new = _CountingQueue(maxlen, tally)
        with lock:  # the export thread pops under this lock: no pop while the queue moves
            otel_internals.set_worker_queue(batch, new)
            new.adopt(list(queue))  # spans queued before tracking (normally none)
        exporter._queue = new
        # The SDK's emit() compares len(queue) with its bound to log "Queue full" (a LogRecord
        # made and filtered for every dropped span: about 6 us of the 17 a span costs in an
        # outage) and to call drop_items; the counting queue counts each eviction itself.
        otel_internals.set_export_queue_bound(batch, maxlen + 1)
    otel_internals.set_worker_exporter(batch, exporter)
    if not _hook_metrics(batch, tally, count_queue_full=not counting_queue) and not counting_queue:
        _warn_private_api("no BatchProcessor._queue deque and no _metrics")
    elif not counting_queue:
        _log.info("otel-eda counts span queue overflows through the SDK's drop_items hook (approximate)")
    _register(tally, meter_provider)
    return True


def _hook_metrics(owner: Any, tally: SpanLossTally, *, count_queue_full: bool) -> bool:
    inner = otel_internals.drop_metrics(owner)
    if inner is None or not callable(getattr(inner, "drop_items", None)):
        return False
    otel_internals.set_drop_metrics(owner, _MetricsProxy(inner, tally, count_queue_full=count_queue_full))
    return True
