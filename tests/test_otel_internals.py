"""Private OpenTelemetry names: used only in otel_eda.otel_internals, each still there.

Each accessor of :mod:`otel_eda.otel_internals` is checked on the installed SDK; a failure
names the private attribute, the installed version and the versions otel-eda checked, so
that a newer SDK that changed one says so instead of failing somewhere downstream.
``.ci/run`` runs this file against the lowest and the newest SDK ``pyproject.toml`` allows.
The AST scan (``tests/private_otel_use.py``) fails on any private OpenTelemetry name used
elsewhere in the package.
"""

from __future__ import annotations

import collections
import importlib.metadata
import inspect
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from private_otel_use import private_uses, private_uses_in

from otel_eda import otel_internals

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("otel_eda", "examples")


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _changed(distribution: str, what: str, detail: str) -> str:
    low, high = otel_internals.CHECKED_VERSIONS[distribution]
    return (
        f"{distribution} {_installed(distribution)} changed {what} ({detail}); otel-eda checked it against "
        f"{low} to {high}: update otel_eda/otel_internals.py and the upper bound in pyproject.toml"
    )


@pytest.fixture
def tracer_provider() -> Iterator[TracerProvider]:
    provider = TracerProvider()
    yield provider
    provider.shutdown()


# ----------------------------------------------------------------------------- the AST scan


def test_no_private_opentelemetry_name_is_used_outside_the_internals_module() -> None:
    paths = [
        p for d in SCANNED for p in sorted((ROOT / d).rglob("*.py")) if p != ROOT / "otel_eda" / "otel_internals.py"
    ]
    assert len(paths) > 30
    found = private_uses_in(paths, ROOT)
    assert not found, "private OpenTelemetry names outside otel_eda/otel_internals.py:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from opentelemetry.sdk._configuration import _initialize_components", 2),
        ("import opentelemetry.sdk._configuration", 1),
        ("from opentelemetry.metrics._internal import _ProxyMeterProvider", 2),
        ("from opentelemetry import trace\ntrace.get_tracer_provider()._active_span_processor", 1),
        ("def f(p):\n    return getattr(p, '_batch_processor', None)", 1),
        ("def f(p):\n    setattr(p, '_queue', [])", 1),
        (
            "from opentelemetry.sdk.trace import Span\ndef f(span: Span):\n    return span._links",
            1,
        ),
        (
            "from opentelemetry.sdk.trace import TracerProvider\n"
            "def f():\n    p = TracerProvider()\n    for s in p.processors():\n        s._exporter = None",
            1,
        ),
        (
            "from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder\n"
            "class E(JsonV2Encoder):\n    def _encode_span(self, s, e):\n        return super()._encode_span(s, e)",
            1,
        ),
        (
            "from opentelemetry.sdk.trace.export import BatchSpanProcessor\n"
            "class B(BatchSpanProcessor):\n    def f(self):\n        return self._batch_processor",
            1,
        ),
        ("from opentelemetry import context\nkey = context._SUPPRESS_INSTRUMENTATION_KEY", 1),
        (
            "from otel_eda import otel_internals\n"
            "def f(p):\n    w = otel_internals.batch_worker(p)\n    return w._queue",
            1,
        ),
        # not private OpenTelemetry uses
        ("from opentelemetry import _logs\nfrom opentelemetry.sdk._logs import LoggerProvider", 0),
        ("class A:\n    def __init__(self, t):\n        self._t = t\n    def f(self):\n        return self._t._x", 0),
        (
            "from opentelemetry.sdk.metrics.export import MetricReader\n"
            "class R(MetricReader):\n    def __init__(self):\n        self._mine = 1\n"
            "    def _receive_metrics(self, d, timeout_millis=0, **kw):\n        return self._mine",
            0,
        ),
        ("from opentelemetry.trace import Span\ndef f(span: Span):\n    return span.__class__, span.attributes", 0),
        ("def f(x):\n    return getattr(x, '__qualname__', None)", 0),
        ("def f(consumer):\n    return getattr(consumer, '_group_id', None)  # not OpenTelemetry: aiokafka", 0),
    ],
)
def test_the_scan_finds_each_kind_of_private_use(source: str, expected: int) -> None:
    assert len(private_uses(source)) == expected, [str(u) for u in private_uses(source)]


