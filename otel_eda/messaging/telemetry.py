"""``EventTelemetry``: the spans, metrics and lifecycle records of moving one event.

Transport-agnostic: the embedded bus uses it today, broker integrations will use it the
same way. For a publish it makes one PRODUCER span ``send {destination}`` and injects its
context into the message headers; for each handling attempt one CONSUMER span
``process {destination}`` that always links to the producer span (and, in
:attr:`TraceMode.PARENT`, is also its child). Lifecycle stages are span events carrying
the seconds spent in the stage they close, and lifecycle records go to the recorders.
Metrics and records are written on every event whether or not its trace is sampled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Final

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from otel_eda import semconv
from otel_eda._selfmetrics import count_invalid, internal_error
from otel_eda.flows.records import LifecycleRecord, Recorder, Stage
from otel_eda.identity import EventContext, incoming_event, with_event
from otel_eda.identity.propagation import EdaPropagator, contains_propagator
from otel_eda.identity.validation import valid_type
from otel_eda.settings import TraceMode
from otel_eda.version import VERSION

__all__ = ["Attempt", "EventTelemetry", "Received", "TraceMode", "error_type"]

_log = logging.getLogger(__name__)
_MAX_CACHED_ATTRIBUTE_SETS: Final = 4096


def error_type(exc: BaseException) -> str:
    """The ``error.type`` value of an exception: its fully qualified class name."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Received:
    """One message as its consumer sees it: the event and the producer's context."""

    __slots__ = ("context", "event", "link", "producer")

    def __init__(self, event: EventContext, context: Context, producer: trace.SpanContext, link: Link | None):
        self.event = event
        self.context = context
        self.producer = producer
        self.link = link


