"""``AnomalyMetricReader``: a MetricReader that feeds the anomaly engine on its own cadence.

It sits on the same MeterProvider as the exporting reader, prefers DELTA temporality (a
counter's point is then the interval's increase, a histogram's the interval's
measurements) and exponential histograms (good percentiles), and collects every
``interval_s`` seconds (``OTEL_EDA_ANOMALY_INTERVAL``, default 5) from a daemon thread —
independently of ``OTEL_METRIC_EXPORT_INTERVAL``. On shutdown it evaluates one last time
and stops its thread. It never raises: an internal error is logged and counted.

It is the ``eda_anomaly`` entry point of ``opentelemetry_metrics_exporter``, which
``otel_eda.configure()`` appends to the configured metric exporters, so that the
provider's shutdown reaches it. Where a MeterProvider already exists, :func:`attach`
adds one with ``add_metric_reader`` and registers its own ``atexit`` shutdown (a
provider does not shut down readers added that way).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader, MetricsData
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation

from otel_eda import otel_internals
from otel_eda._selfmetrics import internal_error
from otel_eda.anomaly import feed
from otel_eda.anomaly.alerts import Alert, AlertSink
from otel_eda.anomaly.callbacks import CallbackSink
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.instrument_filter import narrow_storage
from otel_eda.anomaly.series import SeriesConverter, SeriesPoint, ZeroFill
from otel_eda.process_hooks import ExitHook, ForkHook, register_exit_hook, register_fork_hook
from otel_eda.settings import Settings

__all__ = ["AnomalyMetricReader", "attach", "installed_reader"]

_log = logging.getLogger(__name__)

_TEMPORALITY = {
    Counter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.CUMULATIVE,
    ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
}


class AnomalyMetricReader(MetricReader):
    """Collects on its own cadence and passes each collection to an :class:`AnomalyEngine`.

    With no arguments (as the SDK builds it from the entry point) its settings come from
    the ``OTEL_EDA_*`` variables: the rules file (or the default rule set), the interval,
    the series cap, and an Alertmanager URL.
    """

    def __init__(
        self,
        engine: AnomalyEngine | None = None,
        *,
        interval_s: float | None = None,
        callbacks: Iterable[Callable[[Alert], Any]] = (),
        sinks: Iterable[AlertSink] = (),
        settings: Settings | None = None,
        start: bool = True,
    ) -> None:
        super().__init__(
            preferred_temporality=_TEMPORALITY,  # type: ignore[arg-type]
            preferred_aggregation={Histogram: ExponentialBucketHistogramAggregation()},
        )
        if engine is None or interval_s is None:
            settings = settings or Settings.from_environ()
            if engine is None:
                engine = _engine_from_settings(settings)
                self._narrow_to_rules = True  # its engine reads its rules' metrics only
            if interval_s is None:
                interval_s = settings.anomaly_interval_s
        self.engine = engine
        self._to_series = SeriesConverter()
        self._zero_fill = ZeroFill(engine.max_series, engine.idle_timeout_s)
        self.engine.sinks.extend(sinks)
        self.engine.sinks.extend(CallbackSink(fn) for fn in callbacks)
        self.interval_s = interval_s
        self.collections = 0
        self._resource_seen = False
        self._stop = threading.Event()
        self._evaluating = threading.Lock()
        self._collecting = threading.Lock()  # held for a whole collection: see _wait_before_fork
        self._shutdown_done = False
        self._thread: threading.Thread | None = None
        _readers.add(self)
        if start:
            self.start()

    @property
    def started(self) -> bool:
        """Whether its collection thread was started (``start=False`` defers it to :meth:`start`)."""
        return self._thread is not None

    #: whether to aggregate only the metrics the engine's rules read: for the engine built from
    #: the settings (configure(), the entry point); a caller's own engine gets every metric
    _narrow_to_rules = False
    #: the engine's rules the last time :meth:`_reads` looked, and the metrics they read
    _rules_seen: object = None
    _read_names: frozenset[str] = frozenset()
    _narrowed = False

    def _reads(self, name: str) -> bool:
        """Whether a rule of the engine reads metric ``name``, or its statistics track it
        (asked once per measurement)."""
        engine = self.engine
        rules = engine.rules
        if rules is not self._rules_seen:
            self._read_names = frozenset(rule.metric.lower() for rule in rules)  # the SDK lowercases names
            self._rules_seen = rules
        return name in self._read_names or engine.history.tracks(name)

    def _narrow(self) -> None:
        """Once registered on a provider: aggregate only the instruments the rules read
        (:mod:`otel_eda.anomaly.instrument_filter`), not every one a second time, and take
        otel-eda's own duration and age histograms from the messaging API directly
        (:mod:`otel_eda.anomaly.feed`)."""
        if not self._narrow_to_rules or self._narrowed:
            return
        collect = otel_internals.reader_collect_callback(self)
        if collect is not None:
            self._narrowed = True
            consumer = getattr(collect, "__self__", None)
            subscription = feed.subscribe(consumer, feed.FED_METRICS) if consumer is not None else None
            if subscription is not None:
                self._feed = (consumer, subscription)
            if not narrow_storage(collect, self, self._reads, self._fed) and subscription is not None:
                feed.unsubscribe(consumer, subscription)  # the SDK aggregates everything for it
                self._feed = None

    #: (measurement consumer, subscription) when fed directly (see :mod:`otel_eda.anomaly.feed`)
    _feed: tuple[object, feed.Subscription] | None = None

    def _fed(self, instrument: Any) -> bool:
        """Whether ``instrument`` reaches this reader through the feed (otel-eda's own
        duration and age histograms), so that the SDK skips it in this reader's storage."""
        return (
            self._feed is not None
            and instrument.name in feed.FED_METRICS
            and str(getattr(getattr(instrument, "instrumentation_scope", None), "name", "")).startswith("otel_eda")
        )

    def start(self) -> None:
        """Start collecting every ``interval_s`` on its own daemon thread; idempotent."""
        self._narrow()
        if self._thread is None and not self._shutdown_done:
            self._start_thread()
            _threaded.add(self)

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otel-eda-anomaly", daemon=True)
        self._thread.start()

    def _restart_after_fork(self) -> None:
        # the child's own locks: a lock the parent's reader thread held at fork time (the
        # fork hook waited in vain) would stay held for ever, and the child's exit would hang
        self._collecting = threading.Lock()
        self._evaluating = threading.Lock()
        for owner in (self.engine, *self.engine.sinks):
            lock = getattr(owner, "_lock", None)  # not OpenTelemetry: the engine's and sinks' own
            if isinstance(lock, _LOCK):
                owner._lock = threading.Lock()  # type: ignore[attr-defined]
            elif isinstance(lock, _RLOCK):
                owner._lock = threading.RLock()  # type: ignore[attr-defined]
        if self._thread is not None and not self._shutdown_done:
            self._stop = threading.Event()
            self._start_thread()

    def add_callback(self, fn: Callable[[Alert], Any]) -> None:
        """Also call ``fn`` with every alert change."""
        self.engine.sinks.append(CallbackSink(fn))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._collect_safely()

    def _collect_safely(self) -> None:
        try:
            with self._collecting:
                self._narrow()
                before = self.collections
                self.collect()
                if self.collections == before:
                    # the SDK reports nothing when no instrument has data (DELTA, a quiet
                    # interval): that is still an evaluation, of zero rates
                    self._evaluate(None)
        except Exception:
            internal_error("anomaly reader", "collecting metrics")

    def _series(self, metrics_data: MetricsData | None) -> tuple[list[SeriesPoint], float]:
        """One collection's series points, quiet series zero-filled, and the evaluation time."""
        points = self._to_series(metrics_data) if metrics_data is not None else []
        fed = self._feed
        if fed is not None:
            source = feed.feed_for(fed[0])
            if source is not None:
                for name, data in source.drain(fed[1]):
                    if self._reads(name):
                        self._to_series.convert(name, data, points)
        now = time.time()
        return self._zero_fill(points, now), now

    def _evaluate(self, metrics_data: MetricsData | None) -> None:
        # one collection at a time: force_flush() (from any thread) may overlap the reader's
        # own thread, and the conversion and zero fill keep state between collections
        with self._evaluating:
            self.collections += 1
            points, now = self._series(metrics_data)
        self.engine.evaluate(points, now)

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        try:
            if not self._resource_seen and metrics_data.resource_metrics:
                self._resource_seen = True
                resource = metrics_data.resource_metrics[0].resource.attributes
                service = resource.get("service.name")
                if service is not None:
                    self.engine.resource_labels.setdefault("service", str(service))
                host = resource.get("host.name")
                if host is not None:  # else the engine's default: this machine's hostname
                    self.engine.host_labels["host"] = str(host)
            self._evaluate(metrics_data)
        except Exception:
            internal_error("anomaly reader", "evaluating a collection")

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        self._collect_safely()
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._shutdown_done:
            return
        self._shutdown_done = True
        self._stop.set()
        fed = self._feed
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_millis / 1000)
        self._collect_safely()  # one last evaluation
        if fed is not None:
            self._feed = None
            feed.unsubscribe(*fed)
        for sink in self.engine.sinks:
            close = getattr(sink, "shutdown", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    internal_error("alert sink", "shutting down")


def _engine_from_settings(settings: Settings) -> AnomalyEngine:
    from otel_eda.anomaly.rules import default_rule_set, load_rule_set

    rule_set = default_rule_set()
    if settings.rules_file:
        try:  # parsed once per file version: configure() checked the same file already
            rule_set = load_rule_set(settings.rules_file)
        except ValueError as exc:
            _log.error("invalid OTEL_EDA_RULES_FILE: %s; using the default rule set", exc)
    sinks: list[AlertSink] = []
    try:
        from otel_eda.anomaly.logsink import LogRecordSink

        sinks.append(LogRecordSink())
    except ImportError:  # pragma: no cover - the module ships with otel-eda
        pass
    if settings.alertmanager_url:
        from otel_eda.anomaly.alertmanager import AlertmanagerSink

        sinks.append(AlertmanagerSink(settings.alertmanager_url))
    return AnomalyEngine(rule_set.rules, sinks, max_series=settings.max_series, inhibitions=rule_set.inhibitions)


# Readers with a thread: a forked child (a pre-fork server's worker) restarts theirs, as the
# SDK's PeriodicExportingMetricReader does. Readers added to an existing provider: shut down
# at exit, since the provider's own shutdown skips them. Weak sets: a dropped reader goes.
_readers: weakref.WeakSet[AnomalyMetricReader] = weakref.WeakSet()
_threaded: weakref.WeakSet[AnomalyMetricReader] = weakref.WeakSet()
_attached: weakref.WeakSet[AnomalyMetricReader] = weakref.WeakSet()
_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())

