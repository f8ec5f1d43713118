"""Many concurrent flows, over asyncio tasks and over threads: zero cross-flow id bleed.

Issue 2, section 14. Each published ``order_placed`` starts (or joins) a flow that fans out:

    order_placed ─┬─ payment ──▶ payment_authorized ── shipping ──▶ order_shipped ── notify
                  └─ inventory ─▶ stock_reserved ── audit

Handlers sleep for random small times (seeded), start spans by hand with a plain tracer
(also in sub-tasks, in a fire-and-forget task and in ``asyncio.to_thread``), read
``flow_ids()`` / ``current_event()`` after every switch, and emit children. Afterwards every
span is mapped back to the event it belongs to (``messaging.message.id`` for messaging
spans, the recording made when a manual span was started) and must carry exactly that
event's correlation and causation ids; every child's causation id is its parent's id; each
store holds exactly the expected flows.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import dataclasses
import random
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from otel_eda import semconv
from otel_eda.flows.store import EventStore, EventSummary
from otel_eda.identity import EventContext, FlowIds, current_event, flow_ids, with_event
from otel_eda.testing import TelemetryCapture
from otel_eda.transports.bus import Delivery, EventBus, RetryPolicy

FLOWS = 200
THREADS = 4
FLOWS_PER_THREAD = 48  # 12 of each of the four ways a thread starts a flow
MAX_SLEEP_S = 0.002

#: event type -> [(subscriber, event type it emits or None)]
TOPOLOGY: dict[str, list[tuple[str, str | None]]] = {
    "order_placed": [("payment", "payment_authorized"), ("inventory", "stock_reserved")],
    "payment_authorized": [("shipping", "order_shipped")],
    "stock_reserved": [("audit", None)],
    "order_shipped": [("notify", None)],
}
EVENTS_PER_FLOW = 4
DELIVERIES_PER_FLOW = sum(len(subs) for subs in TOPOLOGY.values())  # 5


@dataclasses.dataclass(frozen=True)
class Seen:
    """What a handler (or code it started) saw, and which event it was working for."""

    where: str
    event: EventContext
    ids: FlowIds | None
    current: EventContext | None


class Workload:
    """Wires the topology onto a bus and records what every handler observed."""

    def __init__(self, capture: TelemetryCapture, seed: int) -> None:
        self.tracer = capture.tracer_provider.get_tracer("app")
        self.rng = random.Random(seed)
        self.manual: dict[int, EventContext] = {}  # span id -> event the span was started for
        self.seen: list[Seen] = []
        self.background: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()  # to_thread work records from pool threads

    def sleep(self) -> Awaitable[None]:
        return asyncio.sleep(self.rng.random() * MAX_SLEEP_S)

    def observe(self, where: str, event: EventContext) -> None:
        with self._lock:
            self.seen.append(Seen(where, event, flow_ids(), current_event()))

    def manual_span(self, name: str, event: EventContext) -> None:
        """A span any library would start, in whatever context is current."""
        with self.tracer.start_as_current_span(name) as span:
            with self._lock:
                self.manual[span.get_span_context().span_id] = event
            self.observe(name, event)

    def handler(self, subscriber: str, emits: str | None) -> Callable[[Delivery], Awaitable[None]]:
        async def handle(delivery: Delivery) -> None:
            event = delivery.event
            await self.sleep()
            self.observe(f"{subscriber}:start", event)
            with self.tracer.start_as_current_span(f"work {subscriber}") as span:
                self.manual[span.get_span_context().span_id] = event
                await self.sleep()
                self.observe(f"{subscriber}:in-span", event)
                if subscriber == "payment":  # sub-tasks copy the context

                    async def part(name: str) -> None:
                        await self.sleep()
                        self.manual_span(name, event)

                    await asyncio.gather(part("fraud check"), part("card auth"))
                elif subscriber == "inventory":  # outlives the handler
                    task = asyncio.create_task(self._later(event))
                    self.background.add(task)
                    task.add_done_callback(self.background.discard)
                elif subscriber == "shipping":  # a worker thread, context copied by to_thread
                    await asyncio.to_thread(self.manual_span, "label printing", event)
            await self.sleep()
            self.observe(f"{subscriber}:end", event)
            if emits is not None:
                await delivery.emit(emits)

        return handle

    async def _later(self, event: EventContext) -> None:
        await asyncio.sleep(MAX_SLEEP_S)
        self.manual_span("reservation expiry", event)

    def wire(self, bus: EventBus) -> None:
        for event_type, subscribers in TOPOLOGY.items():
            for subscriber, emits in subscribers:
                bus.subscribe(event_type, self.handler(subscriber, emits), subscriber=subscriber)

    async def drain(self, bus: EventBus) -> None:
        await bus.join()
        while self.background:
            await asyncio.gather(*list(self.background))
        await bus.join()


# -- verification ----------------------------------------------------------------------------
def all_events(stores: Iterable[EventStore]) -> dict[str, EventSummary]:
    events: dict[str, EventSummary] = {}
    for store in stores:
        for cid in store.correlation_ids():
            for summary in store.flow(cid):
                assert summary.event_id not in events, "an event id appeared twice"
                events[summary.event_id] = summary
    return events


def verify_store(store: EventStore, published: list[EventContext], flow_parent: dict[str, str | None]) -> None:
    """``published``: the order_placed events this store's bus published; ``flow_parent``:
    order_placed id -> the causation id it must have (the thread's event, or None)."""
    expected_flows: dict[str, set[str]] = collections.defaultdict(set)
    by_cause: dict[str | None, list[EventSummary]] = collections.defaultdict(list)
    for cid in store.correlation_ids():
        for summary in store.flow(cid):
            by_cause[summary.causation_id].append(summary)
    for order in published:
        placed = store.get(order.event_id)
        assert placed is not None
        assert (placed.correlation_id, placed.causation_id) == (order.correlation_id, flow_parent[order.event_id])
        children = sorted(by_cause[order.event_id], key=lambda s: s.event_type)
        assert [c.event_type for c in children] == ["payment_authorized", "stock_reserved"]
        (shipped,) = by_cause[children[0].event_id]
        assert shipped.event_type == "order_shipped"
        assert not by_cause[children[1].event_id] and not by_cause[shipped.event_id]
        flow = [placed, *children, shipped]
        for event in flow:
            assert event.correlation_id == order.correlation_id
            assert event.business_key == order.business_key
            assert event.status == "completed", (event.event_type, event.status)
        expected_flows[order.correlation_id].update(e.event_id for e in flow)
    # Exactly the expected flows, each with exactly its events.
    assert set(store.correlation_ids()) == set(expected_flows)
    for cid, ids in expected_flows.items():
        assert {e.event_id for e in store.flow(cid)} == ids
    assert len(store) == EVENTS_PER_FLOW * len(published)


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def verify_spans(spans: list[ReadableSpan], events: dict[str, EventSummary], workload_manual: dict[int, Any]) -> None:
    producers = [s for s in spans if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in spans if s.kind is SpanKind.CONSUMER]
    assert len(producers) == len(events)
    assert len(consumers) == len(events) // EVENTS_PER_FLOW * DELIVERIES_PER_FLOW
    span_event: dict[int, str] = {}  # span id -> event id

    for span in [*producers, *consumers]:
        attrs = _attrs(span)
        event = events[attrs[semconv.MESSAGING_MESSAGE_ID]]
        span_event[span.context.span_id] = event.event_id
        assert attrs[semconv.EDA_CORRELATION_ID] == event.correlation_id
        assert attrs[semconv.MESSAGING_MESSAGE_CONVERSATION_ID] == event.correlation_id
        assert attrs.get(semconv.EDA_CAUSATION_ID) == event.causation_id
        assert attrs.get(semconv.EDA_BUSINESS_KEY) == event.business_key
        assert attrs[semconv.EDA_EVENT_TYPE] == event.event_type
        if span.kind is SpanKind.CONSUMER:
            (link,) = span.links
            assert (link.attributes or {})[semconv.MESSAGING_MESSAGE_ID] == event.event_id
            assert (link.attributes or {})[semconv.EDA_CORRELATION_ID] == event.correlation_id

    manual = [s for s in spans if s.kind is SpanKind.INTERNAL]
    assert len(manual) == len(workload_manual)
    for span in manual:
        event = workload_manual[span.context.span_id]
        attrs = _attrs(span)
        assert attrs.get(semconv.EDA_CORRELATION_ID) == event.correlation_id, span.name
        assert attrs.get(semconv.EDA_CAUSATION_ID) == event.causation_id, span.name
        # ... and it hangs under a span of its own event (parent mode: one trace per flow).
        parent_id = span.parent.span_id if span.parent else None
        while parent_id is not None and parent_id not in span_event:
            parent_id = next(s for s in manual if s.context.span_id == parent_id).parent.span_id  # type: ignore[union-attr]
        assert parent_id is not None and span_event[parent_id] == event.event_id, span.name

    # A trace never mixes flows, and all of one published order's spans share its trace.
    correlation_by_trace: dict[int, set[str]] = collections.defaultdict(set)
    for span in spans:
        correlation_by_trace[span.context.trace_id].add(_attrs(span)[semconv.EDA_CORRELATION_ID])
    assert all(len(c) == 1 for c in correlation_by_trace.values())


def verify_seen(seen: list[Seen]) -> None:
    bleed = [s for s in seen if s.current != s.event or s.ids != FlowIds(s.event.correlation_id, s.event.causation_id)]
    assert not bleed, f"{len(bleed)} observations saw another flow, e.g. {bleed[0]}"


# -- asyncio tasks on one bus ----------------------------------------------------------------
async def test_concurrent_flows_on_one_bus_do_not_bleed() -> None:
    with TelemetryCapture(service="shop") as capture:
        workload = Workload(capture, seed=20240611)
        async with capture.bus(service="shop", mode="parent", retry=RetryPolicy(max_attempts=1)) as bus:
            workload.wire(bus)
            rng = random.Random(7)

            async def start(i: int) -> EventContext:
                await asyncio.sleep(rng.random() * MAX_SLEEP_S)
                context = Context() if i % 2 else None  # explicit empty context, or the task's own
                return await bus.publish("order_placed", {"order": i}, business_key=f"order-{i}", context=context)

            published = await asyncio.gather(*(start(i) for i in range(FLOWS)))
            await workload.drain(bus)

        assert len({e.correlation_id for e in published}) == FLOWS
        assert all(e.causation_id is None and e.correlation_id == e.event_id for e in published)
        verify_store(bus.store, list(published), {e.event_id: None for e in published})
        events = all_events([bus.store])
        verify_spans(capture.spans(), events, workload.manual)
        verify_seen(workload.seen)
        assert not bus.dead_letters
        assert capture.counter_total(semconv.METRIC_CONSUMED_MESSAGES) == FLOWS * DELIVERIES_PER_FLOW
        assert capture.counter_total(semconv.METRIC_SENT_MESSAGES) == FLOWS * EVENTS_PER_FLOW


# -- threads, each with its own loop and bus, sharing the providers --------------------------
@dataclasses.dataclass
class ThreadRun:
    bus: EventBus
    workload: Workload
    published: list[EventContext]
    flow_parent: dict[str, str | None]
    thread_event: EventContext


async def _thread_main(capture: TelemetryCapture, index: int, thread_event: EventContext) -> ThreadRun:
    workload = Workload(capture, seed=1000 + index)
    bus = capture.bus(service=f"worker-{index}", mode="link", retry=RetryPolicy(max_attempts=1))
    workload.wire(bus)
    published: list[EventContext] = []
    flow_parent: dict[str, str | None] = {}
    rng = random.Random(index)

    async def attached(i: int) -> None:
        # The thread's attached context: a child of the thread's event, in its flow.
        await asyncio.sleep(rng.random() * MAX_SLEEP_S)
        event = await bus.publish("order_placed", business_key=f"t{index}-{i}")
        published.append(event)
        flow_parent[event.event_id] = thread_event.event_id

    async def explicit_empty(i: int) -> None:
        await asyncio.sleep(rng.random() * MAX_SLEEP_S)
        event = await bus.publish("order_placed", business_key=f"t{index}-{i}", context=Context())
        published.append(event)
        flow_parent[event.event_id] = None

    async def explicit_event(i: int) -> None:
        # An explicit context= carrying another event: its flow, not the thread's.
        cause = EventContext.root("import_started", business_key=f"t{index}-{i}")
        await asyncio.sleep(rng.random() * MAX_SLEEP_S)
        event = await bus.publish("order_placed", context=with_event(cause, Context()))
        published.append(event)
        flow_parent[event.event_id] = cause.event_id

    async def in_contextvars(i: int) -> None:
        # A task started in a copied contextvars.Context in which another event is attached.
        cause = EventContext.root("retry_batch", business_key=f"t{index}-{i}")
        ctx = contextvars.copy_context()
        ctx.run(otel_context.attach, with_event(cause, Context()))
        event = await asyncio.create_task(_publish_later(bus, rng.random() * MAX_SLEEP_S), context=ctx)
        published.append(event)
        flow_parent[event.event_id] = cause.event_id

    starters = [attached, explicit_empty, explicit_event, in_contextvars]
    await asyncio.gather(*(starters[i % 4](i) for i in range(FLOWS_PER_THREAD)))
    await workload.drain(bus)
    await bus.close()
    return ThreadRun(bus, workload, published, flow_parent, thread_event)


async def _publish_later(bus: EventBus, delay: float) -> EventContext:
    await asyncio.sleep(delay)
    return await bus.publish("order_placed")


def test_flows_from_many_threads_do_not_bleed() -> None:
    runs: list[ThreadRun | None] = [None] * THREADS
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    with TelemetryCapture(service="workers") as capture:

        def thread(index: int) -> None:
            try:
                # Each thread attaches its own current event before starting its loop.
                thread_event = EventContext.root("batch_started", business_key=f"batch-{index}")
                token = otel_context.attach(with_event(thread_event, Context()))
                try:
                    start.wait(timeout=10)
                    runs[index] = asyncio.run(_thread_main(capture, index, thread_event))
                    assert current_event() == thread_event  # still this thread's, after the loop
                finally:
                    otel_context.detach(token)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=thread, args=(i,), name=f"flows-{i}") for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors
        assert current_event() is None  # nothing leaked into the main thread
        spans = capture.spans()

    done = [r for r in runs if r is not None]
    assert len(done) == THREADS
    for run in done:
        assert len(run.published) == FLOWS_PER_THREAD
        # the "attached" flows of a thread all belong to the thread's event
        attached = [e for e in run.published if run.flow_parent[e.event_id] == run.thread_event.event_id]
        assert len(attached) == FLOWS_PER_THREAD // 4
        assert {e.correlation_id for e in attached} == {run.thread_event.correlation_id}
        verify_store(run.bus.store, run.published, run.flow_parent)
        verify_seen(run.workload.seen)
        assert not run.bus.dead_letters
    # Every thread's flows are its own: distinct correlation ids across threads.
    correlations = [{e.correlation_id for e in run.published} for run in done]
    assert sum(len(c) for c in correlations) == len(set().union(*correlations))

    manual: dict[int, EventContext] = {}
    for run in done:
        manual.update(run.workload.manual)
    events = all_events(run.bus.store for run in done)
    assert len(events) == THREADS * FLOWS_PER_THREAD * EVENTS_PER_FLOW
    verify_spans(spans, events, manual)
    assert trace.get_current_span().get_span_context().is_valid is False