# ----------------------------------------------------------------------------- each accessor, on this SDK


def test_propagators_of_a_composite() -> None:
    inner = [TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    found = otel_internals.propagators_of(CompositePropagator(inner))
    assert found is not None and list(found) == inner, _changed(
        "opentelemetry-api", "CompositePropagator._propagators", f"found {found!r}"
    )
    assert otel_internals.propagators_of(TraceContextTextMapPropagator()) is None
    assert otel_internals.propagators_of(propagate.get_global_textmap()) is not None


def test_proxy_providers() -> None:
    from opentelemetry import _logs

    assert otel_internals.is_proxy_meter_provider(metrics.NoOpMeterProvider()) is False
    proxy = metrics.get_meter_provider()
    if isinstance(proxy, MeterProvider):  # pragma: no cover - a test earlier in this process installed one
        pytest.skip("a MeterProvider is installed in this process")
    assert otel_internals.is_proxy_meter_provider(proxy), _changed(
        "opentelemetry-api", "opentelemetry.metrics._internal._ProxyMeterProvider", f"the global is {proxy!r}"
    )
    logs = _logs.get_logger_provider()
    if not isinstance(logs, LoggerProvider):
        assert otel_internals.is_proxy_logger_provider(logs), _changed(
            "opentelemetry-api", "opentelemetry._logs._internal.ProxyLoggerProvider", f"the global is {logs!r}"
        )
    assert not otel_internals.is_proxy_logger_provider(LoggerProvider())


def test_initialize_components_takes_the_arguments_otel_eda_passes() -> None:
    from opentelemetry.sdk import _configuration

    parameters = inspect.signature(_configuration._initialize_components).parameters
    needed = {
        "auto_instrumentation_version",
        "trace_exporter_names",
        "metric_exporter_names",
        "span_processors",
        "sampler",
        "exporter_args_map",
    }
    assert needed <= set(parameters), _changed(
        "opentelemetry-sdk", "_initialize_components", f"missing parameters {sorted(needed - set(parameters))}"
    )
    assert hasattr(_configuration, "_OTelSDKConfigurator"), _changed(
        "opentelemetry-sdk", "_OTelSDKConfigurator", "gone"
    )


def test_sampler_and_exporter_names_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,zipkin_json")
    sampler = otel_internals.sampler_from_environment()
    assert "0.25" in sampler.get_description(), _changed(
        "opentelemetry-sdk", "_get_sampler/_import_sampler", f"built {sampler!r}"
    )
    names = otel_internals.exporter_names("traces")
    assert names == ["console", "zipkin_json"], _changed("opentelemetry-sdk", "_get_exporter_names", f"read {names}")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    assert otel_internals.sampler_from_environment() is None


def test_span_processors_and_tracers(tracer_provider: TracerProvider) -> None:
    simple = SimpleSpanProcessor(InMemorySpanExporter())
    tracer_provider.add_span_processor(simple)
    found = otel_internals.span_processors(tracer_provider)
    assert found == (simple,), _changed(
        "opentelemetry-sdk", "TracerProvider._active_span_processor._span_processors", f"found {found!r}"
    )
    tracer = tracer_provider.get_tracer("probe")
    made = otel_internals.tracers(tracer_provider)
    assert tracer in made and all(hasattr(t, "sampler") for t in made), _changed(
        "opentelemetry-sdk", "TracerProvider._tracers or Tracer.sampler", f"found {made!r}"
    )
    assert otel_internals.span_processors(trace.NoOpTracerProvider()) == ()


def test_metric_readers() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        found = otel_internals.metric_readers(provider)
        assert found == (reader,), _changed(
            "opentelemetry-sdk", "MeterProvider._measurement_consumer._reader_storages", f"found {found!r}"
        )
    finally:
        provider.shutdown()


def test_log_record_processors() -> None:
    processor = SimpleLogRecordProcessor(InMemoryLogRecordExporter())
    provider = LoggerProvider()
    provider.add_log_record_processor(processor)
    found = otel_internals.log_record_processors(provider)
    assert found == (processor,), _changed(
        "opentelemetry-sdk", "LoggerProvider._multi_log_record_processor._log_record_processors", f"found {found!r}"
    )


def test_system_metrics_instrumentor_singleton() -> None:
    pytest.importorskip("opentelemetry.instrumentation.system_metrics")
    from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor

    built = SystemMetricsInstrumentor()
    found = otel_internals.running_system_metrics_instrumentor()
    assert found is built, _changed("opentelemetry-instrumentation", "BaseInstrumentor._instance", f"found {found!r}")


def test_live_attributes(tracer_provider: TracerProvider) -> None:
    span = tracer_provider.get_tracer("probe").start_span("s", attributes={"a": 1})
    live = otel_internals.live_attributes(span)
    assert type(live) is dict and live == {"a": 1}, _changed(
        "opentelemetry-sdk", "Span._attributes._dict", f"found {type(live).__name__} {live!r}"
    )
    span.set_attribute("b", 2)
    assert "b" in live, _changed("opentelemetry-sdk", "Span._attributes._dict", "not the live mapping")
    span.end()


def test_batch_worker_queue_exporter_lock_and_metrics(tracer_provider: TracerProvider) -> None:
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, max_queue_size=7, max_export_batch_size=7, schedule_delay_millis=60_000)
    tracer_provider.add_span_processor(processor)
    worker = otel_internals.batch_worker(processor)
    what = "BatchSpanProcessor._batch_processor"
    assert worker is not None and callable(getattr(worker, "emit", None)), _changed(
        "opentelemetry-sdk", what, f"found {worker!r}"
    )
    assert otel_internals.worker_exporter(worker) is exporter, _changed(
        "opentelemetry-sdk", f"{what}._exporter", "not the exporter"
    )
    queue = otel_internals.worker_queue(worker)
    assert isinstance(queue, collections.deque) and queue.maxlen == 7, _changed(
        "opentelemetry-sdk", f"{what}._queue", f"found {queue!r}"
    )
    lock = otel_internals.worker_export_lock(worker)
    assert lock is not None and hasattr(lock, "acquire"), _changed(
        "opentelemetry-sdk", f"{what}._export_lock", f"found {lock!r}"
    )
    for owner in (worker, SimpleSpanProcessor(InMemorySpanExporter())):
        found = otel_internals.drop_metrics(owner)
        assert callable(getattr(found, "drop_items", None)), _changed(
            "opentelemetry-sdk", f"{type(owner).__name__}._metrics.drop_items", f"found {found!r}"
        )
        # exportloss's proxy receives drop_items(count, error_type) and forwards both
        parameters = list(inspect.signature(found.drop_items).parameters)
        assert parameters[:2] == ["count", "error_type"], _changed(
            "opentelemetry-sdk", f"{type(owner).__name__}._metrics.drop_items", f"parameters {parameters}"
        )
    # the setters take effect: a replaced queue and exporter are the ones the worker uses
    replacement = InMemorySpanExporter()
    new_queue: collections.deque[object] = collections.deque(maxlen=7)
    with lock:
        otel_internals.set_worker_queue(worker, new_queue)
    otel_internals.set_worker_exporter(worker, replacement)
    tracer_provider.get_tracer("probe").start_span("s").end()
    assert len(new_queue) == 1, _changed("opentelemetry-sdk", f"{what}._queue", "emit() no longer appends to it")
    processor.force_flush()
    assert [s.name for s in replacement.get_finished_spans()] == ["s"], _changed(
        "opentelemetry-sdk", f"{what}._exporter", "the export no longer reads it"
    )
    assert exporter.get_finished_spans() == ()


