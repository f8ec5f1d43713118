"""Every use otel-eda makes of a private OpenTelemetry attribute, function or class.

OpenTelemetry Python keeps some of what a plugin needs behind ``_``-prefixed names: the
SDK's own configuration entry (``_initialize_components``), a provider's list of span
processors, the batch processor's queue and exporter. Those can change in any release, so
they live here and nowhere else: each accessor names the attribute it reads and the SDK
versions it was checked against, ``tests/test_otel_internals.py`` fails with a message
naming the attribute when an installed SDK no longer has it (run by ``.ci/run`` against the
lowest SDK ``pyproject.toml`` allows and the newest), and ``tests/test_otel_internals.py``
also fails on any ``_``-prefixed OpenTelemetry name used outside this module (an AST scan).
The upper bounds of the OpenTelemetry requirements in ``pyproject.toml`` are the newest
versions checked, because of this module.

Checked against opentelemetry-api/sdk 1.45.0 and 1.45.1, opentelemetry-instrumentation
0.66b0 and 0.66b1, opentelemetry-exporter-zipkin-json 1.45.0 and 1.45.1 (every accessor,
unless its comment says otherwise).

The module is at the bottom of the package's layers and imports OpenTelemetry only inside
each accessor, so the API-only layers (``otel_eda.identity``) may use it without loading
the SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CHECKED_VERSIONS",
    "batch_worker",
    "configure_sdk",
    "current_context_getter",
    "drop_metrics",
    "encode_zipkin_v2_span",
    "exporter_names",
    "initialize_components",
    "is_proxy_logger_provider",
    "is_proxy_meter_provider",
    "live_attributes",
    "log_record_processors",
    "metric_readers",
    "prepend_log_record_processor",
    "propagators_of",
    "running_system_metrics_instrumentor",
    "sampler_from_environment",
    "set_drop_metrics",
    "set_worker_exporter",
    "set_worker_queue",
    "span_processors",
    "suppress_instrumentation",
    "tracers",
    "worker_export_lock",
    "worker_exporter",
    "worker_queue",
]

#: The distributions and versions every accessor below was checked against (lowest, newest).
CHECKED_VERSIONS: dict[str, tuple[str, str]] = {
    "opentelemetry-api": ("1.45.0", "1.45.1"),
    "opentelemetry-sdk": ("1.45.0", "1.45.1"),
    "opentelemetry-instrumentation": ("0.66b0", "0.66b1"),
    "opentelemetry-exporter-zipkin-json": ("1.45.0", "1.45.1"),
}

# ----------------------------------------------------------------------------- API (no SDK)


def propagators_of(textmap: object) -> Sequence[object] | None:
    """The propagators inside a composite propagator, or None for any other propagator.

    ``CompositePropagator._propagators`` (opentelemetry-api 1.45.0, 1.45.1): the API has
    no public accessor for a composite's members.
    """
    from opentelemetry.propagators.composite import CompositePropagator

    if not isinstance(textmap, CompositePropagator):
        return None
    inner = textmap._propagators
    return inner if isinstance(inner, list | tuple) else None


def is_proxy_meter_provider(provider: object) -> bool:
    """Whether ``provider`` is the API's placeholder MeterProvider (none was installed yet).

    ``opentelemetry.metrics._internal._ProxyMeterProvider`` (api 1.45.0, 1.45.1): the
    tracing API exports ``ProxyTracerProvider``, the metrics API keeps its proxy private.
    """
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    return isinstance(provider, _ProxyMeterProvider)


def is_proxy_logger_provider(provider: object) -> bool:
    """Whether ``provider`` is the logs API's placeholder LoggerProvider.

    ``opentelemetry._logs._internal.ProxyLoggerProvider`` (api 1.45.0, 1.45.1).
    """
    from opentelemetry._logs._internal import ProxyLoggerProvider

    return isinstance(provider, ProxyLoggerProvider)


# ----------------------------------------------------------------------------- SDK configuration


def initialize_components(**kwargs: Any) -> None:
    """The SDK's configuration from the ``OTEL_*`` variables, with extra pieces.

    ``opentelemetry.sdk._configuration._initialize_components`` (sdk 1.45.0, 1.45.1), called
    with the keyword arguments ``auto_instrumentation_version``, ``trace_exporter_names``,
    ``metric_exporter_names``, ``span_processors``, ``sampler`` and ``exporter_args_map``:
    the one SDK function that builds providers, exporters and resource from the environment
    and still lets a plugin add a span processor and a metric reader.
    """
    from opentelemetry.sdk._configuration import _initialize_components

    _initialize_components(**kwargs)


def configure_sdk() -> None:
    """The SDK's default configurator (it reads ``OTEL_CONFIG_FILE`` when set).

    ``opentelemetry.sdk._configuration._OTelSDKConfigurator`` (sdk 1.45.0, 1.45.1).
    """
    from opentelemetry.sdk._configuration import _OTelSDKConfigurator

    _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]


def sampler_from_environment() -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER``/``_ARG`` name, or None when unset or unknown.

    ``opentelemetry.sdk._configuration._get_sampler`` and ``_import_sampler`` (sdk 1.45.0,
    1.45.1).
    """
    from opentelemetry.sdk._configuration import _get_sampler, _import_sampler

    return _import_sampler(_get_sampler())


