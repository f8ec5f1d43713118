"""``Messaging``: the spans, metrics and lifecycle records of moving events, for any transport.

A transport (the embedded bus, a broker instrumentation, your own) makes one
:class:`Messaging` per client and calls it at each step; it never builds spans itself.
See :mod:`otel_eda.messaging` for the walk-through and a worked example.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Generic, TypeVar

from opentelemetry import metrics, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context, attach, create_key, detach, get_current, get_value, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace import Link, NonRecordingSpan, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel_eda import otel_internals, redaction, semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.anomaly import feed as anomaly_feed
from otel_eda.flows import default_recorders
from otel_eda.flows.records import LifecycleRecord, Recorder, Stage
from otel_eda.flows.store import EventStore
from otel_eda.identity.event import (
    BAGGAGE_KEY,
    EVENT_KEY,
    SPAN_KEY,
    EventContext,
    current_event,
    event_baggage,
    event_context,
    incoming_event,
    with_event,
)
from otel_eda.identity.propagation import EdaPropagator, contains_propagator
from otel_eda.identity.validation import type_problem, valid_type
from otel_eda.messaging.carriers import TEXT_GETTER, TEXT_SETTER, SafeGetter
from otel_eda.messaging.counting import Tally, tally
from otel_eda.messaging.headers import Binding, read_cloudevent, read_metadata, write_cloudevent, write_metadata
from otel_eda.messaging.standard import StandardPropagation, leaves
from otel_eda.settings import CloudEventsMode, Settings, TraceMode
from otel_eda.version import VERSION

__all__ = [
    "BatchProcessing",
    "Incoming",
    "Messaging",
    "Outcome",
    "Processing",
    "Publication",
    "Rejected",
    "current_processing",
    "error_type",
]

_log = logging.getLogger(__name__)
_MAX_CACHED_ATTRIBUTE_SETS: Final = 4096
#: Longest exception message otel-eda writes into a lifecycle record.
MAX_ERROR_MESSAGE: Final = 1024
_PROCESSING_KEY: Final = create_key("otel_eda.processing")
#: the context of measurements whose exemplars no default rule reads (sent, consumed, clock
#: skew, the send and receive operation duration): no span in it, so the SDK's default
#: trace_based exemplar filter samples none there (the process duration and event-age
#: histograms, which the rules read, keep theirs)
_NO_EXEMPLAR: Final = Context()

C = TypeVar("C")

_tracer_is_noop, _meter_is_noop = otel_internals.noop_checks()
_global_tracer_provider, _global_meter_provider, _is_proxy_meter = otel_internals.global_provider_getters()
#: the current context's ContextVar (attach = its set, detach = its reset: three Python calls
#: fewer each), or None under a runtime-context plug-in (then the API's attach and detach)
_CONTEXT: Final = otel_internals.context_variable()
_current: Final[Callable[[], Context]] = otel_internals.current_context_getter() or get_current
_new_tuple = tuple.__new__
_HANDOFF_PROPAGATORS: Final = (TraceContextTextMapPropagator, W3CBaggagePropagator, EdaPropagator)


def _standard_propagation(textmap: object) -> bool:
    """Whether ``textmap`` is W3C trace context and baggage, with or without otel-eda's
    propagator, and nothing else (a composite of composites included)."""
    seen: set[type] = set()

    def walk(propagator: object) -> bool:
        inner = otel_internals.propagators_of(propagator)
        if inner is not None:
            return all(walk(p) for p in inner)
        if type(propagator) not in _HANDOFF_PROPAGATORS:  # exactly these: a subclass may carry more
            return False
        seen.add(type(propagator))
        return True

    return walk(textmap) and TraceContextTextMapPropagator in seen and W3CBaggagePropagator in seen


#: always dropped from a copy of an application's headers, whatever the propagator says
_W3C_FIELDS: Final = frozenset({"traceparent", "tracestate", "baggage"})


def _fields_of(textmap: TextMapPropagator) -> frozenset[str]:
    """The header names ``textmap`` writes, with the W3C ones; a propagator whose ``fields``
    fails or is not a set of names adds nothing (counted)."""
    try:
        return _W3C_FIELDS | frozenset(f for f in textmap.fields if isinstance(f, str))
    except Exception:
        count_invalid("propagator", "fields_failed")
        return _W3C_FIELDS


def _takes_notes(recorder: Recorder) -> bool:
    """Whether ``recorder`` is an :class:`EventStore` whose ``record`` is the store's own, so
    that :meth:`EventStore.note` takes the same step."""
    return isinstance(recorder, EventStore) and type(recorder).record is EventStore.record


class Outcome(enum.StrEnum):
    """How one handling attempt of a message ended (``eda.outcome`` on its process span)."""

    COMPLETED = "completed"
    #: the handler failed and nothing follows (no retry, no dead letter)
    FAILED = "failed"
    #: the handler failed; the transport will deliver the message again
    RETRIED = "retried"
    #: the handler failed for the last time; the message went to a dead-letter queue
    DEAD_LETTERED = "dead_lettered"
    #: the handler refused the message for good (raised :class:`Rejected`)
    REJECTED = "rejected"


_STAGES: Final = {
    Outcome.COMPLETED: Stage.COMPLETED,
    Outcome.FAILED: Stage.FAILED,
    Outcome.RETRIED: Stage.RETRIED,
    Outcome.DEAD_LETTERED: Stage.DEAD_LETTERED,
    Outcome.REJECTED: Stage.REJECTED,
}
_SPAN_EVENTS: Final = {
    Outcome.COMPLETED: semconv.EVENT_COMPLETED,
    Outcome.FAILED: semconv.EVENT_FAILED,
    Outcome.RETRIED: semconv.EVENT_RETRIED,
    Outcome.DEAD_LETTERED: semconv.EVENT_DEAD_LETTERED,
    Outcome.REJECTED: semconv.EVENT_FAILED,
}


# Enum members as module constants: on Python 3.11 each ``Outcome.X`` is a descriptor call
# (about 0.2 µs), several per message.
_COMPLETED: Final = Outcome.COMPLETED
_DEAD_LETTERED: Final = Outcome.DEAD_LETTERED
_FAILED: Final = Outcome.FAILED
_REJECTED: Final = Outcome.REJECTED
_RETRIED: Final = Outcome.RETRIED
_SPANKIND_CLIENT: Final = SpanKind.CLIENT
_SPANKIND_CONSUMER: Final = SpanKind.CONSUMER
_SPANKIND_PRODUCER: Final = SpanKind.PRODUCER
_STAGE_DROPPED: Final = Stage.DROPPED
_STAGE_KEYED: Final = Stage.KEYED
_STAGE_PUBLISHED: Final = Stage.PUBLISHED
_STAGE_RECEIVED: Final = Stage.RECEIVED
_STAGE_UNROUTED: Final = Stage.UNROUTED
_STATUSCODE_ERROR: Final = StatusCode.ERROR
_TRACEMODE_PARENT: Final = TraceMode.PARENT
_OUTCOME_VALUES: Final = {outcome: outcome.value for outcome in Outcome}
_INVALID_SPAN_CONTEXT: Final = trace.INVALID_SPAN_CONTEXT
_INVALID_SPAN: Final = trace.INVALID_SPAN


class Rejected(Exception):
    """Raised by a handler to refuse a message for good: no retry, no dead letter.

    Its ``error.type`` is ``otel_eda.messaging.Rejected`` wherever it is imported from.
    """

    __module__ = "otel_eda.messaging"


def error_type(exc: BaseException) -> str:
    """The ``error.type`` value of an exception: its fully qualified class name."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def error_message(exc: BaseException) -> str | None:
    """The exception's message as otel-eda writes it into records: bounded, under the
    redaction policy (``None`` with ``OTEL_EDA_EXCEPTION_DETAIL=type``)."""
    message = redaction.exception_message(exc)
    if message is None or len(message) <= MAX_ERROR_MESSAGE:
        return message
    return message[:MAX_ERROR_MESSAGE] + "…"