def test_span_links_and_start_attributes(tracer_provider: TracerProvider) -> None:
    tracer = tracer_provider.get_tracer("probe")
    parent = tracer.start_span("p")
    link = trace.Link(parent.get_span_context(), {"k": "v"})
    span = tracer.start_span("s", links=[link], attributes={"a": "1"})
    links = otel_internals.span_links(span)
    assert [each.context for each in links] == [parent.get_span_context()], _changed(
        "opentelemetry-sdk", "Span._links", f"found {links!r}"
    )
    otel_internals.add_start_attributes(span, {"b": "2"})
    assert dict(span.attributes or {}) == {"a": "1", "b": "2"}, _changed(
        "opentelemetry-sdk", "Span._attributes (BoundedAttributes fields)", f"found {span.attributes!r}"
    )
    span.end()
    parent.end()


def test_start_attributes_respect_the_span_limits() -> None:
    from opentelemetry.sdk.trace import SpanLimits

    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=2, max_span_attribute_length=3))
    span = provider.get_tracer("probe").start_span("s", attributes={"a": "1"})
    otel_internals.add_start_attributes(span, {"b": "long value", "c": "3"})
    # through the API: truncated to 3 characters, at most 2 attributes (the oldest evicted)
    assert dict(span.attributes or {}) == {"b": "lon", "c": "3"}
    span.end()
    provider.shutdown()


