"""Flows: what happened to each event, from the lifecycle records the transports write.

* :mod:`~otel_eda.flows.records`: :class:`LifecycleRecord`, one step of one event's life;
* :mod:`~otel_eda.flows.store`: :class:`EventStore`, a bounded in-process index of events,
  their causation and their handlings, answering "what happened to order 123?";
* :mod:`~otel_eda.flows.explorer`: the same question across services, after the fact, from
  the spans in Zipkin, Jaeger or files; :mod:`~otel_eda.flows.cli` is the ``otel-eda``
  command that asks it (``otel-eda flow``).
"""

from otel_eda.flows.records import LifecycleRecord, Recorder, Stage
from otel_eda.flows.store import DeliverySummary, EventStore, EventSummary

__all__ = ["DeliverySummary", "EventStore", "EventSummary", "LifecycleRecord", "Recorder", "Stage"]
