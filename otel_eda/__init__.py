"""otel-eda: OpenTelemetry for event-driven Python services.

Every event gets an identity (event id, correlation id, causation id) that travels with
OpenTelemetry propagators; each event's lifecycle becomes PRODUCER/CONSUMER spans linked
to each other; a span processor stamps the flow's ids on every span; an in-process store
answers "what happened to order 123?".

Names are imported lazily: ``import otel_eda.propagation`` (loaded by
``opentelemetry-instrument`` through the ``eda`` propagator entry point) must not import
the OpenTelemetry SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "EventContext": "otel_eda.identity",
    "FlowIds": "otel_eda.identity",
    "current_event": "otel_eda.identity",
    "flow_ids": "otel_eda.identity",
    "EdaPropagator": "otel_eda.propagation",
    "EventBus": "otel_eda.bus",
    "Delivery": "otel_eda.bus",
    "DeadLetter": "otel_eda.bus",
    "RetryPolicy": "otel_eda.bus",
    "Rejected": "otel_eda.bus",
    "BusFull": "otel_eda.bus",
    "Service": "otel_eda.service",
    "EventStore": "otel_eda.store",
    "TraceMode": "otel_eda.telemetry",
    "EventTelemetry": "otel_eda.telemetry",
    "configure": "otel_eda.configuration",
    "EventSpanProcessor": "otel_eda.processor",
    "LinkAwareSampler": "otel_eda.sampling",
}

__all__ = [
    "BusFull",
    "DeadLetter",
    "Delivery",
    "EdaPropagator",
    "EventBus",
    "EventContext",
    "EventSpanProcessor",
    "EventStore",
    "EventTelemetry",
    "FlowIds",
    "LinkAwareSampler",
    "Rejected",
    "RetryPolicy",
    "Service",
    "TraceMode",
    "__version__",
    "configure",
    "current_event",
    "flow_ids",
]

if TYPE_CHECKING:
    from otel_eda.bus import (
        BusFull as BusFull,
    )
    from otel_eda.bus import (
        DeadLetter as DeadLetter,
    )
    from otel_eda.bus import (
        Delivery as Delivery,
    )
    from otel_eda.bus import (
        EventBus as EventBus,
    )
    from otel_eda.bus import (
        Rejected as Rejected,
    )
    from otel_eda.bus import (
        RetryPolicy as RetryPolicy,
    )
    from otel_eda.configuration import configure as configure
    from otel_eda.identity import (
        EventContext as EventContext,
    )
    from otel_eda.identity import (
        FlowIds as FlowIds,
    )
    from otel_eda.identity import (
        current_event as current_event,
    )
    from otel_eda.identity import (
        flow_ids as flow_ids,
    )
    from otel_eda.processor import EventSpanProcessor as EventSpanProcessor
    from otel_eda.propagation import EdaPropagator as EdaPropagator
    from otel_eda.sampling import LinkAwareSampler as LinkAwareSampler
    from otel_eda.service import Service as Service
    from otel_eda.store import EventStore as EventStore
    from otel_eda.telemetry import EventTelemetry as EventTelemetry
    from otel_eda.telemetry import TraceMode as TraceMode


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_eda' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
