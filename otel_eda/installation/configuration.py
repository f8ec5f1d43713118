"""``configure()``: install OpenTelemetry with otel-eda's pieces, the SDK's own way.

Providers, exporters, sampler arguments and resource are built by the OpenTelemetry
SDK's configuration code from the standard ``OTEL_*`` variables (or, with
``OTEL_CONFIG_FILE``, from that declarative file); otel-eda adds its span processor,
wraps the sampler in :class:`LinkAwareSampler`, appends its anomaly reader (the
``eda_anomaly`` metric exporter entry point), adds its propagator to the global one, and
counts every span an export pipeline loses (:mod:`otel_eda.sdk.exportloss`). It defaults
``OTEL_TRACES_EXPORTER`` to ``console`` when that variable is unset, and
``OTEL_EXPORTER_OTLP_PROTOCOL`` to ``http/protobuf`` (otel-eda[otlp] installs that
exporter; ``otlp`` alone would mean gRPC).

Idempotent and thread-safe: where providers are already installed (by
``opentelemetry-instrument`` with another configurator, by a declarative config file, by
hand) it adds only what is missing, never a second processor or reader; what it cannot add
(to a provider that is not the SDK's) is named in one WARNING.

Never leaves the application silently uninstrumented: when the SDK's own configuration
fails (an unknown exporter name, a missing exporter package, a non-positive
``OTEL_BSP_*``), one ERROR says why and what is and is not installed, and otel-eda installs
its processor, anomaly reader and propagator without the failed exporters, so context
still propagates downstream and the anomaly engine still watches. Invalid ``OTEL_EDA_*``
values are reported by :mod:`otel_eda.settings`. Each problem is counted once per process
(``eda.config.errors``); with ``OTEL_EDA_STRICT=true`` either stops start-up with
:class:`ConfigurationError`, before anything is installed. With ``OTEL_SDK_DISABLED=true``
it installs nothing and starts no thread.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.environment_variables import OTEL_EXPORTER_OTLP_PROTOCOL
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler

from otel_eda import otel_internals
from otel_eda._selfmetrics import count_config_error, internal_error
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.reader import AnomalyMetricReader, attach
from otel_eda.environment_variables import OTEL_EDA_RULES_FILE
from otel_eda.identity.propagation import EdaPropagator, contains_propagator, install_log_filters
from otel_eda.installation.logs import install_logs
from otel_eda.installation.shutdown import install_sigterm_handler, take_over_exit
from otel_eda.process_hooks import ForkHook, register_fork_hook
from otel_eda.sdk.exportloss import LossCountingSpanExporter, exporter_of, span_processors, track_span_losses
from otel_eda.sdk.processor import EventSpanProcessor
from otel_eda.sdk.sampling import LinkAwareSampler
from otel_eda.settings import Settings, sdk_disabled

__all__ = [
    "ConfigurationError",
    "Installation",
    "anomaly_reader",
    "complete_installed",
    "configure",
    "installation",
]

_log = logging.getLogger(__name__)

#: The ``opentelemetry_metrics_exporter`` entry point of the anomaly reader.
ANOMALY_READER_ENTRY_POINT: Final = "eda_anomaly"
#: What host metrics to collect: CPU utilisation per state and memory use.
HOST_METRICS: Final[dict[str, list[str] | None]] = {
    "system.cpu.utilization": ["idle", "user", "system", "iowait"],
    "system.memory.usage": ["used", "free", "cached"],
    "system.memory.utilization": ["used", "free", "cached"],
}


#: the SDK's declarative configuration file (a literal: SDKs before 1.45 lack the constant)
OTEL_CONFIG_FILE: Final = "OTEL_CONFIG_FILE"


class ConfigurationError(RuntimeError):
    """``OTEL_EDA_STRICT=true`` and the configuration is invalid or could not be installed."""


_lock = threading.RLock()


def _fresh_lock_in_child() -> None:
    global _lock
    _lock = threading.RLock()  # a thread of the parent may have been inside configure() at fork time


register_fork_hook(ForkHook("configure()", after_in_child=_fresh_lock_in_child))
#: (setting, message) pairs already counted in eda.config.errors: configure() may run more than
#: once per process (the configurator, then the post-instrument hook, then the application)
_counted: set[tuple[str, str]] = set()
#: exporter packages, for the ERROR when the SDK cannot load an exporter
_EXPORTER_HINT: Final = (
    "exporters ship in otel-eda[zipkin] (zipkin_json, zipkin_eda) and otel-eda[otlp] (otlp, over http/protobuf)"
)


def configure(
    *,
    on_alert: Callable[[Alert], Any] | None = None,
    auto_instrumentation_version: str | None = None,
) -> None:
    """Install (or complete) the global OpenTelemetry providers for otel-eda.

    ``on_alert`` is called (from the anomaly reader's thread) with every alert change.
    Raises only :class:`ConfigurationError`, and only with ``OTEL_EDA_STRICT=true``;
    anything else that goes wrong is logged and counted (``eda.internal.errors``).

    >>> import otel_eda
    >>> otel_eda.configure(on_alert=print)  # doctest: +SKIP
    """
    _guarded(on_alert, auto_instrumentation_version, build=True)


def complete_installed() -> None:
    """Add otel-eda's pieces to the SDK providers someone else installed; never build new ones.

    The ``opentelemetry_post_instrument`` hook: when another configurator ran, this adds what
    it did not install. When no SDK TracerProvider is installed at all, one WARNING says so
    and nothing is installed (the configurator the user chose decides what runs).
    """
    _guarded(None, None, build=False)


def _guarded(on_alert: Callable[[Alert], Any] | None, version: str | None, *, build: bool) -> None:
    """One configuration at a time; nothing but ConfigurationError reaches the application."""
    with _lock:
        try:
            _configure(on_alert, version, build=build)
        except ConfigurationError:
            raise
        except Exception:
            internal_error("configure()", "installing OpenTelemetry" if build else "completing OpenTelemetry")


def _configure(on_alert: Callable[[Alert], Any] | None, version: str | None, *, build: bool) -> None:
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
    callbacks = [on_alert] if on_alert is not None else []
    sdk_error: Exception | None = None
    if build and not _any_sdk_provider():
        default_otlp_protocol()
        try:
            _install_from_environment(settings, callbacks, version)
        except Exception as exc:  # the SDK raises plain RuntimeError/ValueError/ImportError
            sdk_error = exc
    if sdk_error is not None and settings.strict:
        _report_sdk_error(sdk_error, "nothing (OTEL_EDA_STRICT=true)")
        raise ConfigurationError(f"OTEL_EDA_STRICT=true: OpenTelemetry SDK configuration failed: {sdk_error}")
    if not build and not isinstance(trace.get_tracer_provider(), TracerProvider):
        _warn_once(
            "the configurator that ran installed no OpenTelemetry SDK TracerProvider, so otel-eda installs "
            "nothing either. Set OTEL_PYTHON_CONFIGURATOR=otel_eda, or call otel_eda.configure()"
        )
        return
    _complete(settings, callbacks, quiet=sdk_error is not None)
    install_logs(settings)
    _ensure_propagator()  # after the SDK: a declarative config file sets its own propagator
    _instrument_host_metrics()
    take_over_exit()  # a bounded shutdown at exit (OTEL_EDA_SHUTDOWN_TIMEOUT)
    install_sigterm_handler(settings)
    for variable, message in problems.items():
        if (variable, message) not in _counted:
            _counted.add((variable, message))
            count_config_error(variable)
    if sdk_error is not None:
        _report_sdk_error(sdk_error, installation().describe())
    else:
        gaps = installation().missing()
        if gaps:
            _warn_once(
                "otel-eda is only partly installed: missing "
                + "; ".join(gaps)
                + ". Set OTEL_PYTHON_DISTRO=otel_eda and OTEL_PYTHON_CONFIGURATOR=otel_eda (or call "
                "otel_eda.configure() before anything else installs OpenTelemetry providers)"
            )


def _report_sdk_error(error: Exception, installed: str) -> None:
    if ("sdk", str(error)) not in _counted:
        _counted.add(("sdk", str(error)))
        count_config_error("sdk")
    _log.error(
        "OpenTelemetry SDK configuration failed: %s: %s. Installed: %s. NOT installed: %s (%s)",
        type(error).__name__,
        str(error).rstrip("."),
        installed,
        _missing_exporters(),
        _EXPORTER_HINT,
    )


def _missing_exporters() -> str:
    """The OTEL_*_EXPORTER names whose signal has fewer exporters than it asked for."""
    state = installation()
    installed = {
        "traces": len(state.span_exporters),
        "metrics": sum(name != AnomalyMetricReader.__name__ for name in state.metric_readers),
        "logs": _log_processor_count(),
    }
    gaps = []
    for signal, count in installed.items():
        try:
            names = otel_internals.exporter_names(signal)
        except Exception as exc:
            gaps.append(f"{signal} exporters ({exc})")
            continue
        if len(names) > count:
            gaps.append(f"{signal} exporters {names}")
    return ", ".join(gaps) or "no exporter is missing"


def _log_processor_count() -> int:
    from opentelemetry import _logs

    return len(otel_internals.log_record_processors(_logs.get_logger_provider()))


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        _log.warning("%s", message)


def _any_sdk_provider() -> bool:
    """Whether any global provider was already set (by hand, a config file, another configurator)."""
    from opentelemetry import _logs

    return (
        not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        or not otel_internals.is_proxy_meter_provider(metrics.get_meter_provider())
        or not otel_internals.is_proxy_logger_provider(_logs.get_logger_provider())
    )


def _rules_file_problem(path: str) -> str | None:
    try:
        stamp = os.stat(path).st_mtime_ns
    except OSError:
        stamp = 0
    return _check_rules_file(path, stamp)


@functools.lru_cache(maxsize=8)
def _check_rules_file(path: str, stamp: int) -> str | None:
    """Check the rules file once per version of it, logging a problem once.

    The parse is kept (:func:`otel_eda.anomaly.rules.load_rule_set`): the anomaly reader
    built next takes the same rules without reading the file again.
    """
    from otel_eda.anomaly.rules import load_rule_set

    try:
        load_rule_set(path)
    except Exception as exc:  # RulesFileError, or anything a broken file provokes
        _log.error("invalid OTEL_EDA_RULES_FILE: %s; using the default rule set", exc)
        return f"invalid OTEL_EDA_RULES_FILE: {exc}"
    return None


def default_otlp_protocol() -> None:
    """``otlp`` means gRPC unless told otherwise; otel-eda[otlp] installs the HTTP exporter.

    Sets ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` in the process environment when it is
    unset (child processes inherit it), as OpenTelemetry distros set their defaults.
    """
    if not os.environ.get(OTEL_EXPORTER_OTLP_PROTOCOL, "").strip():
        os.environ[OTEL_EXPORTER_OTLP_PROTOCOL] = "http/protobuf"


def _install_from_environment(
    settings: Settings, callbacks: list[Callable[[Alert], Any]], auto_instrumentation_version: str | None
) -> None:
    """Let the SDK build the providers; _complete() adds what is otel-eda's."""
    if os.environ.get(OTEL_CONFIG_FILE, "").strip():
        # the declarative file is the sole source of the SDK's providers
        otel_internals.configure_sdk()
        return
    exporters = None if os.environ.get(OTEL_TRACES_EXPORTER, "").strip() else ["console"]
    otel_internals.initialize_components(
        auto_instrumentation_version=auto_instrumentation_version,
        trace_exporter_names=exporters,
        metric_exporter_names=[ANOMALY_READER_ENTRY_POINT],
        span_processors=[EventSpanProcessor(baggage_keys=settings.baggage_keys)],
        sampler=_link_aware_sampler(),
        # started by _complete() once it is on the global MeterProvider: if the SDK fails
        # after building it, no thread runs for a reader nobody collects
        exporter_args_map={AnomalyMetricReader: {"callbacks": callbacks, "settings": settings, "start": False}},
    )


def _link_aware_sampler() -> Sampler:
    return LinkAwareSampler(otel_internals.sampler_from_environment() or ParentBased(ALWAYS_ON))


def _complete(settings: Settings, callbacks: list[Callable[[Alert], Any]], *, quiet: bool) -> None:
    """Add whatever of otel-eda's pieces the installed providers lack (or install bare ones)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        provider = TracerProvider(resource=Resource.create(), sampler=_link_aware_sampler())
        trace.set_tracer_provider(provider)
        if not quiet:  # another provider was installed first, so the SDK's configuration did not run
            _warn_once(
                "a MeterProvider or LoggerProvider was installed before otel_eda.configure() but no "
                "TracerProvider: otel-eda installed one without span exporters (OTEL_TRACES_EXPORTER is "
                "not applied); call otel_eda.configure() first to get the SDK's full configuration"
            )
    if not isinstance(provider, TracerProvider):
        return  # someone else's API implementation: nothing of the SDK's to complete
    if not has_event_processor(provider):
        provider.add_span_processor(EventSpanProcessor(baggage_keys=settings.baggage_keys))
        if not quiet:
            _log.info("otel-eda added its EventSpanProcessor to the installed TracerProvider")
    _wrap_sampler(provider)
    meters = metrics.get_meter_provider()
    if otel_internals.is_proxy_meter_provider(meters):
        meters = MeterProvider(
            resource=provider.resource,
            metric_readers=[AnomalyMetricReader(callbacks=callbacks, settings=settings)],
        )
        metrics.set_meter_provider(meters)
    elif isinstance(meters, MeterProvider):
        reader = anomaly_reader(meters)
        if reader is None:
            attach(meters, AnomalyMetricReader(callbacks=callbacks, settings=settings))
            if not quiet:
                _log.info("otel-eda attached its AnomalyMetricReader to the installed MeterProvider")
        elif not reader.started:
            reader.start()  # built by the SDK in this call, with the callbacks
        else:
            for callback in callbacks:
                reader.add_callback(callback)
    track_span_losses(provider, meter_provider=meters)


def _wrap_sampler(provider: TracerProvider) -> None:
    """Wrap a provider's sampler in LinkAwareSampler (also for the tracers it already made)."""
    sampler = provider.sampler
    if isinstance(sampler, LinkAwareSampler):
        return
    wrapped = LinkAwareSampler(sampler)
    provider.sampler = wrapped
    for tracer in otel_internals.tracers(provider):
        if getattr(tracer, "sampler", None) is sampler:
            tracer.sampler = wrapped


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
    processors = span_processors(provider)
    meters = metrics.get_meter_provider()
    readers = _metric_readers(meters)
    sampler = getattr(provider, "sampler", None)
    return Installation(
        tracer_provider=type(provider).__name__,
        span_exporters=tuple(type(e).__name__ for e in _exporters(processors)),
        event_processor=has_event_processor(provider),
        sampler=sampler.get_description() if sampler is not None else "none",
        meter_provider=type(meters).__name__,
        metric_readers=tuple(dict.fromkeys(type(r).__name__ for r in readers)),
        anomaly_reader=anomaly_reader(meters) is not None,
        eda_propagator=contains_propagator(propagate.get_global_textmap(), EdaPropagator),
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _exporters(processors: Iterable[object]) -> Iterable[object]:
    """The export pipelines' exporters, seen through otel-eda's loss-counting wrapper."""
    for processor in processors:
        exporter = exporter_of(processor)
        if exporter is not None:
            yield exporter.inner if isinstance(exporter, LossCountingSpanExporter) else exporter


def anomaly_reader(provider: object) -> AnomalyMetricReader | None:
    """The AnomalyMetricReader of an SDK MeterProvider, if it has one."""
    for reader in _metric_readers(provider):
        if isinstance(reader, AnomalyMetricReader):
            return reader
    return None


def _metric_readers(provider: object) -> tuple[object, ...]:
    """The readers registered on this MeterProvider (not on every provider of the process)."""
    return otel_internals.metric_readers(provider)


def _instrument_host_metrics() -> None:
    """Host CPU and memory from opentelemetry-instrumentation-system-metrics, when installed."""
    try:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    except ImportError:
        _log.info("host CPU and memory metrics need otel-eda[auto] (opentelemetry-instrumentation-system-metrics)")
        return
    running = otel_internals.running_system_metrics_instrumentor()  # constructing it again resets its config
    if running is not None and running.is_instrumented_by_opentelemetry:
        return
    SystemMetricsInstrumentor(config=HOST_METRICS).instrument()


def has_event_processor(provider: object) -> bool:
    return any(isinstance(p, EventSpanProcessor) for p in span_processors(provider))


def _ensure_propagator() -> None:
    current = propagate.get_global_textmap()
    if not contains_propagator(current, EdaPropagator):
        propagate.set_global_textmap(CompositePropagator([current, EdaPropagator()]))