def exporter_names(signal: str) -> list[str]:
    """The exporter names ``OTEL_{signal}_EXPORTER`` asks for, as the SDK reads them.

    ``opentelemetry.sdk._configuration._get_exporter_names`` (sdk 1.45.0, 1.45.1).
    """
    from opentelemetry.sdk._configuration import _get_exporter_names

    return list(_get_exporter_names(signal))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- SDK providers


def span_processors(provider: object) -> tuple[Any, ...]:
    """The span processors of an SDK TracerProvider (empty for any other provider).

    ``TracerProvider._active_span_processor._span_processors`` (sdk 1.45.0, 1.45.1).
    """
    return tuple(getattr(getattr(provider, "_active_span_processor", None), "_span_processors", ()))


def tracers(provider: object) -> tuple[Any, ...]:
    """The tracers an SDK TracerProvider made so far (each keeps its own sampler reference).

    ``TracerProvider._tracers`` (a dict by scope; sdk 1.45.0, 1.45.1).
    """
    made = getattr(provider, "_tracers", None)
    return tuple(made.values()) if isinstance(made, dict) else ()


def metric_readers(provider: object) -> tuple[Any, ...]:
    """The readers registered on one SDK MeterProvider.

    ``MeterProvider._measurement_consumer._reader_storages`` (a mapping keyed by reader;
    sdk 1.45.0, 1.45.1).
    """
    consumer = getattr(provider, "_measurement_consumer", None)
    return tuple(getattr(consumer, "_reader_storages", {}))


def log_record_processors(provider: object) -> tuple[Any, ...]:
    """The log record processors of an SDK LoggerProvider.

    ``LoggerProvider._multi_log_record_processor._log_record_processors`` (sdk 1.45.0, 1.45.1).
    """
    multi = getattr(provider, "_multi_log_record_processor", None)
    return tuple(getattr(multi, "_log_record_processors", ()))


def prepend_log_record_processor(provider: object, processor: object) -> bool:
    """Put ``processor`` first among an SDK LoggerProvider's processors (the SDK only appends).

    ``LoggerProvider._multi_log_record_processor`` with its ``_log_record_processors`` tuple
    and ``_lock`` (sdk 1.45.0, 1.45.1). Returns False, changing nothing, when they are not
    there.
    """
    multi = getattr(provider, "_multi_log_record_processor", None)
    lock = getattr(multi, "_lock", None)
    if not isinstance(getattr(multi, "_log_record_processors", None), tuple) or lock is None:
        return False
    with lock:
        multi._log_record_processors = (processor, *multi._log_record_processors)  # type: ignore[union-attr]
    return True


def running_system_metrics_instrumentor() -> Any:
    """The ``SystemMetricsInstrumentor`` singleton if one was built, else None.

    ``BaseInstrumentor._instance`` (opentelemetry-instrumentation 0.66b0, 0.66b1): building
    the instrumentor again would reset the running one's configuration.
    """
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    return SystemMetricsInstrumentor._instance


# ----------------------------------------------------------------------------- SDK spans


def live_attributes(span: Any) -> Any:
    """The live attribute mapping of a recording SDK span (cheap ``in``), or None.

    ``Span._attributes`` (a ``BoundedAttributes``) and its ``_dict`` (sdk 1.45.0, 1.45.1):
    the public ``span.attributes`` is a read-only proxy whose ``in`` raises and catches a
    KeyError for every absent key, on the hot path of every span start.
    """
    attributes = span._attributes
    live = getattr(attributes, "_dict", None)
    return live if live is not None else (attributes or {})