def record_failure(span: trace.Span, exc: BaseException, etype: str) -> None:
    """Mark ``span`` failed with ``exc``: the one place otel-eda writes an exception onto a span.

    The ``exception`` event follows the redaction policy (:mod:`otel_eda.redaction`):
    ``exception.type`` always, ``exception.message`` and ``exception.stacktrace`` as
    ``OTEL_EDA_EXCEPTION_DETAIL`` allows, redaction patterns applied.
    """
    if span.is_recording():
        span.add_event(semconv.EXCEPTION_EVENT, redaction.exception_attributes(exc))
        span.set_status(Status(_STATUSCODE_ERROR, etype))
        span.set_attribute(semconv.ERROR_TYPE, etype)


class Incoming:
    """One message as its consumer sees it: its event and its producer's context.

    Made by :meth:`Messaging.extract`; handed to :meth:`Messaging.received` (pull) and
    :meth:`Messaging.process`. ``delivered`` becomes true once the message is counted in
    ``messaging.client.consumed.messages`` (once per delivery, whichever comes first).
    ``note``: on a message handed off in this process (:meth:`Messaging.hand_off`), the
    event's lifecycle steps in the store while they wait to be applied, which its consumers'
    steps join.
    """

    __slots__ = ("context", "delivered", "destination", "event", "link", "note", "producer")

    def __init__(
        self,
        event: EventContext,
        context: Context,
        producer: trace.SpanContext,
        link: Link | None,
        destination: str,
        note: list[Any] | None = None,
    ) -> None:
        self.event = event
        self.context = context
        self.producer = producer
        self.link = link
        self.destination = destination
        self.delivered = False
        self.note = note

    def again(self) -> Incoming:
        """The same message for another consumer (or delivery): not yet counted as delivered."""
        return Incoming(self.event, self.context, self.producer, self.link, self.destination, self.note)


