"""``EventStore``: in-process answers to "what happened to this flow?".

It aggregates :class:`~otel_eda.flows.records.LifecycleRecord` values (it is a ``Recorder``)
into one entry per event, and answers, for a correlation id, the flow's events in time
order with their status and durations; for an event id, its causation chain root → leaf
and its descendants; for a business key, the flows it appears in. Memory is bounded:
beyond ``max_events`` the oldest events are evicted (counted in ``evicted``), and each
event keeps at most ``MAX_DELIVERIES`` subscriber entries.

>>> from otel_eda.testing import record_flow
>>> store = EventStore(max_events=100)
>>> root, child = record_flow(store, "order_placed", "payment_authorized", business_key="order-1")
>>> [e.event_type for e in store.flow(root.correlation_id)]
['order_placed', 'payment_authorized']
>>> [e.event_type for e in store.causation_chain(child.event_id)]
['order_placed', 'payment_authorized']
>>> store.find("order-1") == [root.correlation_id]
True
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final

from opentelemetry.trace import INVALID_SPAN_CONTEXT, SpanContext

from otel_eda.flows.records import FINAL_STAGES, LifecycleRecord, Stage
from otel_eda.identity.event import EventContext
from otel_eda.process_hooks import ForkHook, register_fork_hook
from otel_eda.settings import DEFAULT_MAX_EVENTS

__all__ = ["DeliverySummary", "EventStore", "EventSummary"]

# a step noted by EventStore.note: (stage, event, service, subscriber, attempt, duration_s,
# error_type, span_context)
_Step = tuple[Stage, EventContext, str, str | None, int, float | None, str | None, SpanContext | None]

MAX_DELIVERIES: Final = 64
#: steps noted through EventStore.note are applied when this many wait (or on any read)
STEPS_PER_BATCH: Final = 256
# Enum members as module constants: on Python 3.11 each ``Stage.X`` is a descriptor call
# (about 0.2 µs), and ``record`` runs several times per event.
_PUBLISHED: Final = Stage.PUBLISHED
_UNROUTED: Final = Stage.UNROUTED
_KEYED: Final = Stage.KEYED
# a tuple: ``in`` compares by identity first (no hashing)
_FINAL: Final = tuple(FINAL_STAGES)
#: what applying a step list (see EventStore.note_open) appends to it: a step appended after
#: it was not applied with the list
_SEALED: Final = object()


@dataclasses.dataclass(frozen=True, slots=True)
class DeliverySummary:
    """One subscriber's handling of one event."""

    subscriber: str
    service: str
    status: Stage
    attempts: int
    duration_s: float | None
    error_type: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class EventSummary:
    event_id: str
    correlation_id: str
    causation_id: str | None
    event_type: str
    business_key: str | None
    created_ns: int
    publisher: str | None
    status: str
    deliveries: tuple[DeliverySummary, ...]
    trace_id: str | None
    span_id: str | None


class _Delivery:
    """One subscriber's handling of one event, as the store keeps it (mutable)."""

    __slots__ = ("attempts", "duration_s", "error_type", "service", "status")

    def __init__(
        self, service: str, status: Stage, attempts: int, duration_s: float | None, error_type: str | None
    ) -> None:
        self.service = service
        self.status = status
        self.attempts = attempts
        self.duration_s = duration_s
        self.error_type = error_type


class _Entry:
    """One event's aggregate (a plain slotted class: made once per event on the hot path)."""

    __slots__ = (
        "business_key",
        "causation_id",
        "correlation_id",
        "created_ns",
        "deliveries",
        "event_id",
        "event_type",
        "publish_stage",
        "publisher",
        "span_id",
        "trace_id",
    )

    def __init__(self, event_id: str, correlation_id: str, causation_id: str | None, event_type: str, created_ns: int):
        self.event_id = event_id
        self.correlation_id = correlation_id
        self.causation_id = causation_id
        self.event_type = event_type
        self.business_key: str | None = None
        self.created_ns = created_ns
        self.publisher: str | None = None
        self.publish_stage: Stage | None = None
        self.trace_id = 0
        self.span_id = 0
        self.deliveries: dict[str, _Delivery] = {}

    def status(self) -> str:
        states = [d.status for d in self.deliveries.values()]
        if not states:
            return (self.publish_stage or Stage.PUBLISHED).value
        for final in (Stage.DEAD_LETTERED, Stage.FAILED, Stage.REJECTED, Stage.DROPPED):
            if final in states:
                return final.value
        if all(s is Stage.COMPLETED for s in states):
            return Stage.COMPLETED.value
        return "in_progress"

    def summary(self) -> EventSummary:
        return EventSummary(
            self.event_id,
            self.correlation_id,
            self.causation_id,
            self.event_type,
            self.business_key,
            self.created_ns,
            self.publisher,
            self.status(),
            tuple(
                DeliverySummary(name, d.service, d.status, d.attempts, d.duration_s, d.error_type)
                for name, d in self.deliveries.items()
            ),
            f"{self.trace_id:032x}" if self.trace_id else None,
            f"{self.span_id:016x}" if self.span_id else None,
        )