def test_export_queue_bound_and_stopping_a_worker(tracer_provider: TracerProvider) -> None:
    exporter = InMemorySpanExporter()
    processor = BatchSpanProcessor(exporter, max_queue_size=7, max_export_batch_size=7, schedule_delay_millis=60_000)
    tracer_provider.add_span_processor(processor)
    worker = otel_internals.batch_worker(processor)
    otel_internals.set_export_queue_bound(worker, 8)
    assert getattr(worker, "_max_queue_size", None) == 8, _changed(
        "opentelemetry-sdk", "BatchProcessor._max_queue_size", "not an int set here"
    )
    otel_internals.stop_worker_exports(worker)
    tracer_provider.get_tracer("probe").start_span("s").end()
    processor.force_flush()
    assert exporter.get_finished_spans() == (), _changed(
        "opentelemetry-sdk", "BatchProcessor._shutdown_timeout_exceeded", "exports went on after it was set"
    )


def test_reader_storage_view_resolver_and_views() -> None:
    from opentelemetry.sdk.metrics.view import View

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], views=[View(instrument_name="renamed", name="new")])
    try:
        assert not otel_internals.meter_provider_is_shut_down(provider)
        collect = otel_internals.reader_collect_callback(reader)
        assert callable(collect), _changed("opentelemetry-sdk", "MetricReader._collect", f"found {collect!r}")
        storage = otel_internals.reader_storage(collect, reader)
        assert storage is not None, _changed(
            "opentelemetry-sdk", "SynchronousMeasurementConsumer._reader_storages", "no storage for the reader"
        )
        resolve = otel_internals.storage_view_resolver(storage)
        assert resolve is not None, _changed(
            "opentelemetry-sdk", "MetricReaderStorage._get_or_init_view_instrument_match", "not found"
        )
        views = otel_internals.storage_views(storage)
        assert views is not None and [otel_internals.view_renames(v) for v in views] == [True], _changed(
            "opentelemetry-sdk", "MetricReaderStorage._sdk_config.views / View._name", f"found {views!r}"
        )
        seen: list[str] = []

        def skip_all(instrument: object) -> tuple[()]:
            seen.append(getattr(instrument, "name", "?"))
            return ()

        otel_internals.set_storage_view_resolver(storage, skip_all)
        provider.get_meter("probe").create_counter("c").add(1)
        assert seen == ["c"], _changed(
            "opentelemetry-sdk", "MetricReaderStorage._get_or_init_view_instrument_match", "not called per measurement"
        )
        assert reader.get_metrics_data() is None or not reader.get_metrics_data().resource_metrics[0].scope_metrics
    finally:
        provider.shutdown()
    assert otel_internals.meter_provider_is_shut_down(provider), _changed(
        "opentelemetry-sdk", "MeterProvider._shutdown", "not set by shutdown()"
    )


