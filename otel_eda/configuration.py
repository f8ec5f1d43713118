"""``configure()``: install OpenTelemetry with otel-eda's pieces, the SDK's own way.

Providers, exporters, sampler arguments and resource are built by the OpenTelemetry
SDK's configuration code from the standard ``OTEL_*`` variables; otel-eda only adds its
span processor, wraps the configured sampler in :class:`LinkAwareSampler`, adds its
propagator to the global one, and defaults ``OTEL_TRACES_EXPORTER`` to ``console`` when
that variable is unset. Idempotent: where an SDK ``TracerProvider`` is already installed
(by ``opentelemetry-instrument``, say) it adds only what is missing, never a second
processor. With ``OTEL_SDK_DISABLED=true`` it installs nothing and starts no thread.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._configuration import _get_sampler, _import_sampler, _initialize_components
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.reader import AnomalyMetricReader, attach
from otel_eda.processor import EventSpanProcessor
from otel_eda.propagation import EdaPropagator, contains_propagator, install_log_filters
from otel_eda.sampling import LinkAwareSampler

__all__ = ["anomaly_reader", "configure"]

_log = logging.getLogger(__name__)

#: The ``opentelemetry_metrics_exporter`` entry point of the anomaly reader.
ANOMALY_READER_ENTRY_POINT: Final = "eda_anomaly"
#: What host metrics to collect: CPU utilisation per state and memory use.
HOST_METRICS: Final[dict[str, list[str] | None]] = {
    "system.cpu.utilization": ["idle", "user", "system", "iowait"],
    "system.memory.usage": ["used", "free", "cached"],
    "system.memory.utilization": ["used", "free", "cached"],
}


def sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def configure(*, on_alert: Callable[[Alert], Any] | None = None) -> None:
    """Install (or complete) the global OpenTelemetry providers for otel-eda.

    ``on_alert`` is called (from the anomaly reader's thread) with every alert change.

    >>> import otel_eda
    >>> otel_eda.configure(on_alert=print)  # doctest: +SKIP
    """
    if sdk_disabled():
        _log.info("OTEL_SDK_DISABLED=true: otel-eda installs nothing; the bus still works")
        return
    install_log_filters()
    _ensure_propagator()
    callbacks = [on_alert] if on_alert is not None else []
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        if not has_event_processor(provider):
            provider.add_span_processor(EventSpanProcessor())
            _log.info("otel-eda added its EventSpanProcessor to the installed TracerProvider")
        meters = metrics.get_meter_provider()
        if isinstance(meters, MeterProvider) and anomaly_reader(meters) is None:
            attach(meters, AnomalyMetricReader(callbacks=callbacks))
            _log.info("otel-eda attached its AnomalyMetricReader to the installed MeterProvider")
        elif callbacks and (reader := anomaly_reader(meters)) is not None:
            reader.add_callback(on_alert)  # type: ignore[arg-type]
        _instrument_host_metrics()
        return
    exporters = None if os.environ.get(OTEL_TRACES_EXPORTER, "").strip() else ["console"]
    sampler = LinkAwareSampler(_import_sampler(_get_sampler()) or ParentBased(ALWAYS_ON))
    _initialize_components(
        trace_exporter_names=exporters,
        metric_exporter_names=[ANOMALY_READER_ENTRY_POINT],
        span_processors=[EventSpanProcessor()],
        sampler=sampler,
        exporter_args_map={AnomalyMetricReader: {"callbacks": callbacks}},
    )
    _instrument_host_metrics()


def anomaly_reader(provider: object) -> AnomalyMetricReader | None:
    """The AnomalyMetricReader of an SDK MeterProvider, if it has one."""
    readers = getattr(getattr(provider, "_sdk_config", None), "metric_readers", ())
    extra = getattr(provider, "_all_metric_readers", ())
    for reader in (*readers, *extra):
        if isinstance(reader, AnomalyMetricReader):
            return reader
    return None


def _instrument_host_metrics() -> None:
    """Host CPU and memory from opentelemetry-instrumentation-system-metrics, when installed."""
    try:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    except ImportError:
        _log.info("host CPU and memory metrics need otel-eda[auto] (opentelemetry-instrumentation-system-metrics)")
        return
    instrumentor = SystemMetricsInstrumentor(config=HOST_METRICS)
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


def has_event_processor(provider: TracerProvider) -> bool:
    processors = getattr(provider._active_span_processor, "_span_processors", ())
    return any(isinstance(p, EventSpanProcessor) for p in processors)


def _ensure_propagator() -> None:
    current = propagate.get_global_textmap()
    if not contains_propagator(current, EdaPropagator):
        propagate.set_global_textmap(CompositePropagator([current, EdaPropagator()]))