#: Live stores: a forked child gives each a fresh lock (another thread may have held it at fork).
_stores: weakref.WeakSet[EventStore] = weakref.WeakSet()


def _fresh_locks_in_child() -> None:
    for store in list(_stores):
        store._lock = threading.Lock()


register_fork_hook(ForkHook("event stores", after_in_child=_fresh_locks_in_child))


class EventStore:
    """A bounded, thread-safe index of lifecycle records. See the module documentation.

    Steps taken through :meth:`note` (the messaging API's hot path) are queued and applied
    in batches, in order, before anything reads the index (and whenever a batch is full):
    applied together, they cost a fraction of one lock and one look-up each.
    """

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.max_events = max_events
        self._evicted = 0
        self._lock = threading.Lock()
        _stores.add(self)
        # an event's entry, or (until something reads it) the sealed step list of a new event
        # whose steps all came in that list (see _apply_steps)
        self._events: OrderedDict[str, _Entry | list[Any]] = OrderedDict()
        self._by_correlation: dict[str, dict[str, None]] = {}  # ordered sets
        self._by_key: dict[str, dict[str, int]] = {}
        # steps noted but not yet applied (appended by any thread, applied under the lock)
        self._steps: collections.deque[_Step | list[Any]] = collections.deque()

    def __len__(self) -> int:
        with self._lock:
            self._apply_steps()
            return len(self._events)

    @property
    def evicted(self) -> int:
        """Events evicted so far to keep within ``max_events``."""
        with self._lock:
            self._apply_steps()
            return self._evicted

    # -- Recorder -----------------------------------------------------------------------
    def record(self, record: LifecycleRecord) -> None:
        # one unpacking of the tuple instead of an attribute read per field
        (
            stage,
            _,
            event_id,
            correlation_id,
            causation_id,
            event_type,
            service,
            business_key,
            subscriber,
            attempt,
            duration_s,
            etype,
            created_ns,
            trace_id,
            span_id,
            _,
        ) = record
        with self._lock:
            self._apply_steps()  # in order: what was noted before this record first
            entry = self._lookup(event_id)
            if entry is None:
                entry = self._add(event_id, correlation_id, causation_id, event_type, created_ns, business_key)
            if subscriber is None:
                self._publish_step(entry, stage, service, business_key, trace_id, span_id)
            else:
                self._delivery_step(entry, stage, service, business_key, subscriber, attempt, duration_s, etype)

    def note(
        self,
        stage: Stage,
        event: EventContext,
        service: str,
        subscriber: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error_type: str | None = None,
        span_context: SpanContext | None = None,
    ) -> None:
        """Take one lifecycle step without building its :class:`LifecycleRecord`: the same as
        ``record(LifecycleRecord(stage, ..., event's fields, service, ...))`` (the messaging
        API's hot path; the store keeps no record times). Thread-safe; applied in order."""
        steps = self._steps
        steps.append((stage, event, service, subscriber, attempt, duration_s, error_type, span_context))
        if len(steps) >= STEPS_PER_BATCH:
            with self._lock:
                self._apply_steps()

    def note_open(
        self,
        stage: Stage,
        event: EventContext,
        service: str,
        subscriber: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error_type: str | None = None,
        span_context: SpanContext | None = None,
    ) -> list[Any]:
        """:meth:`note` a step that later steps of the same event may join (:meth:`note_more`)
        while it waits to be applied: they are applied with it, in order, where it was noted
        (an event published, received and handled before anything reads the store is one
        step to apply, not three). Returns the handle for :meth:`note_more`."""
        opened: list[Any] = [(stage, event, service, subscriber, attempt, duration_s, error_type, span_context)]
        steps = self._steps
        steps.append(opened)
        if len(steps) >= STEPS_PER_BATCH:
            with self._lock:
                self._apply_steps()
        return opened

    @staticmethod
    def note_more(
        opened: list[Any],
        stage: Stage,
        event: EventContext,
        service: str,
        subscriber: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error_type: str | None = None,
        span_context: SpanContext | None = None,
    ) -> bool:
        """Join a later step of the same event to the step :meth:`note_open` noted, if that
        has not been applied yet. Returns whether it was taken; if not (something read the
        store meanwhile), :meth:`note` it. Thread-safe without the lock: appending to a list
        is atomic, and applying the list appends ``_SEALED`` to it first, so a step is
        applied with the list exactly when it precedes the seal."""
        step = (stage, event, service, subscriber, attempt, duration_s, error_type, span_context)
        opened.append(step)
        for item in opened:
            if item is step:
                return True
            if item is _SEALED:
                return False
        return True  # not reached: the step is in the list

    def _apply_steps(self) -> None:
        """Apply the noted steps, oldest first (the caller holds the lock)."""
        steps = self._steps
        if not steps:
            return
        events = self._events
        by_correlation = self._by_correlation
        max_events = self.max_events
        popleft = steps.popleft
        last_event: EventContext | None = None
        entry: _Entry | None = None
        while steps:
            noted = popleft()
            if type(noted) is list:  # steps of one event, up to the seal (see note_open)
                noted.append(_SEALED)
                event = noted[0][1]
                event_id = event.event_id
                if event.business_key is None and event_id not in events:
                    # a new event, all its steps so far in this list: kept as they are, made into
                    # an entry when something reads it or a later step comes (_materialize)
                    events[event_id] = noted
                    correlation_id = event.correlation_id
                    ids = by_correlation.get(correlation_id)
                    if ids is None:
                        by_correlation[correlation_id] = {event_id: None}
                    else:
                        ids[event_id] = None
                    if len(events) > max_events:
                        while len(events) > max_events:
                            self._evict_oldest()
                        last_event = entry = None  # the cached entry may be the one evicted
                    continue
                group: Sequence[Any] = noted
            else:
                group = (noted,)
            for step in group:
                if step is _SEALED:
                    break
                stage, event, service, subscriber, attempt, duration_s, etype, span_context = step
                if event is not last_event:  # an event's steps mostly follow each other
                    found = events.get(event.event_id)
                    entry = self._materialize(event.event_id, found) if isinstance(found, list) else found
                    last_event = event
                if entry is None:
                    if event.business_key is None:  # _add's common case, inlined
                        event_id, correlation_id = event.event_id, event.correlation_id
                        entry = _Entry(event_id, correlation_id, event.causation_id, event.event_type, event.created_ns)
                        events[event_id] = entry
                        ids = by_correlation.get(correlation_id)
                        if ids is None:
                            by_correlation[correlation_id] = {event_id: None}
                        else:
                            ids[event_id] = None
                        if len(events) > max_events:
                            while len(events) > max_events:
                                self._evict_oldest()
                    else:
                        entry = self._add(
                            event.event_id,
                            event.correlation_id,
                            event.causation_id,
                            event.event_type,
                            event.created_ns,
                            event.business_key,
                        )
                if subscriber is None:
                    if stage is _PUBLISHED and entry.publish_stage is None:  # _publish_step's common case
                        entry.publisher = service
                        entry.publish_stage = stage
                        if span_context is not None and span_context is not INVALID_SPAN_CONTEXT:
                            entry.trace_id, entry.span_id = span_context.trace_id, span_context.span_id
                    elif span_context is None or span_context is INVALID_SPAN_CONTEXT:
                        self._publish_step(entry, stage, service, event.business_key, 0, 0)
                    else:
                        trace_id, span_id = span_context.trace_id, span_context.span_id
                        self._publish_step(entry, stage, service, event.business_key, trace_id, span_id)
                    continue
                deliveries = entry.deliveries
                delivery = deliveries.get(subscriber)
                if stage is _KEYED:
                    self._delivery_step(
                        entry, stage, service, event.business_key, subscriber, attempt, duration_s, etype
                    )
                elif delivery is None:  # a new delivery: its first step, in one go
                    if len(deliveries) < MAX_DELIVERIES:
                        final = stage in _FINAL
                        deliveries[subscriber] = _Delivery(
                            service, stage, attempt if attempt > 0 else 0, duration_s if final else None, etype
                        )
                else:
                    if attempt > delivery.attempts:  # noqa: PLR1730  (max() is a call: the hot path)
                        delivery.attempts = attempt
                    final = stage in _FINAL
                    if delivery.status not in _FINAL:
                        delivery.status = stage
                    if final and duration_s is not None:
                        delivery.duration_s = duration_s
                    if etype is not None:
                        delivery.error_type = etype

    def _materialize(self, event_id: str, noted: list[Any]) -> _Entry:
        """The entry of an event held as its sealed step list (see _apply_steps), in its
        place: those steps applied to a new entry, in order (the caller holds the lock)."""
        first = noted[0][1]
        entry = _Entry(event_id, first.correlation_id, first.causation_id, first.event_type, first.created_ns)
        for step in noted:
            if step is _SEALED:
                break
            stage, event, service, subscriber, attempt, duration_s, etype, span_context = step
            if subscriber is not None:
                self._delivery_step(entry, stage, service, event.business_key, subscriber, attempt, duration_s, etype)
            elif span_context is None or span_context is INVALID_SPAN_CONTEXT:
                self._publish_step(entry, stage, service, event.business_key, 0, 0)
            else:
                self._publish_step(
                    entry, stage, service, event.business_key, span_context.trace_id, span_context.span_id
                )
        self._events[event_id] = entry  # the same place in the eviction order
        return entry

    def _lookup(self, event_id: str | None) -> _Entry | None:
        """The entry of ``event_id``, made from its step list if need be (the caller holds the lock)."""
        if event_id is None:
            return None
        found = self._events.get(event_id)
        if isinstance(found, list):
            return self._materialize(event_id, found)
        return found

    def _publish_step(
        self, entry: _Entry, stage: Stage, service: str, business_key: str | None, trace_id: int, span_id: int
    ) -> None:
        if stage is _PUBLISHED or stage is _UNROUTED:
            entry.publisher = service
            if entry.publish_stage is None or stage is not _PUBLISHED:
                entry.publish_stage = stage
            entry.trace_id = trace_id
            entry.span_id = span_id
        elif stage is _KEYED:
            self._set_key(entry, business_key)

    def _delivery_step(
        self,
        entry: _Entry,
        stage: Stage,
        service: str,
        business_key: str | None,
        subscriber: str,
        attempt: int,
        duration_s: float | None,
        etype: str | None,
    ) -> None:
        if stage is _KEYED:
            self._set_key(entry, business_key)
            return
        deliveries = entry.deliveries
        delivery = deliveries.get(subscriber)
        if delivery is None:
            if len(deliveries) < MAX_DELIVERIES:  # a new delivery: its first step, in one go
                final = stage in _FINAL
                deliveries[subscriber] = _Delivery(
                    service, stage, max(0, attempt), duration_s if final else None, etype
                )
            return
        delivery.attempts = max(delivery.attempts, attempt)
        if delivery.status not in _FINAL:
            delivery.status = stage
        if duration_s is not None and stage in _FINAL:
            delivery.duration_s = duration_s
        if etype is not None:
            delivery.error_type = etype

    def _add(
        self,
        event_id: str,
        correlation_id: str,
        causation_id: str | None,
        event_type: str,
        created_ns: int,
        business_key: str | None,
    ) -> _Entry:
        entry = _Entry(event_id, correlation_id, causation_id, event_type, created_ns)
        events = self._events
        events[event_id] = entry
        ids = self._by_correlation.get(correlation_id)
        if ids is None:
            self._by_correlation[correlation_id] = {event_id: None}
        else:
            ids[event_id] = None
        if business_key is not None:
            self._set_key(entry, business_key)
        if len(events) > self.max_events:
            while len(events) > self.max_events:
                self._evict_oldest()
        return entry

    def _set_key(self, entry: _Entry, key: str | None) -> None:
        if key is None or key == entry.business_key:
            return
        if entry.business_key is not None:
            self._unindex_key(entry)
        entry.business_key = key
        flows = self._by_key.setdefault(key, {})
        flows[entry.correlation_id] = flows.get(entry.correlation_id, 0) + 1

    def _unindex_key(self, entry: _Entry) -> None:
        key = entry.business_key
        if key is None:
            return
        flows = self._by_key.get(key)
        if flows is None:
            return
        left = flows.get(entry.correlation_id, 0) - 1
        if left > 0:
            flows[entry.correlation_id] = left
        else:
            flows.pop(entry.correlation_id, None)
            if not flows:
                del self._by_key[key]

    def _evict_oldest(self) -> None:
        event_id, entry = self._events.popitem(last=False)
        self._evicted += 1
        if isinstance(entry, list):  # a step list: no business key indexed (see _apply_steps)
            correlation_id = entry[0][1].correlation_id
            ids = self._by_correlation.get(correlation_id)
            if ids is not None:
                ids.pop(event_id, None)
                if not ids:
                    del self._by_correlation[correlation_id]
            return
        ids = self._by_correlation.get(entry.correlation_id)
        if ids is not None:
            ids.pop(event_id, None)
            if not ids:
                del self._by_correlation[entry.correlation_id]
        if entry.business_key is not None:
            self._unindex_key(entry)

    # -- queries ------------------------------------------------------------------------
    def get(self, event_id: str) -> EventSummary | None:
        with self._lock:
            self._apply_steps()
            entry = self._lookup(event_id)
            return entry.summary() if entry else None

    def flow(self, correlation_id: str) -> list[EventSummary]:
        """The events of one flow, oldest first, with their status and deliveries."""
        with self._lock:
            self._apply_steps()
            entries = [self._lookup(i) for i in self._by_correlation.get(correlation_id, ())]
            return [e.summary() for e in sorted(filter(None, entries), key=lambda e: (e.created_ns, e.event_id))]

    def causation_chain(self, event_id: str) -> list[EventSummary]:
        """The chain of causes of an event, root first, the event itself last.

        The chain stops early where a cause has been evicted or was never recorded here.
        """
        with self._lock:
            self._apply_steps()
            chain: list[_Entry] = []
            seen: set[str] = set()
            current = self._lookup(event_id)
            while current is not None and current.event_id not in seen:
                seen.add(current.event_id)
                chain.append(current)
                current = self._lookup(current.causation_id)
            return [e.summary() for e in reversed(chain)]

    def descendants(self, event_id: str) -> list[EventSummary]:
        """Every event caused, directly or not, by ``event_id``, breadth first."""
        with self._lock:
            self._apply_steps()
            root = self._lookup(event_id)
            if root is None:
                return []
            children: dict[str, list[_Entry]] = {}
            for i in self._by_correlation.get(root.correlation_id, ()):
                e = self._lookup(i)
                if e is not None and e.causation_id is not None:
                    children.setdefault(e.causation_id, []).append(e)
            found: list[_Entry] = []
            frontier, seen = [event_id], {event_id}
            while frontier:
                nxt: list[str] = []
                for parent in frontier:
                    for child in sorted(children.get(parent, ()), key=lambda e: (e.created_ns, e.event_id)):
                        if child.event_id not in seen:
                            seen.add(child.event_id)
                            found.append(child)
                            nxt.append(child.event_id)
                frontier = nxt
            return [e.summary() for e in found]

    def find(self, business_key: str) -> list[str]:
        """The correlation ids of the flows in which ``business_key`` appears."""
        with self._lock:
            self._apply_steps()
            return list(self._by_key.get(business_key, {}))

    def correlation_ids(self) -> list[str]:
        """Every flow held, in the order its first event arrived."""
        with self._lock:
            self._apply_steps()
            return list(self._by_correlation)

    def render_flow(self, correlation_id: str) -> str:
        """A text tree of one flow: each event under its cause, with status and timings."""
        events = self.flow(correlation_id)
        by_cause: dict[str | None, list[EventSummary]] = {}
        ids = {e.event_id for e in events}
        for e in events:
            by_cause.setdefault(e.causation_id if e.causation_id in ids else None, []).append(e)
        lines: list[str] = []

        def walk(cause: str | None, depth: int) -> None:
            for e in by_cause.get(cause, ()):
                handled = ", ".join(
                    f"{d.subscriber}: {d.status.value}"
                    + (f" after {d.attempts} attempts" if d.attempts > 1 else "")
                    + (f" {d.duration_s * 1000:.1f} ms" if d.duration_s is not None else "")
                    + (f" ({d.error_type})" if d.error_type else "")
                    for d in e.deliveries
                )
                origin = f" from {e.publisher}" if e.publisher else ""
                lines.append(f"{'  ' * depth}- {e.event_type}{origin} [{e.status}] {handled}".rstrip())
                walk(e.event_id, depth + 1)

        walk(None, 0)
        return "\n".join(lines)
