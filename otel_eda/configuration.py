"""``configure()``: install OpenTelemetry with otel-eda's pieces, the SDK's own way.

Providers, exporters, sampler arguments and resource are built by the OpenTelemetry
SDK's configuration code from the standard ``OTEL_*`` variables (or, with
``OTEL_CONFIG_FILE``, from that declarative file); otel-eda adds its span processor,
wraps the configured sampler in :class:`LinkAwareSampler`, appends its anomaly reader (the
``eda_anomaly`` metric exporter entry point), adds its propagator to the global one, and
counts every span an export pipeline loses (:mod:`otel_eda.exportloss`). It defaults
``OTEL_TRACES_EXPORTER`` to ``console`` when that variable is unset, and ``OTEL_EXPORTER_OTLP_PROTOCOL`` to ``http/protobuf``
(otel-eda[otlp] installs that exporter; ``otlp`` alone would mean gRPC).

Idempotent: where SDK providers are already installed (by ``opentelemetry-instrument``
with another configurator, by a declarative config file, by hand) it adds only what is
missing. What it cannot add (the sampler of a provider built by someone else) is named in
one WARNING.

Never leaves the application silently uninstrumented: when the SDK's own configuration
fails (an unknown exporter name, a missing exporter package, a non-positive
``OTEL_BSP_*``), one ERROR says why and what is and is not installed, and otel-eda installs
its processor, anomaly reader and propagator without the failed exporters, so context
still propagates downstream and the anomaly engine still watches. Invalid ``OTEL_EDA_*``
values are reported by :mod:`otel_eda.settings`. Both are counted
(``eda.config.errors``); with ``OTEL_EDA_STRICT=true`` either stops start-up with
:class:`ConfigurationError`. With ``OTEL_SDK_DISABLED=true`` it installs nothing and
starts no thread.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._configuration import (
    _get_sampler,
    _import_sampler,
    _initialize_components,
    _OTelSDKConfigurator,
)
from opentelemetry.sdk.environment_variables import (
    OTEL_CONFIG_FILE,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler

from otel_eda._selfmetrics import count_config_error, internal_error
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.reader import AnomalyMetricReader, attach
from otel_eda.environment_variables import OTEL_EDA_RULES_FILE
from otel_eda.exportloss import track_span_losses
from otel_eda.processor import EventSpanProcessor
from otel_eda.propagation import EdaPropagator, contains_propagator, install_log_filters
from otel_eda.sampling import LinkAwareSampler
from otel_eda.settings import Settings

__all__ = ["ConfigurationError", "Installation", "anomaly_reader", "configure", "installation"]

_log = logging.getLogger(__name__)

#: The ``opentelemetry_metrics_exporter`` entry point of the anomaly reader.
ANOMALY_READER_ENTRY_POINT: Final = "eda_anomaly"
#: What host metrics to collect: CPU utilisation per state and memory use.
HOST_METRICS: Final[dict[str, list[str] | None]] = {
    "system.cpu.utilization": ["idle", "user", "system", "iowait"],
    "system.memory.usage": ["used", "free", "cached"],
    "system.memory.utilization": ["used", "free", "cached"],
}


class ConfigurationError(RuntimeError):
    """``OTEL_EDA_STRICT=true`` and the configuration is invalid or could not be installed."""


def sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def configure(
    *,
    on_alert: Callable[[Alert], Any] | None = None,
    auto_instrumentation_version: str | None = None,
) -> None:
    """Install (or complete) the global OpenTelemetry providers for otel-eda.

    ``on_alert`` is called (from the anomaly reader's thread) with every alert change.
    Raises only :class:`ConfigurationError`, and only with ``OTEL_EDA_STRICT=true``.

    >>> import otel_eda
    >>> otel_eda.configure(on_alert=print)  # doctest: +SKIP
    """
    if sdk_disabled():
        _log.info("OTEL_SDK_DISABLED=true: otel-eda installs nothing; the bus still works")
        return
    settings = Settings.from_environ()
    problems = {error.variable: str(error) for error in settings.errors}
    if settings.rules_file and (problem := _rules_file_problem(settings.rules_file)):
        problems[OTEL_EDA_RULES_FILE] = problem
        settings = dataclasses.replace(settings, rules_file=None)
    if problems and settings.strict:
        raise ConfigurationError("OTEL_EDA_STRICT=true: " + "; ".join(problems.values()))
    install_log_filters()
    default_otlp_protocol()
    callbacks = [on_alert] if on_alert is not None else []
    sdk_error: Exception | None = None
    reader_has_callbacks = False
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        try:
            reader_has_callbacks = _install_from_environment(settings, callbacks, auto_instrumentation_version)
        except Exception as exc:  # the SDK raises plain RuntimeError/ValueError/ImportError
            sdk_error = exc
    try:
        _complete(settings, [] if reader_has_callbacks else callbacks, fresh=sdk_error is not None)
        _ensure_propagator()  # after the SDK: a declarative config file sets its own propagator
        _instrument_host_metrics()
    except Exception:
        internal_error("configure()", "completing the OpenTelemetry providers")
    for variable in problems:
        count_config_error(variable)
    state = installation()
    if sdk_error is not None:
        count_config_error("sdk")
        _log.error(
            "OpenTelemetry SDK configuration failed: %s: %s. Installed: %s. NOT installed: the exporters "
            "the OTEL_*_EXPORTER variables name (nothing is exported until the setting above is fixed)",
            type(sdk_error).__name__,
            sdk_error,
            state.describe(),
        )
        if settings.strict:
            raise ConfigurationError(f"OTEL_EDA_STRICT=true: OpenTelemetry SDK configuration failed: {sdk_error}")
    else:
        _warn_missing(state)


def _rules_file_problem(path: str) -> str | None:
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = 0
    return _check_rules_file(path, stamp)


@functools.lru_cache(maxsize=8)
def _check_rules_file(path: str, stamp: int) -> str | None:
    """Load the rules file once per version of it, logging a problem once."""
    from otel_eda.anomaly.rules import load_rules

    try:
        load_rules(path)
    except ValueError as exc:
        _log.error("invalid OTEL_EDA_RULES_FILE: %s; using the default rule set", exc)
        return f"invalid OTEL_EDA_RULES_FILE: {exc}"
    return None


def default_otlp_protocol() -> None:
    """``otlp`` means gRPC unless told otherwise; otel-eda[otlp] installs the HTTP exporter."""
    if not os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL, "").strip():
        os.environ[OTEL_EXPORTER_OTLP_PROTOCOL] = "http/protobuf"


def _install_from_environment(
    settings: Settings, callbacks: list[Callable[[Alert], Any]], auto_instrumentation_version: str | None
) -> bool:
    """Let the SDK build the providers; True if it built the anomaly reader (with ``callbacks``)."""
    if os.environ.get(OTEL_CONFIG_FILE, "").strip():
        # the declarative file is the sole source of the SDK's providers; _complete() adds ours
        _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]
        return False
    exporters = None if os.environ.get(OTEL_TRACES_EXPORTER, "").strip() else ["console"]
    _initialize_components(
        auto_instrumentation_version=auto_instrumentation_version,
        trace_exporter_names=exporters,
        metric_exporter_names=[ANOMALY_READER_ENTRY_POINT],
        span_processors=[EventSpanProcessor(baggage_keys=settings.baggage_keys)],
        sampler=_link_aware_sampler(),
        exporter_args_map={AnomalyMetricReader: {"callbacks": callbacks, "settings": settings}},
    )
    return True


def _link_aware_sampler() -> Sampler:
    return LinkAwareSampler(_import_sampler(_get_sampler()) or ParentBased(ALWAYS_ON))


def _complete(settings: Settings, callbacks: list[Callable[[Alert], Any]], *, fresh: bool) -> None:
    """Add whatever of otel-eda's pieces the installed providers lack (or install bare ones)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider(resource=Resource.create(), sampler=_link_aware_sampler())
        trace.set_tracer_provider(provider)
    if not has_event_processor(provider):
        provider.add_span_processor(EventSpanProcessor(baggage_keys=settings.baggage_keys))
        if not fresh:
            _log.info("otel-eda added its EventSpanProcessor to the installed TracerProvider")
    meters = metrics.get_meter_provider()
    if not isinstance(meters, MeterProvider):
        meters = MeterProvider(
            resource=provider.resource,
            metric_readers=[AnomalyMetricReader(callbacks=callbacks, settings=settings)],
        )
        metrics.set_meter_provider(meters)
    elif (reader := anomaly_reader(meters)) is None:
        attach(meters, AnomalyMetricReader(callbacks=callbacks, settings=settings))
        if not fresh:
            _log.info("otel-eda attached its AnomalyMetricReader to the installed MeterProvider")
    else:
        for callback in callbacks:
            reader.add_callback(callback)
    track_span_losses(provider, meter_provider=meters)


@dataclasses.dataclass(frozen=True)
class Installation:
    """What of OpenTelemetry and otel-eda is installed in this process."""

    tracer_provider: str
    span_exporters: tuple[str, ...]
    event_processor: bool
    sampler: str
    meter_provider: str
    metric_readers: tuple[str, ...]
    anomaly_reader: bool
    eda_propagator: bool

    @property
    def link_aware_sampler(self) -> bool:
        return self.sampler.startswith(LinkAwareSampler.__name__)

    def missing(self) -> list[str]:
        """otel-eda's pieces that are absent, each with what it costs."""
        gaps = []
        if not self.event_processor:
            gaps.append("EventSpanProcessor (spans of other instrumentations lack eda.correlation_id)")
        if not self.link_aware_sampler:
            gaps.append(
                f"LinkAwareSampler (the TracerProvider's sampler is {self.sampler}, built by another "
                "configurator: a consumer span is not sampled with its linked producer in link mode)"
            )
        if not self.anomaly_reader:
            gaps.append("AnomalyMetricReader (no alerts)")
        if not self.eda_propagator:
            gaps.append("EdaPropagator (event ids do not cross process boundaries)")
        return gaps

    def describe(self) -> str:
        return (
            f"{self.tracer_provider} (span exporters: {', '.join(self.span_exporters) or 'none'}; "
            f"EventSpanProcessor: {_yes(self.event_processor)}; sampler: {self.sampler}), "
            f"{self.meter_provider} (readers: {', '.join(self.metric_readers) or 'none'}), "
            f"EdaPropagator: {_yes(self.eda_propagator)}"
        )


def installation() -> Installation:
    """Inspect the global providers and propagator.

    >>> installation().tracer_provider in ("ProxyTracerProvider", "TracerProvider")
    True
    """
    provider = trace.get_tracer_provider()
    processors = _span_processors(provider)
    meters = metrics.get_meter_provider()
    readers = (
        *getattr(getattr(meters, "_sdk_config", None), "metric_readers", ()),
        *getattr(meters, "_all_metric_readers", ()),
    )
    sampler = getattr(provider, "sampler", None)
    return Installation(
        tracer_provider=type(provider).__name__,
        span_exporters=tuple(type(e).__name__ for e in _exporters(processors)),
        event_processor=any(isinstance(p, EventSpanProcessor) for p in processors),
        sampler=sampler.get_description() if sampler is not None else "none",
        meter_provider=type(meters).__name__,
        metric_readers=tuple(dict.fromkeys(type(r).__name__ for r in readers)),
        anomaly_reader=any(isinstance(r, AnomalyMetricReader) for r in readers),
        eda_propagator=contains_propagator(propagate.get_global_textmap(), EdaPropagator),
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _span_processors(provider: object) -> tuple[object, ...]:
    active = getattr(provider, "_active_span_processor", None)
    return tuple(getattr(active, "_span_processors", ()))


def _exporters(processors: Iterable[object]) -> Iterable[object]:
    for processor in processors:
        if isinstance(processor, BatchSpanProcessor):
            exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
        elif isinstance(processor, SimpleSpanProcessor):
            exporter = getattr(processor, "span_exporter", None)
        else:
            continue
        if exporter is not None:
            yield getattr(exporter, "inner", exporter)


_warned: set[tuple[str, ...]] = set()


def _warn_missing(state: Installation) -> None:
    gaps = tuple(state.missing())
    if gaps and gaps not in _warned:
        _warned.add(gaps)
        _log.warning(
            "otel-eda is only partly installed: missing %s. Set OTEL_PYTHON_DISTRO=otel_eda and "
            "OTEL_PYTHON_CONFIGURATOR=otel_eda (or call otel_eda.configure() before anything else "
            "installs a TracerProvider)",
            "; ".join(gaps),
        )


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
    return any(isinstance(p, EventSpanProcessor) for p in _span_processors(provider))


def _ensure_propagator() -> None:
    current = propagate.get_global_textmap()
    if not contains_propagator(current, EdaPropagator):
        propagate.set_global_textmap(CompositePropagator([current, EdaPropagator()]))