def test_zipkin_v2_span_encoding(tracer_provider: TracerProvider) -> None:
    pytest.importorskip("opentelemetry.exporter.zipkin.json")
    from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
    from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint

    span = tracer_provider.get_tracer("probe").start_span("s")
    span.end()
    encoder = JsonV2Encoder()
    endpoint = NodeEndpoint()
    encoded = otel_internals.encode_zipkin_v2_span(encoder, span, {"serviceName": endpoint.service_name})
    public = json.loads(encoder.serialize([span], endpoint))[0]
    assert isinstance(encoded, dict) and encoded == public, _changed(
        "opentelemetry-exporter-zipkin-json", "JsonV2Encoder._encode_span", f"returned {encoded!r}"
    )


def test_the_checked_versions_cover_the_installed_ones() -> None:
    """The installed versions lie within the checked range (else the range above is a guess)."""
    from packaging.version import Version

    outside = []
    for distribution, (low, high) in otel_internals.CHECKED_VERSIONS.items():
        installed = _installed(distribution)
        if installed != "not installed" and not Version(low) <= Version(installed) <= Version(high):
            outside.append(f"{distribution} {installed} (checked {low} to {high})")
    assert not outside, outside


def test_suppress_instrumentation() -> None:
    pytest.importorskip("opentelemetry.instrumentation.utils")
    from opentelemetry import context
    from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled, is_instrumentation_enabled

    token = context.attach(otel_internals.suppress_instrumentation())
    try:
        assert not is_instrumentation_enabled() and not is_http_instrumentation_enabled(), _changed(
            "opentelemetry-api", "context._SUPPRESS_INSTRUMENTATION_KEY / _SUPPRESS_HTTP_INSTRUMENTATION_KEY", "ignored"
        )
    finally:
        context.detach(token)
    assert is_instrumentation_enabled()


def test_prepend_log_record_processor() -> None:
    first, second = (SimpleLogRecordProcessor(InMemoryLogRecordExporter()) for _ in range(2))
    provider = LoggerProvider()
    provider.add_log_record_processor(second)
    done = otel_internals.prepend_log_record_processor(provider, first)
    found = otel_internals.log_record_processors(provider)
    assert done and found == (first, second), _changed(
        "opentelemetry-sdk",
        "LoggerProvider._multi_log_record_processor._log_record_processors / _lock",
        f"prepended: {done}, found {found!r}",
    )


def test_context_variable() -> None:
    from opentelemetry import context

    variable = otel_internals.context_variable()
    assert variable is not None, _changed(
        "opentelemetry-api", "context._RUNTIME_CONTEXT._current_context", "not a ContextVar"
    )
    probe = context.set_value("probe", 2)
    token = variable.set(probe)  # what context.attach does
    try:
        assert context.get_current() is probe, _changed(
            "opentelemetry-api", "context._RUNTIME_CONTEXT._current_context", "not the current context"
        )
    finally:
        variable.reset(token)  # what context.detach does
    assert context.get_current() is not probe
    token = context.attach(probe)  # and the two are interchangeable
    variable.reset(token)
    assert context.get_current() is not probe