#: Seconds ``os.fork()`` waits, at most, for the readers' collections in progress to end.
FORK_WAIT_S = 2.0
_held_for_fork: list[threading.Lock] = []


def _wait_before_fork() -> None:
    """Hold every reader's collection lock across the fork, waiting at most FORK_WAIT_S in all.

    A collection holds the SDK's metric locks (and the engine's): a child forked in the
    middle of one would find them held for ever, and its first ``histogram.record`` or its
    exit would hang. Held here, no collection runs while the process forks.
    """
    deadline = time.monotonic() + FORK_WAIT_S
    me = threading.current_thread()
    for reader in list(_readers):
        if reader._thread is me:  # forking from the reader's own thread (an alert callback)
            continue
        lock = reader._collecting
        if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _held_for_fork.append(lock)
        else:
            _log.warning(
                "otel-eda: the anomaly reader was still collecting %.1f s after os.fork() was called; "
                "forking anyway (the child re-creates otel-eda's locks, but not the SDK's)",
                FORK_WAIT_S,
            )


def _release_after_fork_in_parent() -> None:
    while _held_for_fork:
        _held_for_fork.pop().release()


def _restart_in_child() -> None:
    _held_for_fork.clear()  # the child's readers get fresh locks below
    for reader in list(_readers):
        reader._restart_after_fork()


def _shutdown_attached() -> None:
    for reader in list(_attached):
        reader.shutdown()


register_fork_hook(
    ForkHook(
        "anomaly readers",
        before=_wait_before_fork,
        after_in_child=_restart_in_child,
        after_in_parent=_release_after_fork_in_parent,
    )
)
register_exit_hook(ExitHook("anomaly readers", _shutdown_attached))


def attach(provider: MeterProvider, reader: AnomalyMetricReader | None = None) -> AnomalyMetricReader:
    """Add an anomaly reader to an existing MeterProvider, shut down at interpreter exit."""
    reader = reader or AnomalyMetricReader()
    provider.add_metric_reader(reader)
    reader._narrow()
    _attached.add(reader)
    return reader


def installed_reader(provider: object | None = None) -> AnomalyMetricReader | None:
    """The AnomalyMetricReader of ``provider`` (default: the global MeterProvider), if any."""
    if provider is None:
        from opentelemetry import metrics

        provider = metrics.get_meter_provider()
    for reader in otel_internals.metric_readers(provider):
        if isinstance(reader, AnomalyMetricReader):
            return reader
    return None