class Messaging:
    """Writes the telemetry of publishing and consuming events for one client.

    ``system``: the ``messaging.system`` value (``kafka``, ``rabbitmq``, ``redis``, ...;
    otel-eda's own transports use ``otel_eda``). ``scope``: the instrumentation scope
    (``otel_eda`` for the core, ``otel_eda.<transport>`` for an instrumentation).
    ``service`` names this service in lifecycle records (default: the tracer provider's
    ``service.name``). ``mode`` defaults to ``OTEL_EDA_TRACE_MODE``. ``binding``: the
    CloudEvents protocol binding of the transport's headers, if it has one.
    ``operation_duration``: record ``messaging.client.operation.duration`` for sends (off
    for in-process transports, where a send is not a network operation). ``getter`` and
    ``setter``: the pair for this transport's header carrier (default: a mapping of ``str``;
    see :mod:`~otel_eda.messaging.carriers`); a getter of your own is guarded so that it can
    never make ``extract`` raise.
    """

    def __init__(
        self,
        system: str,
        *,
        service: str | None = None,
        scope: str = semconv.SCOPE,
        mode: TraceMode | str | None = None,
        recorders: Sequence[Recorder] = (),
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        settings: Settings | None = None,
        binding: Binding | None = None,
        operation_duration: bool = True,
        getter: Getter[Any] = TEXT_GETTER,
        setter: Setter[Any] = TEXT_SETTER,
    ) -> None:
        settings = settings or Settings.from_environ()
        #: the carrier pair of this transport's headers (``publish``/``extract`` may override)
        self.getter = getter if getattr(getter, "safe", False) else SafeGetter(getter)
        self.setter = setter
        self.settings = settings
        self.system = system
        self.service = service or service_name(tracer_provider)
        self.mode = TraceMode(mode) if mode is not None else settings.trace_mode
        self.recorders = recorders
        self.binding = binding
        self._ce_read = binding is not None and settings.cloudevents is not CloudEventsMode.OFF
        self._ce_write = binding is not None and settings.cloudevents is CloudEventsMode.WRITE
        self._ce_source = settings.cloudevents_source or f"/{self.service}"
        self._span_events = settings.span_events
        self._metadata_keys = settings.metadata_attributes
        self._time_sends = operation_duration
        self._tracer = trace.get_tracer(scope, VERSION, tracer_provider)
        self._tracer_provider = tracer_provider
        self._tracing_on = False
        self._metering_on = False
        self._meter_provider = meter_provider
        self._feed_version = -1
        self._feed: anomaly_feed.Feed | None = None
        self._handoff_textmap: object = None
        self._handoff = False
        self._meter = meter = metrics.get_meter(scope, VERSION, meter_provider)
        self._proxy_tracer = type(self._tracer) is trace.ProxyTracer
        self._proxy_meter = _is_proxy_meter(meter)
        # counted in process, reported when a reader collects (see otel_eda.messaging.counting)
        self._sent = tally(meter_provider, scope, semconv.METRIC_SENT_MESSAGES, "{message}", "Messages published")
        self._consumed = tally(
            meter_provider,
            scope,
            semconv.METRIC_CONSUMED_MESSAGES,
            "{message}",
            "Messages delivered to the application",
        )
        self._cells: dict[tuple[str, str, str, str, str], list[Any]] = {}
        self._duration = meter.create_histogram(
            semconv.METRIC_PROCESS_DURATION,
            unit="s",
            description="Duration of one handling attempt",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._operation_duration = meter.create_histogram(
            semconv.METRIC_OPERATION_DURATION,
            unit="s",
            description="Duration of a send, receive or settle operation of the messaging client",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._retries = meter.create_counter(
            semconv.METRIC_RETRIES, unit="{attempt}", description="Handling attempts that failed and are retried"
        )
        self._dead_letters = meter.create_counter(
            semconv.METRIC_DEAD_LETTERS, unit="{message}", description="Messages dead-lettered"
        )
        self._dropped = meter.create_counter(
            semconv.METRIC_DROPPED, unit="{message}", description="Messages dropped because a queue stayed full"
        )
        self._publish_wait = meter.create_histogram(
            semconv.METRIC_PUBLISH_WAIT,
            unit="s",
            description="Seconds a publish waited for room in a full queue (only publishes that waited)",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._unrouted = meter.create_counter(
            semconv.METRIC_UNROUTED, unit="{message}", description="Messages published with no subscriber"
        )
        self._age = meter.create_histogram(
            semconv.METRIC_EVENT_AGE,
            unit="s",
            description="Age of an event when its handling starts (end-to-end lag)",
            explicit_bucket_boundaries_advisory=list(semconv.DURATION_BUCKETS_S),
        )
        self._skewed = meter.create_counter(
            semconv.METRIC_CLOCK_SKEW,
            unit="{message}",
            description="Events created in the consumer's future (clock skew); their age is recorded as 0",
        )
        self._eda = EdaPropagator()
        self._seen_textmap: TextMapPropagator | None = None
        self._textmap: TextMapPropagator = self._eda
        self._fields: frozenset[str] = frozenset()
        self._attribute_sets: dict[tuple[str, ...], Mapping[str, str]] = {}

    @property
    def recorders(self) -> tuple[Recorder, ...]:
        """Where this client's lifecycle records go (besides the process-wide ones of
        :mod:`otel_eda.flows.default_recorders`)."""
        return self._recorders

    @recorders.setter
    def recorders(self, recorders: Sequence[Recorder]) -> None:
        self._recorders = tuple(recorders)
        # an EventStore (its own record method) takes each step without a record built for it
        self._stores: tuple[EventStore, ...] = tuple(
            r for r in self._recorders if isinstance(r, EventStore) and _takes_notes(r)
        )
        self._others = tuple(r for r in self._recorders if not _takes_notes(r))
        #: the one recorder when it is a store taking notes (where a step may join a step list)
        self._only_store = self._stores[0] if len(self._stores) == 1 and not self._others else None

    # -- helpers ------------------------------------------------------------------------
    def _propagator(self) -> TextMapPropagator:
        """The global propagator, plus otel-eda's if the global one does not include it."""
        current = propagate.get_global_textmap()
        if current is not self._seen_textmap:
            self._seen_textmap = current
            if _standard_propagation(current):
                # the same propagators, in order, with the faster baggage codec (see .standard)
                members: list[Any] = list(leaves(current, otel_internals.propagators_of))
                if not any(type(p) is EdaPropagator for p in members):
                    members.append(self._eda)
                self._textmap = StandardPropagation(members)
            else:
                self._textmap = (
                    current
                    if contains_propagator(current, EdaPropagator)
                    else CompositePropagator([current, self._eda])
                )
            self._fields = _fields_of(self._textmap)
        return self._textmap

    def written_headers(self) -> frozenset[str]:
        """The names of the headers a publish writes (the propagators' ``fields``, with W3C
        trace context and baggage always among them): a transport drops them from a copy of
        an application's headers before the publish injects (see
        :func:`otel_eda.messaging.carriers.without_written`)."""
        self._propagator()
        return self._fields

    def _tracing(self) -> bool:
        """Whether spans may record: false while the tracer is the API's no-op (no SDK
        TracerProvider installed yet), when describing a span would be wasted work."""
        if self._tracing_on:
            return True
        if self._proxy_tracer and _global_tracer_provider() is None:
            return False  # the proxy is a no-op (the quick test; asked again next time)
        if _tracer_is_noop(self._tracer):
            return False  # asked again next time: configure() may install a provider later
        self._tracing_on = True  # a global provider is set once; an explicit one never changes
        return True

    def _metering(self) -> bool:
        """Whether measurements go anywhere: false while the meter is the API's no-op."""
        if self._metering_on:
            return True
        if self._proxy_meter and _global_meter_provider() is None:
            return False
        if _meter_is_noop(self._meter):
            return False
        self._metering_on = True
        return True

    def _quiet(self) -> bool:
        """Whether neither spans nor measurements are recorded (telemetry off): ``not
        _tracing() and not _metering()`` in one call, and without either while no global
        provider is installed at all."""
        if self._tracing_on or self._metering_on:
            return False
        if (
            self._proxy_tracer
            and self._proxy_meter
            and _global_tracer_provider() is None
            and _global_meter_provider() is None
        ):
            return True
        return not self._tracing() and not self._metering()

    def _anomaly_feed(self) -> anomaly_feed.Feed | None:
        """Where the duration and age histograms go to the anomaly readers of this meter
        provider directly (see :mod:`otel_eda.anomaly.feed`), if one subscribed."""
        if self._feed_version != anomaly_feed.version:
            self._feed_version = anomaly_feed.version
            provider = self._meter_provider if self._meter_provider is not None else metrics.get_meter_provider()
            self._feed = anomaly_feed.feed_for(otel_internals.measurement_consumer(provider))
        return self._feed

    def in_process(self) -> bool:
        """Whether an in-process transport may hand a message to its consumers as
        :meth:`Publication.local` makes it instead of through headers: true when the global
        propagator is W3C trace context and baggage (plus otel-eda's own), whose round trip
        through headers gives the consumer exactly what ``local`` gives it."""
        current = propagate.get_global_textmap()
        if current is not self._handoff_textmap:
            self._handoff_textmap = current
            self._handoff = _standard_propagation(current)
        return self._handoff

    def _count(self, counter: Tally, destination: str, operation: str, group: str = "", etype: str = "") -> None:
        """Add one to ``counter`` (sent or consumed) for this attribute set."""
        key = ((counter is self._sent and "s") or "c", destination, operation, group, etype)
        cell = self._cells.get(key)
        if cell is None:
            cell = counter.cell(self._attrs(destination, operation, group, etype))
            if len(self._cells) < _MAX_CACHED_ATTRIBUTE_SETS:
                self._cells[key] = cell
        counter.add(cell)

    def _attrs(self, destination: str, operation: str, group: str = "", etype: str = "") -> Mapping[str, str]:
        """A cached metric attribute set."""
        key = (destination, operation, group, etype)
        attrs = self._attribute_sets.get(key)
        if attrs is None:
            attrs = {
                semconv.MESSAGING_SYSTEM: self.system,
                semconv.MESSAGING_DESTINATION_NAME: destination,
                semconv.MESSAGING_OPERATION_NAME: operation,
            }
            if group:
                attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
            if etype:
                attrs[semconv.ERROR_TYPE] = etype
            if len(self._attribute_sets) < _MAX_CACHED_ATTRIBUTE_SETS:
                self._attribute_sets[key] = attrs
        return attrs

    def record(
        self,
        stage: Stage,
        event: EventContext,
        span_context: trace.SpanContext | None = None,
        *,
        subscriber: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Write one lifecycle record to every recorder (a transport's own stages, e.g. a
        drop it detected itself, go through here too)."""
        self._step(stage, event, span_context, subscriber, attempt, duration_s, error)

    def _step(
        self,
        stage: Stage,
        event: EventContext,
        span_context: trace.SpanContext | None,
        subscriber: str | None,
        attempt: int,
        duration_s: float | None,
        error: BaseException | None,
    ) -> None:
        """:meth:`record` with positional arguments (the hot path's three steps per event)."""
        installed = default_recorders.installed()  # configure()'s, e.g. lifecycle logs
        if not installed and not self._others:  # only stores (the bus's default)
            etype = error_type(error) if error is not None else None
            for store in self._stores:  # the same step without building the record
                try:
                    store.note(stage, event, self.service, subscriber, attempt, duration_s, etype, span_context)
                except Exception:
                    internal_error("recorder", "recording a lifecycle record")
            return
        others = self._others + installed if installed else self._others
        if others:
            record = _new_tuple(
                LifecycleRecord,
                (  # LifecycleRecord(...) without its Python __new__
                    stage,
                    time.time_ns(),
                    event.event_id,
                    event.correlation_id,
                    event.causation_id,
                    event.event_type,
                    self.service,
                    event.business_key,
                    subscriber,
                    attempt,
                    duration_s,
                    error_type(error) if error is not None else None,
                    event.created_ns,
                    span_context.trace_id if span_context is not None else 0,
                    span_context.span_id if span_context is not None else 0,
                    error_message(error) if error is not None else None,
                ),
            )
            for recorder in others:
                try:
                    recorder.record(record)
                except Exception:
                    internal_error("recorder", "recording a lifecycle record")
        if self._stores:
            etype = error_type(error) if error is not None else None
            for store in self._stores:  # the same step without building the record
                try:
                    store.note(stage, event, self.service, subscriber, attempt, duration_s, etype, span_context)
                except Exception:
                    internal_error("recorder", "recording a lifecycle record")

    def _join_step(
        self,
        opened: list[Any] | None,
        stage: Stage,
        event: EventContext,
        span_context: trace.SpanContext | None,
        subscriber: str | None,
        attempt: int = 0,
        duration_s: float | None = None,
        error: BaseException | None = None,
    ) -> list[Any] | None:
        """:meth:`_step` of a step of the event whose steps ``opened`` holds (a handle of
        :meth:`EventStore.note_open`, or ``None``): with one store as the only recorder, the
        step joins those steps while they wait to be applied (or opens a new list); returns
        the list the step went into, for the event's later steps (``None`` when it went to
        the recorders as any step)."""
        store = self._only_store
        if store is None or default_recorders.installed():
            self._step(stage, event, span_context, subscriber, attempt, duration_s, error)
            return None
        etype = error_type(error) if error is not None else None
        try:
            if opened is not None and EventStore.note_more(
                opened, stage, event, self.service, subscriber, attempt, duration_s, etype, span_context
            ):
                return opened
            return store.note_open(stage, event, self.service, subscriber, attempt, duration_s, etype, span_context)
        except Exception:
            internal_error("recorder", "recording a lifecycle record")
            return None

    def _message_attributes(self, event: EventContext, destination: str, operation: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: self.system,
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
        if self._metadata_keys and event.metadata:
            for key in self._metadata_keys:
                value = event.metadata.get(key)
                if value is not None:
                    attrs[semconv.EDA_METADATA_PREFIX + key] = value
        return attrs

    # -- publishing ---------------------------------------------------------------------
    def publish(
        self,
        event_type: str,
        carrier: C,
        *,
        setter: Setter[C] | None = None,
        destination: str | None = None,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        cause: EventContext | None = None,
        event: EventContext | None = None,
        context: Context | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> Publication[C]:
        """Publish one event: use as ``with messaging.publish(...) as pub: <send>``.

        The event is ``event`` if given, else a child of ``cause`` or of the event current
        in ``context`` (inside a handler: the handled event), else a new root. Entering
        starts the PRODUCER span ``send {destination}`` (``destination`` defaults to the
        event type), makes the event current and injects the event's identity, the trace
        context, baggage, metadata (and CloudEvents headers under ``OTEL_EDA_CLOUDEVENTS=write``)
        into ``carrier`` through ``setter``; the body sends. An exception from the body is
        recorded on the span, counted with its ``error.type`` and re-raised. Raises
        ``ValueError`` for an invalid event type, business key or metadata, before anything
        is written.
        """
        if event is None:
            parent = cause if cause is not None else current_event(context)
            if parent is not None:
                event = parent.child(event_type, business_key=business_key, metadata=metadata)
            else:
                event = EventContext.root(event_type, business_key=business_key, metadata=metadata)
        return Publication(
            self, event, destination or event.event_type, carrier, setter or self.setter, context, attributes
        )

    def hand_off(
        self,
        event_type: str,
        business_key: str | None = None,
        metadata: Mapping[str, str] | None = None,
        cause: EventContext | None = None,
        context: Context | None = None,
    ) -> Incoming | None:
        """An in-process transport's publish when this client records neither spans nor
        metrics (telemetry off): the :class:`Incoming` that ``publish(event_type, None, ...)``
        and :meth:`Publication.local` would give its consumers, in one step and without a
        span, a context to attach or headers; ``None`` when spans or metrics are recorded
        (use :meth:`publish` then). Only when :meth:`in_process` is true. The caller sends it,
        then calls :meth:`handed_over` (with the error if sending raised). Raises
        ``ValueError`` as :meth:`publish` does."""
        if not self._quiet():
            return None
        base = context if context is not None else _current()
        parent: Any = cause if cause is not None else base.get(EVENT_KEY)  # current_event(base)
        if cause is not None or isinstance(parent, EventContext):
            event = parent.child(event_type, business_key=business_key, metadata=metadata)
        else:
            event = EventContext.root(event_type, business_key=business_key, metadata=metadata)
        if base.get(SPAN_KEY) is None:  # no span to carry: _local_incoming's short case
            incoming = Incoming(
                event, Context({BAGGAGE_KEY: event_baggage(event, base)}), _INVALID_SPAN_CONTEXT, None, event_type
            )
        else:
            incoming = _local_incoming(event, _noop_span(base), event_baggage(event, base), event_type)
        store = self._only_store
        if store is not None and not default_recorders.installed():
            # the published step, noted now: its consumers' steps join it (see EventStore.note_open)
            try:
                incoming.note = store.note_open(
                    _STAGE_PUBLISHED, event, self.service, None, 0, None, None, incoming.producer
                )
            except Exception:
                internal_error("recorder", "recording a lifecycle record")
        return incoming

    def handed_over(self, incoming: Incoming, error: BaseException | None = None) -> None:
        """Record the ``published`` step of a message from :meth:`hand_off` once its sending
        returned, or raised ``error`` (a step :meth:`hand_off` took already, for a store that
        records no errors of a publish, is not taken again)."""
        if incoming.note is None:
            self._step(_STAGE_PUBLISHED, incoming.event, incoming.producer, None, 0, None, error)

    def unrouted(self, event: EventContext, destination: str, span_context: trace.SpanContext | None = None) -> None:
        """Count and record an event that no subscriber received.

        ``destination`` may come from another process: an invalid one is neither logged
        nor used as a metric attribute (it becomes ``_invalid``). ``span_context`` is the
        send span's, for a transport that learns it after the publication ended (a broker's
        return); by default the current span's.
        """
        if not valid_type(destination):
            count_invalid("destination", "bad_characters")
            destination = "_invalid"
        self._unrouted.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND))
        if span_context is None:
            span_context = trace.get_current_span().get_span_context()
        self.record(_STAGE_UNROUTED, event, span_context)
        _log.debug("no subscriber for %s", destination)

    def publish_waited(self, destination: str, seconds: float) -> None:
        """Record that a publish to ``destination`` waited ``seconds`` for room in a full queue."""
        self._publish_wait.record(seconds, self._attrs(destination, semconv.OPERATION_TYPE_SEND))

    def dropped(self, event: EventContext, destination: str, subscriber: str) -> None:
        """Count and record an event a subscriber missed because its queue stayed full."""
        self._dropped.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND, subscriber))
        self.record(_STAGE_DROPPED, event, trace.get_current_span().get_span_context(), subscriber=subscriber)

    # -- consuming ----------------------------------------------------------------------
    def extract(self, carrier: C, *, destination: str, getter: Getter[C] | None = None) -> Incoming:
        """Rebuild a message's event and its producer's context from its headers (no
        count, no record, no span). Never raises.

        A message without valid otel-eda headers is, in order: the CloudEvent its
        ``ce-*`` headers describe (per the transport's binding, unless
        ``OTEL_EDA_CLOUDEVENTS=off``); else a new root event of type ``destination``
        (counted in ``eda.propagation.invalid``), so that nothing is lost.
        """
        if getter is None:
            getter = self.getter
        elif not getattr(getter, "safe", False):
            getter = SafeGetter(getter)
        try:
            ctx = self._propagator().extract(carrier, context=Context(), getter=getter)
        except Exception:
            count_invalid("headers", "propagator_failed")
            ctx = self._eda.extract(carrier, context=Context(), getter=getter)
        metadata = read_metadata(getter, carrier)
        event = incoming_event(ctx, metadata)
        if event is None and self._ce_read and self.binding is not None:
            event = read_cloudevent(getter, carrier, self.binding)
            if event is not None and metadata:
                event = EventContext(
                    event.event_id,
                    event.correlation_id,
                    event.causation_id,
                    event.event_type,
                    event.created_ns,
                    event.business_key,
                    metadata,
                )
        if event is None:
            count_invalid("message", "no_valid_event_id")
            event = EventContext.root(destination if valid_type(destination) else "unknown", metadata=metadata)
        producer = trace.get_current_span(ctx).get_span_context()
        link = None
        if producer.is_valid:
            link_attrs: dict[str, str] = {
                semconv.MESSAGING_MESSAGE_ID: event.event_id,
                semconv.EDA_CORRELATION_ID: event.correlation_id,
            }
            if event.causation_id is not None:
                link_attrs[semconv.EDA_CAUSATION_ID] = event.causation_id
            link = Link(producer, link_attrs)
        return Incoming(event, ctx, producer, link, destination)

    def _deliver(
        self, message: Incoming, group: str, operation: str = semconv.OPERATION_TYPE_PROCESS
    ) -> list[Any] | None:
        """Count one delivery and record the event's age (once per message); returns the
        step list its ``received`` step went into, which the attempt's settled step joins
        (see :meth:`_join_step`)."""
        message.delivered = True
        if self._metering():
            attrs = self._attrs(message.destination, operation, group)
            self._count(self._consumed, message.destination, operation, group)
            age = (time.time_ns() - message.event.created_ns) / 1e9
            if age < 0:
                self._skewed.add(1, attrs, context=_NO_EXEMPLAR)
                age = 0.0
            self._age.record(age, attrs, context=message.context)  # exemplar: the producer span
            feed = self._anomaly_feed()
            if feed is not None:
                feed.record(semconv.METRIC_EVENT_AGE, attrs, age, message.context)
        return self._join_step(message.note, _STAGE_RECEIVED, message.event, message.producer, group or self.service)

    def received(
        self,
        messages: Sequence[Incoming],
        *,
        start_ns: int,
        destination: str | None = None,
        operation_name: str = semconv.OPERATION_TYPE_RECEIVE,
        consumer_group: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> None:
        """The CLIENT span of a pull that returned ``messages``: call it after the call
        returns, with ``start_ns = time.time_ns()`` taken before it. Nothing for an empty
        result. One link per message, to its producer span (without attributes: the ids are
        on the link of the message's process span); each message is counted as delivered here.

        ``destination``: the one destination of the batch (``None`` when it spans several:
        the span is then named just ``{operation_name}``).
        """
        if not messages:
            return
        end_ns = time.time_ns()
        group = consumer_group or ""
        attrs: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: self.system,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_TYPE_RECEIVE,
            semconv.MESSAGING_OPERATION_NAME: operation_name,
        }
        if destination is not None:
            attrs[semconv.MESSAGING_DESTINATION_NAME] = destination
        if consumer_group:
            attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = consumer_group
        if len(messages) > 1:
            attrs[semconv.MESSAGING_BATCH_MESSAGE_COUNT] = len(messages)
        elif messages[0].event is not None:
            attrs[semconv.MESSAGING_MESSAGE_ID] = messages[0].event.event_id
        if attributes:
            attrs.update(attributes)
        span = self._tracer.start_span(
            f"{operation_name} {destination}" if destination else operation_name,
            context,
            kind=_SPANKIND_CLIENT,
            attributes=attrs,
            # to each producer span, without the ids the process span's link carries: no rule,
            # the explorer or a convention reads them on a receive span (the SDK would copy
            # and check two attributes per message)
            links=[Link(m.producer) for m in messages if m.link is not None],
            start_time=start_ns,
        )
        span.end(end_ns)
        self._operation_duration.record(
            (end_ns - start_ns) / 1e9,
            self._attrs(destination or "", semconv.OPERATION_TYPE_RECEIVE, group),
            context=_NO_EXEMPLAR,
        )
        for message in messages:
            if not message.delivered:
                self._deliver(message, group, operation_name)

    def process(
        self,
        message: Incoming | Any,
        *,
        destination: str | None = None,
        getter: Getter[Any] | None = None,
        consumer_group: str | None = None,
        attempt: int = 1,
        queued_s: float | None = None,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> Processing:
        """Start handling one message: use as ``with messaging.process(msg) as handling: ...``.

        ``message`` is an :class:`Incoming` or the message's header carrier (then
        ``destination`` and ``getter`` say how to read it). Starts the CONSUMER span
        ``process {destination}``: it links to the producer span and, in parent mode, is
        its child; when a valid span is current (an HTTP server span, say) it is that
        span's child instead, still linked. Inside the ``with`` block the event, the span
        and the producer's baggage are current. Leaving it settles the attempt once:
        completed, or on an exception ``rejected`` (:class:`Rejected`) or ``failed``;
        :meth:`Processing.settle` chooses another outcome (retried, dead-lettered).

        ``attempt``: the delivery attempt (from the transport's redelivery count, or its
        own retry loop). ``queued_s``: seconds the message waited before this attempt.
        """
        if not isinstance(message, Incoming):
            if destination is None:
                raise TypeError("process(carrier) needs destination=")
            message = self.extract(message, destination=destination, getter=getter)
        return Processing(self, message, consumer_group or "", attempt, queued_s, attributes, context)

    def process_batch(
        self,
        messages: Sequence[Incoming],
        *,
        destination: str | None = None,
        consumer_group: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        context: Context | None = None,
    ) -> BatchProcessing:
        """Start handling several messages at once (a batch handler): use as
        ``with messaging.process_batch(messages) as batch: ...``.

        One CONSUMER span ``process {destination}`` (just ``process`` when the batch spans
        several destinations) with one link per message, never parented on a creation
        context (the conventions' rule for a span covering several messages): on the
        ambient span if one is current, else a new trace. Each message is counted as
        delivered (unless :meth:`received` did) and gets one lifecycle record per outcome.
        """
        return BatchProcessing(self, messages, destination, consumer_group or "", attributes, context)

    def settle_span(
        self, destination: str, operation_name: str, *, context: Context | None = None
    ) -> trace.Span | None:
        """A started settle CLIENT span for an explicit ack, nack, reject or commit, or
        ``None`` unless ``OTEL_EDA_SETTLE_SPANS=true``. Named ``{operation_name}
        {destination}`` as the conventions name every messaging span (``ack orders``), with
        ``messaging.operation.type=settle``. End it when the operation returns."""
        if not self.settings.settle_spans:
            return None
        return self._tracer.start_span(
            f"{operation_name} {destination}",
            context,
            kind=_SPANKIND_CLIENT,
            attributes={
                semconv.MESSAGING_SYSTEM: self.system,
                semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_TYPE_SETTLE,
                semconv.MESSAGING_OPERATION_NAME: operation_name,
                semconv.MESSAGING_DESTINATION_NAME: destination,
            },
        )


class Publication(Generic[C]):
    """One publish in progress (see :meth:`Messaging.publish`): ``event``, ``span``, ``context``."""

    __slots__ = (
        "_attributes",
        "_carrier",
        "_messaging",
        "_parent",
        "_setter",
        "_started",
        "_token",
        "context",
        "destination",
        "event",
        "span",
    )

    def __init__(
        self,
        messaging: Messaging,
        event: EventContext,
        destination: str,
        carrier: C,
        setter: Setter[C],
        context: Context | None,
        attributes: Mapping[str, Any] | None,
    ) -> None:
        self._messaging = messaging
        self.event = event
        self.destination = destination
        self._carrier = carrier
        self._setter = setter
        self._parent = context
        self._attributes = attributes
        self.span: trace.Span = trace.INVALID_SPAN
        self.context: Context = Context()

    def __enter__(self) -> Publication[C]:
        m = self._messaging
        event = self.event
        if m._tracing():
            ctx = event_context(event, self._parent)
            attrs = m._message_attributes(event, self.destination, semconv.OPERATION_TYPE_SEND)
            if self._attributes:
                attrs.update(self._attributes)
            span = m._tracer.start_span(f"send {self.destination}", ctx, kind=_SPANKIND_PRODUCER, attributes=attrs)
            values = dict(ctx)
            values[SPAN_KEY] = span
            ctx = Context(values)
        else:  # the API's no-op span around the parent's span context: one new context
            parent = self._parent if self._parent is not None else _current()
            span = _noop_span(parent)
            ctx = event_context(event, parent, (SPAN_KEY, span))
        self.span = span
        self.context = ctx
        self._token = attach(ctx) if _CONTEXT is None else _CONTEXT.set(ctx)
        self._started = time.perf_counter()
        if self._carrier is None:  # an in-process hand-off: no headers (see local())
            return self
        try:
            m._propagator().inject(self._carrier, ctx, self._setter)
            if event.metadata:
                write_metadata(self._setter, self._carrier, event.metadata)
            if m._ce_write and m.binding is not None:
                write_cloudevent(self._setter, self._carrier, m.binding, event, m._ce_source)
        except Exception:
            internal_error("publish", "injecting headers")
        return self

    def local(self) -> Incoming:
        """The message as a consumer in this process gets it, without headers: what
        :meth:`Messaging.extract` would rebuild from the headers this publish writes when
        :meth:`Messaging.in_process` is true (the event itself, the producer's span context
        and the baggage). Each consumer takes its own :meth:`Incoming.again`."""
        return _local_incoming(self.event, self.span, self.context.get(BAGGAGE_KEY), self.destination)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        m = self._messaging
        span = self.span
        try:
            attrs_key = ""
            if exc is not None:
                attrs_key = error_type(exc)
                record_failure(span, exc, attrs_key)
            if m._metering():
                m._count(m._sent, self.destination, semconv.OPERATION_TYPE_SEND, "", attrs_key)
            if m._time_sends and m._metering_on:
                m._operation_duration.record(
                    time.perf_counter() - self._started,
                    m._attrs(self.destination, semconv.OPERATION_TYPE_SEND, "", attrs_key),
                    context=_NO_EXEMPLAR,
                )
            m._step(_STAGE_PUBLISHED, self.event, span.get_span_context(), None, 0, None, exc)
        finally:
            _detach(self._token)
            span.end()


class Processing:
    """One handling attempt of one message (see :meth:`Messaging.process`).

    ``event`` (the handled event; :meth:`set_business_key` may replace it), ``span`` (the
    CONSUMER span), ``context`` (what the handler runs in), ``attempt``, ``outcome`` (set
    once settled).
    """

    __slots__ = (
        "__weakref__",
        "_group",
        "_keep",
        "_messaging",
        "_note",
        "_open",
        "_start_ns",
        "_started",
        "_tokens",
        "attempt",
        "context",
        "destination",
        "event",
        "message",
        "outcome",
        "span",
    )

    def __init__(
        self,
        messaging: Messaging,
        message: Incoming,
        group: str,
        attempt: int,
        queued_s: float | None,
        attributes: Mapping[str, Any] | None,
        context: Context | None,
    ) -> None:
        self._messaging = m = messaging
        self.message = message
        self.event = event = message.event
        self.destination = destination = message.destination
        self._group = group
        self.attempt = attempt
        self.outcome: Outcome | None = None
        self._open = [True]  # popped exactly once, by whichever thread settles first
        self._tokens: list[Any] = []  # ContextVar tokens, or (token, owner) pairs (see attach)
        self._keep: Processing | None = None
        if m._quiet():  # telemetry off: the rest without spans and measurements
            if message.delivered:
                self._note = None
            else:  # _deliver without measurements
                message.delivered = True
                self._note = m._join_step(message.note, _STAGE_RECEIVED, event, message.producer, group or m.service)
            current: Any = (context if context is not None else _current()).get(SPAN_KEY)
            span: trace.Span
            if current is not None and current.get_span_context().is_valid:
                span = _noop_span(context)
            elif m.mode is _TRACEMODE_PARENT:
                producer: Any = message.context.get(SPAN_KEY)  # _noop_span(message.context)
                if producer is None:
                    span = _INVALID_SPAN
                elif type(producer) is NonRecordingSpan:
                    span = producer
                else:
                    span = NonRecordingSpan(producer.get_span_context())
            else:
                span = _INVALID_SPAN
            self._start_ns = time.time_ns()
            self.span = span
            self.context = event_context(event, message.context, (SPAN_KEY, span), (_PROCESSING_KEY, weakref.ref(self)))
            self._started = time.perf_counter()
            return
        # the received step, which later steps join (see Messaging._join_step)
        self._note = m._deliver(message, group) if not message.delivered else None
        ambient: Any = (context if context is not None else _current()).get(SPAN_KEY)
        if ambient is not None and ambient.get_span_context().is_valid:
            parent = context  # an HTTP server span, say: its child, linked to the producer
        elif m.mode is _TRACEMODE_PARENT:
            parent = message.context
        else:
            parent = trace.set_span_in_context(trace.INVALID_SPAN, message.context)
        self._start_ns = time.time_ns()
        if m._tracing():
            attrs = m._message_attributes(event, destination, semconv.OPERATION_TYPE_PROCESS)
            attrs[semconv.EDA_DELIVERY_ATTEMPT] = attempt
            if group:
                attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
            if queued_s is not None:
                attrs[semconv.EDA_QUEUE_DURATION] = queued_s
            if message.link is not None:
                producer = message.producer
                attrs[semconv.EDA_PRODUCER_TRACE_ID] = f"{producer.trace_id:032x}"
                attrs[semconv.EDA_PRODUCER_SPAN_ID] = f"{producer.span_id:016x}"
            if attributes:
                attrs.update(attributes)
            span = m._tracer.start_span(
                f"process {destination}",
                parent,
                kind=_SPANKIND_CONSUMER,
                attributes=attrs,
                links=(message.link,) if message.link is not None else None,
                start_time=self._start_ns,
            )
            if m._span_events and span.is_recording():
                span.add_event(semconv.EVENT_RECEIVED, {semconv.EDA_STAGE_SECONDS: queued_s or 0.0}, self._start_ns)
        else:
            span = _noop_span(parent)
        self.span = span
        self.context = event_context(event, message.context, (SPAN_KEY, span), (_PROCESSING_KEY, self._ref()))
        self._started = time.perf_counter()

    @property
    def settled(self) -> bool:
        return not self._open

    def _ref(self) -> weakref.ref[Processing]:
        """What this attempt's context holds: a weak reference, so that the attempt and its
        context are no reference cycle (freed when the last reference goes, not by the cyclic
        garbage collector: about 8 µs per Kafka record). While attached, the attempt holds
        itself (see :meth:`attach`)."""
        return weakref.ref(self)

    # -- context ------------------------------------------------------------------------
    def attach(self) -> None:
        """Make this attempt's context current (``__enter__`` does it)."""
        if _CONTEXT is not None:
            self._tokens.append(_CONTEXT.set(self.context))
        else:
            self._tokens.append((attach(self.context), _owner()))
        self._keep = self  # alive while current, even when only its context refers to it

    def detach(self) -> None:
        """Undo :meth:`attach`. Only the thread or task that attached can: called from
        another one (a worker settling a record the consumer's thread handed out, an async
        generator closed by the event loop) it leaves that attachment for its owner to undo."""
        tokens = self._tokens
        foreign = None
        while tokens:
            token = tokens.pop()
            if _CONTEXT is not None:
                try:
                    _CONTEXT.reset(token)
                except ValueError:  # attached in another task or thread: its context, not this one
                    foreign = [token] if foreign is None else [token, *foreign]
                except RuntimeError:
                    pass  # undone already
            elif token[1] == _owner():
                detach(token[0])
            else:
                foreign = [token] if foreign is None else [token, *foreign]
        if foreign is None:
            self._keep = None
        else:
            tokens.extend(foreign)

    def __enter__(self) -> Processing:
        self.attach()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.detach()
        if exc is None:
            self.settle(_COMPLETED)
        elif isinstance(exc, Rejected):
            self.settle(_REJECTED, exc)
        else:
            self.settle(_FAILED, exc)

    # -- settling -----------------------------------------------------------------------
    def settle(
        self, outcome: Outcome, exc: BaseException | None = None, *, end_ns: int | None = None, truncated: bool = False
    ) -> float:
        """End the attempt with ``outcome`` (once: later calls do nothing and return 0).

        Records its duration (``messaging.process.duration``), counts retries and dead
        letters, marks the span failed with ``exc`` unless completed, writes the lifecycle
        record and ends the span. Returns the attempt's duration in seconds.
        """
        try:
            self._open.pop()
        except IndexError:
            return 0.0
        m = self._messaging
        if type(outcome) is not Outcome:
            outcome = Outcome(outcome)
        self.outcome = outcome
        seconds = time.perf_counter() - self._started if end_ns is None else max(0.0, (end_ns - self._start_ns) / 1e9)
        span = self.span
        if type(span) is NonRecordingSpan and m._quiet():  # telemetry off: the lifecycle step alone
            try:
                self._settled_step(outcome, span, seconds, exc if outcome is not _COMPLETED else None)
            except Exception:
                internal_error("messaging", "settling a message")
            return seconds
        try:
            etype = error_type(exc) if exc is not None and outcome is not _COMPLETED else ""
            if m._metering():
                attrs = m._attrs(self.destination, semconv.OPERATION_TYPE_PROCESS, self._group, etype)
                exemplar = self.context  # the exemplar (where one is sampled) points at this attempt
                m._duration.record(seconds, attrs, context=exemplar)
                feed = m._anomaly_feed()
                if feed is not None:
                    feed.record(semconv.METRIC_PROCESS_DURATION, attrs, seconds, exemplar)
                if outcome is _RETRIED:
                    m._retries.add(1, attrs, context=exemplar)
                elif outcome is _DEAD_LETTERED:
                    m._dead_letters.add(1, attrs, context=exemplar)
            if span.is_recording():
                span.set_attribute(semconv.EDA_OUTCOME, _OUTCOME_VALUES[outcome])
                if truncated:
                    span.set_attribute(semconv.EDA_PROCESS_TRUNCATED, True)
                if exc is not None and outcome is not _COMPLETED:
                    record_failure(span, exc, etype)
                elif outcome is not _COMPLETED:
                    span.set_status(Status(_STATUSCODE_ERROR, outcome.value))
                if m._span_events:
                    span.add_event(_SPAN_EVENTS[outcome], {semconv.EDA_STAGE_SECONDS: seconds})
            self._settled_step(outcome, span, seconds, exc if outcome is not _COMPLETED else None)
        except Exception:
            internal_error("messaging", "settling a message")
        finally:
            span.end(end_ns)
        return seconds

    def _settled_step(self, outcome: Outcome, span: trace.Span, seconds: float, error: BaseException | None) -> None:
        """The settled lifecycle step: joined to the event's waiting steps if it has some."""
        m = self._messaging
        note, self._note = self._note, None
        stage, subscriber = _STAGES[outcome], self._group or m.service
        if note is None:
            m._step(stage, self.event, span.get_span_context(), subscriber, self.attempt, seconds, error)
        else:
            m._join_step(note, stage, self.event, span.get_span_context(), subscriber, self.attempt, seconds, error)

    def fail(self, exc: BaseException) -> float:
        """Settle as rejected (:class:`Rejected`) or failed: for pull loops that catch the
        handler's exception themselves."""
        return self.settle(_REJECTED if isinstance(exc, Rejected) else _FAILED, exc)

    def set_business_key(self, key: str) -> bool:
        """Attach a business key (an order number, say) to the event and its descendants.

        Set as ``eda.business_key`` on the span and recorded (``EventStore.find``). An
        invalid key is ignored, logged and counted; returns whether it was attached.
        """
        problem = type_problem(key)
        if problem is not None:
            count_invalid("business_key", problem)
            _log.warning("business key ignored: %s (length %d)", problem, len(key) if isinstance(key, str) else -1)
            return False
        event = self.event
        self.event = self.message.event = EventContext(
            event.event_id,
            event.correlation_id,
            event.causation_id,
            event.event_type,
            event.created_ns,
            key,
            event.metadata,
        )
        self.span.set_attribute(semconv.EDA_BUSINESS_KEY, key)
        previous = self.context
        self.context = set_value(_PROCESSING_KEY, self._ref(), with_event(self.event, previous))
        if self._tokens and get_current() is previous:
            # the handler's own code (in the thread or task that attached) sees the new key from
            # now on; a nested span of the handler, or another thread, is left alone
            self.attach()
        self._messaging.record(
            _STAGE_KEYED, self.event, self.span.get_span_context(), subscriber=self._group or None, attempt=self.attempt
        )
        return True


class BatchProcessing:
    """The handling of a batch of messages (see :meth:`Messaging.process_batch`)."""

    __slots__ = (
        "_group",
        "_messaging",
        "_open",
        "_started",
        "_token",
        "context",
        "destination",
        "messages",
        "outcome",
        "span",
    )

    def __init__(
        self,
        messaging: Messaging,
        messages: Sequence[Incoming],
        destination: str | None,
        group: str,
        attributes: Mapping[str, Any] | None,
        context: Context | None,
    ) -> None:
        self._messaging = m = messaging
        self.messages = tuple(messages)
        destinations = {message.destination for message in self.messages}
        self.destination = destination or (next(iter(destinations)) if len(destinations) == 1 else None)
        self._group = group
        self.outcome: Outcome | None = None
        self._open = [True]
        for message in self.messages:
            if not message.delivered:
                m._deliver(message, group)
        attrs: dict[str, Any] = {
            semconv.MESSAGING_SYSTEM: m.system,
            semconv.MESSAGING_OPERATION_TYPE: semconv.OPERATION_TYPE_PROCESS,
            semconv.MESSAGING_OPERATION_NAME: semconv.OPERATION_TYPE_PROCESS,
            semconv.MESSAGING_BATCH_MESSAGE_COUNT: len(self.messages),
        }
        if self.destination is not None:
            attrs[semconv.MESSAGING_DESTINATION_NAME] = self.destination
        if group:
            attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = group
        if attributes:
            attrs.update(attributes)
        ambient = trace.get_current_span(context)
        parent = context if ambient.get_span_context().is_valid else trace.set_span_in_context(trace.INVALID_SPAN)
        self.span = m._tracer.start_span(
            f"process {self.destination}" if self.destination else "process",
            parent,
            kind=_SPANKIND_CONSUMER,
            attributes=attrs,
            links=[message.link for message in self.messages if message.link is not None],
        )
        self.context = trace.set_span_in_context(self.span, context)
        self._started = time.perf_counter()

    def __enter__(self) -> BatchProcessing:
        self._token = attach(self.context)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        detach(self._token)
        if exc is None:
            self.settle(_COMPLETED)
        else:
            self.settle(_REJECTED if isinstance(exc, Rejected) else _FAILED, exc)

    def settle(self, outcome: Outcome, exc: BaseException | None = None) -> float:
        """End the batch's handling with ``outcome`` for every message (once)."""
        try:
            self._open.pop()
        except IndexError:
            return 0.0
        m = self._messaging
        if type(outcome) is not Outcome:
            outcome = Outcome(outcome)
        self.outcome = outcome
        seconds = time.perf_counter() - self._started
        span = self.span
        try:
            failed = exc is not None and outcome is not _COMPLETED
            etype = error_type(exc) if failed and exc is not None else ""
            attrs = m._attrs(self.destination or "", semconv.OPERATION_TYPE_PROCESS, self._group, etype)
            m._duration.record(seconds, attrs, context=self.context)
            feed = m._anomaly_feed()
            if feed is not None:
                feed.record(semconv.METRIC_PROCESS_DURATION, attrs, seconds, self.context)
            if outcome is _RETRIED:
                m._retries.add(len(self.messages), attrs, context=self.context)
            elif outcome is _DEAD_LETTERED:
                m._dead_letters.add(len(self.messages), attrs, context=self.context)
            if span.is_recording():
                span.set_attribute(semconv.EDA_OUTCOME, outcome.value)
                if failed and exc is not None:
                    record_failure(span, exc, etype)
                elif outcome is not _COMPLETED:
                    span.set_status(Status(_STATUSCODE_ERROR, outcome.value))
            for message in self.messages:
                m.record(
                    _STAGES[outcome],
                    message.event,
                    span.get_span_context(),
                    subscriber=self._group or m.service,
                    attempt=1,
                    duration_s=seconds,
                    error=exc if failed else None,
                )
        except Exception:
            internal_error("messaging", "settling a batch")
        finally:
            span.end()
        return seconds


def _local_incoming(event: EventContext, span: trace.Span, entries: object, destination: str) -> Incoming:
    """The :class:`Incoming` an in-process consumer gets from a publish of ``event`` under
    ``span`` with baggage ``entries`` (see :meth:`Publication.local`)."""
    producer = span.get_span_context()
    values: dict[str, object] = {}
    if entries:
        values[BAGGAGE_KEY] = entries
    link = None
    if producer.is_valid:
        values[SPAN_KEY] = NonRecordingSpan(producer)
        link_attrs: dict[str, str] = {
            semconv.MESSAGING_MESSAGE_ID: event.event_id,
            semconv.EDA_CORRELATION_ID: event.correlation_id,
        }
        if event.causation_id is not None:
            link_attrs[semconv.EDA_CAUSATION_ID] = event.causation_id
        link = Link(producer, link_attrs)
    return Incoming(event, Context(values), producer, link, destination)


def _detach(token: Any) -> None:
    """``detach(token)`` of a token from ``attach`` or ``_CONTEXT.set``."""
    if _CONTEXT is not None:
        try:
            _CONTEXT.reset(token)
            return
        except (ValueError, RuntimeError):
            pass  # the API's detach logs it, as it always did
    detach(token)


def _noop_span(context: Context | None) -> trace.Span:
    """What the API's no-op tracer starts in ``context``: a non-recording span carrying the
    parent's span context (invalid when there is none), so that it still propagates."""
    parent: Any = (context if context is not None else get_current()).get(SPAN_KEY)
    if parent is None:
        return trace.INVALID_SPAN
    if type(parent) is NonRecordingSpan:
        return parent  # immutable: the same as a new one around its span context
    return NonRecordingSpan(parent.get_span_context())


def _owner() -> object:
    """Who may detach a token: the current asyncio task, else the current thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


def current_processing(context: Context | None = None) -> Processing | None:
    """The handling attempt current in ``context`` (default: the current one), if any.

    ``None`` also in a context that outlived its attempt (a task the handler started, say)
    once the attempt is detached and nothing else refers to it."""
    value = get_value(_PROCESSING_KEY, context)
    if type(value) is weakref.ref:
        value = value()
    return value if isinstance(value, Processing) else None


def service_name(tracer_provider: trace.TracerProvider | None) -> str:
    """The ``service.name`` of ``tracer_provider`` (default: the global one)."""
    provider = tracer_provider or trace.get_tracer_provider()
    resource = getattr(provider, "resource", None)
    name = getattr(resource, "attributes", {}).get("service.name") if resource is not None else None
    return str(name) if name else "unknown_service"