# ----------------------------------------------------------------------------- SDK batching


def batch_worker(processor: object) -> Any:
    """The queue-and-thread object inside a ``BatchSpanProcessor``, or None.

    ``BatchSpanProcessor._batch_processor`` (a ``BatchProcessor``; sdk 1.45.0, 1.45.1).
    """
    return getattr(processor, "_batch_processor", None)


def worker_exporter(worker: object) -> Any:
    """``BatchProcessor._exporter`` (sdk 1.45.0, 1.45.1), or None."""
    return getattr(worker, "_exporter", None)


def set_worker_exporter(worker: object, exporter: object) -> None:
    """Replace ``BatchProcessor._exporter`` (sdk 1.45.0, 1.45.1; read once per export)."""
    worker._exporter = exporter  # type: ignore[attr-defined]


def worker_queue(worker: object) -> Any:
    """``BatchProcessor._queue`` (a bounded ``collections.deque``; sdk 1.45.0, 1.45.1), or None."""
    return getattr(worker, "_queue", None)


def set_worker_queue(worker: object, queue: object) -> None:
    """Replace ``BatchProcessor._queue`` (sdk 1.45.0, 1.45.1); hold :func:`worker_export_lock`."""
    worker._queue = queue  # type: ignore[attr-defined]


def worker_export_lock(worker: object) -> Any:
    """``BatchProcessor._export_lock`` (the export thread pops under it; sdk 1.45.0, 1.45.1), or None."""
    return getattr(worker, "_export_lock", None)


def drop_metrics(owner: object) -> Any:
    """The SDK's own processor metrics object (with ``drop_items``) of a processor, or None.

    ``BatchProcessor._metrics`` / ``SimpleSpanProcessor._metrics`` (sdk 1.45.0, 1.45.1).
    """
    return getattr(owner, "_metrics", None)


def set_drop_metrics(owner: object, metrics: object) -> None:
    """Replace the ``_metrics`` object :func:`drop_metrics` returned (sdk 1.45.0, 1.45.1)."""
    owner._metrics = metrics  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- Zipkin exporter


def encode_zipkin_v2_span(encoder: Any, span: Any, encoded_local_endpoint: Any) -> dict[str, Any]:
    """The Zipkin JSON v2 encoder's own encoding of one span (a dict), for a subclass to extend.

    ``JsonV2Encoder._encode_span`` (opentelemetry-exporter-zipkin-json 1.45.0, 1.45.1): the
    one place a subclass can add ``remoteEndpoint`` without re-encoding the JSON.
    """
    from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder

    encode: Callable[[Any, Any, Any], dict[str, Any]] = JsonV2Encoder._encode_span
    return encode(encoder, span, encoded_local_endpoint)


# ----------------------------------------------------------------------------- API context


def current_context_getter() -> Callable[[], Any] | None:
    """The ``get`` of the ``ContextVar`` holding the current context, or None.

    ``opentelemetry.context._RUNTIME_CONTEXT._current_context`` (api 1.45.0, 1.45.1; the
    default ``contextvars_context`` runtime): reading it directly saves three Python calls
    per read. None for any other runtime context (an ``OTEL_PYTHON_CONTEXT`` plug-in): read
    ``opentelemetry.context.get_current()`` then.
    """
    import contextvars

    from opentelemetry import context as api

    variable = getattr(getattr(api, "_RUNTIME_CONTEXT", None), "_current_context", None)
    return variable.get if isinstance(variable, contextvars.ContextVar) else None


def suppress_instrumentation(context: Any = None) -> Any:
    """``context`` (default: the current one) with every instrumentation suppressed.

    ``opentelemetry.context._SUPPRESS_INSTRUMENTATION_KEY`` and
    ``_SUPPRESS_HTTP_INSTRUMENTATION_KEY`` (api 1.45.0, 1.45.1): the keys instrumentations
    check; the public ``suppress_instrumentation()`` lives in opentelemetry-instrumentation,
    which the anomaly package does not require.
    """
    from opentelemetry import context as api

    suppressed = api.set_value(api._SUPPRESS_INSTRUMENTATION_KEY, True, context)
    return api.set_value(api._SUPPRESS_HTTP_INSTRUMENTATION_KEY, True, suppressed)