class EventTelemetry:
    """Writes the telemetry of publishing and handling events for one service."""

    def __init__(
        self,
        service: str,
        *,
        system: str = semconv.MESSAGING_SYSTEM_EDA,
        mode: TraceMode = TraceMode.PARENT,
        recorders: Sequence[Recorder] = (),
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.service = service
        self.system = system
        self.mode = TraceMode(mode)
        self.recorders = tuple(recorders)
        self._tracer = trace.get_tracer(semconv.SCOPE, VERSION, tracer_provider)
        meter = metrics.get_meter(semconv.SCOPE, VERSION, meter_provider)
        self._sent = meter.create_counter(
            semconv.METRIC_SENT_MESSAGES, unit="{message}", description="Messages published"
        )
        self._consumed = meter.create_counter(
            semconv.METRIC_CONSUMED_MESSAGES, unit="{message}", description="Messages delivered to a handler"
        )
        self._duration = meter.create_histogram(
            semconv.METRIC_PROCESS_DURATION,
            unit="s",
            description="Duration of one handling attempt",
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
        self._attribute_sets: dict[tuple[str, ...], Mapping[str, str]] = {}

    # -- helpers ------------------------------------------------------------------------
    def _propagator(self) -> TextMapPropagator:
        """The global propagator, plus otel-eda's if the global one does not include it."""
        current = propagate.get_global_textmap()
        if current is not self._seen_textmap:
            self._seen_textmap = current
            self._textmap = (
                current if contains_propagator(current, EdaPropagator) else CompositePropagator([current, self._eda])
            )
        return self._textmap

    def _attrs(self, *key: str) -> Mapping[str, str]:
        """A cached metric attribute set: destination, operation[, group][, error type]."""
        attrs = self._attribute_sets.get(key)
        if attrs is None:
            attrs = {
                semconv.MESSAGING_SYSTEM: self.system,
                semconv.MESSAGING_DESTINATION_NAME: key[0],
                semconv.MESSAGING_OPERATION_NAME: key[1],
            }
            if len(key) > 2 and key[2]:
                attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = key[2]
            if len(key) > 3 and key[3]:
                attrs[semconv.ERROR_TYPE] = key[3]
            if len(self._attribute_sets) < _MAX_CACHED_ATTRIBUTE_SETS:
                self._attribute_sets[key] = attrs
        return attrs

    def _record(
        self,
        stage: Stage,
        event: EventContext,
        span_context: trace.SpanContext | None = None,
        *,
        subscriber: str | None = None,
        attempt: int = 0,
        duration_s: float | None = None,
        error: str | None = None,
    ) -> None:
        if not self.recorders:
            return
        record = LifecycleRecord(
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
            error,
            event.created_ns,
            span_context.trace_id if span_context is not None else 0,
            span_context.span_id if span_context is not None else 0,
        )
        for recorder in self.recorders:
            try:
                recorder.record(record)
            except Exception:
                internal_error("recorder", "recording a lifecycle record")

    def _message_attributes(self, event: EventContext, destination: str, operation: str) -> dict[str, object]:
        attrs: dict[str, object] = {
            semconv.MESSAGING_SYSTEM: self.system,
            semconv.MESSAGING_OPERATION_TYPE: operation,
            semconv.MESSAGING_OPERATION_NAME: operation,
            semconv.MESSAGING_DESTINATION_NAME: destination,
            semconv.MESSAGING_MESSAGE_ID: event.event_id,
            semconv.MESSAGING_MESSAGE_CONVERSATION_ID: event.correlation_id,
            semconv.PEER_SERVICE: self.system,
            semconv.EDA_CORRELATION_ID: event.correlation_id,
            semconv.EDA_EVENT_TYPE: event.event_type,
        }
        if event.causation_id is not None:
            attrs[semconv.EDA_CAUSATION_ID] = event.causation_id
        if event.business_key is not None:
            attrs[semconv.EDA_BUSINESS_KEY] = event.business_key
        return attrs

    # -- publishing ---------------------------------------------------------------------
    @contextmanager
    def publishing(
        self,
        event: EventContext,
        destination: str,
        headers: MutableMapping[str, str],
        context: Context | None = None,
    ) -> Iterator[trace.Span]:
        """Open the PRODUCER span of ``event``, inject it into ``headers``, and make the
        event current for the body (the transport's send). An exception from the body is
        recorded on the span and re-raised; the publish is recorded either way.
        """
        ctx = with_event(event, context)
        span = self._tracer.start_span(
            f"send {destination}",
            ctx,
            kind=SpanKind.PRODUCER,
            attributes=self._message_attributes(event, destination, semconv.OPERATION_TYPE_SEND),  # type: ignore[arg-type]
        )
        ctx = trace.set_span_in_context(span, ctx)
        token = attach(ctx)
        try:
            self._propagator().inject(headers, ctx)
            yield span
        except BaseException as exc:
            etype = error_type(exc)
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, etype))
            span.set_attribute(semconv.ERROR_TYPE, etype)
            self._sent.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND, "", etype))
            self._record(Stage.PUBLISHED, event, span.get_span_context(), error=etype)
            raise
        else:
            self._sent.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND))
            self._record(Stage.PUBLISHED, event, span.get_span_context())
        finally:
            detach(token)
            span.end()

    def unrouted(self, event: EventContext, destination: str) -> None:
        """Count and record an event that no subscriber received.

        ``destination`` may come from another process: an invalid one is neither logged
        nor used as a metric attribute (it becomes ``_invalid``).
        """
        if not valid_type(destination):
            count_invalid("destination", "bad_characters")
            destination = "_invalid"
        self._unrouted.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND))
        self._record(Stage.UNROUTED, event, trace.get_current_span().get_span_context())
        _log.debug("no subscriber for event type %s", destination)

    def dropped(self, event: EventContext, destination: str, subscriber: str) -> None:
        """Count and record an event a subscriber missed because its queue stayed full."""
        self._dropped.add(1, self._attrs(destination, semconv.OPERATION_TYPE_SEND, subscriber))
        self._record(Stage.DROPPED, event, trace.get_current_span().get_span_context(), subscriber=subscriber)

    # -- consuming ----------------------------------------------------------------------
    def extract(self, headers: Mapping[str, str], destination: str) -> Received:
        """Rebuild a message's event and producer context from its headers (no record).

        Never raises: when another propagator fails on malformed headers (OTel's raise on
        ``bytes`` or non-string values), the otel-eda headers alone are used, so the
        message is still handled as its own event; the failure is counted.
        """
        try:
            ctx = self._propagator().extract(headers, context=Context())
        except Exception:
            count_invalid("headers", "propagator_failed")
            _log.debug("a propagator failed on a message's headers; using otel-eda's headers only")
            ctx = self._eda.extract(headers, context=Context())
        event = incoming_event(ctx)
        if event is None:
            # Not an otel-eda message, or its identity was invalid: handle it as a new flow
            # so that nothing is lost, and count it.
            count_invalid("message", "no_valid_event_id")
            event = EventContext.root(destination if valid_type(destination) else "unknown")
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
        return Received(event, ctx, producer, link)

    def receive(self, headers: Mapping[str, str], destination: str, subscriber: str) -> Received:
        """Extract one message delivered to ``subscriber``; count and record its reception."""
        received = self.extract(headers, destination)
        attrs = self._attrs(destination, semconv.OPERATION_TYPE_PROCESS, subscriber)
        self._consumed.add(1, attrs)
        age = (time.time_ns() - received.event.created_ns) / 1e9
        if age < 0:
            self._skewed.add(1, attrs)
            age = 0.0
        self._age.record(age, attrs, context=received.context)  # exemplar: the producer span
        self._record(Stage.RECEIVED, received.event, received.producer, subscriber=subscriber)
        return received

    def start_attempt(
        self, received: Received, destination: str, subscriber: str, attempt: int, waited_s: float
    ) -> Attempt:
        """Open the CONSUMER span of one handling attempt. ``waited_s``: the seconds the
        message spent queued (first attempt) or backing off (later ones)."""
        return Attempt(self, received, destination, subscriber, attempt, waited_s)


