#!/usr/bin/env python
"""otel-eda core benchmark (issue 2, section 13).

Run from the repository root::

    .venv/bin/python benchmarks/bench_core.py              # full run (about a minute)
    .venv/bin/python benchmarks/bench_core.py --json out.json
    .venv/bin/python benchmarks/bench_core.py --quick      # smoke run, a few seconds
    .venv/bin/python benchmarks/bench_core.py --profile    # always print the profiles

(a) Abstraction cost per event. Publish + handle one event through ``EventBus`` (one
subscriber whose handler does nothing), timed as the wall time of N publishes followed
by ``await bus.join()``, against a hand-written baseline: the same transport shape (one
bounded ``asyncio.Queue`` per subscriber drained by a worker task, a message object with a
headers dict and a payload) with the same telemetry written against the bare SDK: the same
PRODUCER span (name, kind, attributes), injection through the same global propagator
(tracecontext + baggage + ``EdaPropagator``), extraction on the consumer side, the same
CONSUMER span (attributes, link with link attributes, three span events) and the same
metric recordings (sent and consumed counters, duration and event-age histograms, same attribute sets).
The baseline writes no lifecycle records: that is part of the abstraction being measured.
An extra line shows otel-eda with its lifecycle recorders switched off.

(b) ``EventSpanProcessor`` cost: one span started inside a flow (a context carrying an
otel-eda current event and its two baggage entries; 5 caller attributes; 1 link whose
attributes carry ``messaging.message.id``), on two TracerProviders identical except for
the processor.

Both sides of (a) share one TracerProvider (with the EventSpanProcessor, as ``configure()``
installs it) and one MeterProvider; before timing, two events per side are checked to
produce the same header names, spans (names, kinds, parents, attributes, links, events)
and, at the end, the same metric attribute sets and totals. Span drops are counted.

Cases are interleaved round-robin (the order rotates each repetition); each line gives the
wall-time median and min-max in microseconds per operation and the process CPU-time
median, then the ratio of wall medians against the goal. A missed goal is printed as
MISSED, followed by a profile (pyinstrument, else cProfile) of one extra, shorter
repetition of the slower case. The baseline is never changed to meet a goal. The exit
status is 0 whatever the goals say: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import statistics
import sys
import sysconfig
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_eda import semconv
from otel_eda.flows.store import EventStore
from otel_eda.identity import EventContext, incoming_event, with_event
from otel_eda.identity.propagation import EdaPropagator
from otel_eda.sdk.processor import EventSpanProcessor
from otel_eda.sdk.sampling import LinkAwareSampler
from otel_eda.settings import DEFAULT_MAX_EVENTS
from otel_eda.testing import record_flow
from otel_eda.transports.bus import EventBus

ABSTRACTION_GOAL: Final = 1.20  # otel-eda / hand-written, ratio of medians
PROCESSOR_GOAL: Final = 1.10  # span with / without the processor (added cost <= 10 %)
BSP_MAX_QUEUE: Final = 1 << 20  # large enough that nothing is dropped (checked below)
EVENT_TYPE: Final = "order_placed"
SUBSCRIBER: Final = "billing"
PAYLOAD: Final = {"order": "A-1001", "amount_cents": 4200}
BASELINE_SCOPE: Final = "bench.handwritten"


@dataclasses.dataclass(frozen=True)
class Plan:
    reps: int
    events: int  # events per repetition of (a)
    spans: int  # spans per repetition of (b)
    store_max_events: int
    quick: bool


FULL: Final = Plan(reps=7, events=2000, spans=10000, store_max_events=DEFAULT_MAX_EVENTS, quick=False)
QUICK: Final = Plan(reps=5, events=150, spans=1500, store_max_events=300, quick=True)


class Timing(NamedTuple):
    """One repetition: wall seconds, and CPU seconds of the whole process (every thread,
    the BatchSpanProcessor's export thread included)."""

    wall: float
    cpu: float


def _clocks() -> Timing:
    return Timing(time.perf_counter(), time.process_time())


def _since(start: Timing) -> Timing:
    return Timing(time.perf_counter() - start.wall, time.process_time() - start.cpu)


# --- shared OpenTelemetry set-up ---------------------------------------------------------
class DiscardingExporter(SpanExporter):
    """Counts the spans it receives and drops them; ``capture`` keeps some for checks."""

    def __init__(self) -> None:
        self.exported = 0
        self.capture: list[ReadableSpan] | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.exported += len(spans)
            if self.capture is not None:
                self.capture.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class _DropCounter(logging.Handler):
    """Counts the BatchProcessor's 'Queue full, dropping ...' warnings (one per span)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Queue full"):
            self.dropped += 1


class Pipeline:
    """One TracerProvider as every case uses it: LinkAwareSampler(ParentBased(ALWAYS_ON)) as
    ``configure()`` installs it, optionally the EventSpanProcessor, then a BatchSpanProcessor
    with a discarding exporter and a queue that never fills."""

    def __init__(self, resource: Resource, *, event_processor: bool) -> None:
        self.exporter = DiscardingExporter()
        self.provider = TracerProvider(sampler=LinkAwareSampler(ParentBased(ALWAYS_ON)), resource=resource)
        if event_processor:
            self.provider.add_span_processor(EventSpanProcessor())
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, max_queue_size=BSP_MAX_QUEUE))
        self.expected = 0  # spans started through this provider (counted by the cases)

    def flush(self) -> None:
        self.provider.force_flush()


def install_propagators() -> None:
    """What ``OTEL_PROPAGATORS=tracecontext,baggage,eda`` installs; used by both sides."""
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator(), EdaPropagator()])
    )


# --- (a) the hand-written baseline: same transport shape, same telemetry, bare SDK --------
@dataclasses.dataclass(slots=True)
class Message:
    """Shaped like ``otel_eda.transports.bus.WireMessage``."""

    destination: str
    headers: dict[str, str]
    payload: Any
    enqueued_ns: int = 0


Handler = Callable[[Any], Awaitable[None] | None]


class _Subscription:
    __slots__ = ("attrs", "handler", "name", "queue", "task")

    def __init__(self, name: str, handler: Handler, size: int, attrs: Mapping[str, str]) -> None:
        self.name = name
        self.handler = handler
        self.queue: asyncio.Queue[Message] = asyncio.Queue(size)
        self.attrs = attrs  # metric attributes of the consumed counter and duration histogram
        self.task: asyncio.Task[None] | None = None


class HandWrittenBus:
    """What a careful engineer writes by hand to get otel-eda's spans and metrics.

    It uses otel-eda only where ``EdaPropagator`` requires it: ``EventContext`` +
    ``with_event`` put the event (and its two baggage entries) into the context the
    propagator injects from, and ``incoming_event`` reads back what it extracted
    (validated). Everything else is the bare OpenTelemetry API/SDK.
    """

    def __init__(self, tracer_provider: trace.TracerProvider, meter_provider: MeterProvider, queue_size: int) -> None:
        self._tracer = tracer_provider.get_tracer(BASELINE_SCOPE)
        meter = meter_provider.get_meter(BASELINE_SCOPE)
        self._sent = meter.create_counter(semconv.METRIC_SENT_MESSAGES, unit="{message}")
        self._consumed = meter.create_counter(semconv.METRIC_CONSUMED_MESSAGES, unit="{message}")
        self._duration = meter.create_histogram(
            semconv.METRIC_PROCESS_DURATION,
            unit="s",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._age = meter.create_histogram(
            semconv.METRIC_EVENT_AGE,
            unit="s",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._skewed = meter.create_counter(semconv.METRIC_CLOCK_SKEW, unit="{message}")
        self._queue_size = queue_size
        self._subs: dict[str, list[_Subscription]] = {}
        self._sent_attrs: dict[str, Mapping[str, str]] = {}

    def subscribe(self, destination: str, handler: Handler, subscriber: str) -> None:
        attrs = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_EDA,
            semconv.MESSAGING_DESTINATION_NAME: destination,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_TYPE_PROCESS,
            semconv.MESSAGING_CONSUMER_GROUP_NAME: subscriber,
        }
        sub = _Subscription(subscriber, handler, self._queue_size, attrs)
        self._subs.setdefault(destination, []).append(sub)
        self._sent_attrs[destination] = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_EDA,
            semconv.MESSAGING_DESTINATION_NAME: destination,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_TYPE_SEND,
        }
        sub.task = asyncio.get_running_loop().create_task(self._worker(destination, sub))

    @staticmethod
    def _attributes(event: EventContext, destination: str, operation: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: semconv.MESSAGING_SYSTEM_EDA,
            semconv.MESSAGING_OPERATION_TYPE: operation,
            semconv.MESSAGING_OPERATION_NAME: operation,
            semconv.MESSAGING_DESTINATION_NAME: destination,
            semconv.MESSAGING_MESSAGE_ID: event.event_id,
            semconv.MESSAGING_MESSAGE_CONVERSATION_ID: event.correlation_id,
            semconv.EDA_CORRELATION_ID: event.correlation_id,
            semconv.EDA_EVENT_TYPE: event.event_type,
        }
        if event.causation_id is not None:
            attrs[semconv.EDA_CAUSATION_ID] = event.causation_id
        if event.business_key is not None:
            attrs[semconv.EDA_BUSINESS_KEY] = event.business_key
        return attrs

    async def publish(self, destination: str, payload: Any) -> EventContext:
        event = EventContext.root(destination)
        headers: dict[str, str] = {}
        # Not ``start_as_current_span(name, context)``: that makes the span current in the
        # *current* context, not in ``context``, so neither the event headers nor its
        # baggage would be injected. The span goes into the event's context explicitly.
        ctx = with_event(event)
        span = self._tracer.start_span(
            f"send {destination}",
            ctx,
            kind=SpanKind.PRODUCER,
            attributes=self._attributes(event, destination, semconv.OPERATION_TYPE_SEND),
        )
        token = attach(trace.set_span_in_context(span, ctx))
        try:
            propagate.inject(headers)
            message = Message(destination, headers, payload, time.time_ns())
            for sub in self._subs.get(destination, ()):
                try:
                    sub.queue.put_nowait(message)
                except asyncio.QueueFull:
                    await sub.queue.put(message)
            self._sent.add(1, self._sent_attrs[destination])
        except BaseException as exc:
            etype = type(exc).__qualname__
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, etype))
            span.set_attribute(semconv.ERROR_TYPE, etype)
            raise
        finally:
            detach(token)
            span.end()
        return event

    async def join(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                await sub.queue.join()

    async def close(self) -> None:
        await self.join()
        tasks = [s.task for subs in self._subs.values() for s in subs if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _worker(self, destination: str, sub: _Subscription) -> None:
        while True:
            message = await sub.queue.get()
            try:
                await self._handle(destination, sub, message)
            except Exception:
                logging.getLogger(__name__).exception("handling %s failed", destination)
            finally:
                sub.queue.task_done()

    async def _handle(self, destination: str, sub: _Subscription, message: Message) -> None:
        ctx = propagate.extract(message.headers, context=Context())
        event = incoming_event(ctx) or EventContext.root(destination)
        producer = trace.get_current_span(ctx).get_span_context()
        link_attrs = {
            semconv.MESSAGING_MESSAGE_ID: event.event_id,
            semconv.EDA_CORRELATION_ID: event.correlation_id,
        }
        if event.causation_id is not None:
            link_attrs[semconv.EDA_CAUSATION_ID] = event.causation_id
        self._consumed.add(1, sub.attrs)
        age = (time.time_ns() - event.created_ns) / 1e9
        if age < 0:
            self._skewed.add(1, sub.attrs)
            age = 0.0
        self._age.record(age, sub.attrs, context=ctx)
        waited = max(0.0, (time.time_ns() - message.enqueued_ns) / 1e9)
        attrs = self._attributes(event, destination, semconv.OPERATION_TYPE_PROCESS)
        attrs[semconv.EDA_DELIVERY_ATTEMPT] = 1
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = sub.name
        if producer.is_valid:
            attrs[semconv.EDA_PRODUCER_TRACE_ID] = f"{producer.trace_id:032x}"
            attrs[semconv.EDA_PRODUCER_SPAN_ID] = f"{producer.span_id:016x}"
        received_ns = time.time_ns()
        span = self._tracer.start_span(
            f"process {destination}",
            ctx,
            kind=SpanKind.CONSUMER,
            attributes=attrs,
            links=[Link(producer, link_attrs)] if producer.is_valid else None,
            start_time=received_ns,
        )
        span.set_attribute(semconv.EDA_QUEUE_DURATION, waited)
        started = time.perf_counter()
        token = attach(trace.set_span_in_context(span, ctx))
        try:
            result = sub.handler(message.payload)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            seconds = time.perf_counter() - started
            etype = type(exc).__qualname__
            self._duration.record(
                seconds, {**sub.attrs, semconv.ERROR_TYPE: etype}, context=trace.set_span_in_context(span)
            )
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, etype))
            span.set_attribute(semconv.ERROR_TYPE, etype)
            span.set_attribute(semconv.EDA_OUTCOME, "failed")
            span.end()
            return
        finally:
            detach(token)
        seconds = time.perf_counter() - started
        self._duration.record(seconds, sub.attrs, context=trace.set_span_in_context(span))
        span.set_attribute(semconv.EDA_OUTCOME, "completed")
        span.end()


async def _do_nothing(_: object) -> None:
    return None


# --- cases ---------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    key: str
    label: str
    unit: str  # "event" or "span"
    ops: int
    run: Callable[[int], Timing]  # one repetition of n operations
    samples_us: list[float] = dataclasses.field(default_factory=list)  # wall time per operation
    cpu_us: list[float] = dataclasses.field(default_factory=list)  # process CPU time per operation

    def median(self) -> float:
        return statistics.median(self.samples_us)

    def cpu_median(self) -> float:
        return statistics.median(self.cpu_us)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "unit": f"us/{self.unit}",
            "ops_per_rep": self.ops,
            "median_us": self.median(),
            "min_us": min(self.samples_us),
            "max_us": max(self.samples_us),
            "samples_us": self.samples_us,
            "cpu_median_us": self.cpu_median(),
            "cpu_samples_us": self.cpu_us,
        }


class AbstractionBench:
    """Case (a): the otel-eda bus, the same bus with recorders off, and the baseline."""

    def __init__(self, plan: Plan, pipeline: Pipeline, meter_provider: MeterProvider, runner: asyncio.Runner) -> None:
        self.plan = plan
        self.pipeline = pipeline
        self.runner = runner
        self.meter_provider = meter_provider
        self.store = EventStore(max_events=plan.store_max_events)
        self.events: Counter[str] = Counter()  # events published per scope
        runner.run(self._setup())

    async def _setup(self) -> None:
        # The queue bound equals the events of one repetition: publish never waits, so both
        # sides take their normal path (the full-queue path is not what is measured here).
        self.bus = EventBus(
            service="bench",
            mode="parent",
            queue_size=self.plan.events,
            store=self.store,
            tracer_provider=self.pipeline.provider,
            meter_provider=self.meter_provider,
        )
        self.bus.subscribe(EVENT_TYPE, _do_nothing, subscriber=SUBSCRIBER)
        self._recorders = self.bus.messaging.recorders
        self.hand = HandWrittenBus(self.pipeline.provider, self.meter_provider, self.plan.events)
        self.hand.subscribe(EVENT_TYPE, _do_nothing, SUBSCRIBER)

    async def _otel_eda(self, n: int) -> Timing:
        publish = self.bus.publish
        start = _clocks()
        for _ in range(n):
            await publish(EVENT_TYPE, PAYLOAD)
        await self.bus.join()
        return _since(start)

    async def _hand_written(self, n: int) -> Timing:
        publish = self.hand.publish
        start = _clocks()
        for _ in range(n):
            await publish(EVENT_TYPE, PAYLOAD)
        await self.hand.join()
        return _since(start)

    def run_otel_eda(self, n: int, *, recorders: bool = True) -> Timing:
        # ``recorders`` is a public attribute of Messaging; the bus has no option to
        # turn its store off, so the extra line empties the tuple for its repetitions.
        self.bus.messaging.recorders = self._recorders if recorders else ()
        try:
            timing = self.runner.run(self._otel_eda(n))
        finally:
            self.bus.messaging.recorders = self._recorders
        self.pipeline.expected += 2 * n
        self.events["otel_eda"] += n
        return timing

    def run_hand_written(self, n: int) -> Timing:
        timing = self.runner.run(self._hand_written(n))
        self.pipeline.expected += 2 * n
        self.events[BASELINE_SCOPE] += n
        return timing

    def cases(self) -> list[Case]:
        n = self.plan.events
        return [
            Case("a.otel_eda", "otel-eda EventBus", "event", n, self.run_otel_eda),
            Case("a.hand_written", "hand-written, bare SDK (baseline)", "event", n, self.run_hand_written),
            Case(
                "a.otel_eda_no_recorders",
                "otel-eda, lifecycle recorders off (extra)",
                "event",
                n,
                lambda k: self.run_otel_eda(k, recorders=False),
            ),
        ]

    def warm_up(self) -> None:
        """Fill the store to its cap (with recorded flows, not through the bus, which would
        take seconds), so every timed repetition runs at the steady state of a long-running
        service where each new event evicts the oldest; then one repetition per side."""
        for _ in range(self.plan.store_max_events - len(self.store)):
            record_flow(self.store, EVENT_TYPE, service="bench")
        for run in (self.run_otel_eda, self.run_hand_written):
            run(self.plan.events)
            self.pipeline.flush()

    def close(self) -> None:
        self.runner.run(self.bus.close())
        self.runner.run(self.hand.close())

    # -- checks that both sides write the same telemetry ------------------------------------
    def shape_check(self) -> list[str]:
        """Run two events through each side and compare what they wrote: the message
        headers, and the spans (names, kinds, attribute keys and constant values, parent,
        link and its attribute keys, span events); on each side, check that the ids agree
        (each consumer span carries its producer's event ids, is its child and links to it)."""
        exporter = self.pipeline.exporter
        original = propagate.get_global_textmap()
        shapes: dict[str, list[tuple[Any, ...]]] = {}
        headers: dict[str, set[tuple[str, ...]]] = {}
        problems: list[str] = []
        for side, run in (("otel-eda", self.run_otel_eda), ("hand-written", self.run_hand_written)):
            spy = _HeaderSpy(original)
            propagate.set_global_textmap(spy)
            self.pipeline.flush()
            exporter.capture = []
            try:
                run(2)
            finally:
                propagate.set_global_textmap(original)
            self.pipeline.flush()
            shapes[side] = sorted(_span_shape(s) for s in exporter.capture)
            headers[side] = spy.seen
            problems += [f"{side}: {p}" for p in _flow_problems(exporter.capture)]
            exporter.capture = None
        if headers["otel-eda"] != headers["hand-written"]:
            problems.append(f"headers differ: {headers['otel-eda']} vs {headers['hand-written']}")
        if shapes["otel-eda"] != shapes["hand-written"]:
            for mine, theirs in zip(shapes["otel-eda"], shapes["hand-written"], strict=False):
                if mine != theirs:
                    problems.append(f"otel-eda {mine}\n      hand-written {theirs}")
            if len(shapes["otel-eda"]) != len(shapes["hand-written"]):
                problems.append("different numbers of spans")
        return problems

    def metric_check(self, reader: InMemoryMetricReader) -> list[str]:
        """Compare the attribute sets and totals of the three metrics on both sides."""
        data = reader.get_metrics_data()
        found: dict[str, dict[str, dict[frozenset[tuple[str, Any]], float]]] = {}
        if data is not None:
            for rm in data.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name not in _CHECKED_METRICS:
                            continue
                        points = found.setdefault(sm.scope.name, {}).setdefault(metric.name, {})
                        for point in metric.data.data_points:
                            value: Any = getattr(point, "value", None)
                            if value is None:
                                value = getattr(point, "count", 0)
                            points[frozenset((point.attributes or {}).items())] = float(value)
        problems = []
        mine, theirs = found.get("otel_eda", {}), found.get(BASELINE_SCOPE, {})
        for name in _CHECKED_METRICS:
            if set(mine.get(name, {})) != set(theirs.get(name, {})):
                problems.append(f"{name}: attribute sets differ: {mine.get(name)} vs {theirs.get(name)}")
            for scope, side in (("otel_eda", mine), (BASELINE_SCOPE, theirs)):
                total = sum(side.get(name, {}).values())
                if total != self.events[scope]:
                    problems.append(f"{name} in {scope}: {total:g} recorded, {self.events[scope]} events")
        return problems


_CHECKED_METRICS: Final = (
    semconv.METRIC_SENT_MESSAGES,
    semconv.METRIC_CONSUMED_MESSAGES,
    semconv.METRIC_PROCESS_DURATION,
    semconv.METRIC_EVENT_AGE,
)
_ID_ATTRIBUTES: Final = frozenset(
    {
        semconv.MESSAGING_MESSAGE_ID,
        semconv.MESSAGING_MESSAGE_CONVERSATION_ID,
        semconv.EDA_CORRELATION_ID,
        semconv.EDA_CAUSATION_ID,
        semconv.EDA_PRODUCER_TRACE_ID,
        semconv.EDA_PRODUCER_SPAN_ID,
        semconv.EDA_QUEUE_DURATION,  # a measurement, not an id: only its presence is compared
    }
)


class _HeaderSpy(TextMapPropagator):
    """Delegates to the global propagator and notes the header names each extract sees.
    Exposes ``_propagators`` so that otel-eda still finds its EdaPropagator inside."""

    def __init__(self, inner: TextMapPropagator) -> None:
        self._inner = inner
        self._propagators = [inner]
        self.seen: set[tuple[str, ...]] = set()

    def extract(self, carrier: Any, context: Context | None = None, getter: Any = default_getter) -> Context:
        if isinstance(carrier, Mapping):
            self.seen.add(tuple(sorted(carrier)))
        return self._inner.extract(carrier, context, getter)

    def inject(self, carrier: Any, context: Context | None = None, setter: Any = default_setter) -> None:
        self._inner.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        return self._inner.fields


def _flow_problems(spans: Sequence[ReadableSpan]) -> list[str]:
    """On one side: each consumer span carries its producer's event ids, is its child
    (parent mode) and links to it with the event id."""
    producers = {
        (s.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID): s for s in spans if s.kind is SpanKind.PRODUCER
    }
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    problems = []
    if len(consumers) != len(producers):
        problems.append(f"{len(producers)} producer spans, {len(consumers)} consumer spans")
    for consumer in consumers:
        attrs = consumer.attributes or {}
        producer = producers.get(attrs.get(semconv.MESSAGING_MESSAGE_ID))
        if producer is None:
            problems.append("a consumer span carries an event id that no producer span has")
            continue
        for key in (semconv.EDA_CORRELATION_ID, semconv.MESSAGING_MESSAGE_CONVERSATION_ID):
            if attrs.get(key) != (producer.attributes or {}).get(key):
                problems.append(f"consumer and producer disagree on {key}")
        if consumer.parent is None or consumer.parent.span_id != producer.context.span_id:
            problems.append("a consumer span is not its producer span's child")
        if not any(
            link.context.span_id == producer.context.span_id
            and (link.attributes or {}).get(semconv.MESSAGING_MESSAGE_ID) == attrs.get(semconv.MESSAGING_MESSAGE_ID)
            for link in consumer.links
        ):
            problems.append("a consumer span does not link to its producer span with the event id")
    return problems


def _span_shape(span: ReadableSpan) -> tuple[Any, ...]:
    attrs = dict(span.attributes or {})
    return (
        span.name,
        span.kind.name,
        span.parent is not None,
        tuple(sorted((k, "<id>" if k in _ID_ATTRIBUTES else v) for k, v in attrs.items())),
        tuple(tuple(sorted((link.attributes or {}).keys())) for link in span.links),
        tuple((e.name, tuple(sorted((e.attributes or {}).keys()))) for e in span.events),
    )


class ProcessorBench:
    """Case (b): one span inside a flow, with and without the EventSpanProcessor."""

    def __init__(self, plan: Plan, resource: Resource) -> None:
        self.plan = plan
        self.with_processor = Pipeline(resource, event_processor=True)
        self.without_processor = Pipeline(resource, event_processor=False)
        event = EventContext.root("order_placed").child("payment_authorized")
        parent = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1))
        producer = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))
        self.context = with_event(event, trace.set_span_in_context(NonRecordingSpan(parent)))
        self.links = [Link(producer, {semconv.MESSAGING_MESSAGE_ID: event.causation_id or event.event_id})]
        self.attributes: dict[str, Any] = {
            "http.request.method": "GET",
            "url.full": "http://inventory.internal:8080/stock/A-1001",
            "server.address": "inventory.internal",
            "server.port": 8080,
            "http.response.status_code": 200,
        }

    def _run(self, pipeline: Pipeline, n: int) -> Timing:
        start_span = pipeline.provider.get_tracer("bench.client").start_span
        ctx, attrs, links = self.context, self.attributes, self.links
        start = _clocks()
        for _ in range(n):
            start_span("GET", ctx, kind=SpanKind.CLIENT, attributes=attrs, links=links).end()
        timing = _since(start)
        pipeline.expected += n
        return timing

    def cases(self) -> list[Case]:
        n = self.plan.spans
        return [
            Case(
                "b.with_processor",
                "with EventSpanProcessor",
                "span",
                n,
                lambda k: self._run(self.with_processor, k),
            ),
            Case(
                "b.without_processor",
                "without EventSpanProcessor (baseline)",
                "span",
                n,
                lambda k: self._run(self.without_processor, k),
            ),
        ]

    def warm_up(self) -> None:
        for pipeline in (self.with_processor, self.without_processor):
            self._run(pipeline, self.plan.spans // 4)
            pipeline.flush()

    def stamped(self) -> list[str]:
        """The eda.* attributes the processor adds to the measured span (a check)."""
        exporter = self.with_processor.exporter
        self.with_processor.flush()
        exporter.capture = []
        self._run(self.with_processor, 1)
        self.with_processor.flush()
        span = exporter.capture[0]
        exporter.capture = None
        return sorted(k for k in (span.attributes or {}) if k.startswith("eda."))


# --- measurement ---------------------------------------------------------------------------
def measure(cases: Sequence[Case], reps: int, flush: Callable[[], None]) -> None:
    """Round-robin: one repetition of each case per round, the order rotating each round.
    Between repetitions (untimed) the span queue is flushed and a full GC runs."""
    for rep in range(reps):
        shift = rep % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            flush()
            gc.collect()
            timing = case.run(case.ops)
            case.samples_us.append(timing.wall / case.ops * 1e6)
            case.cpu_us.append(timing.cpu / case.ops * 1e6)


def _print_table(cases: Sequence[Case]) -> None:
    width = max(len(c.label) for c in cases)
    unit = cases[0].unit
    print(f"    {'us per ' + unit:<{width}}  {'wall median':>11}  {'wall min - max':^19}  {'CPU median':>10}")
    for case in cases:
        print(
            f"    {case.label:<{width}}  {case.median():11.2f}  "
            f"{min(case.samples_us):8.2f} - {max(case.samples_us):8.2f}  {case.cpu_median():10.2f}"
        )


# --- profiling -----------------------------------------------------------------------------
_STDLIB: Final = os.path.realpath(sysconfig.get_paths()["stdlib"])
_HERE: Final = os.path.realpath(os.path.dirname(__file__))


def _module(path: str) -> str:
    real = os.path.realpath(path)
    parts = real.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[len(parts) - parts[::-1].index("site-packages") :]
    elif "otel_eda" in parts:
        parts = parts[len(parts) - 1 - parts[::-1].index("otel_eda") :]
    elif real.startswith(_STDLIB + os.sep):
        parts = real[len(_STDLIB) + 1 :].split(os.sep)
    elif real.startswith(_HERE + os.sep):
        return "benchmark"
    else:
        return os.path.basename(real)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _area(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "opentelemetry":
        keep = 3 if len(parts) > 2 and parts[1] == "sdk" else 2
        return ".".join(parts[:keep])
    if parts[0] == "otel_eda":
        return ".".join(parts[:2])
    return parts[0]


@functools.lru_cache(maxsize=4096)
def _describe(identifier: str) -> tuple[str, str]:
    """(function label, area) of a pyinstrument frame identifier."""
    function, _, rest = identifier.partition("\x00")
    path, _, line = rest.partition("\x00")
    if not path:
        return function, function
    module = _module(path)
    return f"{function}  ({module}:{line})", _area(module)


def _top(seconds: Mapping[str, float], n: int | None = None) -> list[tuple[str, float]]:
    return sorted(seconds.items(), key=lambda item: item[1], reverse=True)[:n]


def profile(case: Case, ops: int, top: int = 12) -> dict[str, Any]:
    """Profile one extra (shorter) repetition of ``case`` and print where its time goes."""
    try:
        from pyinstrument import Profiler
        from pyinstrument.frame_info import frame_info_get_identifier
    except ImportError:  # pragma: no cover - pyinstrument is in the bench extra
        return _cprofile(case, ops, top)
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    case.run(ops)
    session = profiler.stop()
    total = sum(t for _, t in session.frame_records) or 1.0
    own: dict[str, float] = defaultdict(float)
    inclusive: dict[str, float] = defaultdict(float)
    areas: dict[str, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        described = [_describe(frame_info_get_identifier(f)) for f in stack]
        if not described:
            continue
        label, area = described[-1]
        own[label] += seconds
        areas[area] += seconds
        for fn in {label for label, _ in described}:
            inclusive[fn] += seconds
    print(
        f"    profile of {ops} more {case.unit}s of '{case.label}' (pyinstrument, main thread, "
        f"{session.sample_count} samples; % of the profiled time):"
    )
    print("    self time by area:")
    for area, seconds in _top(areas, 8):
        print(f"      {seconds / total:6.1%}  {area}")
    print("    top functions by self time:")
    for fn, seconds in _top(own, top):
        print(f"      {seconds / total:6.1%}  {fn}")
    eda = [(fn, s) for fn, s in _top(inclusive) if "(otel_eda." in fn]
    if eda:
        print("    otel_eda functions by inclusive time:")
        for fn, seconds in eda[:top]:
            print(f"      {seconds / total:6.1%}  {fn}")
    return {
        "profiler": "pyinstrument",
        "areas": {k: v / total for k, v in _top(areas, 8)},
        "self": {k: v / total for k, v in _top(own, top)},
        "otel_eda_inclusive": {k: v / total for k, v in eda[:top]},
    }


def _cprofile(case: Case, ops: int, top: int) -> dict[str, Any]:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    case.run(ops)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    print(f"    profile of {ops} more {case.unit}s of '{case.label}' (cProfile, top {top} by own time):")
    print("\n".join("      " + line for line in out.getvalue().splitlines() if line.strip()))
    return {"profiler": "cProfile", "text": out.getvalue()}


# --- main ----------------------------------------------------------------------------------
def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not on every platform
        return "unknown"


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to FILE")
    parser.add_argument("--quick", action="store_true", help="short smoke run (a few seconds; numbers are noisy)")
    parser.add_argument("--profile", action="store_true", help="print the profiles even when the goals are met")
    parser.add_argument("--reps", type=int, help="repetitions per case (at least 5)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.reps is not None:
        plan = dataclasses.replace(plan, reps=max(5, args.reps))

    began = time.perf_counter()
    drops = _DropCounter()
    logging.getLogger("opentelemetry.sdk._shared_internal").addHandler(drops)
    install_propagators()
    resource = Resource.create({"service.name": "otel-eda-bench"})
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)
    shared = Pipeline(resource, event_processor=True)

    sdk_version = importlib.metadata.version("opentelemetry-sdk")
    print(
        f"otel-eda core benchmark: Python {platform.python_version()}, opentelemetry-sdk {sdk_version}, "
        f"{os.cpu_count()} CPUs (load average {_load()}), {plan.reps} repetitions per case, interleaved "
        "round-robin; goals are judged on wall-time medians, CPU time (all threads) is shown beside them"
        + (" (QUICK smoke run: numbers are indicative only)" if plan.quick else "")
    )
    print(
        "set-up: TracerProvider(LinkAwareSampler(ParentBased(ALWAYS_ON))) -> [EventSpanProcessor] -> "
        f"BatchSpanProcessor(discarding exporter, max_queue_size={BSP_MAX_QUEUE}); MeterProvider with one "
        "InMemoryMetricReader (default exemplar filter); global propagator tracecontext,baggage,eda. "
        "Between repetitions (untimed): span queue flushed, gc.collect()."
    )

    results: dict[str, Any] = {
        "benchmark": "otel-eda core",
        "python": platform.python_version(),
        "opentelemetry_sdk": sdk_version,
        "cpus": os.cpu_count(),
        "plan": dataclasses.asdict(plan),
        "cases": {},
        "goals": {},
    }
    profiles: dict[str, Any] = {}

    # (a) ---------------------------------------------------------------------------------
    with asyncio.Runner() as runner:
        bench_a = AbstractionBench(plan, shared, meter_provider, runner)
        print()
        print(
            f"(a) abstraction cost per event: publish + handle, {plan.events} events per repetition, "
            "wall time of the publishes plus await join()"
        )
        print(
            "    both sides share one TracerProvider WITH the EventSpanProcessor: it is part of the OTel set-up "
            "configure() installs and acts on every span whoever starts it, so both sides pay it alike "
            "(its own cost is case (b)). Trace mode: parent (consumer span = child of and linked to the producer)."
        )
        print(
            f"    one subscriber, handler does nothing; queue bound {plan.events} per subscriber on both sides "
            f"(publish never waits); otel-eda's store capped at {plan.store_max_events} events and pre-filled, "
            "so it evicts one event per event as in a long-running service."
        )
        problems = bench_a.shape_check()
        print(
            "    telemetry check (2 events per side: header names; span names, kinds, parents, attributes, "
            "links, events; producer/consumer ids agree): "
            + ("identical" if not problems else "DIFFERENT:\n      " + "\n      ".join(problems))
        )
        bench_a.warm_up()
        cases_a = bench_a.cases()
        measure(cases_a, plan.reps, shared.flush)
        _print_table(cases_a)
        mine, base, extra = cases_a
        ratio_a = mine.median() / base.median()
        cpu_ratio_a = mine.cpu_median() / base.cpu_median()
        met_a = ratio_a <= ABSTRACTION_GOAL
        print(
            f"    ratio otel-eda / hand-written = {ratio_a:.3f} wall (goal <= {ABSTRACTION_GOAL:.2f}): "
            f"{_verdict(met_a)}; {cpu_ratio_a:.3f} in CPU time. otel-eda adds "
            f"{mine.median() - base.median():.1f} us wall, {mine.cpu_median() - base.cpu_median():.1f} us CPU per event"
        )
        print(
            f"    extra (not a goal): with its lifecycle recorders off, otel-eda / hand-written = "
            f"{extra.median() / base.median():.3f} wall, {extra.cpu_median() / base.cpu_median():.3f} CPU; "
            f"the records cost {mine.median() - extra.median():.1f} us wall, "
            f"{mine.cpu_median() - extra.cpu_median():.1f} us CPU per event. EventBus has no option to switch "
            "its store off (store=None means a new store): this line empties bus.messaging.recorders."
        )
        if not met_a or args.profile:
            profiles["abstraction"] = profile(mine, plan.events // 2)
        bench_a.close()
    shared.flush()
    metric_problems = bench_a.metric_check(reader)
    print(
        "    metric check (attribute sets and totals of sent, consumed, duration, event age per side): "
        + ("identical" if not metric_problems else "DIFFERENT: " + "; ".join(metric_problems))
    )
    for case in cases_a:
        results["cases"][case.key] = case.summary()
    results["goals"]["abstraction"] = {
        "case": mine.key,
        "baseline": base.key,
        "ratio": ratio_a,
        "cpu_ratio": cpu_ratio_a,
        "limit": ABSTRACTION_GOAL,
        "met": met_a,
        "added_us": mine.median() - base.median(),
        "recorders_off_ratio": extra.median() / base.median(),
        "telemetry_identical": not problems and not metric_problems,
    }

    # (b) ---------------------------------------------------------------------------------
    bench_b = ProcessorBench(plan, resource)
    print()
    print(
        f"(b) EventSpanProcessor cost: one CLIENT span inside a flow, {plan.spans} spans per repetition "
        "(start_span + end)"
    )
    print(
        "    context: an otel-eda current event with its 2 baggage entries and a parent span; 5 caller attributes; "
        "1 link whose attributes carry messaging.message.id. Two TracerProviders identical except for the "
        "EventSpanProcessor (both: same sampler, BatchSpanProcessor + discarding exporter)."
    )
    print(f"    the processor stamps: {', '.join(bench_b.stamped())}")
    bench_b.warm_up()
    cases_b = bench_b.cases()

    def flush_b() -> None:
        bench_b.with_processor.flush()
        bench_b.without_processor.flush()

    measure(cases_b, plan.reps, flush_b)
    _print_table(cases_b)
    with_p, without_p = cases_b
    added = with_p.median() - without_p.median()
    ratio_b = with_p.median() / without_p.median()
    cpu_added = with_p.cpu_median() - without_p.cpu_median()
    met_b = ratio_b <= PROCESSOR_GOAL
    print(
        f"    span with processor {with_p.median():.2f} us, without {without_p.median():.2f} us (wall medians): "
        f"the processor adds {added:.2f} us = {added / without_p.median():.1%} of the span (goal <= "
        f"{PROCESSOR_GOAL - 1:.0%}): {_verdict(met_b)}; in CPU time {with_p.cpu_median():.2f} vs "
        f"{without_p.cpu_median():.2f} us, +{cpu_added:.2f} us = {cpu_added / without_p.cpu_median():.1%}"
    )
    if not met_b or args.profile:
        profiles["processor"] = profile(with_p, plan.spans // 4)
    for case in cases_b:
        results["cases"][case.key] = case.summary()
    results["goals"]["processor"] = {
        "case": with_p.key,
        "baseline": without_p.key,
        "ratio": ratio_b,
        "cpu_ratio": with_p.cpu_median() / without_p.cpu_median(),
        "limit": PROCESSOR_GOAL,
        "met": met_b,
        "added_us": added,
        "added_fraction": added / without_p.median(),
    }

    # spans and drops ------------------------------------------------------------------------
    pipelines = (shared, bench_b.with_processor, bench_b.without_processor)
    for pipeline in pipelines:
        pipeline.flush()
    expected = sum(p.expected for p in pipelines)
    exported = sum(p.exporter.exported for p in pipelines)
    print()
    print(
        f"spans: {expected} ended, {exported} exported, {drops.dropped} dropped by a full BatchSpanProcessor queue"
        + ("" if drops.dropped == 0 and expected == exported else "  <-- WARNING: the numbers above are suspect")
    )
    results["spans"] = {"ended": expected, "exported": exported, "dropped": drops.dropped}
    results["profiles"] = profiles
    results["seconds"] = time.perf_counter() - began
    print(f"total {results['seconds']:.1f} s, load average now {_load()}")
    for pipeline in pipelines:
        pipeline.provider.shutdown()
    meter_provider.shutdown()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
