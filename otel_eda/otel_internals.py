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
    "add_start_attributes",
    "batch_worker",
    "configure_sdk",
    "context_variable",
    "current_context_getter",
    "drop_metrics",
    "encode_zipkin_v2_span",
    "exporter_names",
    "global_provider_getters",
    "initialize_components",
    "is_proxy_logger_provider",
    "is_proxy_meter_provider",
    "live_attributes",
    "log_record_processors",
    "measurement_consumer",
    "meter_provider_is_shut_down",
    "metric_readers",
    "noop_checks",
    "prepend_log_record_processor",
    "propagators_of",
    "reader_collect_callback",
    "reader_storage",
    "running_system_metrics_instrumentor",
    "sampler_from_environment",
    "set_drop_metrics",
    "set_export_queue_bound",
    "set_storage_view_resolver",
    "set_worker_exporter",
    "set_worker_queue",
    "span_links",
    "span_processors",
    "start_attributes",
    "stop_worker_exports",
    "storage_view_resolver",
    "storage_views",
    "suppress_instrumentation",
    "tracers",
    "view_renames",
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


def global_provider_getters() -> tuple[Callable[[], Any], Callable[[], Any], Callable[[object], bool]]:
    """``(tracer_provider, meter_provider, is_proxy_meter)``: two calls without a Python frame
    returning the global tracer and meter provider set so far, or None, and a test of a meter
    the API's proxy handed out (the hot path's cheapest "is anything installed yet?").

    ``opentelemetry.trace._TRACER_PROVIDER``, ``opentelemetry.metrics._internal._METER_PROVIDER``
    and ``_ProxyMeter`` (api 1.45.0, 1.45.1): while the global provider is unset, a proxy
    tracer or meter is a no-op (see :func:`noop_checks`).
    """
    import functools

    from opentelemetry import trace
    from opentelemetry.metrics import _internal as metrics_internal

    proxy_meter = metrics_internal._ProxyMeter

    def is_proxy_meter(meter: object) -> bool:
        return type(meter) is proxy_meter

    return (
        functools.partial(getattr, trace, "_TRACER_PROVIDER", None),
        functools.partial(getattr, metrics_internal, "_METER_PROVIDER", None),
        is_proxy_meter,
    )


def noop_checks() -> tuple[Any, Any]:
    """Two cheap tests, ``(tracer_is_noop, meter_is_noop)``, of a tracer or meter the API
    handed out: true while everything it makes is a no-op (the hot path then skips
    describing spans and measurements nobody receives).

    ``ProxyTracer._real_tracer`` and ``opentelemetry.trace._TRACER_PROVIDER``,
    ``_ProxyMeter._real_meter`` and ``opentelemetry.metrics._internal._METER_PROVIDER``
    (api 1.45.0, 1.45.1): a proxy stays a no-op exactly while both are unset (its own
    ``_tracer`` property and ``on_set_meter_provider`` read them); the public
    ``get_tracer_provider()`` reads ``os.environ`` on every call while none is set.
    """
    from opentelemetry import trace
    from opentelemetry.metrics import NoOpMeter
    from opentelemetry.metrics import _internal as metrics_internal

    proxy_tracer, noop_tracer = trace.ProxyTracer, trace.NoOpTracer
    proxy_meter = metrics_internal._ProxyMeter

    def tracer_is_noop(tracer: object) -> bool:
        if type(tracer) is proxy_tracer:
            return tracer._real_tracer is None and trace._TRACER_PROVIDER is None
        return isinstance(tracer, noop_tracer)

    def meter_is_noop(meter: object) -> bool:
        if type(meter) is proxy_meter:
            return meter._real_meter is None and metrics_internal._METER_PROVIDER is None
        return isinstance(meter, NoOpMeter)

    return tracer_is_noop, meter_is_noop


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


_NO_FIELDS: dict[str, Any] = {}


def span_links(span: Any) -> Any:
    """The links a recording SDK span was started with (a sequence; empty when none).

    ``Span._links`` (sdk 1.45.0, 1.45.1): the public ``span.links`` copies them into a new
    tuple on every read, on the hot path of every consumer span start.
    """
    return span._links


def live_attributes(span: Any) -> Any:
    """The live attribute mapping of a recording SDK span (cheap ``in``).

    ``Span._attributes`` (a ``BoundedAttributes``) and its ``_dict`` (sdk 1.45.0, 1.45.1):
    the public ``span.attributes`` is a read-only proxy whose ``in`` raises and catches a
    KeyError for every absent key, on the hot path of every span start.
    """
    attributes = span._attributes
    live = getattr(attributes, "__dict__", _NO_FIELDS).get("_dict")
    return live if type(live) is dict else (attributes or {})


def start_attributes(span: Any, room: int) -> dict[str, Any] | None:
    """The live attribute dict of a starting span when ``room`` more str values may go in
    directly (what :func:`add_start_attributes` checks, read once); None otherwise (then
    use :func:`add_start_attributes`). Same private fields as there."""
    fields = getattr(span._attributes, "__dict__", _NO_FIELDS)
    live = fields.get("_dict")
    if type(live) is not dict or fields.get("max_value_len", 0) is not None or fields.get("_immutable") is not False:
        return None
    maxlen = fields.get("maxlen", 0)
    return live if maxlen is None or len(live) + room <= maxlen else None