def test_current_context_getter() -> None:
    from opentelemetry import context

    get = otel_internals.current_context_getter()
    assert get is not None, _changed(
        "opentelemetry-api", "context._RUNTIME_CONTEXT._current_context", "not a ContextVar"
    )
    token = context.attach(context.set_value("probe", 1))
    try:
        assert get() is context.get_current(), _changed(
            "opentelemetry-api", "context._RUNTIME_CONTEXT._current_context", "not the current context"
        )
    finally:
        context.detach(token)


def test_writable_start_attributes(tracer_provider: TracerProvider) -> None:
    from opentelemetry.sdk.trace import SpanLimits

    span = tracer_provider.get_tracer("probe").start_span("s", attributes={"a": "1"})
    live = otel_internals.start_attributes(span, 2)
    assert live is not None, _changed("opentelemetry-sdk", "Span._attributes (BoundedAttributes fields)", "no dict")
    live["b"] = "2"
    assert dict(span.attributes or {}) == {"a": "1", "b": "2"}
    span.end()
    limited = TracerProvider(span_limits=SpanLimits(max_span_attributes=2))
    span = limited.get_tracer("probe").start_span("s", attributes={"a": "1"})
    assert otel_internals.start_attributes(span, 2) is None  # no room: through the API
    assert otel_internals.start_attributes(span, 1) is not None
    span.end()
    limited.shutdown()


def test_noop_checks_follow_the_global_providers(tracer_provider: TracerProvider) -> None:
    tracer_is_noop, meter_is_noop = otel_internals.noop_checks()
    assert tracer_is_noop(trace.NoOpTracer()) and not tracer_is_noop(tracer_provider.get_tracer("probe"))
    assert meter_is_noop(metrics.NoOpMeter("probe"))
    assert not meter_is_noop(MeterProvider().get_meter("probe"))
    proxy_tracer = trace.ProxyTracer("probe")
    # a proxy is a no-op exactly while no global provider is set (a test earlier may have set one)
    installed = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert tracer_is_noop(proxy_tracer) is not installed, _changed(
        "opentelemetry-api", "ProxyTracer._real_tracer / trace._TRACER_PROVIDER", f"installed={installed}"
    )
    proxy_meter = metrics.get_meter_provider().get_meter("probe")
    installed = isinstance(metrics.get_meter_provider(), MeterProvider)
    assert meter_is_noop(proxy_meter) is not installed, _changed(
        "opentelemetry-api", "_ProxyMeter._real_meter / metrics._internal._METER_PROVIDER", f"installed={installed}"
    )


def test_global_provider_getters_follow_the_global_providers() -> None:
    tracer_provider, meter_provider, is_proxy_meter = otel_internals.global_provider_getters()
    installed = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert (tracer_provider() is not None) is installed, _changed(
        "opentelemetry-api", "trace._TRACER_PROVIDER", f"installed={installed}"
    )
    if installed:
        assert tracer_provider() is trace.get_tracer_provider()
    installed = not otel_internals.is_proxy_meter_provider(metrics.get_meter_provider())
    assert (meter_provider() is not None) is installed, _changed(
        "opentelemetry-api", "metrics._internal._METER_PROVIDER", f"installed={installed}"
    )
    assert is_proxy_meter(metrics.get_meter_provider().get_meter("probe")) is not installed, _changed(
        "opentelemetry-api", "metrics._internal._ProxyMeter", f"installed={installed}"
    )
    assert not is_proxy_meter(MeterProvider().get_meter("probe"))


def test_measurement_consumer_is_what_a_reader_collect_callback_is_bound_to() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    consumer = otel_internals.measurement_consumer(provider)
    collect = otel_internals.reader_collect_callback(reader)
    assert consumer is not None and getattr(collect, "__self__", None) is consumer, _changed(
        "opentelemetry-sdk", "MeterProvider._measurement_consumer", f"found {consumer!r}"
    )
    assert otel_internals.measurement_consumer(metrics.NoOpMeterProvider()) is None
    provider.shutdown()
