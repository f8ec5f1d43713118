"""Rebuilding flows from spans: :func:`build_flows`.

A flow is rebuilt from what otel-eda writes on its spans, whatever the trace mode:

* each PRODUCER span carrying ``messaging.message.id`` is the publish of one event; each
  CONSUMER ``process`` span is one handling attempt (``eda.delivery.attempt``, by subscriber
  ``messaging.consumer.group.name``) of the event it names, or else of the event its span
  link names, or of the producer span it points to (``eda.producer.*``), links to or is the
  child of: in the same trace as its producer (parent mode) or in a trace of its own that
  links to it (link mode);
* the causation edge is ``eda.causation_id``; where a span lacks it, the handling whose
  span the publish span descends from (a publish made inside a handler is its child in
  both modes);
* how an attempt ended is ``eda.outcome``, else the last lifecycle span event
  (``eda.completed``, ``eda.failed``, ``eda.retried``, ``eda.dead_lettered``), else the
  span's status; time in queue is ``eda.queue.duration``, else the ``eda.received`` event;
* a process span of a dead-letter queue's consumer (``eda.dead_letter.queue``: a message a
  broker dead-lettered, RabbitMQ's ``x-death``) is a handling of its own (subscriber
  ``{service} ({destination})``), and the event's last attempt before it (retried,
  rejected or failed) becomes ``dead_lettered``;
* every other span (HTTP, DB, the handler's own) belongs to the nearest publish or
  process span above it, in its own trace.

Spans that never arrived (sampled out, lost) leave gaps that the flow records instead of
failing: causes named but never seen, events handled but never seen published, attempt
numbers missing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from otel_eda import semconv
from otel_eda.flows.explorer.model import Flow, FlowEvent, Handling, HandlingAttempt, Outcome
from otel_eda.flows.explorer.spans import Kind, SpanData, as_float, as_int, as_str

__all__ = ["build_flows", "restrict_to_event"]

_ENDING_EVENTS: Final = {
    semconv.EVENT_COMPLETED: Outcome.COMPLETED,
    semconv.EVENT_FAILED: Outcome.FAILED,
    semconv.EVENT_RETRIED: Outcome.RETRIED,
    semconv.EVENT_DEAD_LETTERED: Outcome.DEAD_LETTERED,
}
_OUTCOMES: Final = {o.value: o for o in Outcome if o is not Outcome.UNKNOWN}
_PUBLISH, _PROCESS = "publish", "process"


def _role(span: SpanData) -> str | None:
    """``publish`` for a PRODUCER span of an event, ``process`` for a CONSUMER span that may
    be a handling attempt (its event is found in :func:`_handled_event`), else ``None``."""
    if span.kind is Kind.PRODUCER:
        return _PUBLISH if semconv.MESSAGING_MESSAGE_ID in span.attributes else None
    if span.kind is Kind.CONSUMER:
        operation = span.text(semconv.MESSAGING_OPERATION_TYPE)
        if operation in (None, semconv.OPERATION_TYPE_PROCESS):
            return _PROCESS
    return None


def _handled_event(span: SpanData, published: dict[tuple[str, str], str]) -> str | None:
    """The event a CONSUMER span handled: its ``messaging.message.id``; else the one named by
    its span link's attributes (Jaeger and OTLP files keep links); else the event of the
    producer span it points to (``eda.producer.trace_id``/``span_id``, kept by Zipkin), links
    to, or descends from (parent mode)."""
    event_id = span.text(semconv.MESSAGING_MESSAGE_ID)
    if event_id is not None:
        return event_id
    for link in span.links:
        linked = as_str(link.attributes.get(semconv.MESSAGING_MESSAGE_ID))
        if linked is not None:
            return linked
    producer_trace = span.text(semconv.EDA_PRODUCER_TRACE_ID)
    producer_span = span.text(semconv.EDA_PRODUCER_SPAN_ID)
    candidates = [(producer_trace, producer_span)] if producer_trace and producer_span else []
    candidates += [(link.trace_id, link.span_id) for link in span.links]
    if span.parent_id is not None:
        candidates.append((span.trace_id, span.parent_id))
    for candidate in candidates:
        found = published.get((str(candidate[0]).lower(), str(candidate[1]).lower()))
        if found is not None:
            return found
    return None


def _correlation_id(span: SpanData) -> str | None:
    return span.text(semconv.EDA_CORRELATION_ID) or span.text(semconv.MESSAGING_MESSAGE_CONVERSATION_ID)


def _attempt(span: SpanData, number: int) -> HandlingAttempt:
    outcome: Outcome | None = _OUTCOMES.get(span.text(semconv.EDA_OUTCOME) or "")
    ran_s: float | None = None
    queue_s = as_float(span.attributes.get(semconv.EDA_QUEUE_DURATION))
    for event in span.events:
        ending = _ENDING_EVENTS.get(event.name)
        if ending is not None:
            ran_s = as_float(event.attributes.get(semconv.EDA_STAGE_SECONDS))
            if outcome is None:
                outcome = ending
        elif event.name == semconv.EVENT_RECEIVED and queue_s is None:
            queue_s = as_float(event.attributes.get(semconv.EDA_STAGE_SECONDS))
    if outcome is None:
        outcome = Outcome.FAILED if span.error else Outcome.COMPLETED
    return HandlingAttempt(
        attempt=number,
        outcome=outcome,
        span=span,
        duration_s=ran_s if ran_s is not None else span.duration_s,
        queue_s=queue_s,
        error_type=span.text(semconv.ERROR_TYPE),
    )


def _new_event(span: SpanData, event_id: str, correlation_id: str) -> FlowEvent:
    return FlowEvent(
        event_id=event_id,
        correlation_id=correlation_id,
        causation_id=span.text(semconv.EDA_CAUSATION_ID),
        event_type=span.text(semconv.EDA_EVENT_TYPE) or span.text(semconv.MESSAGING_DESTINATION_NAME) or span.name,
        business_key=span.text(semconv.EDA_BUSINESS_KEY),
        destination=span.text(semconv.MESSAGING_DESTINATION_NAME),
        publisher=None,
    )


def _dead_lettered(event: FlowEvent) -> None:
    """Mark the event's last attempt before a dead-letter queue's consumer read it (a broker's
    dead-lettering: RabbitMQ's ``x-death``) as dead-lettered."""
    attempts = [
        attempt
        for handling in event.handlings.values()
        for attempt in handling.attempts
        if attempt.span.text(semconv.EDA_DEAD_LETTER_QUEUE) is None
    ]
    if attempts:
        last = max(attempts, key=lambda attempt: attempt.span.start_ns)
        if last.outcome in (Outcome.RETRIED, Outcome.REJECTED, Outcome.FAILED):
            last.outcome = Outcome.DEAD_LETTERED


def build_flows(spans: Iterable[SpanData]) -> dict[str, Flow]:
    """Every flow the spans tell of, by correlation id. Duplicate spans count once."""
    by_key: dict[tuple[str, str], SpanData] = {}
    for span in spans:
        by_key.setdefault(span.key, span)
    roles = {key: _role(span) for key, span in by_key.items()}
    published = {
        key: str(span.attributes[semconv.MESSAGING_MESSAGE_ID])
        for key, span in by_key.items()
        if roles[key] == _PUBLISH
    }
    handled: dict[tuple[str, str], str] = {}
    for key, span in by_key.items():
        if roles[key] == _PROCESS:
            event_id = _handled_event(span, published)
            if event_id is None:
                roles[key] = None  # a consumer span of something else: an ordinary span here
            else:
                handled[key] = event_id

    # The nearest publish or process span above each span (itself excluded), in its trace.
    owner_memo: dict[tuple[str, str], tuple[str, str] | None] = {}

    def owner(span: SpanData) -> tuple[str, str] | None:
        key = (span.trace_id, span.span_id)
        if key in owner_memo:
            return owner_memo[key]
        path: list[tuple[str, str]] = []
        found: tuple[str, str] | None = None
        current = span
        while current.parent_id is not None:
            parent_key = (current.trace_id, current.parent_id)
            parent = by_key.get(parent_key)
            if parent is None or parent_key == key or parent_key in path:
                break  # the parent is missing (or the data has a cycle)
            if roles[parent_key] is not None:
                found = parent_key
                break
            if parent_key in owner_memo:
                found = owner_memo[parent_key]
                break
            path.append(parent_key)
            current = parent
        for step in path:
            owner_memo[step] = found
        if roles[key] is None:
            owner_memo[key] = found
        return found

    ordered = sorted(by_key.items(), key=lambda item: (item[1].start_ns, item[1].span_id))
    events: dict[str, FlowEvent] = {}
    attempt_of: dict[tuple[str, str], HandlingAttempt] = {}
    publish_of: dict[tuple[str, str], FlowEvent] = {}

    for key, span in ordered:
        if roles[key] != _PUBLISH:
            continue
        event_id = published[key]
        event = events.get(event_id)
        if event is None:
            event = events[event_id] = _new_event(span, event_id, _correlation_id(span) or event_id)
        if event.publisher is None:
            event.publisher = span.service
        event.publishes.append(span)
        publish_of[key] = event

    process_event: dict[tuple[str, str], FlowEvent] = {}
    process_subscriber: dict[tuple[str, str], str] = {}
    for key, span in ordered:
        if roles[key] != _PROCESS:
            continue
        event_id = handled[key]
        event = events.get(event_id)
        if event is None:
            event = events[event_id] = _new_event(span, event_id, _correlation_id(span) or event_id)
        if event.business_key is None:
            event.business_key = span.text(semconv.EDA_BUSINESS_KEY)
        if event.causation_id is None:
            event.causation_id = span.text(semconv.EDA_CAUSATION_ID)
        subscriber = span.text(semconv.MESSAGING_CONSUMER_GROUP_NAME) or span.service
        if span.text(semconv.EDA_DEAD_LETTER_QUEUE) is not None:
            # read from a dead-letter queue: the broker dead-lettered the event after its last attempt,
            # and this consumer's handling is one of its own
            _dead_lettered(event)
            subscriber = f"{subscriber} ({span.text(semconv.MESSAGING_DESTINATION_NAME) or 'dead letters'})"
        handling = event.handlings.get(subscriber)
        if handling is None:
            handling = event.handlings[subscriber] = Handling(subscriber, span.service)
        number = as_int(span.attributes.get(semconv.EDA_DELIVERY_ATTEMPT)) or len(handling.attempts) + 1
        attempt = _attempt(span, number)
        handling.attempts.append(attempt)
        attempt_of[key] = attempt
        process_event[key] = event
        process_subscriber[key] = subscriber

    # Who emitted each event, and the causation edge where the spans lack eda.causation_id.
    for event in events.values():
        for publish in event.publishes:
            emitter = owner(publish)
            if emitter is not None and emitter in attempt_of:
                cause = process_event[emitter]
                event.emitted_by = (cause.event_id, process_subscriber[emitter])
                if event.causation_id is None and cause.event_id != event.event_id:
                    event.causation_id = cause.event_id
                break

    # Every other span: under the attempt or publish it was made in, else stray in its flow.
    strays: dict[str, list[SpanData]] = {}
    for key, span in ordered:
        if roles[key] is not None:
            continue
        above = owner(span)
        if above is not None and above in attempt_of:
            attempt_of[above].foreign.append(span)
        elif above is not None and above in publish_of:
            publish_of[above].foreign.append(span)
        else:
            correlation_id = _correlation_id(span)
            if correlation_id is not None:
                strays.setdefault(correlation_id, []).append(span)

    grouped: dict[str, list[FlowEvent]] = {}
    for event in sorted(events.values(), key=lambda e: (e.published_ns, e.event_id)):
        grouped.setdefault(event.correlation_id, []).append(event)
    flows: dict[str, Flow] = {}
    for correlation_id, members in grouped.items():
        ids = {e.event_id for e in members}
        missing = sorted({e.causation_id for e in members if e.causation_id and e.causation_id not in ids})
        stray = strays.get(correlation_id, [])
        flow_spans = [s for e in members for s in e.publishes]
        flow_spans += [s for e in members for s in e.foreign]
        flow_spans += [a.span for e in members for h in e.handlings.values() for a in h.attempts]
        flow_spans += [f for e in members for h in e.handlings.values() for a in h.attempts for f in a.foreign]
        flow_spans += stray
        flows[correlation_id] = Flow(
            correlation_id,
            members,
            missing,
            stray,
            min(s.start_ns for s in flow_spans),
            max(s.end_ns for s in flow_spans),
        )
    return flows


def restrict_to_event(flow: Flow, event_id: str) -> Flow | None:
    """The part of ``flow`` that concerns one event: its chain of causes up to the root,
    itself, and everything it caused, directly or not. ``None`` if the event is not in it."""
    if flow.event(event_id) is None:
        return None
    keep = set()
    current: str | None = event_id
    while current is not None and current not in keep:
        keep.add(current)
        found = flow.event(current)
        current = found.causation_id if found is not None else None
    children: dict[str, list[FlowEvent]] = {}
    for event in flow.events:
        if event.causation_id is not None:
            children.setdefault(event.causation_id, []).append(event)
    frontier = [event_id]
    while frontier:
        nxt = []
        for cause in frontier:
            for child in children.get(cause, ()):
                if child.event_id not in keep:
                    keep.add(child.event_id)
                    nxt.append(child.event_id)
        frontier = nxt
    members = [e for e in flow.events if e.event_id in keep]
    missing = sorted({c for e in members if (c := e.causation_id) and c not in keep})
    return Flow(flow.correlation_id, members, missing, [], flow.start_ns, flow.end_ns)
