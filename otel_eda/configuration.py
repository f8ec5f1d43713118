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

from opentelemetry import propagate, trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk._configuration import _get_sampler, _import_sampler, _initialize_components
from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from otel_eda.processor import EventSpanProcessor
from otel_eda.propagation import EdaPropagator, install_log_filters
from otel_eda.sampling import LinkAwareSampler
from otel_eda.telemetry import _contains

__all__ = ["configure"]

_log = logging.getLogger(__name__)


def sdk_disabled() -> bool:
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def configure() -> None:
    """Install (or complete) the global OpenTelemetry providers for otel-eda.

    >>> import otel_eda
    >>> otel_eda.configure()  # doctest: +SKIP
    """
    if sdk_disabled():
        _log.info("OTEL_SDK_DISABLED=true: otel-eda installs nothing; the bus still works")
        return
    install_log_filters()
    _ensure_propagator()
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        if not has_event_processor(provider):
            provider.add_span_processor(EventSpanProcessor())
            _log.info("otel-eda added its EventSpanProcessor to the installed TracerProvider")
        return
    exporters = None if os.environ.get(OTEL_TRACES_EXPORTER, "").strip() else ["console"]
    sampler = LinkAwareSampler(_import_sampler(_get_sampler()) or ParentBased(ALWAYS_ON))
    _initialize_components(
        trace_exporter_names=exporters,
        span_processors=[EventSpanProcessor()],
        sampler=sampler,
    )


def has_event_processor(provider: TracerProvider) -> bool:
    processors = getattr(provider._active_span_processor, "_span_processors", ())
    return any(isinstance(p, EventSpanProcessor) for p in processors)


def _ensure_propagator() -> None:
    current = propagate.get_global_textmap()
    if not _contains(current, EdaPropagator):
        propagate.set_global_textmap(CompositePropagator([current, EdaPropagator()]))
