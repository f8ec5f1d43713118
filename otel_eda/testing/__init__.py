"""Helpers for testing code that uses otel-eda: in-memory spans, metrics and alerts, and
flow assertions.

>>> import asyncio
>>> from otel_eda.testing import TelemetryCapture, assert_causation_chain
>>> async def main() -> None:
...     with TelemetryCapture() as capture:
...         async with capture.bus() as bus:
...             async def pay(d):
...                 await d.emit("payment_authorized")
...             bus.subscribe("order_placed", pay, subscriber="payment")
...             await bus.publish("order_placed")
...             await bus.join()
...         payment = capture.spans(name="send payment_authorized")[0]
...         assert_causation_chain(bus.store, payment.attributes["messaging.message.id"],
...                                ["order_placed", "payment_authorized"])
...         assert capture.counter_total("messaging.client.sent.messages") == 2
>>> asyncio.run(main())
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind

from otel_eda import semconv
from otel_eda.anomaly.alerts import Alert
from otel_eda.anomaly.engine import AnomalyEngine
from otel_eda.anomaly.reader import AnomalyMetricReader
from otel_eda.anomaly.rules import Rule, default_rules
from otel_eda.flows.records import LifecycleRecord, Recorder, Stage
from otel_eda.flows.store import EventStore
from otel_eda.identity import EventContext
from otel_eda.messaging import Messaging
from otel_eda.sdk.processor import EventSpanProcessor
from otel_eda.sdk.sampling import LinkAwareSampler
from otel_eda.transports.bus import EventBus

__all__ = ["TelemetryCapture", "assert_causation_chain", "assert_linked_to_producer", "record_flow"]


class TelemetryCapture:
    """Private, in-memory tracer and meter providers wired like ``configure()`` does.

    Nothing global is touched: pass ``capture.tracer_provider`` / ``meter_provider`` to
    your code, or build a bus with :meth:`bus`. An anomaly engine with ``rules`` (default:
    the default rule set) watches the metrics; :meth:`evaluate` runs it now and
    :attr:`alerts` holds what it delivered.
    """

    def __init__(
        self,
        *,
        service: str = "test-service",
        sampler: Sampler | None = None,
        rules: Sequence[Rule] | None = None,
    ) -> None:
        resource = Resource.create({"service.name": service})
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(
            sampler=LinkAwareSampler(sampler or ParentBased(ALWAYS_ON)), resource=resource
        )
        self.tracer_provider.add_span_processor(EventSpanProcessor())
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metric_reader = InMemoryMetricReader()
        #: every alert change the anomaly engine delivered, oldest first
        self.alerts: list[Alert] = []
        self.anomaly_reader = AnomalyMetricReader(
            AnomalyEngine(default_rules() if rules is None else rules),
            interval_s=3600,
            start=False,
            callbacks=[self.alerts.append],
        )
        self.meter_provider = MeterProvider(metric_readers=[self.metric_reader, self.anomaly_reader], resource=resource)

    def __enter__(self) -> TelemetryCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

    def bus(self, **kwargs: Any) -> EventBus:
        """An :class:`EventBus` on this capture's providers."""
        kwargs.setdefault("tracer_provider", self.tracer_provider)
        kwargs.setdefault("meter_provider", self.meter_provider)
        return EventBus(**kwargs)

    def messaging(self, system: str, **kwargs: Any) -> Messaging:
        """A :class:`~otel_eda.messaging.Messaging` on this capture's providers."""
        kwargs.setdefault("tracer_provider", self.tracer_provider)
        kwargs.setdefault("meter_provider", self.meter_provider)
        return Messaging(system, **kwargs)

    # -- spans --------------------------------------------------------------------------
    def spans(self, *, name: str | None = None, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first, optionally filtered by name and kind."""
        return [
            s
            for s in self.exporter.get_finished_spans()
            if (name is None or s.name == name) and (kind is None or s.kind == kind)
        ]

    # -- alerts -------------------------------------------------------------------------
    def evaluate(self) -> list[Alert]:
        """Run one anomaly evaluation now (as the reader's thread would); the new alerts."""
        before = len(self.alerts)
        self.anomaly_reader.force_flush()
        return self.alerts[before:]

    # -- metrics ------------------------------------------------------------------------
    def points(self, metric: str) -> list[Any]:
        """The current data points of one metric (collects now)."""
        data = self.metric_reader.get_metrics_data()
        found: list[Any] = []
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def counter_total(self, metric: str, attributes: Mapping[str, Any] | None = None) -> float:
        """Sum of a counter's points whose attributes include ``attributes``."""
        return float(sum(p.value for p in self.points(metric) if _matches(p.attributes, attributes)))

    def histogram_count(self, metric: str, attributes: Mapping[str, Any] | None = None) -> int:
        """Number of values recorded in a histogram, over points matching ``attributes``."""
        return int(sum(p.count for p in self.points(metric) if _matches(p.attributes, attributes)))


def _matches(point_attrs: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> bool:
    attrs = point_attrs or {}
    return all(attrs.get(k) == v for k, v in (wanted or {}).items())


def assert_causation_chain(store: EventStore, event_id: str, event_types: Sequence[str]) -> None:
    """Assert that ``event_id``'s causation chain, root first, has these event types."""
    chain = [e.event_type for e in store.causation_chain(event_id)]
    if chain != list(event_types):
        raise AssertionError(f"causation chain of {event_id} is {chain}, expected {list(event_types)}")
    events = store.causation_chain(event_id)
    for cause, effect in itertools.pairwise(events):
        if effect.causation_id != cause.event_id or effect.correlation_id != cause.correlation_id:
            raise AssertionError(f"{effect.event_type} is not a child of {cause.event_type}")


def assert_linked_to_producer(consumer: ReadableSpan, producer: ReadableSpan) -> None:
    """Assert that a consumer span links to its producer span with the event's ids."""
    for link in consumer.links:
        if link.context.span_id == producer.context.span_id and link.context.trace_id == producer.context.trace_id:
            link_id = (link.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID)
            if link_id != (producer.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID):
                raise AssertionError("the link does not carry the producer's messaging.message.id")
            return
    raise AssertionError(f"{consumer.name} has no link to {producer.name}")


def record_flow(
    recorder: Recorder, *event_types: str, business_key: str | None = None, service: str = "test"
) -> list[EventContext]:
    """Record a completed chain of events (each caused by the previous) into ``recorder``.

    Handy to test code that reads an :class:`EventStore` without running a bus.
    """
    events: list[EventContext] = []
    for event_type in event_types:
        event = events[-1].child(event_type) if events else EventContext.root(event_type, business_key=business_key)
        events.append(event)
        for stage in (Stage.PUBLISHED, Stage.RECEIVED, Stage.COMPLETED):
            recorder.record(
                LifecycleRecord(
                    stage,
                    time.time_ns(),
                    event.event_id,
                    event.correlation_id,
                    event.causation_id,
                    event.event_type,
                    service,
                    event.business_key,
                    None if stage is Stage.PUBLISHED else "subscriber",
                    1 if stage is Stage.COMPLETED else 0,
                    0.001 if stage is Stage.COMPLETED else None,
                    created_ns=event.created_ns,
                )
            )
    return events