class Attempt:
    """One handling attempt: its span, its context, and how it ends."""

    __slots__ = (
        "_ended",
        "_received",
        "_received_ns",
        "_started",
        "_telemetry",
        "attempt",
        "context",
        "destination",
        "event",
        "span",
        "subscriber",
    )

    def __init__(
        self,
        telemetry: EventTelemetry,
        received: Received,
        destination: str,
        subscriber: str,
        attempt: int,
        waited_s: float,
    ) -> None:
        self._telemetry = telemetry
        self._received = received
        self.event = event = received.event
        self.destination = destination
        self.subscriber = subscriber
        self.attempt = attempt
        self._ended = False
        if telemetry.mode is TraceMode.PARENT:
            parent = received.context
        else:
            parent = trace.set_span_in_context(trace.INVALID_SPAN, received.context)
        attrs = telemetry._message_attributes(event, destination, semconv.OPERATION_TYPE_PROCESS)
        attrs[semconv.EDA_DELIVERY_ATTEMPT] = attempt
        attrs[semconv.MESSAGING_CONSUMER_GROUP_NAME] = subscriber
        if received.link is not None:
            attrs[semconv.EDA_PRODUCER_TRACE_ID] = f"{received.producer.trace_id:032x}"
            attrs[semconv.EDA_PRODUCER_SPAN_ID] = f"{received.producer.span_id:016x}"
        self._received_ns = time.time_ns()
        self.span = span = telemetry._tracer.start_span(
            f"process {destination}",
            parent,
            kind=SpanKind.CONSUMER,
            attributes=attrs,  # type: ignore[arg-type]
            links=(received.link,) if received.link is not None else None,
            start_time=self._received_ns,
        )
        recording = span.is_recording()
        if recording:
            span.add_event(semconv.EVENT_RECEIVED, {semconv.EDA_STAGE_SECONDS: waited_s}, self._received_ns)
        self.context = with_event(event, trace.set_span_in_context(span, received.context))
        self._started = time.perf_counter()
        if recording:
            span.add_event(
                semconv.EVENT_PROCESSING,
                {semconv.EDA_STAGE_SECONDS: (time.time_ns() - self._received_ns) / 1e9},
            )
        telemetry._record(Stage.PROCESSING, event, span.get_span_context(), subscriber=subscriber, attempt=attempt)

    def completed(self) -> float:
        """End the attempt as a success; returns its duration in seconds."""
        if self._ended:
            return 0.0
        self._ended = True
        t = self._telemetry
        seconds = time.perf_counter() - self._started
        t._duration.record(
            seconds,
            t._attrs(self.destination, semconv.OPERATION_TYPE_PROCESS, self.subscriber),
            context=trace.set_span_in_context(self.span),  # the exemplar points at this attempt
        )
        span = self.span
        if span.is_recording():
            span.add_event(semconv.EVENT_COMPLETED, {semconv.EDA_STAGE_SECONDS: seconds})
        t._record(
            Stage.COMPLETED,
            self.event,
            span.get_span_context(),
            subscriber=self.subscriber,
            attempt=self.attempt,
            duration_s=seconds,
        )
        span.end()
        return seconds

    def failed(self, exc: BaseException, outcome: Stage) -> float:
        """End the attempt as a failure. ``outcome`` is FAILED (rejected, final),
        RETRIED (another attempt follows) or DEAD_LETTERED (final)."""
        if self._ended:
            return 0.0
        self._ended = True
        t = self._telemetry
        seconds = time.perf_counter() - self._started
        etype = error_type(exc)
        attrs = t._attrs(self.destination, semconv.OPERATION_TYPE_PROCESS, self.subscriber, etype)
        exemplar = trace.set_span_in_context(self.span)
        t._duration.record(seconds, attrs, context=exemplar)
        if outcome is Stage.RETRIED:
            t._retries.add(1, attrs, context=exemplar)
        elif outcome is Stage.DEAD_LETTERED:
            t._dead_letters.add(1, attrs, context=exemplar)
        span = self.span
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, etype))
            span.set_attribute(semconv.ERROR_TYPE, etype)
            span.add_event(
                {
                    Stage.FAILED: semconv.EVENT_FAILED,
                    Stage.RETRIED: semconv.EVENT_RETRIED,
                    Stage.DEAD_LETTERED: semconv.EVENT_DEAD_LETTERED,
                }[outcome],
                {semconv.EDA_STAGE_SECONDS: seconds},
            )
        t._record(
            outcome,
            self.event,
            span.get_span_context(),
            subscriber=self.subscriber,
            attempt=self.attempt,
            duration_s=seconds,
            error=etype,
        )
        span.end()
        return seconds

    def keyed(self, event: EventContext) -> None:
        """A business key was attached to the event during this attempt (and later ones)."""
        self.event = self._received.event = event
        if event.business_key is not None:
            self.span.set_attribute(semconv.EDA_BUSINESS_KEY, event.business_key)
        self._telemetry._record(
            Stage.KEYED, event, self.span.get_span_context(), subscriber=self.subscriber, attempt=self.attempt
        )