def add_start_attributes(span: Any, values: dict[str, str]) -> None:
    """Add str ``values`` to a span that is starting (no other thread can see it yet).

    ``Span.set_attributes`` cleans and locks per key, which costs more than the rest of the
    span processor. When ``Span._attributes`` (a ``BoundedAttributes``: ``_dict``,
    ``max_value_len``, ``_immutable``, ``maxlen``; sdk 1.45.0, 1.45.1) is mutable, has room
    and no value-length limit, the values go into its dict as the SDK would store them;
    otherwise (a limit applies, or another SDK stores them differently) through the API.
    """
    fields = getattr(span._attributes, "__dict__", _NO_FIELDS)
    live = fields.get("_dict")
    maxlen = fields.get("maxlen", 0)
    if (
        type(live) is dict
        and fields.get("max_value_len", 0) is None
        and fields.get("_immutable") is False
        and (maxlen is None or len(live) + len(values) <= maxlen)
    ):
        live.update(values)
    else:
        span.set_attributes(values)


def set_export_queue_bound(worker: object, bound: int) -> None:
    """Raise ``BatchProcessor._max_queue_size`` (sdk 1.45.0, 1.45.1) when it is an int.

    ``emit()`` compares ``len(queue)`` with it to log "Queue full" (a LogRecord made and
    filtered for every dropped span) and to call ``drop_items``; a queue that counts its own
    evictions sets it past its length so that neither happens.
    """
    if isinstance(getattr(worker, "_max_queue_size", None), int):
        worker._max_queue_size = bound  # type: ignore[attr-defined]


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


def stop_worker_exports(worker: object) -> None:
    """Tell a ``BatchProcessor`` to start no further export.

    Sets ``BatchProcessor._shutdown_timeout_exceeded`` (sdk 1.45.0, 1.45.1): the SDK's own
    flag for a shutdown that ran out of time.
    """
    worker._shutdown_timeout_exceeded = True  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- SDK metrics


def meter_provider_is_shut_down(provider: object) -> bool:
    """``MeterProvider._shutdown`` (sdk 1.45.0, 1.45.1): whether its shutdown already ran."""
    return bool(getattr(provider, "_shutdown", False))


def measurement_consumer(provider: object) -> Any:
    """The measurement consumer of an SDK MeterProvider, or None for any other provider.

    ``MeterProvider._measurement_consumer`` (sdk 1.45.0, 1.45.1): the object a reader's
    collect callback is bound to (see :func:`reader_collect_callback`), so that a reader and
    the code recording on its provider can find each other.
    """
    return getattr(provider, "_measurement_consumer", None)


def reader_collect_callback(reader: object) -> Any:
    """What the provider passed to ``MetricReader._set_collect_callback``, or None before.

    ``MetricReader._collect`` (sdk 1.45.0, 1.45.1): the measurement consumer's ``collect``.
    """
    return getattr(reader, "_collect", None)


def reader_storage(collect_callback: object, reader: object) -> Any:
    """The ``MetricReaderStorage`` a provider keeps for ``reader``, or None.

    ``SynchronousMeasurementConsumer._reader_storages`` (sdk 1.45.0, 1.45.1), reached through
    the consumer bound to ``collect_callback``.
    """
    consumer = getattr(collect_callback, "__self__", None)
    storages = getattr(consumer, "_reader_storages", None)
    return storages.get(reader) if isinstance(storages, dict) else None


def storage_view_resolver(storage: object) -> Any:
    """``MetricReaderStorage._get_or_init_view_instrument_match`` (sdk 1.45.0, 1.45.1), or None:
    the method that maps an instrument to its view matches on every measurement."""
    resolve = getattr(storage, "_get_or_init_view_instrument_match", None)
    return resolve if callable(resolve) else None


def set_storage_view_resolver(storage: object, resolve: Callable[[Any], Any]) -> None:
    """Shadow :func:`storage_view_resolver` for this one storage (an instance attribute)."""
    storage._get_or_init_view_instrument_match = resolve  # type: ignore[attr-defined]


def storage_views(storage: object) -> Any:
    """``MetricReaderStorage._sdk_config.views`` (sdk 1.45.0, 1.45.1), or None."""
    return getattr(getattr(storage, "_sdk_config", None), "views", None)


def view_renames(view: object) -> bool:
    """Whether a ``View`` gives its instruments a new name (``View._name``; sdk 1.45.0, 1.45.1)."""
    return bool(getattr(view, "_name", None))


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


def context_variable() -> Any:
    """The ``ContextVar`` holding the current context, or None.

    ``opentelemetry.context._RUNTIME_CONTEXT._current_context`` (api 1.45.0, 1.45.1; the
    default ``contextvars_context`` runtime): ``attach(ctx)`` is its ``set(ctx)`` and
    ``detach(token)`` its ``reset(token)`` (the API's wrappers add three Python calls to
    each, and log a token reset in another task or thread instead of raising ``ValueError``).
    None for any other runtime context (an ``OTEL_PYTHON_CONTEXT`` plug-in): use the API's
    ``attach`` and ``detach`` then.
    """
    import contextvars

    from opentelemetry import context as api

    variable = getattr(getattr(api, "_RUNTIME_CONTEXT", None), "_current_context", None)
    return variable if isinstance(variable, contextvars.ContextVar) else None


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
