"""otel-eda: OpenTelemetry for event-driven Python services.

Every event gets an identity (event id, correlation id, causation id) that travels with
OpenTelemetry propagators; each event's lifecycle becomes PRODUCER/CONSUMER spans linked
to each other; a span processor stamps the flow's ids on every span; an in-process store
answers "what happened to order 123?".

This module is the application API: every name below is importable from ``otel_eda``.
Transport authors use :mod:`otel_eda.messaging`; the SDK plug-ins that entry points load
(propagator, span processor, sampler, exporters) live in :mod:`otel_eda.identity.propagation`
and :mod:`otel_eda.sdk`.

The package is layered; each layer imports only the ones below it (checked in CI)::

    installation, testing   configure(), the auto-instrumentation distro; test helpers
    transports              the embedded bus, multiprocessing, broker instrumentations
    sdk                     SDK plug-ins: span processor, sampler, export-loss accounting
    messaging               the transport integration API: publish, process, receive
    flows                   lifecycle records and the event store
    identity                event identity and its propagator (OpenTelemetry API only)
    anomaly                 the anomaly engine: reads metrics only
    settings, semconv, ...  configuration, names, self-metrics

Names are imported lazily: importing a plug-in module (``opentelemetry-instrument`` loads
the ``eda`` propagator at start-up) must not import the OpenTelemetry SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from otel_eda.version import VERSION as __version__

#: The application API: public name -> module that defines it. The one list of exports:
#: ``__all__`` is derived from it and a test checks the typed imports below against it.
_EXPORTS = {
    # identity
    "EventContext": "otel_eda.identity.event",
    "FlowIds": "otel_eda.identity.event",
    "current_event": "otel_eda.identity.event",
    "flow_ids": "otel_eda.identity.event",
    "with_event": "otel_eda.identity.event",
    # the embedded transports
    "EventBus": "otel_eda.transports.bus",
    "Delivery": "otel_eda.transports.bus",
    "DeadLetter": "otel_eda.transports.bus",
    "RetryPolicy": "otel_eda.transports.bus",
    "Rejected": "otel_eda.transports.bus",
    "BusFull": "otel_eda.transports.bus",
    "Service": "otel_eda.transports.service",
    # flows
    "EventStore": "otel_eda.flows.store",
    "EventSummary": "otel_eda.flows.store",
    "DeliverySummary": "otel_eda.flows.store",
    "LifecycleRecord": "otel_eda.flows.records",
    "Stage": "otel_eda.flows.records",
    # settings and installation
    "TraceMode": "otel_eda.settings",
    "configure": "otel_eda.installation.configuration",
    "ConfigurationError": "otel_eda.installation.configuration",
    "shutdown": "otel_eda.installation.shutdown",
    "ShutdownReport": "otel_eda.installation.shutdown",
    # alerts (what configure(on_alert=...) passes)
    "Alert": "otel_eda.anomaly.alerts",
    "AlertState": "otel_eda.anomaly.alerts",
    "Severity": "otel_eda.anomaly.alerts",
}

__all__ = [*sorted(_EXPORTS), "__version__"]  # noqa: PLE0604 (derived from the one list above)

if TYPE_CHECKING:
    from otel_eda.anomaly.alerts import Alert as Alert
    from otel_eda.anomaly.alerts import AlertState as AlertState
    from otel_eda.anomaly.alerts import Severity as Severity
    from otel_eda.flows.records import LifecycleRecord as LifecycleRecord
    from otel_eda.flows.records import Stage as Stage
    from otel_eda.flows.store import DeliverySummary as DeliverySummary
    from otel_eda.flows.store import EventStore as EventStore
    from otel_eda.flows.store import EventSummary as EventSummary
    from otel_eda.identity.event import EventContext as EventContext
    from otel_eda.identity.event import FlowIds as FlowIds
    from otel_eda.identity.event import current_event as current_event
    from otel_eda.identity.event import flow_ids as flow_ids
    from otel_eda.identity.event import with_event as with_event
    from otel_eda.installation.configuration import ConfigurationError as ConfigurationError
    from otel_eda.installation.configuration import configure as configure
    from otel_eda.installation.shutdown import ShutdownReport as ShutdownReport
    from otel_eda.installation.shutdown import shutdown as shutdown
    from otel_eda.settings import TraceMode as TraceMode
    from otel_eda.transports.bus import BusFull as BusFull
    from otel_eda.transports.bus import DeadLetter as DeadLetter
    from otel_eda.transports.bus import Delivery as Delivery
    from otel_eda.transports.bus import EventBus as EventBus
    from otel_eda.transports.bus import Rejected as Rejected
    from otel_eda.transports.bus import RetryPolicy as RetryPolicy
    from otel_eda.transports.service import Service as Service


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_eda' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
